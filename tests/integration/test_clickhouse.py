"""ClickHouse in the backup set, both layouts: FREEZE, stream, unfreeze; the drill restores it and
compares rows and checksums per table. A modern ClickHouse engine (26.5) holding Snuba's tables in
the sandbox, real SSH, S3."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from blocks import backup_set, clickhouse
from blocks.layouts import Role
from flows.backup import BackupError, backup, clickhouse_snapshot, list_backups, verify_backup
from flows.restore_drill import DrillError, restore_drill
from infra.sandbox.prefect_blocks import store_from_connection
from tests.conformance.corpus import sample
from tests.helpers import SHARED
from tests.integration.test_backup import cut_ssh_when, kill_ssh_sessions

pytestmark = SHARED  # the sandbox's shared stacks (tests/helpers.py)


def ch(host, sql: str) -> str:
    """A query by the operator's own clickhouse-client, inside the ClickHouse container."""
    argv = host.exec_argv(Role.CLICKHOUSE, "clickhouse-client", "--port",
                          str(host.clickhouse_port), "--query", sql)  # fmt: skip
    return host.run(argv, timeout=60).text.strip()


SNUBA_LIKE = ("outcomes_mv", "discover_like", "outcomes_hourly", "replacing", "new_migration",
              "odd_engine")  # fmt: skip


@pytest.fixture()
def extra_tables(layout_host):
    """A table a newer Snuba migration added after the stack started, an engine sentry-ops has
    no rule for, and the shapes of Snuba's real tables (tests/conformance/fixtures/
    snuba_clickhouse_tables.json): an AggregatingMergeTree with aggregate-state columns fed by a
    materialized view `TO` it, a Merge table over others (discover_local), a ReplacingMergeTree
    whose two parts a merge would collapse."""
    db = layout_host.stack.clickhouse_database
    for table in SNUBA_LIKE:
        ch(layout_host, f"DROP TABLE IF EXISTS {db}.{table}")
    ch(layout_host, f"CREATE TABLE {db}.new_migration (id UInt64, note String) "
                    "ENGINE = MergeTree ORDER BY id")  # fmt: skip
    ch(layout_host, f"CREATE TABLE {db}.odd_engine (x UInt8) ENGINE = TinyLog")
    ch(layout_host, f"CREATE TABLE {db}.outcomes_hourly (note String, times "
                    "AggregateFunction(count), ids AggregateFunction(uniq, UInt64), q "
                    "AggregateFunction(quantiles(0.5, 0.9), Float64)) ENGINE = "
                    "AggregatingMergeTree ORDER BY note")  # fmt: skip
    ch(layout_host, f"CREATE MATERIALIZED VIEW {db}.outcomes_mv TO {db}.outcomes_hourly AS "
                    "SELECT note, countState() AS times, uniqState(id) AS ids, "
                    "quantilesState(0.5, 0.9)(toFloat64(id)) AS q FROM "
                    f"{db}.new_migration GROUP BY note")  # fmt: skip
    ch(layout_host, f"CREATE TABLE {db}.discover_like (id UInt64, note String) ENGINE = "
                    f"Merge({db}, '^new_migration$')")  # fmt: skip
    ch(layout_host, f"CREATE TABLE {db}.replacing (k UInt8, v String) ENGINE = "
                    "ReplacingMergeTree ORDER BY k")  # fmt: skip
    for table in ("replacing", "outcomes_hourly"):  # their parts stay apart until the backup
        ch(layout_host, f"SYSTEM STOP MERGES {db}.{table}")
    for v in ("old", "new"):  # two parts, one key: a merge would leave one row of two
        ch(layout_host, f"INSERT INTO {db}.replacing VALUES (1, '{v}')")
    ch(layout_host, f"INSERT INTO {db}.new_migration VALUES (1, 'a'), (2, 'ü\\ttab')")
    ch(layout_host, f"INSERT INTO {db}.new_migration VALUES (3, 'a')")
    yield layout_host
    for table in SNUBA_LIKE:
        ch(layout_host, f"DROP TABLE IF EXISTS {db}.{table}")


def test_snapshot_restores_with_equal_rows_and_checksums(
    layout, extra_tables, saved_layout_host, store_name, sandbox
):
    host = extra_tables
    sent = [host.send_event({"message": f"clickhouse {i}", "level": "error"}) for i in range(5)]
    deadline = time.monotonic() + 60
    while any(host.lookup_event(e) is None for e in sent) and time.monotonic() < deadline:
        time.sleep(0.5)
    taken = backup(saved_layout_host, store_name)
    assert clickhouse.leftover_freezes(host) == []  # the frozen copy is gone
    store = store_from_connection(sandbox, prefix=store_name)
    manifest = backup_set.load(store, taken["host_id"], taken["backup_id"])
    snapshot = manifest.clickhouse
    assert snapshot is not None
    assert snapshot.freeze_name == clickhouse.freeze_name(taken["backup_id"])
    tables = {t.name: t for t in snapshot.tables}
    assert tables["new_migration"].copied and tables["new_migration"].rows == 3
    # aggregate states checksummed (18.16 refuses cityHash64 of a state: every backup failed)
    assert tables["outcomes_hourly"].copied and tables["outcomes_hourly"].checksum
    assert tables["replacing"].rows == 2 and not tables["discover_like"].copied
    assert tables["errors_local"].rows >= 5 and snapshot.newest_event
    odd = tables["odd_engine"]
    assert not odd.copied and odd.why.startswith("UNKNOWN ENGINE TinyLog"), odd
    assert "ENGINE = TinyLog" in odd.create
    assert any(o.name == "clickhouse" for o in manifest.objects)

    drill_host = "drill-host" if layout == "self-hosted" else None
    result = restore_drill(saved_layout_host, store_name, drill_host=drill_host)
    checks = {c["name"]: c for c in result["checks"]}
    assert result["passed"], result["checks"]
    for name in ("errors_local", "new_migration", "outcomes_hourly", "replacing"):
        assert checks[f"clickhouse {name}"]["status"] == "ok", checks[f"clickhouse {name}"]
        assert "checksum equal" in checks[f"clickhouse {name}"]["detail"]
    for name in ("discover_like", "outcomes_mv"):  # recreated from their DDL, and there
        assert checks[f"clickhouse {name}"]["detail"].endswith("recreated from its DDL")
    assert checks["clickhouse odd_engine"]["status"] == "warning"
    assert checks["clickhouse newest event"]["status"] == "ok"
    # Snuba's real table set (its migrations at 26.8.0, both stacks' Snuba): every table back
    # with its rows and checksum, its Merge table and materialized views recreated and there
    snuba = sample("snuba_clickhouse_tables")
    for table in snuba["tables"]:
        detail = checks[f"clickhouse {table['name']}"]["detail"]
        if table["engine"].endswith("MergeTree"):
            assert "checksum equal" in detail, (table["name"], detail)
        else:
            assert detail.endswith("recreated from its DDL"), (table["name"], detail)
    for view in snuba["views"]:
        assert checks[f"clickhouse {view['name']}"]["detail"].endswith("recreated from its DDL")


