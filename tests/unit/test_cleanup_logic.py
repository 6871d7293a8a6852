"""Retention cleanup's pure decisions: parameters, which images go, the commands it runs."""

from __future__ import annotations

import datetime as dt
import io
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blocks import postgres
from blocks.layouts import Role
from blocks.sentry_host import ComposeContext
from flows.cleanup import (
    parameter_problems,
    parse_time,
    plan_images,
    retention_problem,
    split_ref,
    tag_version,
)
from tests.unit.test_sentry_host_block import make_host


@pytest.mark.parametrize("days", [0, -1, 3651, True, 2.5, "30"])
def test_days_outside_1_to_3650_are_refused(days):
    assert any("event_retention_days" in p for p in parameter_problems(days, True, []))


@pytest.mark.parametrize("days", [1, 30, 3650])
def test_days_inside_are_accepted(days):
    assert parameter_problems(days, True, ["nodestore_node", "public.sentry_eventattachment"]) == []


def test_empty_days_means_the_hosts_own_retention():
    assert parameter_problems(None, True, []) == []


@pytest.mark.parametrize(
    ("asked", "kept", "shorter", "refused"),
    [(30, 90, False, True), (89, 90, False, True), (90, 90, False, False),
     (120, 90, False, False), (30, 90, True, False)],
)  # fmt: skip
def test_a_cleanup_shorter_than_the_hosts_retention_is_refused_unless_asked(
    asked, kept, shorter, refused
):
    problem = retention_problem(asked, kept, "SENTRY_EVENT_RETENTION_DAYS in .env", shorter)
    assert (problem is not None) == refused
    if refused:
        assert f"{kept} days (SENTRY_EVENT_RETENTION_DAYS in .env)" in problem
        assert "shorter_than_host_retention=true" in problem


def test_table_names_and_vacuum_full_without_vacuum_are_refused():
    problems = parameter_problems(30, False, ["x; DROP TABLE y"])
    assert any("not table names" in p for p in problems)
    assert any("vacuum=false" in p for p in problems)


@pytest.mark.parametrize(
    ("ref", "repo", "tag"),
    [
        ("getsentry/sentry:24.1.0", "getsentry/sentry", "24.1.0"),
        ("ghcr.io/getsentry/sentry:26.1.0", "ghcr.io/getsentry/sentry", "26.1.0"),
        ("registry:5000/sentry", "registry:5000/sentry", "latest"),
        ("sentry-self-hosted-local", "sentry-self-hosted-local", "latest"),
    ],
)
def test_split_ref(ref, repo, tag):
    assert split_ref(ref) == (repo, tag)


def test_images_older_than_running_go_except_the_previous_one():
    repo = "getsentry/sentry"
    images = [(repo, t) for t in ("23.6.2", "23.11.0", "24.1.0", "24.8.0", "nightly", "latest")]
    images += [("other/app", "1.0.0")]
    remove, keep = plan_images(images, {f"{repo}:24.1.0"})
    assert {r for r, _ in remove} == {f"{repo}:23.6.2"}  # 24.8.0 (newer) stays: a pre-pull
    assert {r for r, _ in keep} == {f"{repo}:23.11.0"}  # the rollback target


def test_images_of_repositories_without_a_version_in_use_are_untouched():
    images = [("sentry-self-hosted-local", "latest"), ("ghcr.io/getsentry/sentry", "25.1.0")]
    assert plan_images(images, {"sentry-self-hosted-local"}) == ([], [])


versions = st.tuples(*(st.integers(0, 30),) * 3).map(lambda v: ".".join(map(str, v)))


@given(st.lists(versions, min_size=1, max_size=12, unique=True), versions)
def test_never_the_running_one_nor_newer_nor_the_previous(tags, running):
    images = [("r", t) for t in tags]
    remove, _ = plan_images(images, {f"r:{running}"})
    removed = [tag_version(r.split(":")[1]) for r, _ in remove]
    run = tag_version(running)
    assert all(v < run for v in removed)
    older = sorted(tag_version(t) for t in tags if tag_version(t) < run)
    if older:  # the newest older version is kept for a rollback
        assert older[-1] not in removed and len(removed) == len(older) - 1


def test_docker_times_parse():
    assert parse_time("2026-11-29T12:57:39.860127381Z") == dt.datetime(
        2026, 11, 29, 12, 57, 39, 860127, tzinfo=dt.UTC
    )
    assert parse_time("2026-11-29T12:58:58+01:00").utcoffset() == dt.timedelta(hours=1)


def test_vacuum_statements_quote_table_names():
    assert postgres.vacuum_statements(["nodestore_node", "public.t"]) == [
        "VACUUM (ANALYZE)",
        'VACUUM (FULL, ANALYZE) "nodestore_node"',
        'VACUUM (FULL, ANALYZE) "public"."t"',
    ]


def test_cleanup_runs_in_self_hosted_cleanup_service_with_sentrys_entrypoint():
    host = make_host(layout="self-hosted", project_dir="/opt/sentry").use_context(
        ComposeContext("sentry-sh")
    )
    argv = host.sentry_job_argv("job", {"k": "v"}, Role.CLEANUP, "cleanup", "--days", "30")
    run = argv[argv.index("run") :]
    entry = ["--entrypoint", "/etc/sentry/entrypoint.sh"]
    assert run == ["run", "-d", "--name", "job", "--label", "k=v", *entry, "sentry-cleanup",
                   "cleanup", "--days", "30"]  # fmt: skip
    guide = make_host(project_dir="/opt/sentry").use_context(ComposeContext("sentry-g"))
    argv = guide.sentry_job_argv("job", {}, Role.WEB, "cleanup", "--days", "30")
    assert argv[argv.index("run") :] == [
        "run",
        "-d",
        "--name",
        "job",
        "sentry",
        "cleanup",
        "--days",
        "30",
    ]


def test_a_vacuum_jobs_password_goes_through_stdin_as_a_file_never_argv_or_env():
    host = make_host(project_dir="/opt/sentry", project_name="sentry-g")
    where = postgres.Target("pgcontainer", 5432, "sentry", "sentry", "s3cr3t:pw")
    argv = postgres.vacuum_job(host, where, ["VACUUM (ANALYZE)"])("job", {})
    assert "s3cr3t" not in " ".join(argv) and "PGPASSWORD" not in " ".join(argv)
    assert argv[:2] == ["sh", "-c"] and "docker cp - " in argv[2]
    create = argv[4:]
    options = create[: create.index("--entrypoint")]
    assert (
        create[:2] == ["docker", "create"] and "-e" not in options and "--env-file" not in options
    )
    assert "container:pgcontainer" in create
    assert create[create.index("--entrypoint") + 1] == "env"
    assert "PGPASSFILE=/sentry-ops-pgpass" in create
    with tarfile.open(fileobj=io.BytesIO(postgres.password_file(where))) as tar:
        (member,) = tar.getmembers()
        assert (member.name, member.mode, member.uid) == ("sentry-ops-pgpass", 0o600, 0)
        assert tar.extractfile(member).read() == b"*:*:*:*:s3cr3t\\:pw\n"
    trusted = postgres.Target("pgcontainer", 5432, "sentry", "sentry", None)
    plain = postgres.vacuum_job(host, trusted, ["VACUUM (ANALYZE)"])("job", {})
    assert plain[:3] == ["docker", "run", "-d"] and postgres.password_file(trusted) is None
