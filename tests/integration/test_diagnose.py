"""Issue 30: diagnose names why a host is unwell. On a guide stack of its own (slot 11, its own
sshd; the other pytest process), each known cause is reproduced for real and the report names it
with its fix: connections exhausted, Postgres stopped, the secret key removed, the web's port
taken, a table a migration makes missing, a stopped worker's backlog, ClickHouse near its memory
limit, a process OOM-killed by the kernel; a healthy stack gives none, and no secret the sandbox
knows appears in the report or the support bundle, though the Postgres log the bundle holds was
made to print them. The shared self-hosted stack, read only, has no cause either (the shared
process)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from prefect.artifacts import Artifact

from blocks import backup_set, diagnosis
from blocks.backup_store import BackupStore
from blocks.layouts import Role
from flows.diagnose import diagnose
from flows.shared import diagnosis_key
from infra import sandbox as sb
from infra.sandbox.prefect_blocks import host_from_connection, store_from_connection
from tests.helpers import SHARED
from tests.integration.test_restore import stack_of_its_own
from tests.integration.test_scaling import wait_processed

DIAGNOSE_SLOT = 11  # ports of its own (infra/sandbox/stacks.py StackPorts.slot)


@pytest.fixture(scope="module")
def stack(sandbox, prefect_api):
    made = stack_of_its_own(sandbox, DIAGNOSE_SLOT)
    info = next(made)
    store = f"diag-{uuid.uuid4().hex[:6]}"
    store_from_connection(sandbox, prefix=store).save(store, overwrite=True)
    yield {**info, "store": store, "stack": info["name"]}
    with contextlib.suppress(StopIteration):
        next(made)


def names(result: dict) -> list[str]:
    return [c["name"] for c in result["causes"]]


def container_of(stack: dict, role: Role) -> str:
    service = stack["host"].stack.service(role)
    ids = sb.compose(stack["stack"], "ps", "-q", service).stdout.split()
    assert ids, f"{service} has no running container"
    return ids[0]


def back_to_healthy(stack: dict) -> None:
    sb.up_ready(stack["stack"])
    assert names(diagnose(stack["name"])) == []


def every_secret(sandbox: dict, stack: dict) -> list[str]:
    """Every secret the sandbox knows of this host and store: the host block's SecretStr fields
    (its SSH key, line by line too, its Postgres password), its .env secrets, the probe DSN's
    key and API token, the store's S3 secret and backup key."""
    found = diagnosis.block_secrets(stack["host"]) + diagnosis.block_secrets(
        BackupStore.load(stack["store"])
    )
    env = (Path(stack["host"].project_dir) / ".env").read_text()
    found += diagnosis.env_secrets(env)
    probe = stack["host"].probe_dsn
    if probe:
        found.append(probe.get_secret_value().split("//")[1].split("@")[0])
    if stack["host"].api_token:
        found.append(stack["host"].api_token.get_secret_value())
    found.append(sandbox["s3"]["secret_key"])
    return sorted({s.strip() for s in found if len(s.strip()) >= 8})


