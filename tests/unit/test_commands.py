"""Remote commands as data (blocks/commands.py): each builder's exact argv."""

from __future__ import annotations

from blocks import commands


def test_git_modified_lists_tracked_changes_only():
    assert commands.git_modified("/opt/sentry") == [
        "git", "-C", "/opt/sentry", "status", "--porcelain", "--untracked-files=no"
    ]  # fmt: skip


def test_compose_runs_one_project_as_in_its_directory():
    assert commands.compose("/opt/s", ["/opt/s/.env", "/opt/s/.env.custom"], "sentry", "ps") == [
        "docker", "compose", "--project-directory", "/opt/s", "--env-file", "/opt/s/.env",
        "--env-file", "/opt/s/.env.custom", "-p", "sentry", "ps",
    ]  # fmt: skip
    assert commands.compose("/opt/s", [], "p") == [
        "docker", "compose", "--project-directory", "/opt/s", "-p", "p",
    ]  # fmt: skip


def test_up_flags_counts_and_services_in_compose_order():
    assert commands.up() == ["up", "-d"]
    assert commands.up("postgres", no_deps=True) == ["up", "-d", "--no-deps", "postgres"]
    assert commands.up(
        "worker", no_deps=True, no_recreate=True, scale={"worker": 3}, stop_timeout=60
    ) == [
        "up", "-d", "--no-deps", "--no-recreate", "--scale", "worker=3", "--timeout", "60",
        "worker",
    ]  # fmt: skip


def test_down_removes_volumes_only_when_asked():
    assert commands.down(True, 5) == ["down", "-v", "--remove-orphans", "-t", "5"]
    assert commands.down(False) == ["down", "--remove-orphans", "-t", "10"]


def test_volume_commands():
    assert commands.volume_create("v", {"a": "b", "c": "d"}) == [
        "docker", "volume", "create", "--label", "a=b", "--label", "c=d", "v",
    ]  # fmt: skip
    assert commands.volume_inspect("v") == ["docker", "volume", "inspect", "v"]
    assert commands.volumes_labelled("k=v") == [
        "docker", "volume", "ls", "-q", "--filter", "label=k=v",
    ]  # fmt: skip
    assert commands.containers_labelled("k") == ["docker", "ps", "-aq", "--filter", "label=k"]
    assert commands.volume_rm(["a", "b"], force=True) == ["docker", "volume", "rm", "-f", "a", "b"]
    assert commands.volume_rm(["a"]) == ["docker", "volume", "rm", "a"]


def test_git_checkout_is_detached_and_quiet():
    assert commands.checkout("/opt/s", "26.1.0") == [
        "git", "-C", "/opt/s", "-c", "advice.detachedHead=false", "checkout", "--quiet", "26.1.0",
    ]  # fmt: skip


def test_tar_both_ways():
    assert commands.tar_out("/opt/s", [".env", "sentry"]) == [
        "tar", "-C", "/opt/s", "--ignore-failed-read", "-cf", "-", ".env", "sentry",
    ]  # fmt: skip
    assert commands.tar_in("/d") == ["tar", "-C", "/d", "-xf", "-"]
    assert commands.docker_rm("a", "b") == ["docker", "rm", "-f", "a", "b"]


def test_how_long_a_healthcheck_takes_to_speak_again():
    """`docker inspect -f '{{json .Config.Healthcheck}}'`: moby's HealthConfig (api/types/
    container, durations in nanoseconds, omitted when unset: Docker's 30 s defaults)."""
    from blocks.host_docker import probe_seconds

    self_hosted_redis = (  # getsentry/self-hosted 26.x: interval 30s, timeout 1m30s, retries 10
        '{"Test":["CMD-SHELL","redis-cli ping | grep PONG"],"Interval":30000000000,'
        '"Timeout":90000000000,"StartPeriod":10000000000,"Retries":10}'
    )
    assert probe_seconds(self_hosted_redis) == 120
    assert probe_seconds('{"Test":["CMD-SHELL","true"],"Retries":3}') == 60
    assert probe_seconds("null") == 60


def test_a_healthcheck_run_on_demand_is_what_docker_runs():
    """moby daemon/health.go (getProbe): CMD-SHELL through the shell, CMD as given, NONE none."""
    from blocks.host_docker import healthcheck_argv

    self_hosted_postgres = (  # getsentry/self-hosted 26.8.0 docker-compose.yml, postgres
        '{"Test":["CMD-SHELL","pg_isready -U ${POSTGRES_USER:-postgres}"],'
        '"Interval":30000000000,"Timeout":90000000000,"Retries":10}'
    )
    assert healthcheck_argv(self_hosted_postgres) == (
        ["/bin/sh", "-c", "pg_isready -U ${POSTGRES_USER:-postgres}"],
        90,
    )
    snuba_api = '{"Test":["CMD","python3","/usr/src/snuba/api_healthcheck.py"]}'
    assert healthcheck_argv(snuba_api) == (["python3", "/usr/src/snuba/api_healthcheck.py"], 30)
    assert healthcheck_argv('{"Test":["NONE"]}')[0] == []
    assert healthcheck_argv("null")[0] == []


def test_waiting_accepts_healthy_or_stable_and_fails_what_will_not_heal():
    from blocks.upgrade_plan import container_failed, containers_ready

    assert containers_ready({"a": "running healthy", "b": "running -"}, waited=0, stable=0)
    assert not containers_ready({"a": "running healthy", "b": "running -"}, waited=1, stable=5)
    assert not containers_ready({"a": "running starting"}, waited=60, stable=0)
    assert container_failed("exited -") and container_failed("running unhealthy")
    assert not container_failed("running starting")
