"""plan_retention: properties that must hold for any set of backups and any clock."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from blocks.backup_store import BackupListing, new_backup_id, parse_backup_id
from flows.retention import INCOMPLETE_GRACE, plan_retention

NOW = dt.datetime(2026, 11, 28, 2, 0, tzinfo=dt.UTC)

ages = st.integers(min_value=-3600, max_value=120 * 86400)  # seconds before NOW (<0: future)
backup = st.tuples(ages, st.booleans())
backups_strategy = st.lists(backup, max_size=40, unique_by=lambda b: b[0])


def listing(spec: list[tuple[int, bool]], unparseable: int = 0) -> list[BackupListing]:
    out = []
    for age, complete in spec:
        when = (NOW - dt.timedelta(seconds=age)).replace(microsecond=0)
        bid = new_backup_id("sentry-1", when)
        out.append(BackupListing(bid, parse_backup_id(bid)[0], complete, (f"p/{bid}/x",)))
    out += [BackupListing(f"manual-copy-{i}", None, True, ()) for i in range(unparseable)]
    return out


@settings(max_examples=300, deadline=None)
@given(backups_strategy, st.integers(1, 60), st.integers(1, 10), st.integers(0, 3))
def test_retention_properties(spec, retention_days, min_keep, unparseable):
    backups = listing(spec, unparseable)
    plan = plan_retention(backups, NOW, retention_days, min_keep)
    by_id = {b.backup_id: b for b in backups}
    deleted = [by_id[i] for i in plan.delete]
    remaining = [b for b in backups if b.backup_id not in plan.delete]
    cutoff = NOW - dt.timedelta(days=retention_days)

    # every backup is decided exactly once
    assert sorted(plan.delete + plan.keep) == sorted(by_id)
    # never below min_keep complete (or all of them, when there are fewer)
    complete = [b for b in backups if b.complete and b.when]
    kept_complete = [b for b in remaining if b.complete and b.when]
    assert len(kept_complete) >= min(min_keep, len(complete))
    # the newest min_keep complete are always kept
    newest = sorted(complete, key=lambda b: b.when)[-min_keep:]
    assert all(b.backup_id not in plan.delete for b in newest)
    # nothing newer than its cutoff is deleted; unparseable ids never are
    for b in deleted:
        assert b.when is not None
        assert b.when < (cutoff if b.complete else NOW - INCOMPLETE_GRACE)
    # an incomplete backup never outlives 24 h
    assert all(b.when >= NOW - INCOMPLETE_GRACE for b in remaining if not b.complete and b.when)
    # idempotent: planning again over what remains deletes nothing more
    assert plan_retention(remaining, NOW, retention_days, min_keep).delete == ()


def test_clock_far_in_the_future_still_keeps_min_keep():
    backups = listing([(d * 86400, True) for d in range(10)])
    plan = plan_retention(backups, NOW + dt.timedelta(days=3650), 30, 7)
    assert len(plan.keep) == 7 and len(plan.delete) == 3


def test_backup_ids_round_trip():
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    bid = new_backup_id("Sentry_Prod.1", when)
    assert bid == "20260102T030405Z-sentry-prod-1"
    assert parse_backup_id(bid) == (when, "sentry-prod-1")
    assert parse_backup_id("20261399T000000Z-x") is None
    assert parse_backup_id("random-folder") is None
