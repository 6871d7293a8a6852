"""Point-in-time recovery (issue 28) through real SSH, Docker, Postgres, S3 and Prefect: the WAL
archive armed and shipped by its flow, a base backup in the nightly set, a shipper stopped for a
while and restarted without a gap, a guide host lost and restored to minutes before the loss,
and self-hosted proved by the PITR drill on the drill host (its volumes are external)."""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from blocks import backup_set, postgres, wal, wal_archive
from flows.backup import backup
from flows.health import health_check
from flows.restore import restore
from flows.restore_drill import pitr_drill
from flows.wal_archiving import ship_wal, stop_wal_archiving
from infra.sandbox.prefect_blocks import store_from_connection
from tests.helpers import SHARED
from tests.integration.test_restore import stack_of_its_own

PITR_SLOT = 10  # ports of its own (infra/sandbox/stacks.py StackPorts.slot)
TABLE = "pitr_rows"  # a table the test writes, as Sentry writes its own


@pytest.fixture()
def pitr_stack(sandbox, prefect_api) -> Iterator[dict]:
    stacks = stack_of_its_own(sandbox, PITR_SLOT)
    stack = next(stacks)
    yield stack
    wal.forget_local(stack["host"])  # not the compose project's: the shipper and its volume
    next(stacks, None)


class Writer:
    """Rows into TABLE, one every `every` seconds, each committed alone (autocommit), until
    stopped: the writes a host takes between and after shipping runs."""

    def __init__(self, host, every: float = 0.2) -> None:
        self.host, self.every = host, every
        self.stop = threading.Event()
        self.error: BaseException | None = None
        with postgres.psql(host) as db:
            db.rows(f"CREATE TABLE IF NOT EXISTS {TABLE} (at timestamptz PRIMARY KEY "
                    "DEFAULT clock_timestamp())")  # fmt: skip
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with postgres.psql(self.host) as db:
                while not self.stop.is_set():
                    db.rows(f"INSERT INTO {TABLE} DEFAULT VALUES")
                    time.sleep(self.every)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert self.error is None, self.error


def rows(host) -> list[dt.datetime]:
    with postgres.psql(host) as db:
        return [
            dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
            for (v,) in db.rows(
                "SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') "
                f"FROM {TABLE} ORDER BY at"
            )
        ]


