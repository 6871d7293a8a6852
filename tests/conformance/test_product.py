"""The product's parsers and decisions fed with what upstream returns (fixtures/, each naming its
source): real Sentry, self-hosted 26.x, taskbroker, compose. Pure: no sandbox."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from blocks import nodestore, sentry_config
from blocks.backup_set import ClickHouseSnapshot, ClickHouseTable
from blocks.clickhouse import checksum_expression, classify, recreated
from blocks.dotenv import parse_env
from blocks.host_compose import parse_ps
from blocks.host_data import project_binds
from blocks.host_sentry import (
    PENDING_ACTIVATIONS,
    BacklogCount,
    migrations_applied,
    parse_version,
    user_exists,
)
from blocks.layouts import SELF_HOSTED, DataVolume, Role
from blocks.sentry_api import LOOKUP_SCOPE, event_lookup_result, store_response_id
from blocks.sentry_host import SentryHost
from blocks.sentry_web import assess_full_health
from blocks.ssh import RemoteCommandError
from blocks.upgrade_plan import HARD_STOPS, plan_upgrade
from flows.cleanup import retention_cleanup, retention_problem
from flows.scaling import AutoscalePolicy, autoscale_target
from flows.shared import assess_data
from tests.conformance.corpus import load, names, sample
from tests.unit.test_backup_set import manifest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", names())
def test_every_fixture_names_its_upstream_source(name):
    source = load(name).source
    assert {"repo", "path", "ref", "how"} <= set(source), name
    assert source["repo"].count("/") == 1 and all(source[k].strip() for k in source), name
    assert source["how"].startswith(("copied", "written from")), name


# 1. /_health/?full: problems are strings; current releases answer 200 with one check
def test_full_health_reads_sentrys_answers():
    ok = sample("sentry_health_full_ok", "full")
    assert assess_full_health(ok["status"], ok["body"].encode()).ok
    bad = sample("sentry_health_full_problem")
    result = assess_full_health(bad["status"], bad["body"].encode())
    problem = json.loads(bad["body"])["problems"][0]
    assert not result.ok and problem[:100] in result.detail
    assert "CeleryAliveCheck" in result.detail  # the failing check, from "healthy"


# 2. nodestore rows are base64 of zlib under md5 node ids
def test_nodestore_rows_decode_as_sentry_writes_them():
    row = sample("sentry_nodestore_row")
    assert nodestore.decode(row["data"]) == row["event"]
    assert nodestore.decode(row["data_from_plain_json_dumps"]) == row["event"]
    event = row["event"]
    assert nodestore.node_id(event["project"], event["event_id"]) == row["node_id"]
    with pytest.raises(nodestore.NodeFormatError, match="base64 of zlib"):
        nodestore.decode(row["serialized"])  # raw JSON is not what Sentry stores


def test_the_drill_reads_a_real_nodestore_row_as_the_newest_payload():
    row = sample("sentry_nodestore_row")
    backup = manifest(newest_event=f"{row['node_id']} 2026-01-01T00:00:00.000000Z")
    results = {r.name: r for r in assess_data(backup, {"auth_user": 1}, APP, row["data"])}
    assert results["newest event payload"].ok, results["newest event payload"].detail
    corrupt = {r.name: r for r in assess_data(backup, {"auth_user": 1}, APP, "not a row")}
    assert not corrupt["newest event payload"].ok


APP = {"superusers": 1, "projects": 0, "issues": 0}


# 3. the event-ID lookup: org:read, its bodies
def test_the_event_lookup_reads_sentrys_answers_and_names_the_scope_it_lacks():
    answers = sample("sentry_eventids_response")
    ok = answers["ok"]
    found = event_lookup_result("h", ok["status"], json.dumps(ok["body"]).encode())
    assert found is not None and found["groupId"] == ok["body"]["groupId"]
    missing = answers["not_found"]
    assert event_lookup_result("h", missing["status"], json.dumps(missing["body"]).encode()) is None
    forbidden = answers["forbidden"]
    with pytest.raises(RemoteCommandError, match="lacks the org:read scope") as info:
        event_lookup_result("h", forbidden["status"], json.dumps(forbidden["body"]).encode())
    assert "permission to perform this action" in str(info.value)


def test_the_probe_asks_for_the_scope_sentry_checks():
    assert "GET = ['org:read'" in load("sentry_eventids_response").notes
    assert LOOKUP_SCOPE == "org:read"
    assert "org:read" in SentryHost.model_fields["api_token"].description
    readme = (ROOT / "README.md").read_text()
    assert "event:read" not in readme and "org:read" in readme


def test_the_store_endpoint_answer_gives_the_event_id():
    answers = sample("sentry_store_response")
    body = answers["store_post"]["body"]
    assert store_response_id("h", "POST", 200, body.encode()) == json.loads(body)["id"]
    empty = answers["envelope_post_without_event_id"]["body"]
    with pytest.raises(RemoteCommandError):
        store_response_id("h", "POST", 200, empty.encode())


# 4. retention: self-hosted keeps SENTRY_EVENT_RETENTION_DAYS=90
def test_self_hosteds_own_retention_is_the_default_and_a_shorter_one_is_refused():
    env = parse_env(sample("selfhosted_env"))
    kept = int(env["SENTRY_EVENT_RETENTION_DAYS"])
    assert kept == SELF_HOSTED.event_retention_days
    assert retention_problem(30, kept, "SENTRY_EVENT_RETENTION_DAYS in .env", False)
    assert retention_problem(kept, kept, "SENTRY_EVENT_RETENTION_DAYS in .env", False) is None
    # the default run (the flow's default, the deployment's parameters) asks for no other figure
    assert retention_cleanup.parameters.properties["event_retention_days"].get("default") is None
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    cleanup = next(d for d in deployments if d["name"] == "retention-cleanup")
    assert "event_retention_days" not in (cleanup.get("parameters") or {})


# CLI outputs
def test_cli_outputs_as_sentry_prints_them():
    cli = sample("sentry_cli_outputs")
    assert parse_version(cli["version"]["stdout"]) == "25.10.0"
    assert parse_version("sentry, version 24.1.0\n") == "24.1.0"
    existing = cli["createuser_existing"]
    assert user_exists(existing["stdout"], "")
    for old in existing["history"].values():
        assert user_exists(old.get("stdout", ""), old.get("stderr", ""))
    assert not user_exists(cli["createuser_new_superuser"]["stdout"], "")
    assert migrations_applied(cli["upgrade_noinput_fresh_install"]["stdout"])
    assert not migrations_applied(cli["upgrade_noinput_up_to_date"]["stdout"])
    captured = cli["upgrade_fresh_install_captured_22_5_0"]["stdout_and_stderr_interleaved"]
    assert migrations_applied(captured)


# compose ps --format json, both forms
def test_compose_ps_both_forms():
    ps = sample("compose_ps_json")
    for text in (ps["v2_21_plus_lines"], ps["pre_2_21_array"]):
        rows = parse_ps(text)
        assert rows and all({"Service", "State", "Health", "ExitCode"} <= set(r) for r in rows)


# 10. the taskbroker's pending count, capped at max_pending_count
def test_the_backlog_query_runs_on_taskbrokers_schema_and_knows_its_cap():
    broker = sample("taskbroker_schema")
    db = sqlite3.connect(":memory:")
    db.executescript(broker["create_sql"])
    for i, status in enumerate(["Pending", "Pending", "Processing", "Claimed", "Delay"]):
        db.execute(
            "INSERT INTO inflight_taskactivations (id, activation, partition, offset, added_at, "
            "processing_attempts, processing_deadline_duration, status) "
            "VALUES (?, x'00', 0, ?, 0, 0, 60, ?)",
            (str(i), i, status),
        )
    assert db.execute(PENDING_ACTIVATIONS).fetchone()[0] == 2
    assert SELF_HOSTED.backlog.max_pending == broker["max_pending_count_default"]
    assert SELF_HOSTED.backlog.db_path == broker["db_path"]


def test_a_backlog_at_the_cap_is_a_floor_not_the_backlog():
    cap = sample("taskbroker_schema", "max_pending_count_default")
    policy = AutoscalePolicy(1, 8, 500, 600)
    at_cap = BacklogCount(cap, cap)
    assert at_cap.capped and "at least" in str(at_cap)
    target, why = autoscale_target(2, at_cap, policy, since_change=10_000)
    assert target == 8 and "at least" in why
    assert autoscale_target(8, at_cap, policy, since_change=10_000)[0] == 8  # never down
    assert autoscale_target(2, BacklogCount(cap - 1, cap), policy, 10_000)[0] == 5


# 8. hard stops: every documented one is planned through
def test_every_documented_hard_stop_is_a_hop():
    stops = sample("docs_hard_stops")
    documented = set(stops["hard_stops_in_copied_text"]) | {
        s["version"] for s in stops["later_additions_from_merged_prs_text_not_read"]
    }
    assert documented <= set(HARD_STOPS)
    assert plan_upgrade("26.4.0", "26.8.0") == ["26.5.0", "26.5.1", "26.7.0", "26.8.0"]


# the self-hosted preset names what upstream's compose file defines
def test_the_self_hosted_preset_matches_upstreams_compose_file():
    compose = sample("selfhosted_compose_services")
    services = set(compose["services"])
    volumes = {v["name"]: v["external"] for v in compose["volumes"]}
    for role, service in SELF_HOSTED.services.items():
        assert service in services, (role, service)
    for volume, ref in SELF_HOSTED.volumes.items():
        assert volumes.get(ref.name) == ref.external, (volume, ref)
    taskbroker = compose["services"][SELF_HOSTED.services[Role.TASKBROKER]]
    assert any(v.startswith("sentry-taskbroker:/opt/sqlite") for v in taskbroker["named_volumes"])


# 11. the set holds what the docs call a full backup, and every repo file a service mounts
KEPT_OUT = {
    "sentry-kafka": "in-flight messages only; a stale log behind Postgres would replay",
    "sentry-zookeeper": "gone since 24.8.0 (KRaft)",
    "sentry-symbolicator": "a cache install.sh deletes on every run",
}


def test_the_self_hosted_set_holds_every_volume_of_the_docs_full_backup():
    docs = sample("docs_backup_scope")
    wanted = set(docs["documented_volumes"]) | set(
        docs["cross_check_selfhosted_26_8_0"]["external_volumes_created_by_install"]
    )
    in_set = {
        SELF_HOSTED.volumes[v].name
        for v in (DataVolume.POSTGRES, DataVolume.CLICKHOUSE, *SELF_HOSTED.backup_volumes)
    }
    assert wanted - set(KEPT_OUT) <= in_set


def test_every_repo_file_a_service_mounts_goes_into_the_config():
    services = sample("selfhosted_compose_services")["services"]
    written = [b.split(":")[0] for s in services.values() for b in s.get("binds", [])]
    relative = sorted({w.removeprefix("./").rstrip("/") for w in written if w.startswith("./")})
    assert {"redis.conf", "clickhouse/config.xml", "sentry", "geoip"} <= set(relative)
    mounts = [{"type": "bind", "source": f"/opt/sentry/{rel}", "target": "/x"} for rel in relative]
    mounts += [
        {"type": "bind", "source": "/var/run/docker.sock", "target": "/var/run/docker.sock"},
        {"type": "bind", "source": "/opt/sentry", "target": "/project"},
        {"type": "volume", "source": "sentry-data", "target": "/data"},
    ]
    config = {"services": {"a": {"volumes": mounts}}}
    assert project_binds(config, "/opt/sentry/") == relative


# 6. Snuba's real ClickHouse tables (its migrations at the tag self-hosted 26.8.0 pins)
def snuba_snapshot() -> ClickHouseSnapshot:
    snuba = sample("snuba_clickhouse_tables")
    tables = []
    for t in snuba["tables"] + [{**v, "engine": "MaterializedView"} for v in snuba["views"]]:
        copied, why = classify(t["engine"])
        tables.append(ClickHouseTable(database="default", name=t["name"], engine=t["engine"],
                                      create=t["create"], copied=copied, why=why))  # fmt: skip
    return ClickHouseSnapshot(version="25.3", database="default", freeze_name="x", tables=tables)


def test_snubas_tables_are_all_known_and_their_ddl_passes_the_manifest_checks():
    snapshot = snuba_snapshot()  # every create is one CREATE of exactly that table
    assert not [t.name for t in snapshot.tables if t.why.startswith("UNKNOWN")]
    assert {t.name for t in snapshot.tables if t.engine == "Merge"} == {"discover_local"}


def test_a_restore_creates_snubas_tables_before_what_reads_them():
    snuba = sample("snuba_clickhouse_tables")
    order = [t.name for t in recreated(snuba_snapshot())]
    assert order.index("discover_local") > max(
        order.index("errors_local"), order.index("transactions_local")
    )
    for view in snuba["views"]:
        assert order.index(view["name"]) > order.index(view["to"].split(".")[-1]), view["name"]


def test_aggregate_states_are_finalized_in_the_checksum():
    snuba = sample("snuba_clickhouse_tables")
    table = next(t for t in snuba["tables"] if t["engine"] == "AggregatingMergeTree")
    states = [n for n, type_ in table["columns"] if type_.startswith("AggregateFunction(")]
    assert states
    expression = checksum_expression([(n, type_, "") for n, type_ in table["columns"]])
    assert all(f"finalizeAggregation(`{n}`)" in expression for n in states)


def test_snubas_nullable_columns_cannot_null_the_checksum():
    errors = next(t for t in sample("snuba_clickhouse_tables")["tables"]
                  if t["name"] == "errors_local")  # fmt: skip
    nullable = [n for n, type_ in errors["columns"] if type_.startswith(("Nullable(",
                "LowCardinality(Nullable("))]  # fmt: skip
    assert len(nullable) > 10  # replay_id, trace_id, user_id, ...: NULL in most real rows
    expression = checksum_expression([(n, type_, "") for n, type_ in errors["columns"]])
    assert all(f"isNull(`{n}`), assumeNotNull(`{n}`)" in expression for n in nullable)


# a restore onto self-hosted: its config files as upstream ships them
def test_a_restore_edits_self_hosteds_config_files_as_its_install_scripts_do():
    fx = sample("selfhosted_sentry_conf_nodestore")
    conf, yml = fx["sentry_conf_py"], fx["config_yml"]
    # a fresh install's nodestore: the passthrough, reading nothing from Postgres
    assert sentry_config.nodestore_reads_through(conf) is False
    edited = sentry_config.with_nodestore_read_through(conf)
    assert sentry_config.nodestore_reads_through(edited) is True
    assert edited.replace(conf.split("{")[0], "").count('"read_through": True') == 1
    # what bootstrap-s3-nodestore.sh's sed makes of the same block, both options before the }
    assert '    "read_through": True,\n    "delete_through": True,\n}' in edited
    assert '"read_through": True' in fx["bootstrap_read_through_edit"]
    assert sentry_config.with_nodestore_read_through(edited) == edited  # idempotent
    # the example's key is the placeholder install.sh replaces; a carried key is kept by it
    assert sentry_config.secret_key(yml) is None
    carried = sentry_config.with_secret_key(yml, "it's-a-guide-key")
    assert sentry_config.secret_key(carried) == "it's-a-guide-key"
    assert carried.count("system.secret-key") == yml.count("system.secret-key")
    assert carried.splitlines()[:-1] == yml.splitlines()[:-1]  # comments kept
    # a Postgres nodestore (the guide's): nothing to edit
    assert sentry_config.nodestore_reads_through("SENTRY_NODESTORE = 'x'\n") is None


def test_every_layout_needs_relay_and_snuba_to_ingest():
    """Ingestion goes only through Relay, reads through Snuba (fixture sentry_store_response's
    notes: getsentry/sentry#19135 removed the Python store endpoint): health requires both on
    every layout, and names the guide's missing ones in one sentence."""
    from blocks.layouts import GUIDE, SELF_HOSTED, Role
    from flows.health import assess_pipeline

    assert "#19135" in load("sentry_store_response").notes
    for layout in (GUIDE, SELF_HOSTED):
        assert set(layout.pipeline) == {Role.RELAY, Role.SNUBA}
    assert {Role.RELAY, Role.SNUBA} <= SELF_HOSTED.required
    guide_only = set(GUIDE.services.values()) - {"sentry-relay", "sentry-snuba"}
    (check,) = assess_pipeline(guide_only, GUIDE)
    assert not check.ok and "cannot ingest" in check.detail