def test_a_healthy_stack_has_no_cause_and_no_secret_leaves_in_its_report_or_bundle(stack, sandbox):
    secrets = every_secret(sandbox, stack)
    assert len(secrets) >= 5, secrets
    # make Postgres print each secret into its log (an error quotes the bad input), which the
    # report and the bundle carry
    pg = container_of(stack, Role.POSTGRES)
    user = stack["host"].stack.postgres_user
    for secret in secrets:
        sql = "SELECT '" + secret.replace("'", "''") + "'::int"
        subprocess.run(["docker", "exec", pg, "psql", "-U", user, "-c", sql], capture_output=True)
    logged = subprocess.run(["docker", "logs", "--tail", "200", pg], capture_output=True,
                            text=True).stderr  # fmt: skip
    assert secrets[0] in logged  # the secret is there to be masked
    result = diagnose(stack["name"], stack["store"])
    assert names(result) == [], result["causes"]
    report = Artifact.get(diagnosis_key(stack["name"])).data
    assert "No known cause found." in report and "## Containers" in report
    store = BackupStore.load(stack["store"])
    assert result["bundle"].endswith(".enc")
    stored = store.get_bytes(result["bundle"])
    bundle = backup_set.read_support_bundle(store, result["bundle"])
    facts = json.loads(bundle)["facts"]
    assert json.loads(bundle)["format"] == diagnosis.BUNDLE_FORMAT
    assert b'"facts"' not in stored  # encrypted in the store
    postgres_log = "\n".join(facts["logs"][stack["host"].stack.service(Role.POSTGRES)])
    assert diagnosis.MASK in postgres_log and "invalid input syntax" in postgres_log
    assert facts["postgres"]["max_connections"] and facts["containers"]
    for secret in secrets:
        assert secret not in report, "a secret in the report"
        assert secret.encode() not in bundle, "a secret in the bundle"
    # the bundle is not a backup set: listings and retention never see it
    assert not [s for s in backup_set.list_sets(store) if "support" in s.backup_id]


def test_connections_exhausted_are_named(stack):
    port, host = stack["host"].postgres_port, stack["host"]
    password = host.postgres_password.get_secret_value() if host.postgres_password else None
    held = []
    try:
        for _ in range(200):
            try:
                held.append(
                    psycopg.connect(
                        host="127.0.0.1",
                        port=port,
                        dbname="sentry",
                        user="sentry",
                        password=password,
                        connect_timeout=5,
                    )
                )
            except psycopg.OperationalError as exc:
                assert "too many clients" in str(exc) or "reserved" in str(exc), exc
                break
        else:
            pytest.fail("200 connections and Postgres still took more")
        result = diagnose(stack["name"])
    finally:
        for conn in held:
            conn.close()
    found = {c["name"]: c for c in result["causes"]}
    assert "too many database connections" in found, result["causes"]
    assert "pg_terminate_backend" in found["too many database connections"]["fix"]
    back_to_healthy(stack)


def test_a_stopped_database_is_named(stack):
    sb.compose(stack["stack"], "stop", stack["host"].stack.service(Role.POSTGRES))
    result = diagnose(stack["name"])
    assert "database not ready" in names(result), result["causes"]
    back_to_healthy(stack)


def test_a_removed_secret_key_is_named(stack):
    env = Path(stack["host"].project_dir) / ".env"
    before = env.read_text()
    try:
        env.write_text("".join(line for line in before.splitlines(keepends=True)
                               if not line.startswith("SENTRY_SECRET_KEY=")))  # fmt: skip
        result = diagnose(stack["name"])
    finally:
        env.write_text(before)
    # the sandbox's compose file requires the variable (`${SENTRY_SECRET_KEY:?}`), so compose
    # itself refuses the project: said too, with compose's own message
    assert names(result)[:2] == ["secret key not set", "compose cannot read the project"], result[
        "causes"
    ]
    assert "bootstrap" in result["causes"][0]["fix"]
    assert "SENTRY_SECRET_KEY" in result["causes"][1]["evidence"]


def test_a_taken_port_is_named(stack):
    web = stack["host"].stack.service(Role.WEB)
    port = stack["host"].web_port
    sb.compose(stack["stack"], "stop", web)
    with socket.socket() as taken:  # no SO_REUSEPORT: the web's own bind fails on it
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the web's TIME_WAITs
        taken.bind(("127.0.0.1", port))
        taken.listen()
        sb.compose(stack["stack"], "start", web, check=False)
        running = ("ps", "-q", "--status", "running", web)

        def exited() -> bool:
            return not sb.compose(stack["stack"], *running).stdout.strip()

        sb.wait_for("the web to exit on its bind", exited, 60, 0.5)
        result = diagnose(stack["name"])
    found = {c["name"]: c for c in result["causes"]}
    assert f"port {port} in use" in found, result["causes"]
    assert web in result["unwell"]
    back_to_healthy(stack)


