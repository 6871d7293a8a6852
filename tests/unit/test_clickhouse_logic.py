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
        "toString(sum(cityHash64(`d`, `n.p`, isNull(finalizeAggregation(`c`)), "
        "assumeNotNull(finalizeAggregation(`c`)), isNull(finalizeAggregation(`q`)), "
        "assumeNotNull(finalizeAggregation(`q`)))))"
    )
    assert checksum_expression([("we`ird", "String", "")]) == (
        "toString(sum(cityHash64(`we\\`ird`)))"
    )
    # a NULL in any argument makes cityHash64 NULL, and the sum of the rows NULL with it
    nullable = [("u", "Nullable(String)", ""), ("e", "LowCardinality(Nullable(String))", ""),
                ("f", "Array(Nullable(UInt32))", "")]  # fmt: skip
    assert checksum_expression(nullable) == (
        "toString(sum(cityHash64(isNull(`u`), assumeNotNull(`u`), isNull(`e`), "
        "assumeNotNull(`e`), `f`)))"
    )


def test_a_restore_creates_each_table_before_what_reads_it_and_never_a_kafka_consumer():
    def t(name: str, engine: str, copied: bool = False, why: str = "") -> ClickHouseTable:
        kind = "MATERIALIZED VIEW" if engine == "MaterializedView" else "TABLE"
        create = f"CREATE {kind} default.{name} (x UInt8)"
        return ClickHouseTable(database="default", name=name, engine=engine, copied=copied,
                               create=create, why=why or engine)  # fmt: skip

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


GOOD = {"database": "default", "name": "errors_local", "engine": "ReplacingMergeTree",
        "create": "CREATE TABLE default.errors_local\n(\n    `project_id` UInt64\n) ENGINE = X",
        "copied": True, "why": "frozen", "data_path": "store/3f2/3f2a-uuid/",
        "parts": ["20260101_1_1_0", "all_2_2_0"], "rows": 1, "checksum": "123"}  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "t`; DROP TABLE x", "not a ClickHouse name"),
        ("database", "default` ", "not a ClickHouse name"),
        ("parts", ["all_1_1_0'); DROP TABLE x; --"], "not ClickHouse part names"),
        ("data_path", "../../etc/", "not a path inside"),
        ("data_path", "/var/lib/clickhouse/data/", "not a path inside"),
        ("create", "CREATE TABLE default.other (x UInt8) ENGINE = Log", "not one CREATE"),
        ("create", "DROP TABLE default.errors_local", "not one CREATE"),
        ("checksum", "1 OR 1", "not a number"),
    ],
)
def test_a_manifest_table_that_would_reach_sql_or_a_shell_unchecked_is_refused(
    field, value, message
):
    """Checked on every manifest read, sealed or not (an unsealed manifest is anybody's text)."""
    ClickHouseTable(**GOOD)
    with pytest.raises(ValueError, match=message):
        ClickHouseTable(**{**GOOD, field: value})
    with pytest.raises(ValueError):
        ClickHouseSnapshot(version="18.16.1", database="default", freeze_name="x; rm -rf /",
                           tables=[])  # fmt: skip
