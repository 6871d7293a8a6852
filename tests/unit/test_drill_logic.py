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


def test_isolation_sees_what_names_hide():
    """Hostile configs with names of their own: a volume bound to production's directory, a
    bind inside it, an external or fixed-name network, links into production's containers."""
    prod = config("sentry", "9000", "sentry_data", "/opt/sentry/nginx.conf")
    prod["volumes"]["pg"] = {"name": "sentry_pg", "driver_opts": {"device": "/srv/pgdata"}}
    prod["networks"] = {"default": {"name": "sentry_default"}}
    prod["services"]["db"] = {"image": "postgres"}
    scratch = config("sentry-drill", "9100", "sentry-drill_data", "/srv/pgdata/base")
    scratch["volumes"]["pg"] = {
        "name": "sentry-drill_pg",
        "driver_opts": {"type": "none", "o": "bind", "device": "/srv/pgdata/"},
    }
    scratch["networks"] = {
        "default": {"name": "sentry-drill_default"},
        "shared": {"name": "prod-net", "external": True},
        "fixed": {"name": "sentry_default"},
    }
    scratch["services"]["db"] = {"image": "postgres", "networks": {"shared": None}}
    scratch["services"]["cron"] = {"image": "s", "networks": {"fixed": None, "default": None}}
    scratch["services"]["worker"] = {
        "image": "s",
        "external_links": ["sentry-db-1:db"],
        "volumes_from": ["container:sentry-web-1", "db"],
    }
    scratch["services"]["sidecar"] = {"image": "s", "network_mode": "container:sentry-web-1"}
    problems = " | ".join(isolation_problems(prod, scratch, same_engine=True))
    assert "host paths ['/srv/pgdata', '/srv/pgdata/base']" in problems
    assert "networks ['sentry_default']" in problems
    assert "external networks ['prod-net']" in problems
    assert "worker: external_links sentry-db-1:db" in problems
    assert "worker: volumes_from container:sentry-web-1" in problems
    assert "volumes_from db" not in problems  # a service of its own project
    assert "sidecar: network_mode container:sentry-web-1" in problems
    # on another engine: host paths still (the drill engine may share the machine's disk),
    # links and container network modes still; networks are that engine's own
    other = " | ".join(isolation_problems(prod, scratch, same_engine=False))
    assert "host paths" in other and "external_links" in other and "networks [" not in other


def test_isolation_refuses_ports_something_listens_on():
    prod = config("sentry", "9000", "sentry_data", "/opt/sentry/a")
    scratch = config("sentry-drill", "9100", "sentry-drill_data", "/opt/sentry-drill/a")
    assert isolation_problems(prod, scratch, True, frozenset({9000, 22})) == []
    problems = isolation_problems(prod, scratch, True, frozenset({9000, 9100}))
    assert problems == ["host ports ['9100'] that something already listens on"]


def test_sibling_directories_are_not_nested():
    prod = config("sentry", "9000", "sentry_data", "/opt/sentry")
    scratch = config("sentry-drill", "9100", "sentry-drill_data", "/opt/sentry-drill")
    assert isolation_problems(prod, scratch, same_engine=True) == []


def test_a_drill_needs_room_for_every_restored_object_before_compression():
    import datetime as dt

    from blocks.backup_set import BackupManifest, StoredObject
    from blocks.scratch import disk_need

    def obj(name: str, size: int, raw: int | None) -> StoredObject:
        return StoredObject(kind="postgres" if name == "postgres" else "volume", name=name,
                            key=f"k/{name}", size=size, sha256="0" * 64, compression="zstd",
                            raw_size=raw)  # fmt: skip

    now = dt.datetime.now(dt.UTC)
    manifest = BackupManifest(
        backup_id="b", host_id="h", host="h", layout="guide", project_name="p", started_at=now,
        finished_at=now, sentry_version="24.1.0", images={}, config_included=True,
        encrypted=True, sentry_ops_version="0",
        objects=[obj("postgres", 10, 4_000_000_000), obj("volume:files", 5, None),
                 obj("config", 7_000_000_000, 7_000_000_000)],
    )  # fmt: skip
    # Postgres at its database size, the volume at its stored size, config not restored
    assert disk_need(manifest) == (1 << 30) + 4_000_000_005 + 400_000_000
