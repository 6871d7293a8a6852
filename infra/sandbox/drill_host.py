"""The drill host: a second Docker engine with its own images and volumes, for restore drills."""

from __future__ import annotations

import subprocess
from pathlib import Path

from infra.sandbox.common import (
    STATE,
    log,
    pid_alive,
    sh,
    spawn,
    stop_pid,
    wait_for,
)


def drill_engine() -> Path:
    return STATE / "drill-engine"


def drill_docker_host() -> str:
    return f"unix://{drill_engine() / 'docker.sock'}"


def drill_docker(*args: str, **kw) -> subprocess.CompletedProcess:
    return sh("docker", "-H", drill_docker_host(), *args, **kw)


def ensure_drill_engine() -> str:
    """A second dockerd (own data root, exec root, socket, pidfile; no bridge, no iptables):
    another "Docker host" with its own images and volumes, for restore drills. Returns its
    DOCKER_HOST. The sandbox's images are copied into it (docker save | load) when they differ."""
    d = drill_engine()
    d.mkdir(parents=True, exist_ok=True)
    pidfile = d / "docker.pid"
    if drill_docker("info", check=False).returncode != 0:
        if pid_alive(pidfile):
            stop_pid(pidfile, "the drill host's dockerd")
        log("starting the drill host's dockerd (a second Docker engine)")
        argv = ["dockerd", "--data-root", str(d / "data"), "--exec-root", str(d / "exec"),
                "--pidfile", str(pidfile), "-H", drill_docker_host(), "--bridge=none",
                "--iptables=false", "--ip-masq=false"]  # fmt: skip
        spawn(argv, d / "dockerd.log", d / "spawn.pid")
        wait_for(
            "the drill host's dockerd",
            lambda: drill_docker("info", check=False).returncode == 0,
            60,
        )
    # no image is put here: like a freshly installed drill host, its engine starts empty, and a
    # drill brings what it runs from production (blocks/scratch.py bring_images)
    return drill_docker_host()


def stop_drill_engine() -> None:
    d = drill_engine()
    if drill_docker("info", check=False).returncode == 0:
        ids = drill_docker("ps", "-aq").stdout.split()
        if ids:
            drill_docker("rm", "-f", *ids, check=False)
        vols = drill_docker("volume", "ls", "-q").stdout.split()
        if vols:
            drill_docker("volume", "rm", "-f", *vols, check=False)
    stop_pid(d / "docker.pid", "the drill host's dockerd")
    netns = d / "exec" / "netns" / "default"
    if netns.exists():
        sh("umount", str(netns), check=False)


def copy_images_to_drill(*refs: str) -> None:
    """Images put into the drill host's engine where it lacks them (`docker save | load`), as an
    install there would pull or build them."""
    missing = [r for r in refs if drill_docker("image", "inspect", r, check=False).returncode]
    if missing:
        save = subprocess.Popen(["docker", "save", *missing], stdout=subprocess.PIPE)
        subprocess.run(["docker", "-H", drill_docker_host(), "load", "-q"], stdin=save.stdout,
                       check=True, capture_output=True)  # fmt: skip
        if save.wait() != 0:
            raise RuntimeError(f"docker save {missing} failed")
