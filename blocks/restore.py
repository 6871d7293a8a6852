"""Restoring a backup set's objects into a stack: what the drill does to its scratch stack, an
upgrade's rollback to production and the restore flow to a host it recovers. The objects come
in as readables (decrypted and hashed by blocks/backup_set.py as they are read); the caller
verifies them at the end."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import tarfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import BinaryIO

from blocks import clickhouse, postgres, sentry_config, wal_archive
from blocks.backup_set import BackupManifest, ClickHouseSnapshot, PostgresBase
from blocks.backup_store import BackupStore
from blocks.dotenv import parse_env
from blocks.host_project import COMPOSE_FILES
from blocks.layouts import DataVolume, Role, get_layout
from blocks.result import Result, Status
from blocks.sentry_host import SentryHost

# opens the set's "clickhouse" object (frozen parts) for reading
OpenParts = Callable[[], contextlib.AbstractContextManager[BinaryIO]]


RESTORED_LABEL = "sentry-ops.restored"  # on an external volume a restore had to create


def held_data(host: SentryHost) -> dict[str, int]:
    """Docker volume name -> bytes, of the stack's data volumes that exist and hold a file: what
    a restore onto this host would overwrite."""
    names = {
        str(volume): host.volume_name(volume)
        for volume in host.stack.volumes
        if host.volume_named_exists(host.volume_name(volume))
    }
    usage = host.volume_usage(names)
    return {names[label]: size for label, (size, oldest) in usage.items() if oldest is not None}


def has_compose_file(host: SentryHost) -> bool:
    d = host.project_dir
    return host.exists(d) and any(n in COMPOSE_FILES for n in host.listdir(d))


def clear_stack(host: SentryHost, only: Collection[DataVolume] | None = None) -> list[str]:
    """The stack's containers removed (`compose down`, volumes kept) and every data volume (or
    those `only` names) emptied (kept: its name, labels and driver options); the names emptied.
    Only after the data was backed up and the operator approved: nothing of it is left."""
    if has_compose_file(host):
        host.compose_down(remove_volumes=False)
    held = held_data(host)
    emptied = []
    for volume in host.stack.volumes:
        if host.volume_name(volume) in held and (only is None or volume in only):
            host.empty_volume(volume)
            emptied.append(host.volume_name(volume))
    return sorted(emptied)


def lay_config(host: SentryHost, config: bytes | None) -> str:
    """The set's config files (compose file, `.env`, what services bind-mount) into the host's
    project dir; without them (a set taken with config off) the project dir must have its own."""
    if config is None:
        if not has_compose_file(host):
            raise RuntimeError(
                f"{host.label}: the set has no config and {host.project_dir} has no compose "
                "file: install the stack's files there first (nothing was restored)"
            )
        return "the project dir's own (the set has no config)"
    host.makedirs(host.project_dir)
    host.extract_tar(host.project_dir, config)
    return "the set's (decrypted) config"


def set_env(config: bytes, layout: str) -> dict[str, str]:
    """The `.env` of a set's config object (a tar of the project dir's config files)."""
    with tarfile.open(fileobj=io.BytesIO(config)) as tar:
        member = next((m for m in tar.getmembers() if m.name.removeprefix("./") == ".env"), None)
        if member is None:
            raise RuntimeError(f"the set's config ({layout} layout) has no .env")
        return parse_env(tar.extractfile(member).read().decode())  # type: ignore[union-attr]


def read_kept(host: SentryHost, path: str) -> tuple[str, int]:
    """A config file's text and mode (the containers' Sentry user must still read it after an
    edit); a missing one: empty, 0644 as install.sh leaves it."""
    if not host.exists(path):
        return "", 0o644
    return host.get(path).decode(), host.file_mode(path)


def carry_secret_key(host: SentryHost, config: bytes | None, layout: str) -> str:
    """The secret key of the set's stack (a layout that keeps it in `.env`) written into the
    host's `sentry/config.yml` (self-hosted's; its install.sh keeps a key that is not its
    placeholder): sessions, signed links and everything else Sentry signed stay valid."""
    env_key = get_layout(layout).secret_key_env
    if config is None or env_key is None:
        return "not carried: the set has no config; the target keeps its own secret key"
    key = set_env(config, layout).get(env_key)
    if not key:
        return f"not carried: the set's .env has no {env_key}; the target keeps its own"
    path = f"{host.project_dir}/sentry/config.yml"
    current, mode = read_kept(host, path)
    host.put(path, sentry_config.with_secret_key(current, key).encode(), mode=mode)
    return f"the set's {env_key} written to sentry/config.yml (system.secret-key)"


def nodestore_read_through(host: SentryHost) -> str:
    """Payloads restored into Postgres's nodestore_node made readable (and cleaned up) by a
    stack whose nodestore is self-hosted's S3 passthrough: read_through/delete_through on in
    sentry/sentry.conf.py, as self-hosted's install does for an install with such payloads."""
    path = f"{host.project_dir}/sentry/sentry.conf.py"
    conf, mode = read_kept(host, path)
    through = sentry_config.nodestore_reads_through(conf)
    if through is None:
        return "the target's nodestore is not the S3 passthrough: payloads read where restored"
    if through:
        return "sentry.conf.py already reads nodestore_node through"
    host.put(path, sentry_config.with_nodestore_read_through(conf).encode(), mode=mode)
    return "read_through and delete_through turned on in sentry/sentry.conf.py"


