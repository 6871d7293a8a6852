"""Diagnose's pure logic: Docker's outputs parsed (captured from the real engine:
tests/conformance/fixtures/docker_diagnose_outputs.json), every known cause matched from facts
and none on a healthy stack, the report's order, and masking."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from pydantic import SecretStr

from blocks import diagnosis
from blocks.diagnosis import Container, Facts, Masker, PostgresFacts, Thresholds
from tests.conformance import corpus

DOCKER = corpus.sample("docker_diagnose_outputs")


def test_docker_outputs_parse_as_the_real_engine_prints_them():
    assert (
        DOCKER["container_format"]
        == diagnosis.CONTAINER_FORMAT.replace('{{if eq .Type "volume"}}', "{{if .Name}}")
        or DOCKER["container_format"] == diagnosis.CONTAINER_FORMAT
    )
    containers = diagnosis.parse_containers("\n".join(DOCKER["inspect_lines"]))
    killed, cron, worker, web = containers
    assert (killed.status, killed.oom_killed, killed.exit_code) == ("exited", True, 137)
    assert killed.memory_limit == 32 << 20 and killed.service == "worker"
    assert (worker.status, worker.health, worker.oom_killed) == ("running", "-", False)
    assert (
        worker.volumes == ["sandbox79e92a-production_sentry_data"] and cron.service == "sentry-cron"
    )
    assert web.health == "healthy" and web.service == "sentry"
    assert not killed.well and worker.well and web.well
    diagnosis.apply_stats(containers, "\n".join(DOCKER["stats_lines"]))
    assert worker.memory_used and 10 << 20 < worker.memory_used < 100 << 20
    assert worker.memory_available and worker.memory_available > 1 << 30  # the host's: no limit
    diagnosis.apply_oom_events(containers, "\n".join(DOCKER["oom_event_lines"]))
    assert killed.oom_events == 1 and worker.oom_events == 0
    disk = diagnosis.parse_system_df(json.dumps(DOCKER["system_df"]))
    assert disk.images > 0 and len(disk.volumes) == len(DOCKER["system_df"]["Volumes"])


@pytest.mark.parametrize(
    ("text", "size"),
    [("24.89MiB", int(24.89 * 2**20)), ("1.13GB", int(1.13e9)), ("0B", 0), ("512kB", 512_000)],
)
def test_sizes_in_dockers_units(text, size):
    assert diagnosis.parse_size(text) == size


def container(service: str, **changes) -> Container:
    base = Container(
        id=f"{service[:6]:0<12}", name=f"p-{service}-1", service=service, status="running",
        health="healthy", restarts=0, oom_killed=False, exit_code=0, error="", started_at="",
        finished_at="", memory_limit=0, volumes=[], memory_used=50 << 20,
    )  # fmt: skip
    return replace(base, **changes)


def healthy() -> Facts:
    services = ["sentry", "sentry-worker", "sentry-postgres", "sentry-redis", "sentry-clickhouse"]
    return Facts(
        host="h", layout="guide", taken_at="2026-12-07T00:00:00Z",
        containers=[container(s) for s in services], defined=services,
        disk=[{"where": "docker", "free": 50e9, "total": 100e9}],
        docker_disk=diagnosis.DockerDisk({"kafka_data": 1e9}, 1, 1, 0),
        postgres=PostgresFacts(12, 100, 3, []),
        clickhouse=diagnosis.ClickHouseFacts(1 << 30, 8 << 30, []),
        redis=diagnosis.RedisFacts(1 << 20, 0), backlog={"count": 3, "cap": 0, "error": ""},
        secret_key_set=True, web_port=9000, listening=[5432, 9000], logs={},
        kafka_service="sentry-kafka", front_services=["sentry"],
        postgres_service="sentry-postgres", clickhouse_service="sentry-clickhouse",
    )  # fmt: skip


def names(facts: Facts) -> list[str]:
    return [c.name for c in diagnosis.causes(facts, Thresholds())]


def with_container(facts: Facts, service: str, **changes) -> Facts:
    facts.containers = [replace(c, **changes) if c.service == service else c
                        for c in facts.containers]  # fmt: skip
    return facts


def test_a_healthy_stack_has_no_cause():
    assert names(healthy()) == []


def test_each_known_cause_is_named_from_its_facts():
    f = healthy()
    f.secret_key_set = False
    assert names(f) == ["secret key not set"]
    f = with_container(healthy(), "sentry", status="exited", exit_code=1)
    assert names(f) == ["port 9000 in use"]  # something else listens there
    f = with_container(healthy(), "sentry", status="exited", exit_code=1)
    f.listening = []
    f.logs = {"sentry": ["OSError: [Errno 98] Address already in use"]}
    assert names(f) == ["port 9000 in use"]
    f.logs = {"sentry": ["ImportError: no module"]}
    assert names(f) == []  # exited for another reason: the table and its log say which
    f = with_container(healthy(), "sentry-postgres", status="exited", exit_code=1)
    f.postgres = PostgresFacts(error="service sentry-postgres has no running container")
    assert names(f) == ["database not ready"]
    f = healthy()
    f.postgres = PostgresFacts(88, 100, 3, [])
    assert names(f) == ["too many database connections"]
    f.postgres = PostgresFacts(error="psql: FATAL:  sorry, too many clients already")
    assert names(f) == ["too many database connections"]
    logged = ['ERROR:  relation "sentry_groupedmessage" does not exist at character 15']
    assert diagnosis.logged_relations(logged) == ["sentry_groupedmessage"]
    f = healthy()
    f.missing_relations = ["sentry_groupedmessage"]
    assert names(f) == ["a migration not applied"]
    f = with_container(healthy(), "sentry-worker", oom_events=2, memory_limit=64 << 20)
    assert names(f) == ["sentry-worker OOM-killed"]
    f = healthy()
    f.clickhouse = diagnosis.ClickHouseFacts(int(7.5 * 2**30), 8 << 30, [])
    assert names(f) == ["high ClickHouse memory"]
    f = with_container(healthy(), "sentry-clickhouse", memory_used=95 << 20, memory_limit=100 << 20)
    assert names(f) == ["high ClickHouse memory"]
    f = healthy()
    f.backlog = {"count": 20_000, "cap": 0, "error": ""}
    assert names(f) == ["worker backlog"]
    f.backlog = {"count": 100, "cap": 100, "error": ""}  # the taskbroker's cap: more in Kafka
    assert names(f) == ["worker backlog"]
    f = healthy()
    f.disk = [{"where": "docker", "free": 1e9, "total": 100e9}]
    assert names(f) == ["disk full: docker"]
    f = healthy()
    f.containers.append(container("sentry-kafka", volumes=["kafka_data"]))
    f.docker_disk = diagnosis.DockerDisk({"kafka_data": 25e9}, 1, 1, 0)
    assert names(f) == ["Kafka volume growing"]


def test_the_report_leads_with_the_causes_and_masks_what_it_shows():
    f = with_container(healthy(), "sentry-worker", oom_killed=True, status="exited")
    f.logs = {"sentry-worker": ["connecting to postgres://sentry:hunter22@db/sentry"]}
    found = diagnosis.causes(f, Thresholds())
    text = diagnosis.report_markdown(f, found, "store/h/support/x.json.enc")
    assert text.index("## Likely causes") < text.index("## Containers") < text.index("## Log of")
    assert "sentry-worker OOM-killed" in text and "Fix:" in text
    mask = Masker([])
    assert "hunter22" not in mask(text)
    assert "No known cause found." in diagnosis.report_markdown(healthy(), [], None)


def test_masking_covers_block_secrets_env_secrets_and_dsn_keys():
    from blocks.ssh_connection import SSHConnection

    key = SecretStr("-----BEGIN KEY-----\nAAAAsecretline\n")
    ssh = SSHConnection.model_construct(host="h", private_key=key)
    secrets = diagnosis.block_secrets(ssh)
    assert "AAAAsecretline" in secrets
    env = "SENTRY_SECRET_KEY='k3y-v@lue!'\nSENTRY_DB_PASSWORD=pw12345\nSENTRY_BIND=9000\n"
    secrets += diagnosis.env_secrets(env)
    assert "9000" not in secrets and "pw12345" in secrets and "k3y-v@lue!" in secrets
    mask = Masker(secrets)
    dsn = "https://0123456789abcdef0123456789abcdef@sentry.example.com/1"
    text = mask(f"key k3y-v@lue! pw12345 AAAAsecretline {dsn} sentry_key=0123456789abcdef01")
    for secret in ("k3y-v@lue!", "pw12345", "AAAAsecretline", "0123456789abcdef0123456789abcdef"):
        assert secret not in text
    assert "sentry.example.com/1" in text
    assert mask.deep({"a": [f"x {dsn}"]}) == {
        "a": [f"x https://{diagnosis.MASK}@sentry.example.com/1"]
    }


def test_a_dsn_secret_masks_its_key_wherever_a_log_prints_it_alone():
    mask = Masker(["http://5f0e1d2c3b4a59687766554433221100@127.0.0.1:9000/1"])
    assert "5f0e1d2c" not in mask('invalid input: "5f0e1d2c3b4a59687766554433221100"')
