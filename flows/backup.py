"""Nightly backup of a Sentry host to S3: streamed, verified, committed by a manifest.

Runbook, in order:
1. preflight, before anything is written: the store answers (bucket, credentials), the host
   answers, the block's names and data volumes exist, the tool image has pg_dump, tar, zstd;
2. take the host lock (one per SSH target and compose project, shared by every flow that changes
   the host); a new set under the host's folder of the store (`blocks.backup_set`);
3. Postgres, next to the database: export a snapshot; `pg_dump -Fc --compress=zstd:1 --snapshot`
   in a throwaway tool container in the postgres container's network namespace -> FIFO -> SSH ->
   AES-256-GCM on the worker -> S3 multipart, while exact per-table row counts are taken in that
   same snapshot;
   with the host's WAL archive armed (flows/wal_archiving.py), also a physical base backup:
   `pg_basebackup -Ft -X fetch` | zstd next to the database -> SSH -> encrypted -> S3
   (`postgres-base`), what a point-in-time restore replays the archive onto;
4. each data volume of the layout (guide: files; self-hosted: files + seaweedfs nodestore):
   tar | zstd in a throwaway container on the host -> FIFO -> SSH -> encrypted -> S3 multipart;
   a volume whose writer is paused for its copy is given back once Docker calls that service
   healthy again (`given_back`, beside the rest);
5. ClickHouse (where the stack has it): merges stopped, FREEZE WITH NAME '<backup id>' per
   MergeTree table, rows and checksums of the frozen parts recorded, the frozen folder tar | zstd
   on the host -> SSH -> encrypted -> S3, the frozen copy removed (on failure too);
   `clickhouse_snapshot` runs this step alone as a set of its own;
6. the stack's config, encrypted like the rest (left out when the store has no key);
7. manifest.json, sealed (HMAC-SHA256), last: the commit marker;
8. retention; artifacts; the event `sentry.backup.completed`.
Nothing is staged on disk, host or worker; memory is bounded by a few multipart parts.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version as package_version

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE

from blocks import backup_set, clickhouse, postgres, wal
from blocks.backup_set import BackupManifest, ClickHouseSnapshot, Kind, PostgresBase, SetWriter
from blocks.backup_store import BackupStore, StoreError
from blocks.layouts import DataVolume, Role
from blocks.sentry_host import SentryHost
from flows.shared import (
    HOUR,
    MINUTE,
    Progress,
    apply_retention,
    emit,
    host_lock,
    load_block,
    refuse_unfinished,
    results_artifact,
    verify_objects,
)

PAUSE_DEADLINE = 3600  # s: a paused service is unpaused by the host itself after this


class BackupError(Exception):
    pass


def warn_unencrypted(store: BackupStore) -> None:
    if store.backup_key is None:
        get_run_logger().warning(
            "%s has no backup_key (allow_unencrypted): objects are stored in clear, manifests "
            "are unsealed (anyone who can write the bucket chooses what a drill restores) and "
            "the stack's config is left out",
            store.where,
        )


# -- tasks --------------------------------------------------------------------------------------
@task(cache_policy=NO_CACHE)
def preflight(host: SentryHost, store: BackupStore) -> dict[str, str]:
    """Everything that can be checked before a byte is written; returns compose images. The
    checks run side by side (each waits on S3 or on the host, none on another); the first
    failure in this order is the one raised."""
    volumes = (DataVolume.POSTGRES, *host.stack.backup_volumes)

    def names() -> None:
        problems = host.name_problems(volumes)
        if problems:
            raise BackupError(f"{host.label}: nothing was backed up: {'; '.join(problems)}")
        present = host.existing_volumes(volumes)
        for volume in (v for v in volumes if v not in present):
            raise BackupError(
                f"{host.label}: data volume {host.volume_name(volume)} ({volume}) does not "
                "exist; check the block's layout, project_name and volume_names"
            )

    def images() -> dict[str, str]:
        found = host.service_images()
        if has_clickhouse(host, found):
            clickhouse.ping(host)
        return found

    checks = (store.check_access, names, lambda: postgres.check_tool_image(host, host.tool_image))
    with ThreadPoolExecutor(4, thread_name_prefix="preflight") as pool:
        futures = [pool.submit(check) for check in (*checks, images)]
    for future in futures:
        future.result()
    return futures[-1].result()


def has_clickhouse(host: SentryHost, images: dict[str, str]) -> bool:
    return host.stack.services.get(Role.CLICKHOUSE) in images


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60])
def backup_clickhouse(
    host: SentryHost, writer: SetWriter, expected: dict[str, int]
) -> tuple[backup_set.StoredObject | None, ClickHouseSnapshot]:
    """FREEZE every MergeTree table, stream the frozen parts, always remove the frozen copy."""
    logger = get_run_logger()
    name = clickhouse.freeze_name(writer.backup_id)
    with clickhouse.connect(host) as (client, version):
        try:
            snapshot = clickhouse.freeze(host, client, version, name)
            obj = None
            if any(t.parts for t in snapshot.tables):
                how = "ALTER TABLE ... FREEZE per MergeTree table (hard links of immutable parts), "
                how += "merges stopped until the frozen rows were counted and checksummed"
                progress = Progress(f"clickhouse of {host.label}", expected.get("clickhouse"))
                parts = clickhouse.shadow_path(name)
                with host.stream_volume(DataVolume.CLICKHOUSE, parts) as tar:
                    obj = writer.put(
                        Kind.CLICKHOUSE, tar, "zstd", consistency=how, on_progress=progress.update
                    )
                progress.finish(obj.size)
        finally:
            clickhouse.unfreeze(host, name, client)
    for table in snapshot.tables:
        if not table.copied:
            (logger.warning if table.why.startswith("UNKNOWN") else logger.info)(
                "clickhouse %s.%s (%s): %s", table.database, table.name, table.engine, table.why
            )
    logger.info(
        "clickhouse %s: %d tables copied, %d rows, %.1f MB",
        version,
        sum(t.copied for t in snapshot.tables),
        sum(t.rows or 0 for t in snapshot.tables),
        (obj.size if obj else 0) / 1e6,
    )
    return obj, snapshot


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60], timeout_seconds=6 * 3600)
def backup_postgres(host: SentryHost, writer: SetWriter, expected: dict[str, int]) -> dict:
    """pg_dump next to the database, compressed there; row counts in the same snapshot."""
    logger = get_run_logger()
    with postgres.dump(host, host.tool_image) as dump:
        # the previous dump's size, else a third of the database's (zstd on Sentry's tables)
        progress = Progress(
            f"pg_dump of {host.label}", expected.get("postgres") or dump.size_estimate // 3
        )
        obj = writer.put(
            Kind.POSTGRES,
            dump.stream,
            dump.compression,
            raw_size=dump.size_estimate,
            on_progress=progress.update,
            consistency="pg_dump of a snapshot exported by a REPEATABLE READ transaction; the "
            "manifest's row counts come from the same snapshot",
        )
        counts = dump.row_counts.result()
    progress.finish(obj.size)
    logger.info(
        "postgres: %.1f MB database -> %.1f MB in %.1fs (%.0f MB/s of database)",
        dump.size_estimate / 1e6,
        obj.size / 1e6,
        obj.seconds,
        obj.mb_per_s,
    )
    return {
        "object": obj,
        "row_counts": counts,
        "postgres_version": dump.server_version,
        "newest": dump.newest_event,
    }


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60], timeout_seconds=6 * 3600)
def backup_base(host: SentryHost, writer: SetWriter, expected: dict[str, int]) -> dict:
    """pg_basebackup next to the database, compressed there: the physical copy a point-in-time
    restore replays the host's WAL archive onto (blocks/wal.py)."""
    with postgres.base_backup(host, host.tool_image) as base:
        progress = Progress(f"base backup of {host.label}", expected.get("postgres-base"))
        obj = writer.put(
            Kind.POSTGRES_BASE, base.stream, "zstd", on_progress=progress.update,
            consistency="pg_basebackup -X fetch (a checkpoint, the files, the WAL to make them "
            "consistent); later points come from the WAL archive",
        )  # fmt: skip
    progress.finish(obj.size)
    info = PostgresBase(
        system_identifier=base.system_identifier,
        timeline=base.timeline,
        wal_start=base.wal_start,
        finished_at=dt.datetime.now(dt.UTC),
        server_version=base.server_version,
    )
    get_run_logger().info(
        "postgres base backup: %.1f MB in %.1fs, WAL from %s", obj.size / 1e6, obj.seconds,
        base.wal_start,
    )  # fmt: skip
    return {"object": obj, "base": info}


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30])
def wal_armed(host: SentryHost) -> bool:
    """The host's WAL archive is armed (its slot exists): nightly sets then take a base too."""
    with postgres.psql(host) as db:
        return wal.slot_state(db) is not None


