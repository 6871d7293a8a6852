"""`python -m deployments.setup --config` against a real Prefect server: every deployment once with
its schedule and described parameters, idempotent; a real process worker runs one; a failed backup
delivers one webhook to a local receiver. None of this reaches the sandbox's stacks over SSH, so it
runs in the process beside the shared one."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prefect.client.orchestration import get_client

from blocks.backup_store import BackupStore
from blocks.sentry_host import SentryHost
from deployments.deploy import templates
from deployments.setup import main
from infra import sandbox as sb
from tests.helpers import free_port, run_worker_once, with_ssh


class Receiver(ThreadingHTTPServer):
    """A webhook endpoint on 127.0.0.1 that keeps every JSON body it is sent."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


@pytest.fixture(scope="module")
def receiver():
    server = Receiver()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def configured(sandbox, prefect_api, receiver, tmp_path_factory) -> dict:
    tag = uuid.uuid4().hex[:6]
    names = {"hosts": {f"a-{tag}": "guide", f"b-{tag}": "self-hosted"}, "store": f"store-{tag}"}
    folder = tmp_path_factory.mktemp("setup")
    config = sb.setup_config(
        sandbox,
        folder,
        names["hosts"],
        store=names["store"],
        work_pool=f"pool-{tag}",
        webhook_url=receiver.url,
    )
    assert main(["--config", str(config)]) == 0
    return {**names, "config": config, "pool": f"pool-{tag}", "folder": folder, "tag": tag}


def sentry_ops_deployments(client) -> dict:
    flows = {f.id: f.name for f in client.read_flows()}
    return {
        f"{flows[d.flow_id]}/{d.name}": d
        for d in client.read_deployments()
        if "sentry-ops" in d.tags
    }


def test_setup_makes_every_deployment_once_described_with_schedules_and_alerts(configured):
    hosts, store = list(configured["hosts"]), configured["store"]
    with get_client(sync_client=True) as client:
        first = sentry_ops_deployments(client)
        automations = {a.name: a for a in client.read_automations()}
        pool = client.read_work_pool(configured["pool"])
    assert pool.type == "process"
    for host in hosts:
        for op in ("backup", "health-check", "restore-drill", "upgrade", "bootstrap"):
            assert f"{op}/{host}" in first
        # the blocks themselves, by id: the run form shows them picked
        assert first[f"backup/{host}"].parameters == {
            "host": {"$ref": {"block_document_id": str(SentryHost.load(host)._block_document_id)}},
            "store": {
                "$ref": {"block_document_id": str(BackupStore.load(store)._block_document_id)}
            },
        }
        assert f"host:{host}" not in first[f"backup/{host}"].tags  # tags: op and target
        assert f"target:{host}" in first[f"backup/{host}"].tags
    assert first[f"fleet-backup/{store}"].parameters["hosts"] == hosts
    by_template = {t["entrypoint"]: t for t in templates()}
    for name, deployment in first.items():
        template = by_template[deployment.entrypoint]
        assert len(deployment.schedules) == len(template.get("schedules", [])), name
        properties = deployment.parameter_openapi_schema["properties"]
        assert all(p.get("description") for p in properties.values()), name
        assert "sandbox" not in json.dumps(deployment.parameters), name
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(sb.REPO)}}
        ]
    nightly = first[f"backup/{hosts[0]}"].schedules[0]
    assert nightly.schedule.cron == "0 2 * * *" and nightly.active
    for host in hosts:
        missing = automations[f"sentry-ops: no backup of {host} in 26 h"]
        assert missing.trigger.posture == "Proactive"
        assert missing.trigger.within == timedelta(hours=26)
        assert missing.trigger.match.root["sentry-ops.host"] == host
    assert "sentry-ops: a run failed" in automations
    for host in hosts:  # the template's trigger, narrowed to the host, off as in prefect.yaml
        trigger = automations[f"restore-drill/{host} on sentry.backup.completed"]
        assert not trigger.enabled and trigger.trigger.match.root["sentry-ops.host"] == host

    # again: same deployments (same ids), one schedule each, the same automations
    assert main(["--config", str(configured["config"])]) == 0
    with get_client(sync_client=True) as client:
        second = sentry_ops_deployments(client)
        again = [a.name for a in client.read_automations()]
    assert {n: d.id for n, d in second.items()} == {n: d.id for n, d in first.items()}
    assert {n: len(d.schedules) for n, d in second.items()} == {
        n: len(d.schedules) for n, d in first.items()
    }
    assert sorted(again) == sorted(automations)


