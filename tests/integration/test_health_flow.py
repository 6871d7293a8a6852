"""The health-check flow through a real Prefect API against the sandbox stack."""

from __future__ import annotations

import pytest

from flows.health import UnhealthyError, health_check


def test_health_passes_on_a_healthy_stack(saved_host):
    checks = health_check(saved_host)
    names = {c["name"] for c in checks}
    assert {
        "web: /_health/",
        "postgres: pg_isready",
        "redis: PING",
        "clickhouse: SELECT 1",
        "docker disk",
        "postgres: container",
        "worker: container",
    } <= names
    assert all(c["ok"] for c in checks)


def test_health_fails_naming_postgres_when_it_is_stopped(saved_host, sentry_host):
    sentry_host.compose("stop", "sentry-postgres")
    try:
        with pytest.raises(UnhealthyError) as info:
            health_check(saved_host)
        message = str(info.value)
        assert "postgres: container" in message and "postgres: pg_isready" in message
        assert "redis: PING" not in message  # only what failed is named
    finally:
        sentry_host.compose("up", "-d", "--wait", "sentry-postgres", timeout=120)
    assert all(c["ok"] for c in health_check(saved_host))
