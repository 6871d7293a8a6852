"""Point-in-time recovery's pure parts: which WAL a replay needs, what a replayed database must
hold, when the slot fails health, when shipping is behind, and what is refused up front."""

from __future__ import annotations

import datetime as dt

import pytest

from blocks import backup_set as bs
from blocks import postgres, wal, wal_archive
from blocks.restore import PointInTime, RestoreRefused, assess_point_in_time, plan_point_in_time
from flows.health import assess_wal_slot
from flows.wal_archiving import assess
from tests.unit.test_backup_set import manifest, store

T0 = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)


def seg(n: int, tli: int = 1, log: int = 0) -> str:
    return f"{tli:08X}{log:08X}{n:08X}"


def test_segment_positions_run_across_logs_and_gaps_are_found_per_timeline():
    assert wal_archive.position(seg(0xFF)) + 1 == wal_archive.position(seg(0, log=1))
    assert wal_archive.gaps([seg(3), seg(4), seg(6), seg(5, tli=2)]) == [seg(5)]
    assert wal_archive.gaps([seg(0xFF), seg(0, log=1)]) == []
    with pytest.raises(bs.SetError, match="not a WAL segment"):
        wal_archive.position("00000001.history")


def test_a_replay_needs_every_history_and_the_segments_from_the_base_on():
    found = {n: f"k/{n}" for n in [seg(1), seg(2), seg(3), seg(3, tli=2), "00000002.history"]}
    assert wal_archive.needed(found, seg(2)) == [
        "00000002.history", seg(2), seg(3), seg(3, tli=2)
    ]  # fmt: skip
    with pytest.raises(bs.SetError, match=r"has no segment \w+ \(the base backup's first\)"):
        wal_archive.needed(found, seg(9))
    del found[seg(2)]
    found[seg(4)] = "k"
    with pytest.raises(bs.SetError, match="misses 1 segment"):
        wal_archive.needed(found, seg(1))


def base(at: dt.datetime = T0) -> bs.PostgresBase:
    return bs.PostgresBase(
        system_identifier="7716408457145831444",
        timeline=1,
        wal_start=seg(2),
        finished_at=at,
        server_version="15.10",
    )


def head(mark: dt.datetime) -> wal_archive.Head:
    return wal_archive.Head(
        host_id="h-22-p",
        system_identifier="7716408457145831444",
        timeline=1,
        newest_segment=seg(9),
        newest_mark=mark,
        shipped_at=mark,
        segments=8,
    )


def pitr(target: dt.datetime | None, mark: dt.datetime) -> PointInTime:
    return PointInTime(target, "h-22-p", base(), head(mark))


APP = {"users": 1, "superusers": 1, "projects": 1, "issues": 3}


def minutes(*ms: float) -> list[dt.datetime]:
    return [T0 + dt.timedelta(minutes=m) for m in ms]


def by_name(results) -> dict:
    return {r.name: r for r in results}


def test_a_replay_to_the_newest_point_must_hold_the_archives_newest_mark():
    newest = T0 + dt.timedelta(minutes=12)
    plan = pitr(None, newest)
    ok = by_name(assess_point_in_time(manifest(), plan, newest, minutes(4, 8, 12), APP))
    assert ok["rows written after the base backup"].ok
    assert "3 after the base backup" in ok["rows written after the base backup"].detail
    short = assess_point_in_time(manifest(), pitr(None, newest), newest, minutes(4, 8), APP)
    assert not by_name(short)["rows written after the base backup"].ok


def test_a_replay_to_a_target_holds_productions_marks_up_to_it_and_none_after():
    target = T0 + dt.timedelta(minutes=9)
    plan = pitr(target, T0 + dt.timedelta(minutes=12))
    good = by_name(
        assess_point_in_time(manifest(), plan, target, minutes(4, 8), APP, minutes(4, 8))
    )
    assert all(r.ok for r in good.values()), good
    late = by_name(assess_point_in_time(manifest(), plan, target, minutes(4, 8, 12), APP))
    assert not late["nothing after the target"].ok
    missing = by_name(
        assess_point_in_time(manifest(), plan, target, minutes(4), APP, minutes(4, 8))
    )
    assert not missing["rows written after the base backup"].ok
    assert "missing 1 of production's marks" in missing["rows written after the base backup"].detail


