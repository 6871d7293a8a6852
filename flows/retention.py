"""Retention of backup sets: which to delete, decided by a pure function, then applied.

Rules (DESIGN.md, principle 3):
- complete backups older than `retention_days` are deleted, but never the newest `min_keep`
  complete ones, whatever the clock says;
- incomplete backups (no manifest) older than 24 h are deleted (newer ones may be in progress);
- a backup id we cannot parse is never deleted;
- multipart uploads left open for more than 24 h are aborted.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from blocks.backup_store import BackupListing, BackupStore

INCOMPLETE_GRACE = dt.timedelta(hours=24)


@dataclass(frozen=True)
class RetentionPlan:
    delete: tuple[str, ...]
    keep: tuple[str, ...]
    reasons: dict[str, str] = field(default_factory=dict)


def plan_retention(
    backups: list[BackupListing], now: dt.datetime, retention_days: int, min_keep: int
) -> RetentionPlan:
    cutoff = now - dt.timedelta(days=retention_days)
    complete = sorted((b for b in backups if b.complete and b.when), key=lambda b: b.when)
    protected = {b.backup_id for b in complete[-min_keep:]} if min_keep > 0 else set()
    delete, keep, reasons = [], [], {}
    for b in backups:
        if b.when is None:
            keep.append(b.backup_id)
            reasons[b.backup_id] = "not a backup id sentry-ops writes: left alone"
        elif b.complete and b.backup_id in protected:
            keep.append(b.backup_id)
            reasons[b.backup_id] = f"one of the newest {min_keep} complete"
        elif b.complete and b.when < cutoff:
            delete.append(b.backup_id)
            reasons[b.backup_id] = f"complete, older than {retention_days} days"
        elif not b.complete and b.when < now - INCOMPLETE_GRACE:
            delete.append(b.backup_id)
            reasons[b.backup_id] = "incomplete (no manifest), older than 24 h"
        else:
            keep.append(b.backup_id)
            reasons[b.backup_id] = "within retention" if b.complete else "incomplete, < 24 h old"
    return RetentionPlan(tuple(delete), tuple(keep), reasons)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30])
def apply_retention(store: BackupStore, now: dt.datetime | None = None) -> RetentionPlan:
    logger = get_run_logger()
    now = now or dt.datetime.now(dt.UTC)
    backups = store.list_backups()
    plan = plan_retention(backups, now, store.retention_days, store.min_keep)
    keys = {b.backup_id: b.keys for b in backups}
    for backup_id in plan.delete:
        # manifest first: a half-deleted set must never look complete
        ordered = sorted(keys[backup_id], key=lambda k: not k.endswith("/manifest.json"))
        store.delete_keys(ordered)
        logger.info("deleted backup %s: %s", backup_id, plan.reasons[backup_id])
    aborted = store.abort_uploads(f"{store.prefix}/", older_than=now - INCOMPLETE_GRACE)
    create_table_artifact(
        key="backup-retention",
        table=[
            {
                "backup": b,
                "action": "delete" if b in plan.delete else "keep",
                "why": plan.reasons[b],
            }
            for b in (*plan.delete, *plan.keep)
        ],
        description=f"Retention: {len(plan.delete)} deleted, {len(plan.keep)} kept, "
        f"{aborted} stale multipart uploads aborted",
    )
    return plan


@flow(name="backup-retention")
def backup_retention(store: str) -> dict:
    """Apply the store's retention policy to its backup sets."""
    plan = apply_retention(BackupStore.load(store))
    return {"deleted": list(plan.delete), "kept": list(plan.keep)}