# submitted beside the dump: a thread cannot be interrupted, so no task timeout; the stream's
# silence timeout (300 s) ends a stalled transfer instead
@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60])
def backup_volume(
    host: SentryHost, writer: SetWriter, volume: DataVolume, expected: dict[str, int]
):
    """tar + zstd of a data volume on the host (read-only mount); only compressed bytes move.
    Made consistent as the layout says: its writer paused for the copy, or SQLite's online
    backup of its database, else a live copy (files written once)."""
    logger = get_run_logger()
    role = host.stack.paused_for_copy.get(volume)
    if role:
        how = f"{host.stack.service(role)} paused (docker pause) during the copy: every file of "
        how += "the volume as of one instant, its key file included"
    elif db := host.stack.sqlite_copy.get(volume):
        how = f"SQLite online backup of {db} (.backup), while its writers go on"
    else:
        how = "live copy (files are written once, never changed)"
    paused = host.pause(role, PAUSE_DEADLINE) if role else []
    started = time.monotonic()
    try:
        progress = Progress(f"volume {volume} of {host.label}", expected.get(f"volume:{volume}"))
        with host.stream_volume(volume) as tar:
            obj = writer.put(
                Kind.VOLUME, tar, "zstd", part=str(volume), consistency=how,
                on_progress=progress.update,
            )  # fmt: skip
        progress.finish(obj.size)
        if not host.paused(paused):
            raise BackupError(
                f"{host.label}: {volume} was unpaused (its dead man's switch, {PAUSE_DEADLINE} s) "
                "before its copy ended: not consistent"
            )
    finally:
        host.unpause(paused)
    if paused:
        logger.info("volume %s: %s paused for %.1f s", volume, role, time.monotonic() - started)
    logger.info("volume %s: %.1f MB in %.1fs (%s)", volume, obj.size / 1e6, obj.seconds, how)
    return obj


