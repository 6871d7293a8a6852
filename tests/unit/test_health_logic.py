from __future__ import annotations

import json

from blocks.host_compose import parse_ps
from blocks.layouts import GUIDE, SELF_HOSTED
from blocks.sentry_web import assess_full_health
from flows.health import assess_containers, assess_disk, assess_pipeline

DEFINED = {
    "sentry",
    "sentry-worker",
    "sentry-cron",
    "sentry-postgres",
    "sentry-redis",
    "sentry-clickhouse",
}


def row(service: str, state: str = "running", health: str = "") -> dict:
    return {"Name": f"p-{service}-1", "Service": service, "State": state, "Health": health}


def healthy_rows() -> list[dict]:
    return [row(s, health="healthy" if s != "sentry-worker" else "") for s in sorted(DEFINED)]


def test_parse_ps_reads_ndjson_and_arrays():
    rows = healthy_rows()
    ndjson = "\n".join(json.dumps(r) for r in rows) + "\n"
    assert parse_ps(ndjson) == rows
    assert parse_ps(json.dumps(rows)) == rows
    assert parse_ps("  \n") == []


def test_all_running_is_healthy_and_absent_optional_roles_are_not_checked():
    checks = assess_containers(healthy_rows(), DEFINED, GUIDE)
    assert all(c.ok for c in checks)
    names = {c.name for c in checks}
    assert "kafka: container" not in names  # not defined in this project, and optional
    assert "postgres: container" in names


def test_stopped_or_unhealthy_or_missing_fails_naming_the_role():
    rows = [r for r in healthy_rows() if r["Service"] != "sentry-cron"]
    rows = [
        row("sentry-postgres", "exited") if r["Service"] == "sentry-postgres" else r for r in rows
    ]
    rows.append(row("sentry-worker", "running"))  # a scaled second worker
    rows = [row("sentry", health="unhealthy") if r["Service"] == "sentry" else r for r in rows]
    failed = {c.name: c.detail for c in assess_containers(rows, DEFINED, GUIDE) if not c.ok}
    assert set(failed) == {"postgres: container", "cron: container", "web: container"}
    assert "exited" in failed["postgres: container"]
    assert "no container" in failed["cron: container"]


def test_a_required_role_missing_from_the_project_fails():
    checks = assess_containers(healthy_rows(), DEFINED - {"sentry-redis"}, GUIDE)
    failed = [c for c in checks if not c.ok]
    assert [c.name for c in failed] == ["redis: container"]


def test_disk_threshold_per_path():
    out = (
        "Filesystem 1-B Used Available Capacity Mounted on\n"
        "/dev/vda 252000000000 22000000000 80000000000 22% /\n"
        "/dev/vdb 10000000000 9000000000 1000000000 90% /volumes/postgres\n"
    )
    ok, full = assess_disk(out, 5, ["docker", "volume postgres"])
    assert ok.ok and ok.name == "disk: docker" and "80.0 GB free" in ok.detail
    assert not full.ok and full.name == "disk: volume postgres" and "1.0 GB free" in full.detail


def test_full_health_names_sentrys_problems():
    body = (
        b'{"problems":["Background workers haven\'t checked in recently."],'
        b'"healthy":{"CeleryAliveCheck":false}}'
    )
    bad = assess_full_health(500, body)
    assert not bad.ok and "Background workers haven't checked in" in bad.detail
    assert "failing: CeleryAliveCheck" in bad.detail
    assert assess_full_health(200, b'{"problems":[],"healthy":{"WarningStatusCheck":true}}').ok
    assert not assess_full_health(502, b"<html>Bad Gateway</html>").ok


def test_a_guide_stack_without_relay_and_snuba_cannot_ingest_and_health_says_why():
    """The guide's own service list (no Relay, no Snuba): one failed check, one sentence naming
    both services a working guide-shaped install adds; with them, the check passes."""
    (check,) = assess_pipeline(DEFINED, GUIDE)
    assert not check.ok and check.name == "ingestion pipeline"
    assert check.detail.startswith(
        "this stack has no Relay (service sentry-relay) and no Snuba (service sentry-snuba), "
        "so it cannot ingest"
    ), check.detail
    (check,) = assess_pipeline(DEFINED | {"sentry-relay"}, GUIDE)
    assert not check.ok and "no Snuba (service sentry-snuba)" in check.detail
    assert "Relay (service" not in check.detail.split("so it")[0]
    (check,) = assess_pipeline(DEFINED | {"sentry-relay", "sentry-snuba"}, GUIDE)
    assert check.ok
    # optional on the guide: their containers are checked only where the project defines them
    names = {c.name for c in assess_containers(healthy_rows(), DEFINED, GUIDE)}
    assert "relay: container" not in names
    assert {"relay", "snuba-api"} <= set(SELF_HOSTED.services.values())
