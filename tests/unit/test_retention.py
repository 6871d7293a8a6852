"""plan_retention: properties that must hold per host, for any sets and any clock."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from blocks.backup_set import SetListing, new_backup_id
from blocks.retention import INCOMPLETE_GRACE, plan_retention

NOW = dt.datetime(2026, 11, 28, 2, 0, tzinfo=dt.UTC)
HOSTS = ["10-0-0-1-22-sentry", "10-0-0-2-22-sentry", "10-0-0-2-22-other"]

ages = st.integers(min_value=-3600, max_value=120 * 86400)  # seconds before NOW (<0: future)
# (age, host, complete, trusted, verified)
one_set = st.tuples(ages, st.sampled_from(HOSTS), st.booleans(), st.booleans(), st.booleans())
sets_strategy = st.lists(one_set, max_size=40, unique_by=lambda b: (b[0], b[1]))


def listing(spec, unparseable: int = 0) -> list[SetListing]:
    out = []
    for age, host, complete, trusted, verified in spec:
        when = (NOW - dt.timedelta(seconds=age)).replace(microsecond=0)
        bid = new_backup_id(host, when)
        trusted = complete and trusted
        out.append(
            SetListing(
                host, bid, when, complete, trusted, trusted and verified, (f"p/{host}/{bid}/x",)
            )
        )
    out += [
        SetListing("?", f"manual-copy-{i}", None, False, False, False, ())
        for i in range(unparseable)
    ]
    return out


def usable(sets, host):
    return sorted(
        (s for s in sets if s.host_id == host and s.complete and s.trusted), key=lambda s: s.when
    )


@settings(max_examples=400, deadline=None)
@given(sets_strategy, st.integers(1, 60), st.integers(1, 10), st.integers(0, 3))
def test_retention_properties_per_host(spec, retention_days, min_keep, unparseable):
    sets = listing(spec, unparseable)
    plan = plan_retention(sets, NOW, retention_days, min_keep)
    deleted = {s.backup_id for s in plan.delete}
    remaining = [s for s in sets if s.backup_id not in deleted]
    cutoff = NOW - dt.timedelta(days=retention_days)

    # every set is decided exactly once
    assert sorted(s.backup_id for s in (*plan.delete, *plan.keep)) == sorted(
        s.backup_id for s in sets
    )
    for host in HOSTS:
        mine = usable(sets, host)
        # never below min_keep usable sets per host, whatever other hosts have
        assert len(usable(remaining, host)) >= min(min_keep, len(mine))
        # the host's newest min_keep and its newest verified are always kept
        assert not {s.backup_id for s in mine[-min_keep:]} & deleted
        verified = [s for s in mine if s.verified]
        if verified:
            assert verified[-1].backup_id not in deleted
    for s in plan.delete:
        assert s.when is not None  # unparseable keys never go
        assert not (s.complete and not s.trusted)  # refused manifests stay for inspection
        assert s.when < (cutoff if s.complete else NOW - INCOMPLETE_GRACE)
    # an incomplete set never outlives 24 h
    assert all(s.when >= NOW - INCOMPLETE_GRACE for s in remaining if not s.complete and s.when)
    # idempotent: planning again over what remains deletes nothing more
    assert plan_retention(remaining, NOW, retention_days, min_keep).delete == ()


def test_a_host_with_few_backups_keeps_them_while_another_has_many():
    many = [(d * 86400, HOSTS[0], True, True, False) for d in range(40)]
    few = [(d * 86400 + 45 * 86400, HOSTS[1], True, True, False) for d in range(2)]
    plan = plan_retention(listing(many + few), NOW, 30, 7)
    kept = {s.backup_id for s in plan.keep}
    assert all(s.backup_id in kept for s in listing(few))  # both 45+ days old, still kept
    assert sum(s.host_id == HOSTS[0] for s in plan.keep) == 31  # ages 0..30 days


def test_clock_far_in_the_future_still_keeps_min_keep_and_the_newest_verified():
    spec = [(d * 86400, HOSTS[0], True, True, d == 9) for d in range(10)]
    plan = plan_retention(listing(spec), NOW + dt.timedelta(days=3650), 30, 7)
    assert len(plan.keep) == 8 and len(plan.delete) == 2
    assert any(s.verified for s in plan.keep)


@settings(max_examples=200, deadline=None)
@given(sets_strategy, st.integers(1, 60), st.integers(1, 10))
def test_one_hosts_folders_keep_its_newest_across_them(spec, retention_days, min_keep):
    """One host's retention over its folders (its engine-based id and the SSH-target one an
    older release wrote): its newest `min_keep` are counted across the folders, so an old
    folder ages out instead of keeping `min_keep` sets of its own forever."""
    sets = listing(spec)
    plan = plan_retention(sets, NOW, retention_days, min_keep, lambda s: "one")
    deleted = {s.backup_id for s in plan.delete}
    mine = sorted((s for s in sets if s.complete and s.trusted), key=lambda s: s.when)
    assert not deleted & {s.backup_id for s in mine[-min_keep:]}
    cutoff = NOW - dt.timedelta(days=retention_days)
    newest = {s.backup_id for s in mine[-min_keep:]}
    verified = [s for s in mine if s.verified]
    newest |= {verified[-1].backup_id} if verified else set()
    for s in mine:  # whatever its folder, a set outside the newest goes once it is old
        assert (s.backup_id in deleted) == (s.backup_id not in newest and s.when < cutoff)


def test_an_old_folder_of_one_host_ages_out_only_when_planned_with_its_host():
    old, new = "127-0-0-1-22022-sentry", "sentry-0123456789ab"
    sets = listing([(40 * 86400, old, True, True, False), (3600, new, True, True, False)])
    per_folder = plan_retention(sets, NOW, 30, 1)
    assert per_folder.delete == ()  # each folder's newest is kept: the old one stays forever
    one = plan_retention(sets, NOW, 30, 1, lambda s: "one")
    assert [s.host_id for s in one.delete] == [old]