@task(cache_policy=NO_CACHE)
def given_back(host: SentryHost, volume: DataVolume) -> None:
    """After a paused copy: wait until Docker itself calls the paused service healthy again. It
    marks a paused container unhealthy until its next probe after the unpause (up to a whole
    interval: self-hosted's is 30 s), and meanwhile every `depends_on: service_healthy` of a
    compose up or run on the host (an operator's, a cleanup's) fails on it: the host is left as
    it was found. Runs beside the rest of the backup, which does not wait for it."""
    role = host.stack.paused_for_copy[volume]
    back, statuses = host.health_back(host.running_ids(host.stack.service(role)))
    if not back:
        get_run_logger().warning(
            "volume %s: %s not healthy again after its pause (%s): check the service; the "
            "copy itself is complete", volume, role, statuses,
        )  # fmt: skip


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60])
def backup_config(host: SentryHost, writer: SetWriter):
    """The config holds the secret key and passwords: stored only encrypted."""
    if not writer.encrypted:
        get_run_logger().warning(
            "config (.env, config.yml) NOT backed up: the store block has no backup_key; "
            "keep the stack's secrets in your secret manager"
        )
        return None
    return writer.put_bytes(
        Kind.CONFIG, host.config_tar(), consistency="the files as read, in one tar"
    )


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30])
def sentry_version(host: SentryHost) -> str:
    return host.running_version()


