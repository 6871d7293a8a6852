"""Bootstrap a bare sandbox host (fresh project dir and volumes) through the real Prefect API."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)

from blocks import postgres
from flows.bootstrap import BootstrapError, HostRequirements, bootstrap
from flows.shared import Status
from infra import sandbox as sb
from tests.helpers import SHARED

pytestmark = SHARED  # the sandbox's shared stacks (tests/helpers.py)

STACK = str(Path(sb.HERE, "stacks", "guide"))
ALREADY = str(Status.ALREADY)
SMALL = HostRequirements(min_cpus=1, min_memory_gb=1, min_disk_gb=1)


def run(bare: dict, **overrides):
    stack = bare["stack"]
    kwargs = dict(
        host=bare["name"],
        admin_email="ops@example.com",
        admin_password_secret=f"{bare['name']}-admin",
        stack_files=STACK,
        settings=stack["settings"],
        requirements=SMALL,
        extra_ports=[stack["postgres_port"], stack["redis_port"], stack["clickhouse_port"]],
    )
    kwargs.update(overrides)
    return bootstrap(**kwargs, return_state=True)


async def run_texts(flow_run_id) -> str:
    """Every log line and artifact of a flow run (and its tasks), and its parameters, as text."""
    async with get_client() as client:
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        flow_run = await client.read_flow_run(flow_run_id)
    parts = [log.message for log in logs] + [str(a.data) + str(a.description) for a in artifacts]
    assert logs and artifacts, "no logs or artifacts captured: the search would prove nothing"
    return "\n".join([*parts, str(flow_run.parameters)])


def test_bootstrap_from_nothing_then_rerun_is_a_noop(bare_host):
    host = bare_host["host"]
    assert not Path(host.project_dir).exists()
    state = run(bare_host)
    steps = {s["name"]: s for s in state.result()}
    assert steps["web: /_health/"]["status"] == "ok" and "ok" in steps["web: /_health/"]["detail"]
    assert steps["web: /_health/?full"]["status"] == "ok"
    assert steps["superuser"]["status"] == "done" and steps["migrations"]["status"] == "done"
    assert steps["snuba migrations"]["status"] == "done", steps["snuba migrations"]
    assert host.transport.stat_mode(f"{host.project_dir}/.env") == 0o600
    env_before = host.get(f"{host.project_dir}/.env")
    secret_key = next(
        line.split("=", 1)[1] for line in env_before.decode().splitlines()
        if line.startswith("SENTRY_SECRET_KEY=")
    )  # fmt: skip
    assert len(secret_key) > 40
    with postgres.psql(host) as db:
        users = db.rows("SELECT email, is_superuser FROM auth_user WHERE email = 'ops@example.com'")
    assert users == [("ops@example.com", "t")]

    # The secret key, the admin and the Postgres password appear nowhere in logs or artifacts.
    text = asyncio.run(run_texts(state.state_details.flow_run_id))
    for secret in (secret_key, bare_host["password"], host.postgres_password.get_secret_value()):
        assert secret not in text

    again = run(bare_host)
    steps = {s["name"]: s["status"] for s in again.result()}
    assert steps["names"] == "ok"  # the stack exists now: its names are checked first
    for step in (
        ".env",
        "stack files",
        "dependencies",
        "snuba migrations",
        "migrations",
        "superuser",
        "services",
    ):
        assert steps[step] == ALREADY, (step, steps)
    assert host.get(f"{host.project_dir}/.env") == env_before  # same secret key, untouched
    with postgres.psql(host) as db:
        assert db.value("SELECT count(*) FROM auth_user") == "1"
    text = asyncio.run(run_texts(again.state_details.flow_run_id))
    assert secret_key not in text and bare_host["password"] not in text


def test_guide_minimum_refuses_a_small_host_before_changing_anything(bare_host):
    host = bare_host["host"]
    with pytest.raises(BootstrapError, match=r"preflight failed, nothing was changed: cpu: \d"):
        run(bare_host, requirements=HostRequirements()).result()
    assert not Path(host.project_dir).exists()


def test_bad_input_is_rejected_early(bare_host):
    with pytest.raises(BootstrapError, match="admin_email='root' is not an email address"):
        run(bare_host, admin_email="root").result()
    with pytest.raises(ValueError, match="no-such-secret"):
        run(bare_host, admin_password_secret="no-such-secret").result()
    assert not Path(bare_host["host"].project_dir).exists()


def test_an_existing_database_password_is_never_replaced(bare_host):
    host = bare_host["host"]
    host.makedirs(host.project_dir)
    host.put(f"{host.project_dir}/.env", b"export SENTRY_DB_PASSWORD=the-old-one\n")
    with pytest.raises(BootstrapError, match="already sets SENTRY_DB_PASSWORD to another value"):
        run(bare_host).result()
    assert host.get(f"{host.project_dir}/.env") == b"export SENTRY_DB_PASSWORD=the-old-one\n"


def test_self_hosted_is_refused_pointing_to_its_install_sh(sandbox, prefect_api):
    from infra.sandbox.prefect_blocks import save_blocks

    save_blocks(sandbox, "test-boot-self-hosted", "self-hosted")
    secret = "test-boot-self-hosted-admin"
    Secret(value="unused").save(secret, overwrite=True)
    env_before = Path(sandbox["stacks"]["self-hosted"]["project_dir"], ".env").read_bytes()
    with pytest.raises(BootstrapError, match=r"installed by its own \./install\.sh"):
        bootstrap("test-boot-self-hosted", "ops@example.com", secret)
    assert Path(sandbox["stacks"]["self-hosted"]["project_dir"], ".env").read_bytes() == env_before
