"""The stack's Postgres, reached from the worker through the host's SSH tunnel.

Backups run `pg_dump` on the worker against the tunnel: measured faster than relaying
`docker exec pg_dump` output (see infra/bench/backup_bench.py and TESTBED.md), and it lets the dump
share an exported snapshot with the row counts, so the manifest's counts are exactly the dump's.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import psycopg
from psycopg import sql

from blocks.sentry_host import SentryHost


class PostgresError(Exception):
    pass


def _connection(port: int, user: str, db: str) -> list[str]:
    """libpq tool arguments for the tunnel's local end; the password is in the environment."""
    return ["-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", db, "--no-password"]


def dump_argv(port: int, user: str, db: str, snapshot: str | None = None) -> list[str]:
    """Custom format, uncompressed (zstd on the worker is faster and smaller than -Z)."""
    snap = [f"--snapshot={snapshot}"] if snapshot else []
    return ["pg_dump", *_connection(port, user, db), "-Fc", "-Z0", *snap]


def restore_argv(port: int, user: str, db: str, jobs: int = 1) -> list[str]:
    return [
        "pg_restore",
        *_connection(port, user, db),
        "--no-owner",
        "--exit-on-error",
        f"--jobs={jobs}",
    ]


def client_env(host: SentryHost) -> dict[str, str]:
    """Environment for local libpq tools: the password goes here, never into argv."""
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    if host.postgres_password is not None:
        env["PGPASSWORD"] = host.postgres_password.get_secret_value()
    return env


def client_major(tool: str = "pg_dump") -> int:
    path = shutil.which(tool)
    if not path:
        raise PostgresError(
            f"{tool} is not installed on this worker: install the PostgreSQL client "
            "(Debian: apt-get install postgresql-client) of the server's major version or newer"
        )
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"\(PostgreSQL\)\s+(\d+)", out).group(1))


@contextlib.contextmanager
def connect(host: SentryHost, port: int, dbname: str | None = None) -> Iterator[psycopg.Connection]:
    """psycopg to the stack's Postgres through a tunnel that is already open on `port`."""
    password = host.postgres_password.get_secret_value() if host.postgres_password else None
    try:
        conn = psycopg.connect(
            host="127.0.0.1",
            port=port,
            user=host.stack.postgres_user,
            dbname=dbname or host.stack.postgres_db,
            password=password,
            connect_timeout=10,
        )
    except psycopg.OperationalError as exc:
        raise PostgresError(
            f"{host.label}: cannot connect to Postgres at {host.postgres_tunnel_host}:"
            f"{host.postgres_port or 5432} (via SSH) as {host.stack.postgres_user}: "
            f"{str(exc).strip()[-300:]}. Check postgres_port/postgres_tunnel_host and the "
            "block's postgres_password"
        ) from None
    with conn:
        yield conn


def user_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', "
        "'information_schema') ORDER BY 1, 2"
    ).fetchall()


def row_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Exact per-table row counts, in the connection's current transaction (snapshot)."""
    counts = {}
    for schema, table in user_tables(conn):
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        name = table if schema == "public" else f"{schema}.{table}"
        counts[name] = conn.execute(query).fetchone()[0]
    return counts


def table_checksums(conn: psycopg.Connection) -> dict[str, str]:
    """md5 over each table's rows in primary-key order: equal content <=> equal checksum."""
    sums = {}
    for schema, table in user_tables(conn):
        query = sql.SQL(
            "SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {}.{} t"
        ).format(sql.Identifier(schema), sql.Identifier(table))
        sums[table if schema == "public" else f"{schema}.{table}"] = conn.execute(query).fetchone()[
            0
        ]
    return sums


def newest_event(conn: psycopg.Connection) -> str | None:
    """'<node id> <timestamp>' of the newest payload in Sentry's Postgres nodestore
    (`nodestore_node`, the guide era's), if it has one. Sentry never writes `sentry_message`."""
    exists = conn.execute("SELECT to_regclass('public.nodestore_node')").fetchone()[0]
    if not exists:
        return None
    row = conn.execute(
        "SELECT id, timestamp FROM nodestore_node ORDER BY timestamp DESC, id DESC LIMIT 1"
    ).fetchone()
    return f"{row[0]} {row[1].isoformat()}" if row else None


def node_payload(conn: psycopg.Connection, node_id: str) -> str | None:
    """The nodestore payload of one node (an event), or None."""
    row = conn.execute("SELECT data FROM nodestore_node WHERE id = %s", (node_id,)).fetchone()
    return row[0] if row else None


def app_counts(conn: psycopg.Connection) -> dict[str, int]:
    """What an operator counts after a restore: users, superusers, projects, issues."""
    queries = {
        "users": "SELECT count(*) FROM auth_user",
        "superusers": "SELECT count(*) FROM auth_user WHERE is_superuser",
        "projects": "SELECT count(*) FROM sentry_project",
        "issues": "SELECT count(*) FROM sentry_groupedmessage",
    }
    return {name: conn.execute(query).fetchone()[0] for name, query in queries.items()}


def restore_from(host: SentryHost, port: int, source, jobs: int = 1) -> float:
    """Stream a custom-format dump from `source` (a readable) into pg_restore; returns seconds."""
    started = time.monotonic()
    argv = restore_argv(port, host.stack.postgres_user, host.stack.postgres_db, jobs)
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=client_env(host)
    )
    stderr: list[bytes] = []
    drain = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
    drain.start()
    try:
        while chunk := source.read(1 << 20):
            proc.stdin.write(chunk)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # pg_restore stopped early: its exit status and stderr say why
    finally:
        code = proc.wait()
        drain.join(5)
    if code != 0:
        tail = b"".join(stderr).decode("utf-8", "replace").strip()[-1500:]
        raise PostgresError(f"pg_restore exited with {code}: {tail}")
    return time.monotonic() - started