def test_what_a_point_in_time_restore_refuses_before_anything_changes():
    s = store()
    with pytest.raises(RestoreRefused, match="target_time needs method point-in-time"):
        plan_point_in_time(s, manifest(), T0, "dump")
    with pytest.raises(RestoreRefused, match="has no base backup"):
        plan_point_in_time(s, manifest(), None, "point-in-time")
    assert plan_point_in_time(s, manifest(), None, "auto") is None  # the dump, as before


def slot(kept: int, active: bool) -> wal.WalStatus:
    cluster = postgres.Cluster("1", "00000001", seg(3))
    return wal.WalStatus("running" if active else "exited", wal.SlotState(active, kept), cluster)


def test_an_abandoned_slot_fails_health_before_it_fills_the_disk_and_says_how_to_drop_it():
    (none,) = assess_wal_slot(
        wal.WalStatus("missing", None, postgres.Cluster("1", "1", seg(1))), 0, 10
    )
    assert none.ok and "not armed" in none.detail
    (fine,) = assess_wal_slot(slot(50_000_000, True), 100_000_000_000, 10)
    assert fine.ok
    (half,) = assess_wal_slot(slot(3_000_000_000, False), 5_000_000_000, 10)
    assert not half.ok and "INACTIVE" in half.detail and "stop-wal-archiving" in half.detail
    (over,) = assess_wal_slot(slot(11_000_000_000, True), 500_000_000_000, 10)
    assert not over.ok


def test_shipping_behind_the_rpo_target_fails_the_run():
    mark = T0
    shipped = wal.Shipped(
        postgres.Cluster("1", "00000001", seg(4)), mark, seg(3), [seg(3)], 4096, head(mark)
    )
    on_time = by_name(assess(shipped, slot(16 << 20, True), T0 + dt.timedelta(seconds=20), 300, 5))
    assert on_time["shipping lag"].ok and on_time["shipped"].status == "done"
    late = by_name(assess(shipped, slot(16 << 20, True), T0 + dt.timedelta(minutes=6), 300, 5))
    assert not late["shipping lag"].ok and "360.0 s behind" in late["shipping lag"].detail


def test_a_base_backup_is_an_object_kind_of_its_own():
    assert bs.file_name(bs.Kind.POSTGRES_BASE, "", "zstd", True) == "postgres-base.tar.zst.enc"
    assert bs.object_name(bs.Kind.POSTGRES_BASE) == "postgres-base"
    assert manifest(postgres_base=base()).postgres_base == base()


class HeadStore:
    """A store whose only object is one cluster's sealed WAL head."""

    def __init__(self, head: wal_archive.Head) -> None:
        self.inner, self.head = store(), head
        self.prefix, self.backup_key = self.inner.prefix, self.inner.backup_key

    def get_bytes(self, key: str) -> bytes | None:
        return bs.sealed_json(self.inner, self.head) if key.endswith("/head.json") else None


def test_auto_replays_only_when_the_archive_holds_something_newer_than_the_set():
    taken = manifest(postgres_base=base())
    stale = HeadStore(head(T0 - dt.timedelta(minutes=1)))
    assert plan_point_in_time(stale, taken, None, "auto") is None  # type: ignore[arg-type]
    fresh = HeadStore(head(T0 + dt.timedelta(minutes=4)))
    plan = plan_point_in_time(fresh, taken, None, "auto")  # type: ignore[arg-type]
    assert plan is not None and plan.target_time is None
    with pytest.raises(RestoreRefused, match="later than the archive surely holds"):
        plan_point_in_time(fresh, taken, T0 + dt.timedelta(minutes=5), "auto")  # type: ignore[arg-type]
    with pytest.raises(RestoreRefused, match=r"before set \S+ base backup ended"):
        plan_point_in_time(fresh, taken, T0 - dt.timedelta(minutes=5), "auto")  # type: ignore[arg-type]


def test_the_shipping_stream_gives_each_file_whole_and_a_cut_one_fails():
    import io

    one, two = b"\x28\xb5\x2f\xfd" + b"a" * 100, b"z" * 7
    body = f"{seg(3)} {len(one)}\n".encode() + one + f"00000002.history {len(two)}\n".encode() + two
    assert list(wal.unpack(io.BytesIO(body))) == [(seg(3), one), ("00000002.history", two)]
    with pytest.raises(wal.WalError, match=r"cut in 000000010000000000000003: 50 of 104"):
        list(wal.unpack(io.BytesIO(body[: len(seg(3)) + 5 + 50])))
    with pytest.raises(wal.WalError, match="not a WAL file"):
        list(wal.unpack(io.BytesIO(b"../etc/passwd 3\nabc")))
