"""The stack's Postgres, in and out: the one module that dumps, counts, restores, checks versions.

Everything runs on the Docker host, next to the database, so no Postgres port is ever published
and no tunnel listens on the worker:
- queries (snapshot export, row counts, facts) go through `psql` inside the postgres container,
  on its local socket (trust in the official image and in self-hosted);
- `pg_dump -Fc --compress=zstd:1` runs in a throwaway container of the *tool image* (pg_dump >=
  the server's major) in the postgres container's network namespace, writing into a FIFO that
  the SSH session reads (measured: Docker's attach/exec relay costs more than SSH, a FIFO avoids
  it), so only compressed bytes cross SSH; `pg_restore` is fed the same way, the other direction.
A password (guide layout) reaches the tool container as a 0600 pgpass file written from the SSH
session's stdin, never argv; the dump shares an exported snapshot with the row counts, so the
manifest's counts are exactly the dump's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import BinaryIO

from blocks.host_data import secret_tar
from blocks.layouts import DataVolume, Role
from blocks.sentry_host import SentryHost
from blocks.ssh import Prefixed, RemoteCommandError

COMPRESSION = "zstd:1"  # pg_dump's own: measured 5.8 s for 1.1 GiB, at the speed of -Z0
END = "<<sentry-ops:end>>"


class PostgresError(Exception):
    pass


@dataclass(frozen=True)
class Target:
    """Where a Postgres answers on a Docker host: its container, port, user, database."""

    container: str
    port: int
    user: str
    db: str
    password: str | None = None


def target(host: SentryHost) -> Target:
    """The running postgres container of `host` and how to reach it from its own namespace."""
    service = host.stack.service(Role.POSTGRES)
    ids = host.run(host.compose_argv("ps", "-q", service), timeout=60).text.split()
    if not ids:
        raise PostgresError(
            f"{host.label}: service {service} has no running container: start it first"
        )
    port = host.postgres_port
    if port is None:  # the container's own PGPORT, else Postgres's default
        env = host.run(
            ["docker", "inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", ids[0]],
            timeout=60,
        ).text
        match = re.search(r"^PGPORT=(\d+)$", env, re.M)
        port = int(match.group(1)) if match else 5432
    password = host.postgres_password.get_secret_value() if host.postgres_password else None
    return Target(ids[0], port, host.stack.postgres_user, host.stack.postgres_db, password)


# -- queries: psql in the postgres container ----------------------------------------------------
def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Psql:
    """One psql session (one transaction context) over SSH; rows come back as string tuples."""

    def __init__(self, session) -> None:
        self._session = session
        self._lock = threading.Lock()

    def rows(self, sql: str) -> list[tuple[str, ...]]:
        with self._lock:
            try:
                self._session.send(
                    f"{sql.rstrip().rstrip(';')};\nSELECT {_literal(END)};\n".encode()
                )
            except OSError:
                raise PostgresError(
                    f"the psql session in the postgres container ended: "
                    f"{self._session.stderr_tail()[-500:].strip() or 'no message'}"
                ) from None
            out = []
            while True:
                line = self._session.readline()
                if line is None:
                    raise PostgresError(f"psql ended: {self._session.stderr_tail()[-500:]}")
                if line == END:
                    return out
                out.append(tuple(line.split("\x1f")))

    def value(self, sql: str) -> str | None:
        rows = self.rows(sql)
        return rows[0][0] if rows and rows[0] else None


@contextlib.contextmanager
def psql(host: SentryHost, where: Target | None = None) -> Iterator[Psql]:
    where = where or target(host)
    argv = [
        "docker", "exec", "-i", where.container, "psql", "-X", "-q", "-A", "-t",
        "-F", "\x1f", "-v", "ON_ERROR_STOP=1", "-p", str(where.port), "-U", where.user,
        "-d", where.db,
    ]  # fmt: skip
    with host.transport.session(argv) as session:
        yield Psql(session)


def user_tables(db: Psql) -> list[tuple[str, str]]:
    return [
        (s, t)
        for s, t in db.rows(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', "
            "'information_schema') ORDER BY 1, 2"
        )
    ]


def _name(schema: str, table: str) -> str:
    return table if schema == "public" else f"{schema}.{table}"


def row_counts(db: Psql) -> dict[str, int]:
    """Exact per-table row counts, in the session's current transaction (snapshot)."""
    tables = user_tables(db)
    if not tables:
        return {}
    union = " UNION ALL ".join(
        f"SELECT {_literal(_name(s, t))}, count(*) FROM {_ident(s)}.{_ident(t)}" for s, t in tables
    )
    return {name: int(count) for name, count in db.rows(union)}


