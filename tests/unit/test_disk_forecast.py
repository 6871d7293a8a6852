"""The health check's disk forecast: bounded history, days until full from the recent trend."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from flows.health import (
    HISTORY_DAYS,
    SAMPLE_SPACING,
    assess_forecast,
    days_until_full,
    record,
    sparkline,
)
from flows.shared import Status

DAY = 86400


def test_a_steady_decline_gives_the_days_left():
    series = [[i * DAY, 10_000 - 1_000 * i] for i in range(5)]  # 1 GB a day, 6 GB left
    assert abs(days_until_full(series, 4 * DAY) - 6.0) < 1e-9


def test_no_trend_without_a_day_of_samples_or_when_not_shrinking():
    assert days_until_full([[0, 100], [600, 90], [1200, 80]], 1200) is None  # minutes: noise
    assert days_until_full([[0, 100], [DAY, 100]], DAY) is None  # two samples
    assert days_until_full([[i * DAY, 100 + i] for i in range(4)], 3 * DAY) is None  # growing


def test_the_alert_is_below_the_threshold():
    series = [[i * DAY, 3_000 - 1_000 * i] for i in range(3)]  # 1 day left
    assert assess_forecast("docker", series, 2 * DAY, 7).status is Status.FAILED
    assert assess_forecast("docker", series, 2 * DAY, 0.5).status is Status.OK
    assert assess_forecast("docker", series[:1], 0, 7).status is Status.OK  # no history yet


@given(st.lists(st.integers(min_value=1, max_value=4 * 3600), min_size=1, max_size=400))
def test_history_stays_bounded_spaced_and_ends_now(gaps):
    series: list[list[int]] = []
    now = 1_800_000_000
    for gap in gaps:
        now += gap
        series = record(series, now, gap)
    assert series[-1] == [now, gaps[-1]]
    times = [t for t, _ in series]
    assert times == sorted(times) and now - times[0] <= HISTORY_DAYS * DAY
    assert all(b - a >= SAMPLE_SPACING for a, b in pairwise(times[:-1]))
    assert len(series) <= HISTORY_DAYS * DAY // SAMPLE_SPACING + 2
    assert len(sparkline(series)) == len(series)
