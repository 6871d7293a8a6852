"""Continuous WAL archiving of a host's Postgres: the shipper, its slot, the marks, shipping.

- The shipper: `pg_receivewal` of the tool image in a long-lived container
  (`sentry-ops-walship-<project>`, `--restart unless-stopped`) in the postgres container's
  network namespace, so it reaches Postgres on its own loopback as the dump does (self-hosted's
  `trust`; the guide's password as a 0600 pgpass file copied into the container, never argv or
  its environment). It writes segments into the volume `sentry-ops-wal-<project>`, through the
  physical replication slot `sentry_ops`: while the shipper is down, Postgres keeps every segment
  it has not received (no gap), and the slot's retained bytes are watched (`status`) so an
  abandoned slot fails health long before it fills the disk; `disarm` drops it in one step.
- Shipping (the `ship-wal` flow, every few minutes): a *mark* row is written into sentry-ops'
  own table `sentry_ops.wal_marks` (never one of Sentry's), then `pg_switch_wal()` closes the
  segment that holds it; every finished segment in the volume not yet in the store goes there
  (compressed on the host, encrypted on the worker: `blocks/wal_archive.py`), and is deleted
  from the volume but the newest (pg_receivewal resumes after the newest segment it finds; on
  Postgres < 15 an empty folder would make it start at the server's current position, past
  what the slot kept: postgres/postgres doc/src/sgml/ref/pg_receivewal.sgml, "starting position";
  self-hosted runs postgres:14, the sandbox Debian's 15). The newest mark shipped is the newest
  time a restore surely reaches.
Postgres here is real Postgres in both the sandbox and production: nothing of this depends on
the Sentry stand-in. Self-hosted's postgres service (getsentry/self-hosted docker-compose.yml,
26.8.0: postgres:14.24-bookworm, `POSTGRES_HOST_AUTH_METHOD: trust`, no WAL settings) keeps
the defaults this needs: wal_level replica, max_wal_senders and max_replication_slots 10.
"""

from __future__ import annotations

import datetime as dt
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass

from blocks import jobs, postgres, wal_archive
from blocks.backup_store import BackupStore
from blocks.host_data import NO_SECRET
from blocks.postgres import PGPASS_FILE, Cluster, Psql, Target, cluster, password_file
from blocks.result import Result, Status
from blocks.sentry_host import SentryHost

SLOT = "sentry_ops"
JOB = "walship"
MARKS = "sentry_ops.wal_marks"
SYSTEM_FILE = ".sentry-ops-system-identifier"  # which cluster the volume's segments are of
MARKS_KEPT = "90 days"
TS = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'


class WalError(Exception):
    pass


def volume(host: SentryHost) -> str:
    return f"sentry-ops-wal-{host.project}"


def shipper(host: SentryHost) -> str:
    return jobs.container_name(host, JOB)


