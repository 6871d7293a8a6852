"""Nightly backup of a Sentry host to S3: streamed, verified, committed by a manifest.

Runbook, in order:
1. preflight, before anything is written: the store answers (bucket, credentials), the host
   answers, the block's names and data volumes exist, the tool image has pg_dump, tar, zstd;
2. take the host's backup lock (a strict Prefect global concurrency limit named after the host);
3. Postgres, next to the database: export a snapshot; `pg_dump -Fc --compress=zstd:1 --snapshot`
   in a throwaway tool container in the postgres container's network namespace -> FIFO -> SSH ->
   S3 multipart, while exact per-table row counts are taken in that same snapshot;
4. each data volume of the layout (guide: files; self-hosted: files + seaweedfs nodestore):
   tar | zstd in a throwaway container on the host -> FIFO -> SSH -> S3 multipart;
5. the stack's config, Fernet-encrypted with the store's key (left out when it has none);
6. manifest.json, last: the commit marker;
7. retention; artifacts; the event `sentry.backup.completed`.
Nothing is staged on disk, host or worker; memory is bounded by a few multipart parts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from importlib.metadata import version as package_version
from typing import BinaryIO

from cryptography.fernet import Fernet
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.events import emit_event

from blocks import postgres
from blocks.backup_store import BackupManifest, BackupStore, StoredObject, new_backup_id
from blocks.layouts import DataVolume
from blocks.sentry_host import SentryHost
from flows.retention import apply_retention


class BackupError(Exception):
    pass


def lock_name(host: str) -> str:
    """The global concurrency limit that serialises backups of one host."""
    return "sentry-backup-" + re.sub(r"[^a-z0-9-]+", "-", host.lower()).strip("-")


def unique_backup_id(store: BackupStore, host: str) -> tuple[dt.datetime, str]:
    """Ids have 1 s resolution: never reuse one that already has objects (a run a second ago)."""
    while True:
        now = dt.datetime.now(dt.UTC)
        backup_id = new_backup_id(host, now)
        if (
            not store.client()
            .list_objects_v2(Bucket=store.bucket, Prefix=store.key(backup_id, ""), MaxKeys=1)
            .get("KeyCount")
        ):
            return now, backup_id
        time.sleep(1.0 - now.microsecond / 1e6)


# -- streams ------------------------------------------------------------------------------------
class _Counter:
    """Counts the bytes read; with `limit` (bytes/s), reads no faster than that on average."""

    def __init__(self, source: BinaryIO, limit: int | None = None) -> None:
        self.source, self.count, self.limit = source, 0, limit
        self.started = time.monotonic()

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n)
        self.count += len(data)
        if self.limit:
            ahead = self.count / self.limit - (time.monotonic() - self.started)
            if ahead > 0:
                time.sleep(ahead)
        return data


def ship(
    store: BackupStore,
    key: str,
    name: str,
    source: BinaryIO,
    compression: str,
    on_progress: Callable[[int], None] | None = None,
) -> StoredObject:
    """An already-compressed stream -> S3 multipart, with size and sha256 of the stored bytes.

    A source that fails or stays silent past its timeout raises from its read, and the upload
    aborts (no object)."""
    started = time.monotonic()
    counted = _Counter(source, store.bandwidth_limit)
    with ThreadPoolExecutor(1, thread_name_prefix="upload") as pool:
        upload = pool.submit(store.upload_stream, key, counted)
        while True:  # progress reports run in this (the task's) thread
            try:
                size, sha256 = upload.result(timeout=2)
                break
            except FutureTimeout:
                if on_progress:
                    on_progress(counted.count)
    return StoredObject(
        name=name,
        key=key,
        size=size,
        sha256=sha256,
        compression=compression,
        seconds=round(time.monotonic() - started, 3),
    )


# -- tasks --------------------------------------------------------------------------------------
@task(cache_policy=NO_CACHE)
def preflight(host: SentryHost, store: BackupStore) -> dict[str, str]:
    """Everything that can be checked before a byte is written; returns compose images."""
    store.check_access()
    volumes = (DataVolume.POSTGRES, *host.stack.backup_volumes)
    problems = host.name_problems(volumes)
    if problems:
        raise BackupError(f"{host.label}: nothing was backed up: {'; '.join(problems)}")
    for volume in volumes:
        if not host.volume_exists(volume):
            raise BackupError(
                f"{host.label}: data volume {host.volume_name(volume)} ({volume}) does not "
                "exist; check the block's layout, project_name and volume_names"
            )
    postgres.check_tool_image(host, host.tool_image)
    return host.service_images()


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60], timeout_seconds=6 * 3600)
def backup_postgres(host: SentryHost, store: BackupStore, backup_id: str) -> dict:
    """pg_dump next to the database, compressed there; row counts in the same snapshot."""
    logger = get_run_logger()
    key = store.key(backup_id, "postgres.dump")
    with postgres.dump(host, host.tool_image) as dump:
        progress_id = create_progress_artifact(0.0, description=f"pg_dump of {host.label}")

        def on_progress(done: int) -> None:  # compressed bytes vs. the database's size: a guess
            pct = min(99.0, 100.0 * done * 3 / max(dump.size_estimate, 1))
            update_progress_artifact(progress_id, pct, f"{done / 1e6:.0f} MB stored")

        obj = ship(store, key, "postgres", dump.stream, dump.compression, on_progress)
        counts = dump.row_counts.result()
    update_progress_artifact(progress_id, 100.0, f"{obj.size / 1e6:.0f} MB stored")
    obj = obj.model_copy(update={"raw_size": dump.size_estimate})
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


# submitted beside the dump: a thread cannot be interrupted, so no task timeout; the stream's
# silence timeout (300 s) ends a stalled transfer instead
@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60])
def backup_volume(
    host: SentryHost, store: BackupStore, backup_id: str, volume: DataVolume
) -> StoredObject:
    """tar + zstd of a data volume on the host (read-only mount); only compressed bytes move."""
    key = store.key(backup_id, f"volume-{volume}.tar.zst")
    argv = host.volume_tar_argv(volume, host.tool_image)
    with host.stream(argv, timeout=300, stdin=b"\n") as tar:
        obj = ship(store, key, f"volume:{volume}", tar, "zstd")
    get_run_logger().info("volume %s: %.1f MB in %.1fs", volume, obj.size / 1e6, obj.seconds)
    return obj


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60])
def backup_config(host: SentryHost, store: BackupStore, backup_id: str) -> StoredObject | None:
    """The config holds the secret key and passwords: stored only Fernet-encrypted."""
    if store.config_encryption_key is None:
        get_run_logger().warning(
            "config (.env, config.yml) NOT backed up: the store block has no "
            "config_encryption_key; keep the stack's secrets in your secret manager"
        )
        return None
    started = time.monotonic()
    plain = host.run(host.config_tar_argv(), timeout=60).stdout
    sealed = Fernet(store.config_encryption_key.get_secret_value().encode()).encrypt(plain)
    key = store.key(backup_id, "config.tar.fernet")
    store.put_bytes(key, sealed)
    return StoredObject(
        name="config",
        key=key,
        size=len(sealed),
        sha256=hashlib.sha256(sealed).hexdigest(),
        compression="none",
        encryption="fernet",
        raw_size=len(plain),
        seconds=round(time.monotonic() - started, 3),
    )


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30])
def sentry_version(host: SentryHost) -> str:
    out = host.run(host.sentry_version_argv(), timeout=60).text
    match = re.search(r"version\s+(\S+)", out)
    return match.group(1) if match else out.strip()


# -- flows --------------------------------------------------------------------------------------
@flow(name="backup", log_prints=True)
def backup(host: str, store: str, retries: int = 2) -> dict:
    """Back up Postgres, the data volumes and (encrypted) config of `host` to `store`.

    host: name of a SentryHost block. store: name of a BackupStore block.
    retries: per-object retries of transient SSH/S3 failures (each retry starts the object anew).
    """
    logger = get_run_logger()
    sentry_host, backup_store = SentryHost.load(host), BackupStore.load(store)
    images = preflight(sentry_host, backup_store)
    with concurrency(lock_name(host), occupy=1, strict=True, timeout_seconds=6 * 3600):
        started, backup_id = unique_backup_id(backup_store, host)
        logger.info(
            "backup %s of %s to s3://%s/%s",
            backup_id,
            sentry_host.label,
            backup_store.bucket,
            backup_store.prefix,
        )
        # the small objects and facts go while the dump streams (they wait on the network, the
        # dump on the CPU); any failure fails the backup before the manifest is written
        volumes = [
            backup_volume.with_options(retries=retries).submit(
                sentry_host, backup_store, backup_id, volume
            )
            for volume in sentry_host.stack.backup_volumes
        ]
        config_future = backup_config.with_options(retries=retries).submit(
            sentry_host, backup_store, backup_id
        )
        version = sentry_version.submit(sentry_host)
        pg = backup_postgres.with_options(retries=retries)(sentry_host, backup_store, backup_id)
        objects = [pg["object"], *(v.result() for v in volumes)]
        config = config_future.result()
        if config:
            objects.append(config)
        manifest = BackupManifest(
            backup_id=backup_id,
            host=host,
            layout=sentry_host.layout,
            project_name=sentry_host.project,
            started_at=started,
            finished_at=dt.datetime.now(dt.UTC),
            objects=objects,
            postgres_version=pg["postgres_version"],
            sentry_version=version.result(),
            images=images,
            row_counts=pg["row_counts"],
            newest_event=pg["newest"],
            config_included=config is not None,
            sentry_ops_version=package_version("sentry-ops"),
        )
        manifest_key = backup_store.write_manifest(manifest)  # the commit marker, last
    report(manifest, backup_store)
    emit_event(
        event="sentry.backup.completed",
        resource={
            "prefect.resource.id": f"sentry-ops.backup.{backup_id}",
            "prefect.resource.name": backup_id,
            "sentry-ops.host": host,
        },
        payload={
            "backup_id": backup_id,
            "host": host,
            "store": store,
            "manifest": manifest_key,
            "bytes": sum(o.size for o in objects),
        },
    )
    apply_retention(backup_store)
    return {
        "backup_id": backup_id,
        "manifest": manifest_key,
        "objects": len(objects),
        "bytes": sum(o.size for o in objects),
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
                "sha256": o.sha256,
                "seconds": o.seconds,
                "MB/s": round(o.mb_per_s, 1),
            }
            for o in manifest.objects
        ],
        description=f"Backup {manifest.backup_id} of {manifest.host} (Sentry "
        f"{manifest.sentry_version}, Postgres {manifest.postgres_version}, "
        f"{sum(manifest.row_counts.values())} rows in {len(manifest.row_counts)} tables, config "
        f"{'included, encrypted' if manifest.config_included else 'not included'}) in "
        f"s3://{store.bucket}/{store.prefix}",
    )


@task(cache_policy=NO_CACHE)
def verify_object(store: BackupStore, obj: StoredObject) -> dict:
    size, sha256 = store.sha256_of(obj.key)
    ok = size == obj.size and sha256 == obj.sha256
    return {
        "object": obj.name,
        "key": obj.key,
        "ok": ok,
        "detail": "matches"
        if ok
        else f"size {size} sha256 {sha256[:16]}... differs "
        f"from the manifest's {obj.size} {obj.sha256[:16]}...",
    }


@flow(name="verify-backup")
def verify_backup(store: str, backup_id: str) -> dict:
    """Re-read every object of a backup and check its size and sha256 against the manifest."""
    backup_store = BackupStore.load(store)
    manifest = backup_store.read_manifest(backup_id)
    results = [verify_object(backup_store, obj) for obj in manifest.objects]
    create_table_artifact(
        key="backup-verification", table=results, description=f"Verification of {backup_id}"
    )
    bad = [r for r in results if not r["ok"]]
    if bad:
        raise BackupError(
            f"backup {backup_id} is corrupt: "
            + "; ".join(f"{r['object']}: {r['detail']}" for r in bad)
        )
    return {"backup_id": backup_id, "verified": len(results)}


@flow(name="list-backups")
def list_backups(store: str) -> list[dict]:
    """Every backup set in the store, newest first; only complete ones are restorable."""
    rows = [
        {
            "backup_id": b.backup_id,
            "time": b.when.isoformat() if b.when else "?",
            "complete": b.complete,
            "objects": len(b.keys),
        }
        for b in reversed(BackupStore.load(store).list_backups())
    ]
    create_table_artifact(key="backups", table=rows or [{"backup_id": "(none)"}])
    return rows


if __name__ == "__main__":
    import sys

    backup(sys.argv[1] if len(sys.argv) > 1 else "sandbox", "sandbox")
