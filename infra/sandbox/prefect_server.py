"""A Prefect server: the demo's, and the tests' that need a real Prefect API."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

from infra.sandbox.common import PREFECT_PORT, STATE, log, pid_alive, port_open, spawn, wait_for


def prefect_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_prefect_server(home: Path, port: int, pidfile: Path, logfile: Path) -> str:
    """`prefect server start` on 127.0.0.1:`port` with its database in `home` (all its services
    run: the ephemeral test harness runs none, e.g. not the one that frees a killed run's lock);
    its PID in `pidfile`, to stop it with stop_pid. Returns the API URL once it answers."""
    url = f"http://127.0.0.1:{port}/api"
    if not (pid_alive(pidfile) and prefect_healthy(url)):
        prefect = Path(sys.executable).with_name("prefect")
        # the UI asks /ui-settings where the API is: this server's own port, not Prefect's default
        # and links in alerts (`flow_run|ui_url`) point at this server's UI
        # leases on disk (PREFECT_HOME/concurrency_leases): a restart keeps the host locks'
        # leases, which then expire or renew; in memory (the default) a held lock stays taken
        env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "0",
               "PREFECT_UI_API_URL": url, "PREFECT_UI_URL": url.removesuffix("/api"),
               "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE":
                   "prefect.server.concurrency.lease_storage.filesystem"}  # fmt: skip
        spawn([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
              logfile, pidfile, env=env)  # fmt: skip
        wait_for("the Prefect server", lambda: prefect_healthy(url), 180, 0.5)
    return url


def ensure_prefect_server() -> str:
    pidfile = STATE / "prefect.pid"
    if port_open(PREFECT_PORT) and not pid_alive(pidfile):
        raise RuntimeError(
            f"127.0.0.1:{PREFECT_PORT} is taken by another program: set SANDBOX_PREFECT_PORT"
        )
    if not pid_alive(pidfile):
        log(f"starting the Prefect server on 127.0.0.1:{PREFECT_PORT}")
    return start_prefect_server(STATE / "prefect", PREFECT_PORT, pidfile, STATE / "prefect.log")
