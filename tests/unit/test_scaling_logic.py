"""Worker scaling's decisions before anything changes (pure: the block only)."""

from __future__ import annotations

import pytest

from flows.scaling import ScalingError, check_replicas, running, scalable_service
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
