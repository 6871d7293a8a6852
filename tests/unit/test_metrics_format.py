"""The Prometheus text of a store's facts: parsed back by prometheus_client's own parser, every
value where it belongs, nothing made up for a host without drills or complete sets."""

from __future__ import annotations

import datetime as dt

from prometheus_client.parser import text_string_to_metric_families

from blocks.metrics import HostFacts, render

T0 = dt.datetime(2026, 11, 29, 2, 0, tzinfo=dt.UTC)


def parsed(text: str) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("host", "") + "|" + s.labels.get("status", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_drilled_host_and_a_host_with_only_an_incomplete_set():
    facts = [
        HostFacts(
            host_id="h1",
            host="sentry-1",
            sets={"verified": 2, "complete": 1},
            last_started=T0,
            last_finished=T0 + dt.timedelta(seconds=95.5),
            last_bytes=123_456_789,
            last_verified=T0 + dt.timedelta(hours=1),
            drill_at=T0 + dt.timedelta(hours=1),
            drill_ok=True,
            drill_rto=42.8,
        ),
        HostFacts(host_id="h2", host="", sets={"incomplete": 1}),
    ]
    values = parsed(render(facts, "main", T0 + dt.timedelta(hours=2)))
    assert (
        values["sentry_ops_backup_last_success_timestamp_seconds", "sentry-1|"]
        == T0.timestamp() + 95.5
    )
    assert values["sentry_ops_backup_last_duration_seconds", "sentry-1|"] == 95.5
    assert values["sentry_ops_backup_last_size_bytes", "sentry-1|"] == 123_456_789
    assert values["sentry_ops_drill_last_success", "sentry-1|"] == 1.0
    assert values["sentry_ops_drill_last_rto_seconds", "sentry-1|"] == 42.8
    assert values["sentry_ops_backup_sets", "sentry-1|verified"] == 2
    assert values["sentry_ops_backup_sets", "|incomplete"] == 1
    assert values["sentry_ops_metrics_generated_timestamp_seconds", "|"] == T0.timestamp() + 7200
    # the host without a complete set has no freshness sample: "absent" alerts see it, and no
    # zero timestamp pretends a backup from 1970
    assert ("sentry_ops_backup_last_success_timestamp_seconds", "|") not in values
    assert ("sentry_ops_drill_last_success", "|") not in values


def test_a_failed_drill_is_a_zero():
    facts = [HostFacts(host_id="h1", host="s", sets={}, drill_at=T0, drill_ok=False)]
    values = parsed(render(facts, "main", T0))
    assert values["sentry_ops_drill_last_success", "s|"] == 0.0
    assert ("sentry_ops_drill_last_rto_seconds", "s|") not in values
