"""The health-check flow through a real Prefect API against both sandbox layouts."""

from __future__ import annotations

import pytest

from blocks.layouts import Role
from blocks.sentry_web import probe_ingestion
from flows.health import UnhealthyError, health_check
from tests.helpers import SHARED

pytestmark = SHARED  # the sandbox's shared stacks (tests/helpers.py)


def test_health_passes_with_ingestion_proven(saved_layout_host, layout_host):
    checks = {c["name"]: c for c in health_check(saved_layout_host)}
    assert {
        "names",
        "web: /_health/",
        "web: /_health/?full",
        "postgres: pg_isready",
        "redis: PING",
        "clickhouse: SELECT 1",
        "disk: docker",
        "postgres: container",
        "worker: container",
        "ingestion pipeline",
        "ingestion: synthetic event",
    } <= set(checks)
    assert all(c["status"] == "ok" for c in checks.values()), checks
    assert "processed in" in checks["ingestion: synthetic event"]["detail"]
    volumes = [n for n in checks if n.startswith("disk: volume ")]
    assert len(volumes) == len(layout_host.stack.volumes)  # every data volume, by its real name
    assert all(layout_host.volume_name(v) in " ".join(volumes) for v in layout_host.stack.volumes)


def test_health_fails_when_nothing_is_ingested_though_health_is_green(
    saved_layout_host, layout_host
):
    worker = layout_host.stack.service(Role.WORKER)
    layout_host.compose("stop", worker)
    try:
        assert layout_host.web_request("/_health/")[0] == 200  # what operators see: green
        stuck = probe_ingestion(layout_host, within=3)
        assert not stuck.ok and "never processed" in stuck.detail
        with pytest.raises(UnhealthyError, match="ingestion: synthetic event"):
            health_check(saved_layout_host, ingestion_within_seconds=3)
    finally:
        layout_host.compose_up(worker, wait=True, timeout=120)
    assert probe_ingestion(layout_host, within=30).ok  # the queued events drain once it is back


def test_health_fails_naming_postgres_when_it_is_stopped(saved_host, sentry_host):
    sentry_host.compose("stop", "sentry-postgres")
    try:
        with pytest.raises(UnhealthyError) as info:
            health_check(saved_host, ingestion_within_seconds=3)
        message = str(info.value)
        assert "postgres: container" in message and "postgres: pg_isready" in message
        # like current Sentry, /_health/ and ?full stay 200: the data checks are what name it
        assert "/_health/?full" not in message and "web: /_health/:" not in message
        assert "redis: PING" not in message  # only what failed is named
    finally:
        sentry_host.compose_up("sentry-postgres", wait=True, timeout=120)
    assert all(c["status"] == "ok" for c in health_check(saved_host))


def test_names_the_host_lacks_fail_naming_the_field_to_set(sandbox, prefect_api, layout):
    from infra.sandbox.prefect_blocks import host_from_connection

    host = host_from_connection(sandbox, layout)
    renamed = host.model_copy(update={"service_names": {Role.WORKER: "no-such-worker"}})
    renamed.save(f"test-renamed-{layout}", overwrite=True)
    with pytest.raises(UnhealthyError) as info:
        health_check(f"test-renamed-{layout}", ingestion_within_seconds=3)
    assert "service 'no-such-worker' (role worker) is not in the compose project" in str(info.value)
    assert "set service_names.worker in the block" in str(info.value)


def test_a_stack_without_relay_and_snuba_fails_health_in_one_sentence(sandbox, prefect_api):
    """The guide's own service list has no Relay and no Snuba (optional in its preset): a host
    block naming services its project lacks stands for such a stack. The check fails in one
    sentence naming both; the other checks go on."""
    from infra.sandbox.prefect_blocks import host_from_connection

    host = host_from_connection(sandbox, "guide")
    bare = {Role.RELAY: "relay-not-here", Role.SNUBA: "snuba-not-here"}
    host.model_copy(update={"service_names": bare}).save("test-no-pipeline", overwrite=True)
    with pytest.raises(UnhealthyError) as info:
        health_check("test-no-pipeline", ingestion_within_seconds=30)
    message = str(info.value)
    assert ("ingestion pipeline: this stack has no Relay (service relay-not-here) and no Snuba "
            "(service snuba-not-here), so it cannot ingest") in message  # fmt: skip
    assert "names" not in message.split("ingestion pipeline")[0]  # optional: not a names error


def test_a_shrinking_disk_fails_the_check_days_before_it_is_full(saved_host, sentry_host):
    """Two past checks recorded (as the check records them) 1 GB-ish of free space lost per day
    at a rate that leaves two days: the check fails naming the forecast, and charts it."""
    import re
    import time

    from prefect.variables import Variable

    from flows.shared import artifact_slug

    _, available = sentry_host.disk_free()
    mb, now = available // 10**6, int(time.time())
    lost = mb // 2  # per day: two days left
    name = artifact_slug(f"disk-{sentry_host.identity}-docker")
    Variable.set(name, [[now - 2 * 86400, mb + 2 * lost], [now - 86400, mb + lost]], overwrite=True)
    try:
        with pytest.raises(UnhealthyError, match="disk forecast: docker: full in") as failure:
            health_check(saved_host, ingestion_within_seconds=30)
        days = float(re.search(r"docker: full in ([0-9.]+) days", str(failure.value)).group(1))
        assert 1.5 < days < 2.5, failure.value
        assert len(Variable.get(name)) == 3  # the check recorded its own sample
    finally:
        Variable.unset(name)
