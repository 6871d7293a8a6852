"""Restoring a backup set's objects into a stack: what the drill does to its scratch stack, an
upgrade's rollback to production and the restore flow to a host it recovers. The objects come
in as readables (decrypted and hashed by blocks/backup_set.py as they are read); the caller
verifies them at the end."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import BinaryIO

from blocks import clickhouse, postgres
from blocks.backup_set import ClickHouseSnapshot
from blocks.host_project import COMPOSE_FILES
from blocks.layouts import DataVolume, Role
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


def clear_stack(host: SentryHost) -> list[str]:
    """The stack's containers removed (`compose down`, volumes kept) and every data volume
    emptied (kept: its name, labels and driver options); the names emptied. Only after the data
    was backed up and the operator approved: nothing of it is left."""
    if has_compose_file(host):
        host.compose_down(remove_volumes=False)
    held = held_data(host)
    for volume in host.stack.volumes:
        if host.volume_name(volume) in held:
            host.empty_volume(volume)
    return sorted(held)


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