def previous_sizes(store: BackupStore, host: SentryHost) -> dict[str, int]:
    """Object name -> stored bytes in the host's newest complete full set ({} for the first)."""
    try:
        manifest = backup_set.pick(store, host.set_folders, host.label, None)
    except Exception:  # only an estimate: the backup does not depend on it
        return {}
    return {o.name: o.size for o in manifest.objects}


def take_set(
    host_name: str,
    host: SentryHost,
    writer: SetWriter,
    images: dict,
    retries: int,
    with_base: bool = False,
):
    """Every object of the set (`with_base`: a physical base backup too), then its sealed
    manifest; returns (manifest, manifest key)."""
    expected = previous_sizes(writer.store, host)  # for the progress artifacts
    # the small objects and facts go while the dump streams (they wait on the network, the
    # dump on the CPU); any failure fails the backup before the manifest is written
    ch_future = (
        backup_clickhouse.with_options(retries=retries).submit(host, writer, expected)
        if has_clickhouse(host, images)
        else None
    )
    # the nodestore is copied after the ClickHouse snapshot: Sentry writes an event's payload
    # before its searchable row, so every event in the snapshot has its payload in the copy (the
    # drill reads the newest one through Sentry's API)
    volumes = {
        volume: backup_volume.with_options(retries=retries).submit(
            host, writer, volume, expected,
            wait_for=[ch_future] if ch_future and volume == DataVolume.NODESTORE else None,
        )
        for volume in host.stack.backup_volumes
    }  # fmt: skip
    handed_back = [
        given_back.submit(host, volume, wait_for=[future])
        for volume, future in volumes.items()
        if volume in host.stack.paused_for_copy
    ]
    config_future = backup_config.with_options(retries=retries).submit(host, writer)
    version = sentry_version.submit(host)
    pg = backup_postgres.with_options(retries=retries)(host, writer, expected)
    base = backup_base.with_options(retries=retries)(host, writer, expected) if with_base else None
    # ClickHouse's first: a volume copy waits on it, and would only say it never started
    ch_object, snapshot = ch_future.result() if ch_future else (None, None)
    objects = [pg["object"], *(v.result() for v in volumes.values())]
    if base:
        objects.append(base["object"])
    if ch_object:
        objects.append(ch_object)
    config = config_future.result()
    if config:
        objects.append(config)
    manifest = new_manifest(
        host_name,
        host,
        writer,
        objects=objects,
        postgres_version=pg["postgres_version"],
        sentry_version=version.result(),
        images=images,
        row_counts=pg["row_counts"],
        newest_event=pg["newest"],
        config_included=config is not None,
        clickhouse=snapshot,
        postgres_base=base["base"] if base else None,
    )
    sealed = writer.seal(manifest)  # the commit marker, last
    for future in handed_back:
        future.wait()  # its own warning, if any; the set is complete either way
    return manifest, sealed


def new_manifest(host_name: str, host: SentryHost, writer: SetWriter, **fields) -> BackupManifest:
    """The manifest of the set `writer` wrote: what every set records, plus `fields`."""
    return BackupManifest(
        backup_id=writer.backup_id,
        host_id=writer.host_id,
        host=host_name,
        layout=host.layout,
        project_name=host.project,
        engine_id=host.engine_id(),
        started_at=writer.started_at,
        finished_at=dt.datetime.now(dt.UTC),
        encrypted=writer.encrypted,
        sentry_ops_version=package_version("sentry-ops"),
        **fields,
    )


def write_set(
    host: SentryHost,
    store: BackupStore,
    purpose: str,
    take: Callable[[SetWriter], tuple[BackupManifest, str]],
) -> tuple[BackupManifest, str]:
    """A new set of `host` in `store`, filled by `take` under the host lock; a failure says
    which set it left incomplete."""
    with host_lock(host, purpose, unfinished_ok=("upgrade",)):  # a copy of whatever state it is in
        writer = backup_set.begin(store, host.identity)
        get_run_logger().info(
            "%s %s of %s to %s", purpose, writer.backup_id, host.label, writer.folder
        )
        try:
            return take(writer)
        except Exception as exc:
            raise BackupError(
                f"{purpose} {writer.backup_id} of {host.label} to {store.where} failed: {exc}. "
                f"Left behind: the incomplete set s3://{store.bucket}/{writer.folder} (no "
                "manifest: never restored or counted; retention removes it after 24 h)"
            ) from exc