def test_an_ssh_cut_while_frozen_leaves_no_frozen_copy_and_no_manifest(
    saved_host, sentry_host, store_name, sandbox
):
    # ballast: a table whose frozen parts take seconds to stream, so the cut lands while frozen
    # (Snuba's tables are near empty here and stream in a blink)
    db = sentry_host.stack.clickhouse_database
    ch(sentry_host, f"CREATE TABLE IF NOT EXISTS {db}.ssh_cut_ballast (id UInt64, blob String) "
                    "ENGINE = MergeTree ORDER BY id")  # fmt: skip
    ch(sentry_host, f"INSERT INTO {db}.ssh_cut_ballast SELECT number, randomString(200) "
                    "FROM numbers(1000000)")  # fmt: skip
    container = sentry_host.service_containers(sentry_host.stack.service(Role.CLICKHOUSE))[0]
    # a frozen copy's folder (shadow/increment.txt, ClickHouse's FREEZE counter, stays)
    shadow = ["docker", "exec", container["ID"], "find", "/var/lib/clickhouse/shadow",
              "-mindepth", "1", "-maxdepth", "1", "-type", "d"]  # fmt: skip
    watcher, cut = cut_ssh_when(
        lambda: bool(subprocess.run(shadow, capture_output=True, text=True).stdout.strip())
    )
    with pytest.raises(BackupError):
        backup(saved_host, store_name, retries=0)
    watcher.join()
    assert cut.is_set(), "the connection was never cut while frozen: the test tested nothing"
    deadline = time.monotonic() + 30  # the clickhouse task's own clean-up may finish last
    while clickhouse.leftover_freezes(sentry_host) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert clickhouse.leftover_freezes(sentry_host) == []
    store = store_from_connection(sandbox, prefix=store_name)
    assert not any(s.complete for s in backup_set.list_sets(store))
    ch(sentry_host, f"DROP TABLE {db}.ssh_cut_ballast")


def test_clickhouse_down_fails_before_anything_is_uploaded(
    saved_host, sentry_host, store_name, sandbox
):
    service = sentry_host.stack.service(Role.CLICKHOUSE)
    sentry_host.compose("stop", service, timeout=120)
    try:
        down = r"ClickHouse \(sentry-clickhouse\) is not running"
        with pytest.raises(clickhouse.ClickHouseError, match=down):
            backup(saved_host, store_name)
    finally:
        sentry_host.compose_up(service, wait=True, timeout=300)
    store = store_from_connection(sandbox, prefix=store_name)
    assert backup_set.list_sets(store) == []  # no set, not even an incomplete one


def test_a_snapshot_alone_is_its_own_set_that_drills_pass_over(saved_host, sentry_host, store_name):
    full = backup(saved_host, store_name)
    alone = clickhouse_snapshot(saved_host, store_name)
    assert alone["tables"] >= 1 and alone["backup_id"] > full["backup_id"]
    assert clickhouse.leftover_freezes(sentry_host) == []
    verified = verify_backup(saved_host, store_name, alone["backup_id"])
    assert verified["verified"] == (1 if alone["bytes"] else 0)
    listed = {b["backup_id"]: b for b in list_backups(store_name, saved_host)}
    assert set(listed) == {full["backup_id"], alone["backup_id"]}
    assert listed[alone["backup_id"]]["scope"] == "clickhouse"
    with pytest.raises(DrillError, match="snapshot taken alone"):
        restore_drill(saved_host, store_name, backup_id=alone["backup_id"])


def test_the_merges_dead_man_switch_runs_after_its_session_is_gone(sentry_host):
    """What restarts ClickHouse merges if a backup dies between STOP MERGES and START MERGES:
    a command the host runs later, detached from the SSH session that asked for it."""
    marker = Path(f"/tmp/sentry-ops-later-{uuid.uuid4().hex}")
    sentry_host.run(sentry_host.later_argv(2, ["touch", str(marker)]), timeout=10)
    kill_ssh_sessions()  # the session (and the worker's connection) is gone
    assert not marker.exists()
    deadline = time.monotonic() + 20
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists()
    marker.unlink()
