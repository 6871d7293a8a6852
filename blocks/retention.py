"""Retention of backup sets, per host: which to delete, decided by a pure function
(`plan_retention`), then applied (`apply`).

Rules, applied to each host on its own (every folder its sets sit in: `SentryHost.set_folders`,
or, store-wide, the folders `backup_set.by_host` finds to be one host's; a backup exists only
once its manifest is written; retention never deletes the newest `min_keep` complete backups,
whatever the clock says):
- complete, sealed sets older than `retention_days` are deleted, but never the host's newest
  `min_keep` of them, nor its newest verified one;
- incomplete sets (no manifest) older than 24 h are deleted (newer ones may be in progress);
- a set whose manifest is refused (seal missing or wrong) is left for inspection and not counted;
- anything that is not a set sentry-ops writes is never deleted;
- multipart uploads left open for more than 24 h are aborted;
- a host's WAL archive is kept from the first segment of the oldest kept base backup of each of
  its clusters on; older segments are deleted (no kept set can replay them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from blocks import backup_set, wal_archive
from blocks.backup_set import SetListing
from blocks.backup_store import BackupStore

INCOMPLETE_GRACE = dt.timedelta(hours=24)


@dataclass(frozen=True)
class RetentionPlan:
    delete: tuple[SetListing, ...]
    keep: tuple[SetListing, ...]
    reasons: dict[str, str] = field(default_factory=dict)  # backup id -> why


def plan_retention(
    sets: list[SetListing],
    now: dt.datetime,
    retention_days: int,
    min_keep: int,
    host_of: Callable[[SetListing], str] = lambda s: s.host_id,
) -> RetentionPlan:
    """Each host's newest `min_keep` are counted across its sets, whatever folders they sit in
    (`host_of`, default the folder: its current host id, or the SSH-target one an older release
    wrote), so a folder an older release wrote ages out instead of keeping `min_keep` forever."""
    cutoff = now - dt.timedelta(days=retention_days)
    protected: set[str] = set()
    for host in {host_of(s) for s in sets if s.when}:
        usable = sorted(
            (
                s
                for s in sets
                if host_of(s) == host and s.when and s.complete and s.trusted and s.scope == "full"
            ),  # a ClickHouse snapshot alone restores no install
            key=lambda s: s.when,  # type: ignore[arg-type, return-value]
        )
        protected |= {s.backup_id for s in usable[-min_keep:]}
        verified = [s for s in usable if s.verified]
        if verified:
            protected.add(verified[-1].backup_id)
    delete, keep, reasons = [], [], {}
    for s in sets:
        if s.when is None:
            keep.append(s)
            reasons[s.backup_id] = "not a set sentry-ops writes: left alone"
        elif s.complete and not s.trusted:
            keep.append(s)
            reasons[s.backup_id] = f"manifest refused, left for inspection: {s.problem}"[:300]
        elif s.backup_id in protected:
            keep.append(s)
            reasons[s.backup_id] = (
                f"one of the host's newest {min_keep} complete, or its newest verified"
            )
        elif s.complete and s.when < cutoff:
            delete.append(s)
            reasons[s.backup_id] = f"complete, older than {retention_days} days"
        elif not s.complete and s.when < now - INCOMPLETE_GRACE:
            delete.append(s)
            reasons[s.backup_id] = "incomplete (no manifest), older than 24 h"
        else:
            keep.append(s)
            reasons[s.backup_id] = "within retention" if s.complete else "incomplete, < 24 h old"
    return RetentionPlan(tuple(delete), tuple(keep), reasons)


def apply(
    store: BackupStore,
    host_ids: Sequence[str] | None,
    now: dt.datetime,
    dry_run: bool,
    say: Callable[[str], None],
) -> tuple[RetentionPlan, int]:
    """Apply the store's retention to one host's sets (its folders, `SentryHost.set_folders`),
    or to every host's; with `dry_run`, only plan it. -> (the plan, stale multipart uploads
    aborted or found)."""
    sets = backup_set.list_sets(store, host_ids)
    if host_ids:  # one host's folders
        owner = {s.backup_id: "" for s in sets}
    else:
        owner = {s.backup_id: h for h, g in backup_set.by_host(store, sets).items() for s in g}
    plan = plan_retention(
        sets, now, store.retention_days, store.min_keep, lambda s: owner.get(s.backup_id, "?")
    )
    for s in plan.delete:
        if not dry_run:
            backup_set.delete_set(store, s)
        say(f"{'would delete' if dry_run else 'deleted'} backup {s.backup_id}: "
            f"{plan.reasons[s.backup_id]}")  # fmt: skip
    for (host_id, system_id), start in wal_kept_from(store, plan.keep).items():
        if dry_run:
            continue
        if gone := wal_archive.prune(store, host_id, system_id, start):
            say(f"deleted {gone} WAL segment(s) of {host_id} cluster {system_id} before {start}, "
                "the oldest kept base backup's first")  # fmt: skip
    wheres = [backup_set.folder(store, h) for h in host_ids or []] or [f"{store.prefix}/"]
    aborted = sum(
        store.abort_uploads(where, older_than=now - INCOMPLETE_GRACE, dry_run=dry_run)
        for where in wheres
    )
    return plan, aborted


def wal_kept_from(store: BackupStore, kept: Sequence[SetListing]) -> dict[tuple[str, str], str]:
    """(host id, cluster) -> the first WAL segment the oldest kept base backup of that cluster
    needs: the archive (blocks/wal_archive.py) is kept from there on. A cluster no kept set has
    a base backup of is left alone (its base may be tonight's)."""
    start: dict[tuple[str, str], str] = {}
    for listing in kept:
        if not (listing.complete and listing.trusted):
            continue
        base = backup_set.load(store, listing.host_id, listing.backup_id).postgres_base
        if base is None:
            continue
        key = (listing.host_id, base.system_identifier)
        if key not in start or wal_archive.position(base.wal_start) < wal_archive.position(
            start[key]
        ):
            start[key] = base.wal_start
    return start


def rows(plan: RetentionPlan, dry_run: bool) -> list[dict]:
    """The plan as table rows, deletions first."""
    return [
        {
            "host": s.host_id,
            "backup": s.backup_id,
            "status": s.status,
            "action": ("would delete" if dry_run else "delete") if s in plan.delete else "keep",
            "why": plan.reasons[s.backup_id],
        }
        for s in (*plan.delete, *plan.keep)
    ]
