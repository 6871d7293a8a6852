"""Worker scaling's decisions before anything changes, and the autoscaler's (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blocks.host_project import SCALE_FILE, compose_files_with_scale
from flows.scaling import (
    AutoscalePolicy,
    ScalingError,
    autoscale_target,
    check_replicas,
    running,
    scalable_service,
)
from tests.unit.test_sentry_host_block import make_host


@pytest.mark.parametrize(
    ("layout", "service"), [("guide", "sentry-worker"), ("self-hosted", "taskworker")]
)
def test_the_worker_role_maps_to_each_layout_s_service(layout, service):
    assert scalable_service(make_host(layout=layout), "worker") == service
    renamed = make_host(layout=layout, service_names={"worker": "my-worker"})
    assert scalable_service(renamed, "worker") == "my-worker"


def test_only_scalable_roles_and_counts_within_the_block_s_maximum():
    host = make_host(max_workers=4)
    with pytest.raises(ScalingError, match="role 'postgres' cannot be scaled"):
        scalable_service(host, "postgres")
    check_replicas(host, 0)
    check_replicas(host, 4)
    for bad in (-1, 5):
        with pytest.raises(ScalingError, match=rf"replicas={bad} is outside 0\.\.4"):
            check_replicas(host, bad)


def test_running_counts_healthy_or_unchecked_running_containers():
    rows = [
        {"State": "running", "Health": ""},
        {"State": "running", "Health": "healthy"},
        {"State": "running", "Health": "starting"},
        {"State": "exited"},
    ]
    assert running(rows) == rows[:2]


# -- the autoscaler's decision -----------------------------------------------------------------


@st.composite
def policies(draw) -> AutoscalePolicy:
    lo = draw(st.integers(0, 10))
    return AutoscalePolicy(
        min_replicas=lo,
        max_replicas=draw(st.integers(lo, 30)),
        backlog_per_worker=draw(st.integers(1, 1000)),
        cooldown_seconds=draw(st.integers(0, 900)),
        headroom=draw(st.sampled_from([0.0, 0.1, 0.25, 0.5])),
    )


@settings(max_examples=400, deadline=None)
@given(policies(), st.integers(0, 40), st.integers(0, 50_000), st.floats(0, 2000))
def test_autoscale_target_is_clamped_and_never_flaps(policy, current, backlog, since):
    target, why = autoscale_target(current, backlog, policy, since)
    assert policy.min_replicas <= target <= policy.max_replicas, why
    lo, hi = policy.min_replicas, policy.max_replicas
    if lo <= current <= hi:
        if target > current:  # up only when the backlog exceeds what runs
            assert backlog > current * policy.backlog_per_worker
        if target < current:  # down only after the cooldown, to a count with headroom
            assert since >= policy.cooldown_seconds
            assert target == lo or backlog <= target * policy.backlog_per_worker
    # right after a change (since = 0) the same backlog never moves it back the other way
    again, _ = autoscale_target(target, backlog, policy, 0.0)
    assert again == target or (again > target) == (target > current)
    # and with the cooldown over it settles: a fixed point within one more step
    settled, _ = autoscale_target(target, backlog, policy, 1e9)
    assert autoscale_target(settled, backlog, policy, 1e9)[0] == settled


def test_autoscale_target_examples():
    p = AutoscalePolicy(1, 3, 10, cooldown_seconds=60)
    assert autoscale_target(1, 30, p, 0)[0] == 3  # up at once, whatever the cooldown
    assert autoscale_target(1, 500, p, 0)[0] == 3  # clamped to max
    assert autoscale_target(3, 0, p, 10) == (3, "backlog 0 allows 1, cooldown: 50 s left")
    assert autoscale_target(3, 0, p, 61)[0] == 1
    assert autoscale_target(3, 14, p, 61)[0] == 2  # 14 <= 2 x 10 x 0.75
    assert autoscale_target(0, 0, p, 0)[0] == 1  # below min: brought to min
    assert autoscale_target(5, 0, p, 0)[0] == 3  # above max: brought to max


def test_policy_problems_name_the_parameter():
    assert AutoscalePolicy(1, 3, 10).problems() == []
    text = "; ".join(AutoscalePolicy(4, 2, 0, cooldown_seconds=-1).problems())
    assert "min_replicas=4 and max_replicas=2" in text
    assert "backlog_per_worker=0" in text and "cooldown_seconds=-1" in text


def test_compose_file_gets_the_scale_file_once_with_absolute_paths():
    base = ["docker-compose.yml", ".env"]
    assert (
        compose_files_with_scale(None, base, "/srv/s")
        == f"/srv/s/docker-compose.yml:/srv/s/{SCALE_FILE}"
    )
    names = ["compose.yaml", "compose.override.yaml", "docker-compose.yml"]
    assert compose_files_with_scale(None, names, "/p") == (
        f"/p/compose.yaml:/p/compose.override.yaml:/p/{SCALE_FILE}"
    )
    assert (
        compose_files_with_scale("a.yml;/x/b.yml", [], "/p", ";")
        == f"/p/a.yml;/x/b.yml;/p/{SCALE_FILE}"
    )
    assert compose_files_with_scale(f"/p/a.yml:/p/{SCALE_FILE}", [], "/p") is None
    with pytest.raises(ValueError, match="no compose file"):
        compose_files_with_scale(None, [".env"], "/p")
