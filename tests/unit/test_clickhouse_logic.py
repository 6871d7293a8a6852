"""ClickHouse snapshot decisions that need no server: engines, paths, names."""

from __future__ import annotations

import pytest

from blocks.backup_set import ClickHouseSnapshot, ClickHouseTable
from blocks.clickhouse import (
    ClickHouseError,
    checksum_expression,
    classify,
    freeze_name,
    quoted,
    recreated,
    relative_data_path,
)


@pytest.mark.parametrize(
    "engine",
    ["MergeTree", "ReplacingMergeTree", "SummingMergeTree", "AggregatingMergeTree",
     "CollapsingMergeTree", "VersionedCollapsingMergeTree", "ReplicatedMergeTree",
     "ReplicatedReplacingMergeTree"],
)  # fmt: skip
def test_the_mergetree_family_is_copied(engine):
    assert classify(engine)[0]


@pytest.mark.parametrize(
    ("engine", "why"),
    [
        ("MaterializedView", "recreated from its DDL"),
        ("Kafka", "its data is in Kafka"),
        ("View", "no data of its own"),
        ("Distributed", "its data is in local tables"),
        ("TinyLog", "UNKNOWN ENGINE TinyLog"),
        ("SomethingNew", "UNKNOWN ENGINE SomethingNew"),
    ],
)
def test_other_engines_say_why_they_are_not_copied(engine, why):
    copied, text = classify(engine)
    assert not copied and why in text


def test_data_paths_become_relative_to_the_data_dir():
    assert relative_data_path("/var/lib/clickhouse/data/sentry/errors_local/") == (
        "data/sentry/errors_local/"
    )
    assert relative_data_path("/var/lib/clickhouse/store/3a1/3a1f-uuid/") == "store/3a1/3a1f-uuid/"
    assert relative_data_path("/srv/ch/data/default/t") == "data/default/t/"
    with pytest.raises(ClickHouseError, match="cannot place"):
        relative_data_path("/elsewhere/t/")


def test_freeze_names_need_no_escaping_and_odd_names_are_refused():
    name = freeze_name("20261129T100334Z-127-0-0-1-22022-sentry")
    assert name == "20261129T100334Z_127_0_0_1_22022_sentry"
    assert quoted("default", "errors_local") == "`default`.`errors_local`"
    with pytest.raises(ClickHouseError, match="unusual characters"):
        quoted("default", "x`; DROP TABLE y")


def test_the_checksum_hashes_what_select_star_reads_and_aggregate_states_finalized():
    columns = [("d", "Date", "", ""), ("m", "UInt64", "MATERIALIZED", "x*2"),
               ("n.p", "Array(String)", "", ""), ("a", "UInt64", "ALIAS", "x+1"),
               ("c", "AggregateFunction(count)", "", ""),
               ("q", "AggregateFunction(quantiles(0.5, 0.9), Float64)", "", "")]  # fmt: skip
    assert checksum_expression(columns) == (
        "toString(sum(cityHash64(`d`, `n.p`, finalizeAggregation(`c`), finalizeAggregation(`q`))))"
    )
    assert checksum_expression([("we`ird", "String", "")]) == (
        "toString(sum(cityHash64(`we\\`ird`)))"
    )


def test_a_restore_creates_each_table_before_what_reads_it_and_never_a_kafka_consumer():
    def t(name: str, engine: str, copied: bool = False, why: str = "") -> ClickHouseTable:
        return ClickHouseTable(database="default", name=name, engine=engine, create="CREATE ...",
                               copied=copied, why=why or engine)  # fmt: skip

    snapshot = ClickHouseSnapshot(version="25.3", database="default", freeze_name="f", tables=[
        t("outcomes_mv", "MaterializedView"), t("discover_local", "Merge"),
        t("errors_local", "ReplacingMergeTree", True), t("consumer", "Kafka"),
        t("odd", "TinyLog", why="UNKNOWN ENGINE TinyLog"),
        t("outcomes_hourly_local", "AggregatingMergeTree", True), t("dist", "Distributed"),
    ])  # fmt: skip
    assert [x.name for x in recreated(snapshot)] == [
        "errors_local",
        "outcomes_hourly_local",
        "discover_local",
        "outcomes_mv",
    ]