def take_clickhouse_set(host_name: str, host: SentryHost, writer: SetWriter, retries: int):
    """A set of the ClickHouse snapshot alone (scope "clickhouse"), then its sealed manifest."""
    expected = previous_sizes(writer.store, host)
    obj, snapshot = backup_clickhouse.with_options(retries=retries)(host, writer, expected)
    manifest = new_manifest(
        host_name,
        host,
        writer,
        scope="clickhouse",
        objects=[obj] if obj else [],
        sentry_version=sentry_version(host),
        images=host.service_images(),
        config_included=False,
        clickhouse=snapshot,
    )
    return manifest, writer.seal(manifest)


# -- flows --------------------------------------------------------------------------------------
@flow(
    name="clickhouse-snapshot",
    flow_run_name="clickhouse-snapshot-{host}",
    log_prints=True,
    timeout_seconds=12 * HOUR,
)
def clickhouse_snapshot(host: SentryHost | str, store: BackupStore | str, retries: int = 2) -> dict:
    """A ClickHouse snapshot of `host` alone, as its own sealed set (scope "clickhouse"): the
    same FREEZE, stream and clean-up as the nightly backup's ClickHouse step, under the host
    lock. Drills and min_keep count only full backups.

    Args:
        host: The Sentry host: a SentryHost block, or its name.
        store: The backup store: a BackupStore block, or its name.
        retries: Retries of transient SSH/S3 failures (each starts the snapshot anew).
    """
    host, sentry_host = load_block(host, SentryHost)
    store, backup_store = load_block(store, BackupStore)
    images = preflight(sentry_host, backup_store)
    if not has_clickhouse(sentry_host, images):
        raise BackupError(
            f"{sentry_host.label}: the compose project has no ClickHouse service "
            f"{sentry_host.stack.service(Role.CLICKHOUSE)!r}; set service_names.clickhouse"
        )
    warn_unencrypted(backup_store)
    manifest, manifest_key = write_set(
        sentry_host, backup_store, "clickhouse snapshot",
        lambda writer: take_clickhouse_set(host, sentry_host, writer, retries),
    )  # fmt: skip
    report(manifest, backup_store)
    assert manifest.clickhouse is not None
    return {
        "backup_id": manifest.backup_id,
        "host_id": manifest.host_id,
        "manifest": manifest_key,
        "tables": len(manifest.clickhouse.tables),
        "rows": sum(t.rows or 0 for t in manifest.clickhouse.tables),
        "bytes": sum(o.size for o in manifest.objects),
    }


@flow(
    name="backup",
    flow_run_name="backup-{host}",
    log_prints=True,
    persist_result=True,
    timeout_seconds=12 * HOUR,
)
def backup(
    host: SentryHost | str,
    store: BackupStore | str,
    retries: int = 2,
    base_backup: bool | None = None,
) -> dict:
    """Back up Postgres, the data volumes and the config of `host` to `store`, encrypted and
    sealed with the store's backup_key.

    Args:
        host: The Sentry host: a SentryHost block, or its name.
        store: The backup store: a BackupStore block, or its name.
        retries: Per-object retries of transient SSH/S3 failures (each retry starts the object
            anew).
        base_backup: Also take a physical base backup of Postgres (what a point-in-time
            restore replays the WAL archive onto); default: when the host's WAL archive is
            armed (ship-wal).
    """
    host, sentry_host = load_block(host, SentryHost)
    store, backup_store = load_block(store, BackupStore)
    refuse_unfinished(sentry_host, "backup", ("upgrade",))  # said first: preflight would fail
    images = preflight(sentry_host, backup_store)  # on a half-restored stack for another reason
    warn_unencrypted(backup_store)
    with_base = wal_armed(sentry_host) if base_backup is None else base_backup
    manifest, manifest_key = write_set(
        sentry_host, backup_store, "backup",
        lambda writer: take_set(host, sentry_host, writer, images, retries, with_base),
    )  # fmt: skip
    report(manifest, backup_store)
    emit("sentry.backup.completed", manifest.backup_id, host, {
        "backup_id": manifest.backup_id,
        "host": host,
        "store": store,
        "manifest": manifest_key,
        "bytes": sum(o.size for o in manifest.objects),
    })  # fmt: skip
    apply_retention(backup_store, sentry_host.set_folders)
    return {
        "backup_id": manifest.backup_id,
        "host_id": manifest.host_id,
        "manifest": manifest_key,
        "objects": len(manifest.objects),
        "bytes": sum(o.size for o in manifest.objects),
        "encrypted": manifest.encrypted,
    }