def test_a_real_worker_picks_up_a_deployment_run_and_completes_it(configured, prefect_api):
    from prefect.deployments import run_deployment

    run = run_deployment(f"list-backups/{configured['store']}", timeout=0)
    log = run_worker_once(configured["pool"], "process", prefect_api, timeout=300)
    with get_client(sync_client=True) as client:
        finished = client.read_flow_run(run.id)
    assert finished.state.is_completed(), (finished.state, log)


def delivered(receiver: Receiver, run_name: str) -> list[dict]:
    return [r for r in receiver.received if run_name in r["subject"]]


def wait_delivered(receiver: Receiver, run_name: str, within: float = 90) -> None:
    deadline = time.monotonic() + within
    while not delivered(receiver, run_name):
        assert time.monotonic() < deadline, f"no webhook for {run_name}: {receiver.received}"
        time.sleep(0.5)


def test_a_failed_backup_delivers_one_webhook(configured, receiver):
    from flows.backup import backup

    host, marker = configured["hosts"]
    for name in (host, marker):  # nothing listens there: a backup fails at its first step
        block = with_ssh(SentryHost.load(name), port=free_port())
        block.save(name, overwrite=True)
    assert backup(host, configured["store"], return_state=True).is_failed()
    run_name = f"backup-{host}"
    wait_delivered(receiver, run_name)
    # The marker: a later failed run of another host, alerted by the same automation. The first
    # run's events all reached the server before the marker run began, and the server works
    # through events and their actions as they come (one that fails is retried first, ahead of
    # newer ones), so by the time the marker's webhook is in, a second delivery for the first run
    # would be in too.
    assert backup(marker, configured["store"], return_state=True).is_failed()
    wait_delivered(receiver, f"backup-{marker}")
    mine = delivered(receiver, run_name)
    assert len(mine) == 1, mine
    assert "Failed" in mine[0]["subject"]
    assert "cannot reach sshd" in mine[0]["body"]
    assert "/runs/flow-run/" in mine[0]["body"]  # a link to the run in the UI


def test_a_failed_health_check_runs_diagnose_for_its_host_and_its_alert_links_the_report(
    configured, receiver
):
    """Issue 30, item 4: the health check of a host fails (sshd unreachable since the test
    above); setup's trigger makes a diagnose run of that host's deployment, not of the other's,
    and the failure's alert names where that diagnosis is read."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from flows.health import UnhealthyError, health_check
    from flows.shared import diagnosis_key

    host, other = configured["hosts"]
    with pytest.raises(UnhealthyError, match=f"artifacts/key/{diagnosis_key(host)}"):
        health_check(host)
    wait_delivered(receiver, f"health-{host}")
    (alert,) = delivered(receiver, f"health-{host}")
    assert f"artifacts/key/{diagnosis_key(host)}" in alert["body"]
    with get_client(sync_client=True) as client:
        deployments = sentry_ops_deployments(client)
        mine, theirs = deployments[f"diagnose/{host}"], deployments[f"diagnose/{other}"]
        automations = [a.name for a in client.read_automations()]
        assert f"diagnose/{host} on sentry.health.failed" in automations

        def runs(deployment) -> list:
            ids = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            return client.read_flow_runs(deployment_filter=ids)

        sb.wait_for(f"a diagnose run of {host}", lambda: runs(mine), 60, 1)
        (run,) = runs(mine)
        assert not runs(theirs)
    assert run.parameters["host"]  # the deployment's own host block


def test_a_host_taken_out_of_the_config_loses_its_deployments_and_alert(configured, sandbox):
    """One config describes a Prefect server's whole sentry-ops set (runs last in this file)."""
    a, b = configured["hosts"]
    kwargs = {"store": configured["store"], "work_pool": configured["pool"]}
    kwargs["webhook_url"] = "http://127.0.0.1:1/"
    fewer = sb.setup_config(sandbox, configured["folder"], {a: "guide"}, **kwargs)
    assert main(["--config", str(fewer)]) == 0
    with get_client(sync_client=True) as client:
        names = list(sentry_ops_deployments(client))
        automations = [x.name for x in client.read_automations()]
    assert f"backup/{a}" in names
    assert not [n for n in names if n.endswith(f"/{b}")]
    assert f"sentry-ops: no backup of {b} in 26 h" not in automations
    assert not [x for x in automations if x.startswith(f"restore-drill/{b} ")]  # its trigger
    assert f"sentry-ops: no backup of {a} in 26 h" in automations