def utc(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


@dataclass(frozen=True)
class SlotState:
    active: bool
    retained_bytes: int  # WAL Postgres keeps for the slot (pg_wal grows by this much)


def slot_state(db: Psql) -> SlotState | None:
    rows = db.rows(
        "SELECT active, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint "
        f"FROM pg_replication_slots WHERE slot_name = '{SLOT}'"
    )
    return SlotState(rows[0][0] == "t", int(rows[0][1])) if rows else None


def _in_volume(host: SentryHost, script: str, *args: str) -> str:
    argv = host.volume_run_argv(volume(host), host.tool_image, "sh", "-c", script, "wal", *args)
    return host.run(argv, timeout=600).text


def local_files(host: SentryHost) -> list[str]:
    """Finished WAL files in the shipper's volume (not the `.partial` one being written)."""
    out = _in_volume(host, "ls -1 /volume")
    return sorted(n for n in out.split() if wal_archive.is_wal_file(n))


def _netns(host: SentryHost, name: str) -> str:
    result = host.run(["docker", "inspect", "-f", "{{.HostConfig.NetworkMode}}", name],
                      check=False, timeout=30)  # fmt: skip
    return result.text.strip() if result.exit_code == 0 else ""


def arm(host: SentryHost) -> Result:
    """The marks table, the slot and the shipper, each made where missing (idempotent); a
    shipper attached to a postgres container that is gone (recreated by an upgrade, a restore)
    is started again beside the current one. A volume holding another cluster's segments (the
    host was restored from a dump: a new cluster) is emptied first."""
    where = postgres.target(host)
    made = []
    with postgres.psql(host, where) as db:
        db.rows("CREATE SCHEMA IF NOT EXISTS sentry_ops")
        db.rows(
            f"CREATE TABLE IF NOT EXISTS {MARKS} (at timestamptz PRIMARY KEY "
            "DEFAULT clock_timestamp())"
        )
        if slot_state(db) is None:
            db.rows(f"SELECT pg_create_physical_replication_slot('{SLOT}', true)")
            made.append(f"slot {SLOT}")
        system_id = cluster(db).system_identifier
    name = shipper(host)
    found = jobs.state(host, name)
    if found and found[0] == "running" and _netns(host, name) == f"container:{where.container}":
        if not made:
            return Result("wal archiving", Status.ALREADY, f"{name} runs, slot {SLOT} exists")
    else:
        host.run(["docker", "rm", "-f", name], check=False, timeout=60)
        host.run(["docker", "volume", "create", "--label", "sentry-ops.wal=1", volume(host)],
                 timeout=60)  # fmt: skip
        kept = _in_volume(host, 'cat "/volume/$0" 2>/dev/null || true', SYSTEM_FILE).strip()
        if kept != system_id:  # another cluster's WAL (or none): not this one's to resume
            _in_volume(
                host,
                'find /volume -mindepth 1 -delete && printf %s "$1" > "/volume/$0"',
                SYSTEM_FILE, system_id,
            )  # fmt: skip
        host.run(_start_argv(host, where, name), stdin=password_file(where), timeout=600)
        made.append(f"shipper {name}")
    return Result("wal archiving", Status.DONE, f"started: {', '.join(made)}")


def _start_argv(host: SentryHost, where: Target, name: str) -> list[str]:
    passfile = ["env", f"PGPASSFILE=/{PGPASS_FILE}"] * (where.password is not None)
    command = [*passfile, "pg_receivewal", "-D", "/wal", "-S", SLOT, "-h", "127.0.0.1",
               "-p", str(where.port), "-U", where.user, "--no-password", "-v"]  # fmt: skip
    return host.tool_job_argv(
        name, {"sentry-ops.job": JOB}, where.container, *command,
        secret_file=PGPASS_FILE if where.password is not None else "",
        options=["-v", f"{volume(host)}:/wal", "--restart", "unless-stopped"],
    )  # fmt: skip


def disarm(host: SentryHost) -> Result:
    """The shipper stopped and removed, the slot dropped (Postgres frees the WAL it kept), the
    local volume removed; what was shipped stays in the store."""
    host.run(["docker", "rm", "-f", shipper(host)], check=False, timeout=60)
    dropped = "no slot"
    with postgres.psql(host) as db:
        if slot_state(db) is not None:
            db.rows(f"SELECT pg_drop_replication_slot('{SLOT}')")
            dropped = f"slot {SLOT} dropped"
    host.run(["docker", "volume", "rm", "-f", volume(host)], check=False, timeout=60)
    return Result("wal archiving", Status.DONE, f"shipper removed, {dropped}, volume removed")


def forget_local(host: SentryHost) -> None:
    """The shipper and its volume removed (the cluster they followed is being replaced)."""
    host.run(["docker", "rm", "-f", shipper(host)], check=False, timeout=60)
    host.run(["docker", "volume", "rm", "-f", volume(host)], check=False, timeout=60)


# Each named WAL file of the volume (at /wal), zstd-compressed, as "<name> <size>\n" then that
# many bytes: one file at a time in the container's /tmp, so a backlog of segments streams.
PACK = r"""set -e
cd /wal
for f; do
    zstd -1 -q -c -- "$f" >/tmp/one
    printf '%s %s\n' "$f" "$(stat -c %s /tmp/one)"
    cat /tmp/one
done
"""


def unpack(stream) -> Iterator[tuple[str, bytes]]:
    """(name, compressed bytes) of each file PACK wrote."""
    while True:
        header = b""
        while not header.endswith(b"\n"):
            byte = stream.read(1)
            if not byte:
                if header:
                    raise WalError(f"WAL stream cut in a header: {header[:60]!r}")
                return
            header += byte
        name, size = header.decode().split()
        if not wal_archive.is_wal_file(name):
            raise WalError(f"not a WAL file in the stream: {name!r}")
        data, want = bytearray(), int(size)
        while len(data) < want:
            chunk = stream.read(want - len(data))
            if not chunk:
                raise WalError(f"WAL stream cut in {name}: {len(data)} of {want} bytes")
            data += chunk
        yield name, bytes(data)


@dataclass(frozen=True)
class Shipped:
    cluster: Cluster
    mark: dt.datetime
    switched: str  # the segment the mark is in, closed by the switch
    shipped: list[str]
    stored_bytes: int
    head: wal_archive.Head


def ship(host: SentryHost, store: BackupStore, host_id: str, wait: float = 120) -> Shipped:
    """Mark, switch, ship every finished segment not in the store, trim the volume, write the
    head (see the module's docstring)."""
    name = shipper(host)
    found = jobs.state(host, name)
    if not found or found[0] != "running":
        raise WalError(
            f"{host.label}: the WAL shipper {name} is {found[0] if found else 'missing'}: run "
            "ship-wal (it starts it) or look at `docker logs " + name + "`"
        )
    with postgres.psql(host) as db:
        mark = utc(db.value(
            f"INSERT INTO {MARKS} DEFAULT VALUES RETURNING to_char(at AT TIME ZONE 'UTC', '{TS}')"
        ))  # fmt: skip
        switched = db.value("SELECT pg_walfile_name(pg_switch_wal())") or ""
        db.rows(f"DELETE FROM {MARKS} WHERE at < now() - interval '{MARKS_KEPT}'")
        now = cluster(db)
        slot = slot_state(db)
    assert mark is not None
    deadline = time.monotonic() + wait
    while switched not in (files := local_files(host)):
        if time.monotonic() > deadline:
            raise WalError(
                f"{host.label}: segment {switched} did not arrive in {volume(host)} within "
                f"{wait:.0f} s: see `docker logs {name}`"
            )
        time.sleep(0.5)
    archived = wal_archive.names(store, host_id, now.system_identifier)
    shipped, stored = [], 0
    todo = [f for f in files if f not in archived]
    if todo:  # one throwaway container for them all (measured: one per file cost 3x the CPU)
        command = ["sh", "-c", PACK, "pack", *todo]
        argv = host.container_io_argv("out", host.tool_image, None, command, job=JOB,
                                      options=["-v", f"{volume(host)}:/wal:ro"])  # fmt: skip
        with host.stream(argv, timeout=300, stdin=NO_SECRET) as stream:
            for file, data in unpack(stream):
                key, size = wal_archive.put(
                    store, host_id, now.system_identifier, file, io.BytesIO(data)
                )
                archived[file] = key
                shipped.append(file)
                stored += size
        if shipped != todo:
            raise WalError(f"{host.label}: shipped {len(shipped)} of {len(todo)} WAL files")
    segments = [f for f in files if wal_archive.SEGMENT.match(f)]
    old = [f for f in files if f not in segments[-1:] and f in archived]
    if old:
        _in_volume(host, 'cd /volume && rm -f -- "$@"', *old)
    newest = max((n for n in archived if wal_archive.SEGMENT.match(n)), key=wal_archive.position)
    head = wal_archive.Head(
        host_id=host_id,
        system_identifier=now.system_identifier,
        timeline=int(now.timeline, 16),
        newest_segment=newest,
        newest_mark=mark,
        shipped_at=dt.datetime.now(dt.UTC),
        segments=sum(1 for n in archived if wal_archive.SEGMENT.match(n)),
        slot_retained_bytes=slot.retained_bytes if slot else None,
    )
    wal_archive.write_head(store, head)
    return Shipped(now, mark, switched, shipped, stored, head)


@dataclass(frozen=True)
class WalStatus:
    shipper: str  # running, exited, ..., missing
    slot: SlotState | None
    cluster: Cluster


def status(host: SentryHost) -> WalStatus:
    found = jobs.state(host, shipper(host))
    with postgres.psql(host) as db:
        return WalStatus(found[0] if found else "missing", slot_state(db), cluster(db))