def create_external_volumes(host: SentryHost, backup_id: str) -> list[str]:
    """External volumes (self-hosted's) the stack needs and the host lacks, created as
    install.sh does, labelled with the set restored into them."""
    made = []
    for ref in host.stack.volumes.values():
        if ref.external and not host.volume_named_exists(ref.name):
            host.create_volume(ref.name, {RESTORED_LABEL: backup_id})
            made.append(ref.name)
    return made


def start_postgres(host: SentryHost) -> None:
    """The stack's containers created and its Postgres started (healthy), nothing else."""
    host.compose_create()
    host.compose_up(host.stack.service(Role.POSTGRES), wait=True)


def restore_postgres(host: SentryHost, dump: BinaryIO) -> float:
    """pg_restore of a dump next to the host's Postgres (an empty database); its seconds."""
    return postgres.restore(host, host.tool_image, dump)


def restore_clickhouse(
    host: SentryHost, snapshot: ClickHouseSnapshot, backup_id: str, parts: OpenParts | None
) -> list[Result]:
    """Tables from the recorded DDL, the frozen parts (when the set has them) unpacked into a
    staging folder of the ClickHouse volume and attached, rows and checksums compared with the
    snapshot's, and the newest event read back."""
    host.compose_up(host.stack.service(Role.CLICKHOUSE), wait=True)
    staging = clickhouse.freeze_name(f"restore_{backup_id}")
    staged = clickhouse.shadow_path(staging)
    copied = [t for t in snapshot.tables if t.copied]
    with clickhouse.connect(host) as (client, version):
        try:
            if parts is not None:
                with parts() as reader:
                    host.restore_volume(DataVolume.CLICKHOUSE, reader, staged)
            clickhouse.create_tables(client, snapshot)
            # no merge between ATTACH and the counts: a Replacing table's would change them
            with clickhouse.merges_stopped(host, client, copied):
                clickhouse.attach_parts(host, client, snapshot, staged)
                compared = clickhouse.compare(client, snapshot)
        finally:
            clickhouse.unfreeze(host, staging)
        newest = clickhouse.newest_event(client, snapshot.database)
    unknown = {t.name for t in snapshot.tables if t.why.startswith("UNKNOWN")}
    results = [
        Result(f"clickhouse {name}", Status.WARNING if name in unknown else
               Status.OK if ok else Status.FAILED, detail)
        for name, ok, detail in compared
    ]  # fmt: skip
    same = newest == snapshot.newest_event
    results.append(Result(
        "clickhouse newest event", Status.OK if same else Status.FAILED,
        f"{newest} in the scratch ClickHouse {version} (backup: {snapshot.newest_event})",
    ))  # fmt: skip
    return results


def drop_clickhouse_tables(host: SentryHost, snapshot: ClickHouseSnapshot) -> None:
    """The snapshot's tables dropped from the host's ClickHouse (before restoring them)."""
    with clickhouse.connect(host) as (client, _):
        clickhouse.drop_tables(client, snapshot)


# the layout changes a restore makes: a guide host onto getsentry/self-hosted, the only layout
# upstream supports past the hard stops (its release tags are the versions it can end on)
LAYOUT_CHANGES = {("guide", "self-hosted")}


