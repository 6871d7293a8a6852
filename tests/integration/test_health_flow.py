"""The health-check flow through a real Prefect API against both sandbox layouts."""

from __future__ import annotations

import pytest

from blocks.layouts import Role
from flows.health import UnhealthyError, health_check, probe_ingestion
from tests.conftest import SHARED

pytestmark = SHARED  # the sandbox's shared stacks (tests/conftest.py)


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
        layout_host.compose("up", "-d", "--wait", worker, timeout=120)
    assert probe_ingestion(layout_host, within=30).ok  # the queued events drain once it is back


def test_health_fails_naming_postgres_when_it_is_stopped(saved_host, sentry_host):
    sentry_host.compose("stop", "sentry-postgres")
    try:
        with pytest.raises(UnhealthyError) as info:
            health_check(saved_host, ingestion_within_seconds=3)
        message = str(info.value)
        assert "postgres: container" in message and "postgres: pg_isready" in message
        assert "DatabaseCheck" in message  # /_health/?full names it; /_health/ stays 200
        assert "redis: PING" not in message  # only what failed is named
    finally:
        sentry_host.compose("up", "-d", "--wait", "sentry-postgres", timeout=120)
    assert all(c["status"] == "ok" for c in health_check(saved_host))


def test_names_the_host_lacks_fail_naming_the_field_to_set(sandbox, prefect_api, layout):
    from deployments.setup import host_from_connection

    host = host_from_connection(sandbox, layout)
    renamed = host.model_copy(update={"service_names": {Role.WORKER: "no-such-worker"}})
    renamed.save(f"test-renamed-{layout}", overwrite=True)
    with pytest.raises(UnhealthyError) as info:
        health_check(f"test-renamed-{layout}", ingestion_within_seconds=3)
    assert "service 'no-such-worker' (role worker) is not in the compose project" in str(info.value)
    assert "set service_names.worker in the block" in str(info.value)