def report(manifest: BackupManifest, store: BackupStore) -> None:
    create_table_artifact(
        key="backup-objects",
        table=[
            {
                "object": o.name,
                "key": o.key,
                "stored MB": round(o.size / 1e6, 2),
                "raw MB": round((o.raw_size or o.size) / 1e6, 2),
                "encryption": o.encryption,
                "sha256": o.sha256,
                "seconds": o.seconds,
                "MB/s": round(o.mb_per_s, 1),
            }
            for o in manifest.objects
        ],
        description=f"Backup {manifest.backup_id} ({manifest.scope}) of {manifest.host} (Sentry "
        f"{manifest.sentry_version}, Postgres {manifest.postgres_version}, "
        f"{sum(manifest.row_counts.values())} rows in {len(manifest.row_counts)} tables, config "
        f"{'included' if manifest.config_included else 'not included'}, "
        f"{'encrypted and sealed' if manifest.encrypted else 'NOT encrypted'}) in {store.where}",
    )


@flow(name="verify-backup", flow_run_name="verify-backup-{host}", timeout_seconds=6 * HOUR)
def verify_backup(
    host: SentryHost | str, store: BackupStore | str, backup_id: str | None = None
) -> dict:
    """Check a backup's seal, then re-read every object and check its size and sha256 against
    the manifest; the result is recorded beside the set (retention keeps the newest verified).

    Args:
        host: The Sentry host whose backup it is: a SentryHost block, or its name.
        store: The backup store: a BackupStore block, or its name.
        backup_id: The backup to verify; default the host's newest complete one.
    """
    host, sentry_host = load_block(host, SentryHost)
    store, backup_store = load_block(store, BackupStore)
    manifest = backup_set.pick(backup_store, sentry_host.set_folders, sentry_host.label, backup_id)
    results = verify_objects(backup_store, manifest)
    bad = [r for r in results if not r.ok]
    detail = "; ".join(f"{r.name}: {r.detail}" for r in bad) or f"{len(results)} objects match"
    backup_set.record_verification(backup_store, manifest, not bad, "verify-backup", detail)
    results_artifact(
        "backup-verification", results, f"Verification of {manifest.backup_id}: {detail}"
    )
    if bad:
        raise BackupError(f"backup {manifest.backup_id} is corrupt: {detail}")
    return {"backup_id": manifest.backup_id, "verified": len(results)}


@flow(name="list-backups", timeout_seconds=15 * MINUTE)
def list_backups(store: BackupStore | str, host: SentryHost | str | None = None) -> list[dict]:
    """Every backup set in the store (or of one host), newest first, with its status: only
    complete, sealed sets are restorable; verified ones passed a verify or a drill.

    Args:
        store: The backup store: a BackupStore block, or its name.
        host: A SentryHost block (or its name) to list only its sets; default every host's.
    """
    store, backup_store = load_block(store, BackupStore)
    host_id = load_block(host, SentryHost)[1].set_folders if host else None
    try:
        sets = backup_set.list_sets(backup_store, host_id)
    except StoreError as exc:
        raise BackupError(str(exc)) from exc
    rows = [
        {
            "host": s.host_id,
            "backup_id": s.backup_id,
            "time": s.when.isoformat() if s.when else "?",
            "status": s.status,
            "scope": s.scope,
            "complete": s.complete,
            "trusted": s.trusted,
            "verified": s.verified,
            "objects": len(s.keys),
        }
        for s in reversed(sets)
    ]
    create_table_artifact(key="backups", table=rows or [{"backup_id": "(none)"}])
    return rows
