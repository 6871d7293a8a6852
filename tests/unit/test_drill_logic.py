"""The restore drill's pure decisions: isolation, ports, images, the override YAML."""

from __future__ import annotations

import pytest
import yaml

from blocks.scratch import (
    DrillError,
    DrillStack,
    check_images,
    drill_override,
    isolation_problems,
    moved_ports,
    scratch_env,
    shifted,
)


def test_ports_shift_and_stay_ports():
    assert shifted("9000", 100) == "9100"
    assert shifted("127.0.0.1:9000", 100) == "127.0.0.1:9100"
    with pytest.raises(DrillError, match="is not a TCP port"):
        shifted("65500", 100)
    env = {"SENTRY_BIND": "9000", "POSTGRES_PORT": "15432", "SENTRY_VERSION": "24.1.0"}
    assert scratch_env(env, DrillStack()) == {"SENTRY_BIND": "9100", "POSTGRES_PORT": "15532"}
    assert scratch_env(env, DrillStack(env={"X": "1"}))["X"] == "1"


def test_drill_parameters_are_validated_on_construction():
    for bad in ({"port_offset": 0}, {"suffix": "x/../../opt/sentry"}, {"suffix": "A"}):
        with pytest.raises(ValueError):
            DrillStack(**bad)


def config(name: str, port: str, volume: str, bind: str, container: str | None = None) -> dict:
    web = {
        "network_mode": "host",
        "environment": {"SENTRY_WEB_PORT": port},
        "volumes": [{"type": "bind", "source": bind}],
    }
    if container:
        web["container_name"] = container
    return {"name": name, "services": {"web": web}, "volumes": {"data": {"name": volume}}}


def test_isolation_names_every_clash():
    prod = config("sentry", "9000", "sentry_data", "/opt/sentry/nginx.conf", "sentry-web")
    good = config("sentry-drill", "9100", "sentry-drill_data", "/opt/sentry-drill/nginx.conf")
    assert isolation_problems(prod, good, same_engine=True) == []
    bad = config("sentry", "9000", "sentry_data", "/opt/sentry/nginx.conf", "sentry-web")
    problems = " ".join(isolation_problems(prod, bad, same_engine=True))
    for clash in ("project name", "host ports ['9000']", "volumes", "container names", "bind"):
        assert clash in problems
    # another Docker engine has its own volumes and container names, not its own 127.0.0.1 here
    assert len(isolation_problems(prod, bad, same_engine=False)) == 3


def test_published_ports_are_moved_by_an_override():
    prod = {"services": {"sentry": {"ports": [{"published": "9000", "target": 9000}]}}}
    moved = moved_ports(prod, 100)
    assert moved == {"sentry": ["9100:9000/tcp"]}
    text = drill_override({"sentry": "getsentry/sentry:24.1.0"}, moved)
    assert "!override" in text
    loaded = yaml.safe_load(text.replace("!override", ""))
    assert loaded["services"]["sentry"] == {
        "image": "getsentry/sentry:24.1.0",
        "ports": ["9100:9000/tcp"],
    }


def test_images_must_be_references_and_production_s_own():
    prod = {"sentry": "getsentry/sentry:24.1.0", "pg": "postgres:14"}
    check_images({"sentry": "getsentry/sentry:24.1.0"}, prod, set())
    with pytest.raises(DrillError, match="is not an image name"):
        check_images({"sentry": "x\n    privileged: true"}, prod, set())
    with pytest.raises(DrillError, match="is not the one production"):
        check_images({"sentry": "postgres:14"}, prod, set())
    check_images({"sentry": "getsentry/sentry:23.1.0"}, prod, {"getsentry/sentry:23.1.0"})