def onto_problem(set_layout: str, target_layout: str, target_version: str | None) -> str | None:
    """Why a restore cannot take a set of one layout onto a host of another (pure)."""
    if set_layout == target_layout:
        if target_version:
            return (
                "target_version is for a restore onto another layout: a restore onto the same "
                f"layout ({set_layout}) runs the set's own release; upgrade after it with the "
                "upgrade flow; nothing was changed"
            )
        return None
    if (set_layout, target_layout) not in LAYOUT_CHANGES:
        known = ", ".join(f"{a} -> {b}" for a, b in sorted(LAYOUT_CHANGES))
        return (
            f"a {set_layout} set cannot be restored onto a {target_layout} host (layout changes "
            f"this restore makes: {known}); nothing was changed"
        )
    if not target_version:
        return (
            f"a {set_layout} set onto a {target_layout} host needs target_version: the release "
            "of the host's self-hosted checkout to end on (a tag, e.g. 26.8.0); the set's "
            "database is migrated to it across the hard stops; nothing was changed"
        )
    return None


def not_carried(manifest: BackupManifest) -> str:
    """What a guide set leaves behind on self-hosted, and why (pure)."""
    ch = manifest.clickhouse
    tables = (
        f"ClickHouse database {ch.database!r} ({len(ch.tables)} tables, "
        f"{sum(t.rows or 0 for t in ch.tables)} rows)"
        if ch
        else "no ClickHouse snapshot in the set"
    )
    return (
        f"{tables}: sentry-ops restores ClickHouse only into the database it came from (the "
        "guide's own tables, or its added Snuba's at that Snuba's version), and the target's "
        "Snuba keeps its tables in its own database, starting empty: events from before the "
        "move are not searchable and the event lookup finds none of them (their issues, "
        "projects, users, releases and payloads are carried). Also left: the guide's compose "
        "file and .env (the target runs self-hosted's own; its secret key is carried)"
    )


# -- point in time: a base backup, the host's WAL archive replayed onto it (blocks/wal.py) -----
@dataclass(frozen=True)
class PointInTime:
    """How a set's Postgres comes back to a point after it: its base backup, then the WAL
    archive of the set's host and cluster replayed to `target_time` (None: its end)."""

    target_time: dt.datetime | None
    host_id: str
    base: PostgresBase
    head: wal_archive.Head


def plan_point_in_time(
    store: BackupStore,
    manifest: BackupManifest,
    target_time: dt.datetime | None,
    method: str,
) -> PointInTime | None:
    """None: Postgres from the set's dump (`method` "dump", or "auto" and the set has no base
    backup, its host no WAL archive, or one holding nothing newer than the set); else the
    replay, checked before anything changes: the target after the base backup and no later
    than the newest time the archive surely holds."""
    base = manifest.postgres_base
    if method == "dump":
        if target_time is not None:
            raise RestoreRefused("target_time needs method point-in-time (or auto), not dump")
        return None
    head = wal_archive.read_head(store, manifest.host_id, base.system_identifier) if base else None
    if base is None or head is None:
        if method == "auto" and target_time is None:
            return None
        why = (
            "has no base backup (run the backup with base_backup=true, or arm ship-wal: nightly "
            "sets then take one)"
            if base is None
            else f"has a base backup but its host has no WAL archive for cluster "
            f"{base.system_identifier} (ship-wal never ran for it)"
        )
        raise RestoreRefused(f"set {manifest.backup_id} {why}; nothing was changed")
    if (
        method == "auto"
        and target_time is None
        and not (head.newest_mark and head.newest_mark > base.finished_at)
    ):
        return None  # the archive holds nothing newer than the set: its dump is as recent
    if target_time is not None:
        if target_time.tzinfo is None:
            raise RestoreRefused(f"target_time {target_time} has no time zone: give UTC (…Z)")
        if target_time < base.finished_at:
            raise RestoreRefused(
                f"target_time {target_time:%Y-%m-%d %H:%M:%S%z} is before set "
                f"{manifest.backup_id}'s base backup ended ({base.finished_at:%Y-%m-%d %H:%M:%S}"
                "Z): pick an older set (leave backup_id empty: the newest that fits is taken)"
            )
        if head.newest_mark is None or target_time > head.newest_mark:
            raise RestoreRefused(
                f"target_time {target_time:%Y-%m-%d %H:%M:%S%z} is later than the archive "
                f"surely holds ({head.newest_mark}, shipped {head.shipped_at}): leave it empty "
                "for the newest point; nothing was changed"
            )
    return PointInTime(target_time, manifest.host_id, base, head)