def test_a_lost_guide_host_comes_back_to_the_last_shipping_and_a_stopped_shipper_leaves_no_gap(
    pitr_stack, store_name, sandbox
):
    host, name = pitr_stack["host"], pitr_stack["name"]
    first = ship_wal(name, store_name)  # arms it: slot, shipper, marks table
    assert first["segments"] >= 1 and first["slot_retained_bytes"] is not None
    taken = backup(name, store_name)  # armed: the nightly set takes a base backup too
    store = store_from_connection(sandbox, prefix=store_name)
    manifest = backup_set.load(store, taken["host_id"], taken["backup_id"])
    assert manifest.postgres_base is not None
    assert "postgres-base" in [o.name for o in manifest.objects]
    writer = Writer(host)
    try:
        for _ in range(2):
            time.sleep(3)
            ship_wal(name, store_name)

        # the shipper stopped (a crash, a reboot that did not bring it back): the slot keeps
        # what it has not received, Postgres goes on writing, health says so
        subprocess.run(["docker", "stop", "-t", "1", wal.shipper(host)], check=True,
                       capture_output=True)  # fmt: skip
        down_at = time.monotonic()
        with postgres.psql(host) as db:  # WAL while it is down (more than one segment)
            db.rows("CREATE TABLE pitr_ballast AS SELECT g, md5(g::text) AS h "
                    "FROM generate_series(1, 300000) g")  # fmt: skip
            db.rows("SELECT pg_switch_wal()")
        time.sleep(3)
        state = wal.status(host)
        assert state.shipper == "exited" and state.slot and not state.slot.active
        kept_while_down = state.slot.retained_bytes
        assert kept_while_down > 16 << 20, kept_while_down
        checks = {c["name"]: c for c in health_check(name, ingestion_within_seconds=60)}
        assert "INACTIVE" in checks["wal archiving: slot"]["detail"]

        # ship-wal starts it again; it resumes where it stopped: no segment missing
        again = ship_wal(name, store_name)
        down_for = time.monotonic() - down_at
        assert len(again["shipped"]) >= 2, again
        names = wal_archive.names(store, taken["host_id"], again["system_identifier"])
        segments = sorted(n for n in names if wal_archive.SEGMENT.match(n))
        assert wal_archive.gaps(segments) == []
        assert wal_archive.position(segments[0]) <= wal_archive.position(
            manifest.postgres_base.wal_start
        )
        print(f"\nshipper down {down_for:.1f} s, slot kept {kept_while_down / 1e6:.1f} MB, "
              f"{len(again['shipped'])} segments shipped after, no gap in "
              f"{len(segments)}")  # fmt: skip
        time.sleep(3)
        last = ship_wal(name, store_name)
        time.sleep(4)  # rows written after the last shipping: what the loss takes
    finally:
        writer.finish()
    written = rows(host)
    lost_at = dt.datetime.now(dt.UTC)

    # the host is lost: its stack, volumes, directory, and the shipper with its local WAL
    host.compose_down(remove_volumes=True, stop_timeout=2)
    host.remove_tree(host.project_dir)
    wal.forget_local(host)

    result = restore(name, store_name)  # method auto: the base, then the archive to its end
    assert result["passed"], result["failed"]
    checks = {c["name"]: c for c in result["checks"]}
    assert checks["rows written after the base backup"]["status"] == "ok", checks
    back = rows(host)
    mark = dt.datetime.fromisoformat(last["mark"])
    assert set(back) <= set(written)
    assert {r for r in written if r <= mark - dt.timedelta(seconds=1)} <= set(back)
    newest = max(back)
    assert newest >= mark - dt.timedelta(seconds=1)
    rpo = (lost_at - newest).total_seconds()
    print(f"restored to {newest:%H:%M:%S.%f}Z: {len(back)} of {len(written)} rows, "
          f"RPO {rpo:.1f} s (loss at {lost_at:%H:%M:%S}Z, last shipping's mark "
          f"{mark:%H:%M:%S}Z), RTO {result['rto_seconds']} s")  # fmt: skip
    assert rpo < 60  # shipping every few seconds here; every 4 min by default: RPO <= ~5 min
    assert result["point"] and result["rpo_seconds"] < 120


@SHARED  # the shared self-hosted stack and the drill host's engine
@pytest.mark.parametrize("layout", ["self-hosted"])
def test_the_pitr_drill_replays_self_hosted_to_minutes_ago_on_the_drill_host(
    layout, saved_layout_host, layout_host, store_name, sandbox
):
    host, name = layout_host, saved_layout_host
    try:
        ship_wal(name, store_name)
        backup(name, store_name)
        writer = Writer(host, every=0.5)
        try:
            for _ in range(3):
                time.sleep(4)
                ship_wal(name, store_name)
        finally:
            writer.finish()
        written = rows(host)
        result = pitr_drill(name, store_name, drill_host="drill-host", minutes_ago=0.1)
        assert result["passed"], result["failed"]
        checks = {c["name"]: c for c in result["checks"]}
        assert checks["nothing after the target"]["status"] == "ok"
        assert checks["rows written after the base backup"]["status"] == "ok"
        point = dt.datetime.fromisoformat(result["point"])
        assert any(r > point for r in written) and any(r <= point for r in written)
        print(f"\nself-hosted PITR drill: point {point:%H:%M:%S.%f}Z, RTO "
              f"{result['rto_seconds']} s, RPO {result['rpo_seconds']} s")  # fmt: skip
    finally:
        done = stop_wal_archiving(name)
        with postgres.psql(host) as db:
            db.rows(f"DROP TABLE IF EXISTS {TABLE}")
    assert "slot sentry_ops dropped" in done["detail"]
    assert wal.status(host).slot is None