def table_checksums(db: Psql) -> dict[str, str]:
    """md5 over each table's rows in text order: equal content <=> equal checksum."""
    sums = {}
    for schema, table in user_tables(db):
        sums[_name(schema, table)] = db.value(
            "SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
            f"FROM {_ident(schema)}.{_ident(table)} t"
        )
    return sums


def server_version(db: Psql) -> str:
    return db.value("SHOW server_version") or "?"


def newest_event(db: Psql) -> str | None:
    """'<node id> <timestamp>' of the newest payload in Sentry's Postgres nodestore
    (`nodestore_node`, the guide era's), if it has one. Sentry never writes `sentry_message`."""
    if db.value("SELECT to_regclass('public.nodestore_node') IS NOT NULL") != "t":
        return None
    row = db.rows(
        "SELECT id, to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') "
        "FROM nodestore_node ORDER BY timestamp DESC, id DESC LIMIT 1"
    )
    return f"{row[0][0]} {row[0][1]}" if row else None


def node_payload(db: Psql, node_id: str) -> str | None:
    """The nodestore payload of one node (an event), or None."""
    return db.value(f"SELECT data FROM nodestore_node WHERE id = {_literal(node_id)}")


def app_counts(db: Psql) -> dict[str, int]:
    """What an operator counts after a restore: users, superusers, projects, issues."""
    row = db.rows(
        "SELECT (SELECT count(*) FROM auth_user), "
        "(SELECT count(*) FROM auth_user WHERE is_superuser), "
        "(SELECT count(*) FROM sentry_project), (SELECT count(*) FROM sentry_groupedmessage)"
    )[0]
    return dict(zip(("users", "superusers", "projects", "issues"), map(int, row), strict=True))


def is_empty(db: Psql) -> bool:
    return not user_tables(db)


# -- the tool image -----------------------------------------------------------------------------
_TOOLS = (
    "pg_dump --version; "
    "for t in pg_restore psql tar zstd; do command -v $t >/dev/null || echo missing: $t; done"
)
_tool_facts: dict[tuple, tuple[int, list[str]]] = {}


def tool_facts(host: SentryHost, image: str) -> tuple[int, list[str]]:
    """(pg_dump's major version, tools missing) of the tool image on this host; one throwaway
    container, once per process."""
    cache_key = (host.transport.target, image)
    if cache_key not in _tool_facts:
        try:
            out = host.run(host.tool_argv(image, "sh", "-c", _TOOLS), timeout=600).text
        except RemoteCommandError as exc:
            why = exc.stderr_tail[-300:].strip() or str(exc)
            raise PostgresError(
                f"{host.label}: cannot run the tool image {image!r} ({why}); set the block's "
                "tool_image to an image with pg_dump >= the server's major version, psql, tar "
                "and zstd, present on the host or pullable (infra/tool-image/Dockerfile)"
            ) from None
        match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
        if not match:
            raise PostgresError(f"{host.label}: {image}: no pg_dump in the tool image: {out[:200]}")
        missing = re.findall(r"^missing: (\S+)$", out, re.M)
        _tool_facts[cache_key] = (int(match.group(1)), missing)
    return _tool_facts[cache_key]


def check_tool_image(host: SentryHost, image: str) -> None:
    """Before anything is written: the tool image runs and has every tool a backup uses."""
    _, missing = tool_facts(host, image)
    if missing:
        raise PostgresError(
            f"{host.label}: the tool image {image} lacks {' '.join(missing)}: build "
            "infra/tool-image/Dockerfile on the host (postgres:17 plus zstd) and set tool_image"
        )


