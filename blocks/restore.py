"""Restoring a backup set's objects into a stack: what the drill does to its scratch stack and an
upgrade's rollback to production. The objects come in as readables (decrypted and hashed by
blocks/backup_set.py as they are read); the caller verifies them at the end."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import BinaryIO

from blocks import clickhouse, postgres
from blocks.backup_set import ClickHouseSnapshot
from blocks.layouts import DataVolume, Role
from blocks.result import Result, Status
from blocks.sentry_host import SentryHost

# opens the set's "clickhouse" object (frozen parts) for reading
OpenParts = Callable[[], contextlib.AbstractContextManager[BinaryIO]]


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
