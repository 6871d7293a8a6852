"""Continuous WAL archiving: point-in-time recovery with an RPO of minutes instead of a day.

Runbook of `ship-wal` (every 4 minutes; RPO <= the interval plus one run):
1. refused on a host with an unfinished restore (a half-restored cluster is not archived);
2. arm, where missing (idempotent): sentry-ops' marks table, the replication slot `sentry_ops`,
   the shipper (`pg_receivewal` in a container beside Postgres, restarted by Docker; started
   again beside a recreated postgres container);
3. ship: a mark row written, `pg_switch_wal()`, every finished segment not in the store
   compressed on the host, encrypted on the worker, stored beside the host's sets
   (`<host id>/wal/<cluster>/`), the volume trimmed, the sealed head written (newest segment,
   newest mark: the newest moment a restore surely reaches);
4. status: shipping lag (now - newest mark shipped), the slot's retained bytes; fails when the
   lag exceeds `rpo_target_seconds` (an alert), warns past `max_slot_gb`.
`stop-wal-archiving` is the one step that ends it: shipper removed, slot dropped (Postgres frees
the WAL it kept), local volume removed; what was shipped stays until retention.
Nightly sets of an armed host take a physical base backup too (flows/backup.py); `restore` and
`restore-drill` replay the archive onto it (`target_time`, `target_minutes_ago`).
"""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from blocks import wal
from blocks.backup_store import BackupStore
from blocks.sentry_host import SentryHost
from flows.shared import MINUTE, Result, Status, emit, load_block, refuse_unfinished


class WalShippingError(Exception):
    pass


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10, timeout_seconds=600)
def arm(host: SentryHost) -> Result:
    return wal.arm(host)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 20], timeout_seconds=1800)
def ship(host: SentryHost, store: BackupStore, wait: float) -> wal.Shipped:
    return wal.ship(host, store, host.identity, wait)


@task(cache_policy=NO_CACHE, timeout_seconds=300)
def status(host: SentryHost) -> wal.WalStatus:
    return wal.status(host)


def assess(
    shipped: wal.Shipped,
    state: wal.WalStatus,
    now: dt.datetime,
    rpo_target_seconds: float,
    max_slot_gb: float,
) -> list[Result]:
    """The archive's state as checks (pure)."""
    lag = (now - shipped.mark).total_seconds()
    slot = state.slot
    retained = slot.retained_bytes if slot else 0
    return [
        Result(
            "shipped",
            Status.DONE if shipped.shipped else Status.ALREADY,
            f"{len(shipped.shipped)} file(s), {shipped.stored_bytes / 1e3:.1f} kB stored; newest "
            f"segment {shipped.head.newest_segment}, {shipped.head.segments} in the archive",
        ),
        Result.check(
            "shipping lag",
            lag <= rpo_target_seconds,
            f"{lag:.1f} s behind (newest mark shipped {shipped.mark:%H:%M:%S}Z; RPO target "
            f"{rpo_target_seconds:.0f} s)",
        ),
        Result.check("shipper", state.shipper == "running", f"container {state.shipper}"),
        Result(
            "slot retained WAL",
            Status.OK if retained <= max_slot_gb * 1e9 else Status.WARNING,
            f"{retained / 1e6:.1f} MB kept by slot {wal.SLOT} "
            f"({'active' if slot and slot.active else 'INACTIVE'}; warn above {max_slot_gb} GB)",
        ),
    ]


@flow(
    name="ship-wal",
    flow_run_name="ship-wal-{host}",
    log_prints=True,
    persist_result=True,
    timeout_seconds=30 * MINUTE,
)
def ship_wal(
    host: SentryHost | str,
    store: BackupStore | str,
    rpo_target_seconds: float = 300,
    max_slot_gb: float = 5.0,
    wait_seconds: float = 120,
) -> dict:
    """Arm continuous WAL archiving of the host's Postgres where it is not (a slot, a
    pg_receivewal shipper beside Postgres), close the current segment and ship every finished
    one to the store, encrypted; report the lag and the slot's retained WAL.

    Args:
        host: The Sentry host: a SentryHost block, or its name.
        store: The backup store: a BackupStore block, or its name.
        rpo_target_seconds: The run fails (an alert) when the newest point shipped is older
            than this.
        max_slot_gb: Warn when the slot keeps more WAL than this on the host (health fails at
            its own limit).
        wait_seconds: How long to wait for the closed segment to reach the shipper.
    """
    logger = get_run_logger()
    name, sentry_host = load_block(host, SentryHost)
    store_name, backup_store = load_block(store, BackupStore)
    refuse_unfinished(sentry_host, "ship-wal")
    backup_store.check_access()
    steps = [arm(sentry_host)]
    shipped = ship(sentry_host, backup_store, wait_seconds)
    state = status(sentry_host)
    steps += assess(shipped, state, dt.datetime.now(dt.UTC), rpo_target_seconds, max_slot_gb)
    for r in steps:
        logger.info("%s: %s (%s)", r.name, r.status, r.detail)
    create_table_artifact(
        key="wal-shipping", table=[r.row() for r in steps],
        description=f"WAL shipping of {sentry_host.label} to {backup_store.where}",
    )  # fmt: skip
    result = {
        "shipped": shipped.shipped,
        "switched": shipped.switched,
        "mark": shipped.mark.isoformat(),
        "system_identifier": shipped.cluster.system_identifier,
        "newest_segment": shipped.head.newest_segment,
        "segments": shipped.head.segments,
        "stored_bytes": shipped.stored_bytes,
        "slot_retained_bytes": state.slot.retained_bytes if state.slot else None,
        "steps": [r.row() for r in steps],
    }
    emit("sentry.wal.shipped", shipped.head.newest_segment, name, {**result, "store": store_name})
    bad = [f"{r.name}: {r.detail}" for r in steps if not r.ok]
    if bad:
        raise WalShippingError(f"{sentry_host.label}: {'; '.join(bad)}")
    return result


@flow(
    name="stop-wal-archiving",
    flow_run_name="stop-wal-{host}",
    persist_result=True,
    timeout_seconds=15 * MINUTE,
)
def stop_wal_archiving(host: SentryHost | str) -> dict:
    """End continuous WAL archiving of the host: the shipper removed, the replication slot
    dropped (Postgres frees the WAL it kept for it), the local volume removed. What was shipped
    stays in the store until retention. Turn the ship-wal schedule off too.

    Args:
        host: The Sentry host: a SentryHost block, or its name.
    """
    _, sentry_host = load_block(host, SentryHost)
    done = wal.disarm(sentry_host)
    get_run_logger().info("%s: %s", done.name, done.detail)
    return done.row()