def check_tool(host: SentryHost, image: str, server: str, tool: str = "pg_dump") -> None:
    """pg_dump/pg_restore (one package, one version) must be the server's major or newer."""
    major, server_major = tool_facts(host, image)[0], int(server.split(".")[0])
    if major < server_major:
        raise PostgresError(
            f"{host.label}: the tool image {image} has {tool} {major}, older than the server "
            f"({server}): set tool_image to one with PostgreSQL {server_major} or newer"
        )


# the pgpass file a detached job's psql reads, in its container's root (blocks/host_data.py)
PGPASS_FILE = "sentry-ops-pgpass"


def pgpass(password: str | None) -> bytes:
    """A pgpass line for any host/port/db (stdin of the remote runner, never argv)."""
    if password is None:
        return b"\n"
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:*:{escaped}\n".encode()


# -- dump ---------------------------------------------------------------------------------------
@dataclass
class Dump:
    stream: BinaryIO  # the compressed custom-format dump, as it is made
    server_version: str
    size_estimate: int
    newest_event: str | None
    row_counts: Future  # dict[str, int], counted in the dump's own snapshot
    compression: str = f"pg_dump:{COMPRESSION}"


@contextlib.contextmanager
def dump(host: SentryHost, image: str, timeout: float = 300) -> Iterator[Dump]:
    """pg_dump next to the database, sharing an exported snapshot with exact row counts.

    `timeout`: the longest silence tolerated from the dump (a stalled dump fails, the upload
    reading it aborts)."""
    where = target(host)
    with psql(host, where) as db:
        db.rows("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = db.value("SELECT pg_export_snapshot()")
        version = server_version(db)
        check_tool(host, image, version)
        size = int(db.value("SELECT pg_database_size(current_database())") or 0)
        newest = newest_event(db)
        command = [
            "pg_dump", "-h", "127.0.0.1", "-p", str(where.port), "-U", where.user,
            "-d", where.db, "--no-password", "-Fc", f"--compress={COMPRESSION}",
            f"--snapshot={snapshot}",
        ]  # fmt: skip
        argv = host.container_io_argv("out", image, where.container, command, job="backup")
        with host.stream(argv, timeout=timeout, stdin=pgpass(where.password)) as stream:
            counts: Future = Future()

            def count() -> None:  # in the same snapshot, while the dump runs
                try:
                    counts.set_result(row_counts(db))
                except BaseException as exc:
                    counts.set_exception(exc)

            threading.Thread(target=count, daemon=True, name="row-counts").start()
            yield Dump(stream, version, size, newest, counts)
            counts.result(timeout=3600)
        db.rows("COMMIT")


# -- restore ------------------------------------------------------------------------------------
# pg_restore (>= the dump's pg_dump) renders SQL, psql applies it in one transaction: a failed
# restore leaves the database empty. pg_restore 17 emits `SET transaction_timeout = 0;`, which a
# server older than 17 rejects: that header line (and only within the header) is dropped for them.
RESTORE = r"""set -euo pipefail
pg_restore --no-owner -f - |
    if [ "$4" = 1 ]; then awk 'NR <= 100 && $0 == "SET transaction_timeout = 0;" {next} {print}'
    else cat; fi |
    psql -X -q -v ON_ERROR_STOP=1 --single-transaction -h 127.0.0.1 -p "$1" -U "$2" -d "$3" \
        --no-password >/dev/null
"""


def restore(host: SentryHost, image: str, source: BinaryIO, where: Target | None = None) -> float:
    """Feed a custom-format dump into pg_restore next to the (empty) target database; seconds.

    A failing `source` closes the SSH channel, so pg_restore sees a truncated input, fails and
    ends: nothing hangs."""
    started = time.monotonic()
    where = where or target(host)
    with psql(host, where) as db:
        if not is_empty(db):
            raise PostgresError(
                f"{host.label}: refusing to restore into {where.db}: it already has tables"
            )
        version = server_version(db)
        check_tool(host, image, version, "pg_restore")
        major = int(version.split(".")[0])
    command = ["bash", "-c", RESTORE, "pg_restore", str(where.port), where.user, where.db,
               "1" if major < 17 else "0"]  # fmt: skip
    argv = host.container_io_argv("in", image, where.container, command, job="restore")
    host.run(argv, stdin=Prefixed(pgpass(where.password), source), timeout=None)
    return time.monotonic() - started


def set_aside_database(host: SentryHost, suffix: str) -> str:
    """Rename the stack's database to `<db>_<suffix>` (its connections ended) and create it
    empty, for a restore that puts a whole backup back (an upgrade's rollback): the old one
    stays until the restore is proven (`drop_database`) or is put back (`put_back_database`).
    Run from `template1`; returns the old database's new name."""
    where = target(host)
    aside = f"{where.db}_{suffix}"[:63]
    with psql(host, dataclasses.replace(where, db="template1")) as db:
        db.rows(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
            f"{_literal(where.db)} AND pid <> pg_backend_pid()"
        )
        db.rows(f"ALTER DATABASE {_ident(where.db)} RENAME TO {_ident(aside)}")
        db.rows(f"CREATE DATABASE {_ident(where.db)} OWNER {_ident(where.user)}")
    return aside


def put_back_database(host: SentryHost, aside: str) -> None:
    """Undo `set_aside_database`: the half-restored database goes, the old one is back."""
    where = target(host)
    with psql(host, dataclasses.replace(where, db="template1")) as db:
        db.rows(f"DROP DATABASE IF EXISTS {_ident(where.db)} WITH (FORCE)")
        db.rows(f"ALTER DATABASE {_ident(aside)} RENAME TO {_ident(where.db)}")


def drop_database(host: SentryHost, name: str) -> None:
    where = target(host)
    with psql(host, dataclasses.replace(where, db="template1")) as db:
        db.rows(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")


# -- space: what tables hold, what VACUUM gives back ---------------------------------------------
@dataclass(frozen=True)
class TableUsage:
    name: str
    bytes: int  # on disk, with indexes and TOAST
    live: int
    dead: int  # rows deleted (by `sentry cleanup`) whose space only VACUUM makes reusable


def database_bytes(db: Psql) -> int:
    return int(db.value("SELECT pg_database_size(current_database())") or 0)


def table_usage(db: Psql, limit: int = 10) -> list[TableUsage]:
    """The largest tables, Sentry's nodestore first (the bloat operators report most)."""
    rows = db.rows(
        "SELECT CASE WHEN schemaname = 'public' THEN relname ELSE schemaname || '.' || relname "
        "END, pg_total_relation_size(relid), n_live_tup, n_dead_tup FROM pg_stat_user_tables "
        "ORDER BY relname = 'nodestore_node' DESC, pg_total_relation_size(relid) DESC "
        f"LIMIT {int(limit)}"
    )
    return [TableUsage(n, int(b), int(live), int(dead)) for n, b, live, dead in rows]


# Sentry's tables whose rows `sentry cleanup` deletes by age, and the column it goes by
AGED = {
    "issues": ("sentry_groupedmessage", "last_seen"),
    "nodestore payloads": ("nodestore_node", "timestamp"),
}


def older_than(db: Psql, days: int, nodestore: bool = True) -> dict[str, int]:
    """How many issues and (with `nodestore`: the layout keeps payloads in Postgres) event
    payloads are older than `days`."""
    counts = {}
    for what, (table, column) in AGED.items():
        if table == "nodestore_node" and not nodestore:
            continue
        if db.value(f"SELECT to_regclass({_literal(table)}) IS NOT NULL") == "t":
            counts[what] = int(db.value(
                f"SELECT count(*) FROM {_ident(table)} WHERE {_ident(column)} < now() - "
                f"interval '{int(days)} days'"
            ) or 0)  # fmt: skip
    return counts


def relation_bytes(db: Psql, tables: list[str]) -> dict[str, int | None]:
    """Bytes on disk of each named table (None: no such table)."""
    return {
        t: int(size) if size else None
        for t in tables
        for size in [db.value(f"SELECT pg_total_relation_size(to_regclass({_literal(t)}))")]
    }


def vacuum_statements(full_tables: list[str]) -> list[str]:
    """Plain `VACUUM (ANALYZE)` of the database (online: dead rows become reusable space,
    statistics fresh), then `VACUUM (FULL, ANALYZE)` of each named table: a rewritten copy,
    giving the space back to the file system, under an exclusive lock for its duration."""
    return ["VACUUM (ANALYZE)"] + [
        f"VACUUM (FULL, ANALYZE) {'.'.join(_ident(p) for p in t.split('.'))}" for t in full_tables
    ]


def vacuum_job(
    host: SentryHost, where: Target, statements: list[str]
) -> Callable[[str, dict[str, str]], list[str]]:
    """How to start the statements as a detached job (blocks/jobs.py) next to the database:
    psql of the tool image in the postgres container's network namespace; a password reaches it
    as a 0600 pgpass file copied into the created container from stdin (`password_file`), never
    argv or the container's environment."""
    passfile = ["env", f"PGPASSFILE=/{PGPASS_FILE}"] * (where.password is not None)
    command = [*passfile, "psql", "-X", "-e", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p",
               str(where.port), "-U", where.user, "-d", where.db, "--no-password"]  # fmt: skip
    command += [a for sql in statements for a in ("-c", sql)]

    def start(name: str, labels: dict[str, str]) -> list[str]:
        secret = PGPASS_FILE if where.password is not None else ""
        return host.tool_job_argv(name, labels, where.container, *command, secret_file=secret)

    return start


def password_file(where: Target) -> bytes | None:
    """The stdin of a detached job (`tool_job_argv(secret_file=PGPASS_FILE)`): a tar of the
    pgpass file the job's psql reads (None: no password)."""
    if where.password is None:
        return None
    return secret_tar(PGPASS_FILE, pgpass(where.password))


# -- physical: base backups and point-in-time restores (the WAL archive: blocks/wal.py) ---------
BASE_BACKUP = (
    'set -o pipefail; pg_basebackup -h 127.0.0.1 -p "$0" -U "$1" --no-password -D - -Ft '
    "-X fetch --checkpoint=fast | zstd -1 -T0"
)


@dataclass(frozen=True)
class Cluster:
    """Which Postgres cluster this is, and where its WAL is now."""

    system_identifier: str
    timeline: str  # 8 hex digits, as in segment names
    segment: str  # the current WAL segment


def cluster(db: Psql) -> Cluster:
    system_id, segment = db.rows(
        "SELECT system_identifier::text, pg_walfile_name(pg_current_wal_lsn()) "
        "FROM pg_control_system()"
    )[0]
    return Cluster(system_id, segment[:8], segment)


@dataclass
class BaseStream:
    stream: BinaryIO  # tar.zst of the data directory, WAL to its consistency point included
    system_identifier: str
    timeline: int
    wal_start: str
    server_version: str


@contextlib.contextmanager
def base_backup(host: SentryHost, image: str, timeout: float = 300) -> Iterator[BaseStream]:
    """`pg_basebackup -Ft -X fetch` next to the database, zstd-compressed there: a physical
    copy that WAL replay starts from (the WAL it needs to be consistent is inside)."""
    where = target(host)
    with psql(host, where) as db:
        version = server_version(db)
        check_tool(host, image, version, "pg_basebackup")
        now = cluster(db)
    command = ["bash", "-c", BASE_BACKUP, str(where.port), where.user]
    argv = host.container_io_argv("out", image, where.container, command, job="backup")
    with host.stream(argv, timeout=timeout, stdin=pgpass(where.password)) as stream:
        yield BaseStream(stream, now.system_identifier, int(now.timeline, 16), now.segment, version)


# Recovery as PostgreSQL documents it (doc/src/sgml/backup.sgml, "Recovering Using a Continuous
# Archive Backup"; recovery.signal and these settings since 12): a target past the end of the
# archive makes the server refuse to start ("recovery ended before configured recovery target
# was reached", since 13), which is why the flow checks the target against the archive first.
# Run in a tool container on the restored data directory (the Postgres volume, at /volume),
# before Postgres starts: recovery settings into postgresql.auto.conf (Postgres reads them from
# there; removed with ALTER SYSTEM RESET once recovery ended), recovery.signal, the files owned
# by the server image's postgres user. restore_command runs in the data directory (its cwd):
# the staged segments are in ./sentry_ops_wal. Arguments: uid gid target-time-or-empty.
RECOVERY = r"""set -eu
cd /volume
test -s PG_VERSION || { echo "no PG_VERSION: not a base backup" >&2; exit 1; }
{
    echo "restore_command = 'cp sentry_ops_wal/%f \"%p\"'"
    echo "recovery_target_timeline = 'latest'"
    echo "recovery_target_action = 'promote'"
    if [ -n "$2" ]; then echo "recovery_target_time = '$2'"; fi
} >>postgresql.auto.conf
touch recovery.signal
rm -f postmaster.pid
chown -R "$0:$1" /volume
chmod 0700 /volume
"""
RECOVERY_SETTINGS = (
    "restore_command", "recovery_target_timeline", "recovery_target_action",
    "recovery_target_time",
)  # fmt: skip


def prepare_recovery(host: SentryHost, image: str, target_time: dt.datetime | None) -> None:
    """The unpacked base backup (and its staged WAL) made ready to replay to `target_time`
    (None: to the end of the archive), owned by `image`'s postgres user."""
    ids = [  # the server image's own postgres user, asked of that image (tool_argv)
        host.run(host.tool_argv(image, "id", flag, "postgres"), timeout=600).text.strip()
        for flag in ("-u", "-g")
    ]
    when = target_time.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00") if target_time else ""
    argv = host.volume_run_argv(
        DataVolume.POSTGRES, host.tool_image, "sh", "-c", RECOVERY, *ids, when
    )
    host.run(argv, timeout=3600)


def finish_recovery(
    host: SentryHost, timeout: float, on_wait: Callable[[], str | None]
) -> dt.datetime | None:
    """Wait for the replay to end (Postgres promoted: out of recovery), then remove the
    recovery settings and the staged WAL. The point reached is `pg_last_xact_replay_timestamp()`,
    which "if recovery has completed ... will remain static at the value of the last transaction
    applied during that recovery" (postgres/postgres doc/src/sgml/func.sgml, since 9.1).
    `on_wait` is asked while it waits: a sentence when the server can no longer get there (its
    container ended), else None. Returns the commit time of the last transaction replayed
    (None: none after the base backup)."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            with psql(host) as db:
                if db.value("SELECT pg_is_in_recovery()") == "f":
                    reached = db.value(
                        "SELECT to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', "
                        '\'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\')'
                    )
                    for name in RECOVERY_SETTINGS:
                        db.rows(f"ALTER SYSTEM RESET {name}")
                    db.rows("SELECT pg_reload_conf()")
                    break
        except (PostgresError, RemoteCommandError) as exc:
            last = str(exc)[-300:]
        if problem := on_wait():
            raise PostgresError(f"{host.label}: the point-in-time replay failed: {problem}")
        if time.monotonic() > deadline:
            raise PostgresError(
                f"{host.label}: Postgres still replays WAL after {timeout:.0f} s ({last}); "
                "raise the timeout, or look at its log"
            )
        time.sleep(1)
    host.run(host.volume_run_argv(DataVolume.POSTGRES, host.tool_image, "rm", "-rf",
                                  "/volume/sentry_ops_wal"), timeout=600)  # fmt: skip
    return dt.datetime.fromisoformat(reached.replace("Z", "+00:00")) if reached else None


def marks(db: Psql, until: dt.datetime | None = None) -> list[dt.datetime]:
    """sentry-ops' WAL marks (blocks/wal.py) in this database, up to `until`."""
    if db.value("SELECT to_regclass('sentry_ops.wal_marks') IS NOT NULL") != "t":
        return []
    where = f"WHERE at <= {_literal(until.isoformat())}::timestamptz" if until else ""
    return [
        dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        for (v,) in db.rows(
            "SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') "
            f"FROM sentry_ops.wal_marks {where} ORDER BY at"
        )
    ]