class RestoreRefused(Exception):
    """A restore refused before anything changed."""


def postgres_image(host: SentryHost) -> str:
    return host.service_images().get(host.stack.service(Role.POSTGRES), "")


def restore_point_in_time(
    host: SentryHost, base: BinaryIO, staged: BinaryIO, pitr: PointInTime, timeout: float
) -> dt.datetime | None:
    """The base backup unpacked into the (empty) Postgres volume, the archive's segments staged
    beside it, recovery set up and Postgres started to replay; returns the commit time of the
    last transaction replayed, once it is promoted."""
    host.compose_create()
    host.restore_volume(DataVolume.POSTGRES, base)
    host.restore_volume(DataVolume.POSTGRES, staged, wal_archive.STAGING)
    postgres.prepare_recovery(host, postgres_image(host), pitr.target_time)
    service = host.stack.service(Role.POSTGRES)
    host.compose_up(service, no_deps=True)

    def gone() -> str | None:
        for row in host.service_containers(service):
            if row.get("State") in ("exited", "dead", "restarting"):
                tail = host.container_log_tail(row["ID"], 8)
                return f"{service} {row.get('State')}: " + " | ".join(tail)[-600:]
        return None

    return postgres.finish_recovery(host, timeout, gone)


def assess_point_in_time(
    manifest: BackupManifest,
    pitr: PointInTime,
    reached: dt.datetime | None,
    restored_marks: list[dt.datetime],
    app: dict[str, int],
    expected_marks: list[dt.datetime] | None = None,
) -> list[Result]:
    """The replayed database against what the archive promised (pure): the marks sentry-ops
    wrote before each WAL switch are the rows written after the base backup that must be
    there up to the point, and none after it; `expected_marks`: production's, up to the target
    (a drill can read them)."""
    base, target = pitr.base, pitr.target_time
    point = reached or base.finished_at
    results = [
        Result(
            "point reached",
            Status.OK,
            f"{point:%Y-%m-%d %H:%M:%S.%f}Z (last transaction replayed"
            + (f"; target {target:%Y-%m-%d %H:%M:%S}Z" if target else "; target: the newest WAL")
            + f"; base backup {base.finished_at:%H:%M:%S}Z)",
        ),
        Result.check("superuser", app["superusers"] > 0, f"{app['superusers']} superuser(s)"),
    ]
    after_base = [m for m in restored_marks if m > base.finished_at]
    late = [m for m in restored_marks if target and m > target]
    if target:
        results.append(
            Result.check(
                "nothing after the target",
                not late,
                f"{len(late)} WAL mark(s) after {target:%H:%M:%S}Z"
                if late
                else f"no WAL mark after {target:%H:%M:%S}Z",
            )
        )
    want = pitr.head.newest_mark if target is None else None
    if expected_marks is not None:
        missing = sorted(set(expected_marks) - set(restored_marks))
        results.append(
            Result.check(
                "rows written after the base backup",
                not missing and bool(after_base),
                f"{len(after_base)} WAL mark(s) written after the base backup restored, equal "
                "to production's up to the target"
                if not missing and after_base
                else f"missing {len(missing)} of production's marks (first {missing[:1]}), "
                f"{len(after_base)} after the base",
            )
        )
    elif want is not None:
        newest = max(restored_marks, default=None)
        ok = newest is not None and newest >= want
        results.append(
            Result.check(
                "rows written after the base backup",
                ok,
                f"newest WAL mark {newest:%H:%M:%S.%f}Z restored (the archive's newest: "
                f"{want:%H:%M:%S.%f}Z), {len(after_base)} after the base backup"
                if ok and newest
                else f"the archive's newest mark {want} is not in the restored database "
                f"(newest there: {newest})",
            )
        )
    total = sum(manifest.row_counts.values())
    results.append(
        Result(
            "row counts",
            Status.OK,
            f"not compared: the database is at {point:%H:%M:%S}Z, the set's counts "
            f"({total} rows) at {manifest.finished_at:%H:%M:%S}Z",
        )
    )
    return results
