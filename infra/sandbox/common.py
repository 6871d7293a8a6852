"""The sandbox's paths, ports and image versions, and the helpers every part of it uses: run a
command, wait for something, start and stop a background process, install a Debian package."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
STATE = Path(os.environ.get("SENTRY_OPS_SANDBOX_DIR", REPO / ".sandbox")).resolve()

# the hosts' tool image (pg_dump 17, zstd, tar), built offline: the services image on Debian 13
TOOL_IMAGE = "sentry-ops-sandbox/services-trixie:latest"
# self-hosted's ClickHouse and Snuba, stand-ins (infra/sandbox/images/*-standin, clickhouse-modern)
CLICKHOUSE_IMAGE = "sentry-ops-sandbox/clickhouse-modern:latest"
SNUBA_IMAGE = "sentry-ops-sandbox/snuba:latest"
STANDIN_VERSIONS = ("24.1.0", "24.2.0", "24.3.0-broken")  # also on the drill host
UPGRADE_VERSIONS = ("24.8.0", "24.9.0")  # a hard stop and the version after it (upgrade tests)
# tags of the sandbox's self-hosted checkout (24.3.0-broken: its web crashes after migrating)
SELF_HOSTED_RELEASES = ("24.1.0", "24.2.0", "24.3.0-broken")
DEFAULT_VERSION = STANDIN_VERSIONS[0]

SSH_PORT = int(os.environ.get("SANDBOX_SSH_PORT", "22022"))
DRILL_SSH_PORT = int(os.environ.get("SANDBOX_DRILL_SSH_PORT", "22023"))
# a second sshd to the same engine, for tests on a stack of their own that run beside the tests
# which cut every connection of the first (tests/conftest.py)
OWN_SSH_PORT = int(os.environ.get("SANDBOX_OWN_SSH_PORT", "22024"))
S3_PORT = int(os.environ.get("SANDBOX_S3_PORT", "19090"))
PREFECT_PORT = int(os.environ.get("SANDBOX_PREFECT_PORT", "14200"))
PREFECT_DB_PORT = int(os.environ.get("SANDBOX_PREFECT_DB_PORT", "14232"))
BUCKET = "sentry-backups"
ADMIN_EMAIL = "admin@sentry.local"


def log(message: str) -> None:
    print(f"[sandbox] {message}", flush=True)


def sh(*argv: str, check: bool = True, capture: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "DOCKER_BUILDKIT": "0", **kw.pop("env", {})}
    proc = subprocess.run(argv, capture_output=capture, text=True, env=env, **kw)
    if check and proc.returncode != 0:
        detail = (proc.stderr or "")[-3000:] if capture else ""
        raise RuntimeError(f"`{' '.join(argv)}` failed ({proc.returncode}): {detail}")
    return proc


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def wait_for(what: str, ok, timeout: float = 60.0, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


def pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def stop_pid(pidfile: Path, what: str) -> None:
    pid = pid_alive(pidfile)
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.1)
        log(f"stopped {what} (pid {pid})")
    pidfile.unlink(missing_ok=True)


def apt_install(*packages: str) -> None:
    if os.geteuid() != 0 or not Path("/etc/debian_version").exists():
        raise RuntimeError(
            f"missing {', '.join(packages)}: install them (Debian: apt-get install -y ...)"
        )
    log(f"installing {' '.join(packages)} (apt)")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    sh("apt-get", "update", "-qq", env=env)
    sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages, env=env)


def spawn(argv: list[str], logfile: Path, pidfile: Path, env: dict | None = None) -> int:
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    pidfile.write_text(str(proc.pid))
    return proc.pid
