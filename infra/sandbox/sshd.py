"""An sshd of the sandbox's own, with its host key (pinned by the blocks) and client key."""

from __future__ import annotations

import os
from pathlib import Path

from infra.sandbox.common import (
    SSH_PORT,
    STATE,
    apt_install,
    log,
    pid_alive,
    port_open,
    sh,
    stop_pid,
    wait_for,
)


def ensure_sshd(name: str = "ssh", port: int = SSH_PORT, docker_host: str | None = None) -> dict:
    """An sshd of our own (its host key pinned by the blocks); `docker_host`: the engine that
    `docker` in its sessions talks to (the drill host's)."""
    keys = STATE / "ssh"  # one client key for both hosts
    ssh = STATE / name
    ssh.mkdir(parents=True, exist_ok=True)
    keys.mkdir(parents=True, exist_ok=True)
    if not Path("/usr/sbin/sshd").exists():
        apt_install("openssh-server")
    for path in (keys / "client_ed25519_key", ssh / "host_ed25519_key"):
        if not path.exists():
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
               f"sentry-ops-sandbox-{name}-{path.name}", "-f", str(path))  # fmt: skip
    (ssh / "authorized_keys").write_text((keys / "client_ed25519_key.pub").read_text())
    host_pub = " ".join((ssh / "host_ed25519_key.pub").read_text().split()[:2])
    (ssh / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    set_env = f"SetEnv DOCKER_HOST={docker_host}\n" if docker_host else ""
    config = f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {ssh / "host_ed25519_key"}
PidFile {ssh / "sshd.pid"}
AuthorizedKeysFile {ssh / "authorized_keys"}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowTcpForwarding local
PermitOpen 127.0.0.1:*
X11Forwarding no
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp internal-sftp
{set_env}"""
    changed = not (ssh / "sshd_config").exists() or (ssh / "sshd_config").read_text() != config
    (ssh / "sshd_config").write_text(config)
    pidfile = ssh / "sshd.pid"
    if changed:
        stop_pid(pidfile, f"sshd ({name})")
    if not pid_alive(pidfile):
        if port_open(port):
            raise RuntimeError(
                f"127.0.0.1:{port} is taken by another program: set SANDBOX_SSH_PORT / "
                "SANDBOX_DRILL_SSH_PORT"
            )
        Path("/run/sshd").mkdir(exist_ok=True)
        log(f"starting sshd ({name}) on 127.0.0.1:{port}")
        sh("/usr/sbin/sshd", "-f", str(ssh / "sshd_config"), "-E", str(ssh / "sshd.log"))
        wait_for("sshd", lambda: port_open(port), 10)
    return {
        "host": "127.0.0.1",
        "port": port,
        "user": os.environ.get("USER") or "root",
        "private_key_path": str(keys / "client_ed25519_key"),
        "known_hosts_path": str(ssh / "known_hosts"),
        "host_key": host_pub,
        # the engine's socket on that host (what a block's docker_socket names)
        "docker_socket": (docker_host or "unix:///var/run/docker.sock").removeprefix("unix://"),
    }
