"""The upgrade planner: hops over every hard stop, never a downgrade, never an unknown version."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blocks.upgrade_plan import HARD_STOPS, UpgradePlanError, plan_upgrade, version_key


def test_a_jump_over_hard_stops_becomes_one_hop_per_stop():
    assert plan_upgrade("23.6.2", "24.10.0") == ["23.11.0", "24.8.0", "24.10.0"]
    assert plan_upgrade("24.1.0", "24.2.0") == ["24.2.0"]
    assert plan_upgrade("23.11.0", "23.11.0") == []
    assert plan_upgrade("24.8.0", "25.5.1") == ["25.5.1"]  # a stop as the target is one hop


def test_the_hard_stops_can_be_overridden():
    assert plan_upgrade("24.1.0", "24.3.0", hard_stops=["24.2.0"]) == ["24.2.0", "24.3.0"]


@pytest.mark.parametrize(
    ("current", "target", "message"),
    [
        ("24.8.0", "24.1.0", "is a downgrade"),
        ("24.8.0", "latest", "'latest' is not a Sentry version"),
        ("nightly", "24.8.0", "'nightly' is not a Sentry version"),
    ],
)
def test_bad_plans_are_refused(current, target, message):
    with pytest.raises(UpgradePlanError, match=message):
        plan_upgrade(current, target)


def test_a_hop_the_host_cannot_run_is_refused():
    with pytest.raises(UpgradePlanError, match=r"\['24.8.0'\] is not available"):
        plan_upgrade("24.1.0", "24.9.0", available={"24.1.0", "24.9.0"})


versions = st.tuples(st.integers(8, 27), st.integers(1, 12), st.integers(0, 3)).map(
    lambda v: ".".join(map(str, v))
)


@given(versions, versions)
def test_hops_climb_and_never_skip_a_stop(a, b):
    current, target = sorted((a, b), key=version_key)
    hops = plan_upgrade(current, target)
    path = [current, *hops]
    assert all(version_key(x) < version_key(y) for x, y in itertools.pairwise(path))
    for x, y in itertools.pairwise(path):
        assert not [s for s in HARD_STOPS if version_key(x) < version_key(s) < version_key(y)]
    assert (hops[-1] if hops else current) == target or version_key(current) == version_key(target)


# -- what the upgrade flow reads from the compose file and its parameters -------------------------
@pytest.mark.parametrize(
    ("raw", "resolved", "expected"),
    [  # the guide's tag variable; self-hosted's whole-image variable; a registry with a port
        ("getsentry/sentry:${SENTRY_VERSION}", "getsentry/sentry:24.1.0",
         ("SENTRY_VERSION", "24.8.0")),
        ("sentry:${SENTRY_VERSION:?set it}", "sentry:24.1.0", ("SENTRY_VERSION", "24.8.0")),
        ("${SENTRY_IMAGE}", "ghcr.io/getsentry/sentry:24.1.0",
         ("SENTRY_IMAGE", "ghcr.io/getsentry/sentry:24.8.0")),
        ("${SENTRY_IMAGE:-x}", "reg.local:5000/sentry:24.1.0",
         ("SENTRY_IMAGE", "reg.local:5000/sentry:24.8.0")),
        ("reg.local:5000/sentry:${V}", "reg.local:5000/sentry:24.1.0", ("V", "24.8.0")),
        ("getsentry/sentry:24.1.0", "getsentry/sentry:24.1.0", None),  # fixed: refused
        ("${REGISTRY}/sentry:24.1.0", "r/sentry:24.1.0", None),  # the version is not a variable
    ],
)  # fmt: skip
def test_the_env_variable_that_sets_the_version(raw, resolved, expected):
    from blocks.host_sentry import image_setting

    assert image_setting(raw, resolved, "24.8.0") == expected


def test_a_web_with_a_fixed_port_or_name_cannot_roll():
    from blocks.host_sentry import rolling_problem

    assert rolling_problem({"image": "x", "network_mode": "host"}) is None
    assert "9000" in rolling_problem({"ports": [{"target": 9000, "published": "9000"}]})
    assert rolling_problem({"ports": [{"target": 9000}]}) is None  # an ephemeral host port
    assert "container_name" in rolling_problem({"container_name": "ridehailing-sentry"})


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("latest", 1, 300, 3600), "target_version"),
        (("24.8.0", 0, 300, 3600), "batch_size"),
        (("24.8.0", True, 300, 3600), "batch_size"),
        (("24.8.0", 1, 5, 3600), "health_timeout"),
        (("24.8.0", 1, 300, 10), "approval_timeout"),
    ],
)
def test_bad_parameters_are_named(args, named):
    from blocks.upgrade_plan import parameter_problems

    problems = parameter_problems(*args)
    assert len(problems) == 1 and problems[0].startswith(named), problems
    assert parameter_problems("24.8.0", 2, 300, 3600) == []