def test_a_missing_migration_is_named_from_postgres_own_error(stack):
    host = stack["host"]
    pg = container_of(stack, Role.POSTGRES)
    user = host.stack.postgres_user

    def psql(sql: str) -> None:
        subprocess.run(["docker", "exec", pg, "psql", "-U", user, "-c", sql], check=True,
                       capture_output=True)  # fmt: skip

    psql("ALTER TABLE sentry_groupedmessage RENAME TO sentry_groupedmessage_hidden")
    try:
        host.send_event({"message": "needs the issue table", "level": "error"})
        sb.wait_for("Postgres to report the missing table", lambda: "sentry_groupedmessage\" "
                    "does not exist" in subprocess.run(["docker", "logs", "--tail", "50", pg],
                    capture_output=True, text=True).stderr, 60, 1)  # fmt: skip
        result = diagnose(stack["name"])
    finally:
        psql("ALTER TABLE sentry_groupedmessage_hidden RENAME TO sentry_groupedmessage")
    assert "a migration not applied" in names(result), result["causes"]
    back_to_healthy(stack)


def test_a_backlog_behind_stopped_workers_is_named(stack):
    host = stack["host"]
    sb.compose(stack["stack"], "stop", host.stack.service(Role.WORKER))
    sent = [host.send_event({"message": f"waits {i}", "level": "error"}) for i in range(5)]
    result = diagnose(stack["name"], backlog_max=5)
    assert "worker backlog" in names(result), result["causes"]
    sb.up_ready(stack["stack"])
    wait_processed(host, sent)
    back_to_healthy(stack)


def test_a_disk_below_the_minimum_is_named(stack):
    result = diagnose(stack["name"], min_free_gb=1_000_000)
    assert any(n.startswith("disk full: docker") for n in names(result)), result["causes"]


def test_clickhouse_near_its_container_limit_is_named(stack):
    ch = container_of(stack, Role.CLICKHOUSE)
    used = diagnosis.parse_size(subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", ch],
        capture_output=True, text=True, check=True).stdout.split("/")[0])  # fmt: skip
    limit = max(int(used * 1.08), 8 << 20)
    subprocess.run(["docker", "update", "--memory", str(limit), "--memory-swap", str(limit), ch],
                   check=True, capture_output=True)  # fmt: skip
    result = diagnose(stack["name"])
    assert "high ClickHouse memory" in names(result), result["causes"]


def test_a_process_the_kernel_oom_kills_is_named(stack):
    """Last: the kill stays in the OOM window (docker events, 1 h) of every later diagnosis."""
    worker = container_of(stack, Role.WORKER)
    subprocess.run(["docker", "update", "--memory", "96m", "--memory-swap", "96m", worker],
                   check=True, capture_output=True)  # fmt: skip
    hog = subprocess.run(["docker", "exec", worker, "python3", "-c", "x = bytearray(512 << 20)"],
                         capture_output=True)  # fmt: skip
    assert hog.returncode == 137, hog  # SIGKILL: the kernel's OOM killer in its cgroup
    time.sleep(1)
    result = diagnose(stack["name"])
    service = stack["host"].stack.service(Role.WORKER)
    found = {c["name"]: c for c in result["causes"]}
    assert f"{service} OOM-killed" in found, result["causes"]
    assert "OOM kill" in found[f"{service} OOM-killed"]["evidence"]


@SHARED  # the sandbox's self-hosted stack, read only
def test_the_self_hosted_stack_has_no_cause(sandbox, prefect_api):
    host = host_from_connection(sandbox, "self-hosted")
    host.save("diagnose-self-hosted", overwrite=True)
    result = diagnose("diagnose-self-hosted")
    assert names(result) == [], result["causes"]
    report = Artifact.get(diagnosis_key("diagnose-self-hosted")).data
    for service in ("nginx", "web", "postgres", "clickhouse", "taskbroker"):
        assert f"| {service} |" in report, service
