"""A Prefect server: the demo's, and the tests' that need a real Prefect API."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

from infra.sandbox.common import (
    PREFECT_DB_PORT,
    PREFECT_PORT,
    STATE,
    log,
    pid_alive,
    port_open,
    sh,
    spawn,
    wait_for,
)
from infra.sandbox.stacks import SANDBOX_LABEL, project_name, secret_file

SERVICES_IMAGE = "sentry-ops-sandbox/services:latest"


def prefect_db_container() -> str:
    return project_name("prefect-db")


def ensure_prefect_db() -> None:
    """The Prefect servers' database on PostgreSQL, as a team runs Prefect (not SQLite): a
    container of the services image on 127.0.0.1:PREFECT_DB_PORT, data in a volume of its own,
    the password in a 0600 file of the state dir mounted read-only (never in its environment)."""
    name = prefect_db_container()
    running = sh("docker", "inspect", "-f", "{{.State.Running}}", name, check=False).stdout
    if running.strip() != "true":
        sh("docker", "rm", "-f", name, check=False)
        log(f"starting the Prefect servers' PostgreSQL on 127.0.0.1:{PREFECT_DB_PORT}")
        secret_file(STATE / "secrets" / "prefect-db")
        sh("docker", "run", "-d", "--name", name, "--network", "host", "--label",
           f"{SANDBOX_LABEL}={STATE}", "-e", f"PGPORT={PREFECT_DB_PORT}", "-e",
           "POSTGRES_USER=prefect", "-e", "POSTGRES_DB=prefect", "-e",
           "POSTGRES_PASSWORD_FILE=/run/prefect-db-password", "-v",
           f"{STATE / 'secrets' / 'prefect-db'}:/run/prefect-db-password:ro", "-v",
           f"{name}:/var/lib/postgresql/data", SERVICES_IMAGE, "postgres")  # fmt: skip
    ready = ["docker", "exec", name, "pg_isready", "-h", "127.0.0.1", "-p", str(PREFECT_DB_PORT)]
    wait_for("the Prefect servers' PostgreSQL", lambda: sh(*ready, check=False).returncode == 0,
             120, 0.5)  # fmt: skip


def prefect_database(db: str, drop: bool = False) -> str:
    """A database of its own for one Prefect server (the demo's, a test session's), created
    empty; its SQLAlchemy URL. `drop`: remove it instead (returns "")."""
    name = prefect_db_container()
    psql = ["docker", "exec", "-i", name, "psql", "-U", "prefect", "-d", "prefect", "-v",
            "ON_ERROR_STOP=1", "-qAt"]  # fmt: skip
    if drop:
        sh(*psql, input=f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)\n', check=False)
        return ""
    exists = sh(*psql, input=f"SELECT 1 FROM pg_database WHERE datname = '{db}'\n").stdout
    if not exists.strip():
        sh(*psql, input=f'CREATE DATABASE "{db}"\n')
    password = secret_file(STATE / "secrets" / "prefect-db")
    return f"postgresql+asyncpg://prefect:{password}@127.0.0.1:{PREFECT_DB_PORT}/{db}"


def stop_prefect_db() -> None:
    name = prefect_db_container()
    sh("docker", "rm", "-f", name, check=False)
    sh("docker", "volume", "rm", "-f", name, check=False)


def prefect_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_prefect_server(
    home: Path, port: int, pidfile: Path, logfile: Path, database_url: str | None = None
) -> str:
    """`prefect server start` on 127.0.0.1:`port` with its home in `home` and its database at
    `database_url` (PostgreSQL; default SQLite in `home`), all its services running (the
    ephemeral test harness runs none, e.g. not the one that frees a killed run's lock); its PID
    in `pidfile`, to stop it with stop_pid. Returns the API URL once it answers."""
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
        if database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
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
    ensure_prefect_db()
    database = prefect_database("prefect_demo")
    return start_prefect_server(
        STATE / "prefect", PREFECT_PORT, pidfile, STATE / "prefect.log", database
    )
