"""The upgrade runbook on a stack of its own (guide layout, stand-in versions 24.1.0 -> 24.2.0 ->
24.3.0-broken / 24.8.0 (a hard stop) -> 24.9.0), through the real Prefect API: approval and
rejection through `resume_flow_run`, a rolling restart that keeps web answering, rollback with the
database restored from the pre-backup, hops over a hard stop; the migration job is never doubled.

The tests share one stack and run in file order (each checks the version it starts from)."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.flow_runs import resume_flow_run

from blocks import backup_set, jobs, postgres
from flows.cleanup import retention_cleanup
from flows.shared import Unfinished
from flows.upgrade import upgrade
from infra import sandbox as sb
from infra.sandbox.prefect_blocks import host_from_connection, store_from_connection
from tests.helpers import SHARED
from tests.integration.test_bootstrap import run_texts
from tests.integration.test_scaling import wait_processed

SLOT = 7  # ports of its own (sandbox.StackPorts; 5 is the self-hosted drill's, 6 the restore's)


@pytest.fixture(scope="module")
def stack(sandbox, prefect_api):
    name = f"upg{uuid.uuid4().hex[:6]}"
    info = sb.ensure_stack("guide", name, SLOT)
    # its own sshd: the other test process cuts every connection of the shared one at times
    host = host_from_connection({**sandbox, "ssh": sandbox["own_ssh"], "stacks": {"guide": info}})
    host.save(name, overwrite=True)
    yield {"name": name, "host": host, "info": info}
    sb.remove_stack(name)


def state(host) -> dict:
    """What a rejected upgrade must leave exactly as it was."""
    with postgres.psql(host) as db:
        sums = postgres.table_checksums(db)
    sums.pop("sentry_option", None)  # the cron's heartbeat
    env = host.get(f"{host.project_dir}/.env")
    images = sorted(f"{r['Repository']}:{r['Tag']} {r['ID']}" for r in host.images())
    containers = {s: sorted(c["Image"] for c in host.service_containers(s)) for s in
                  host.sentry_services()}  # fmt: skip
    return {"tables": sums, "env": env, "images": images, "containers": containers}


def in_thread(**kwargs) -> dict:
    """The flow in a thread (it pauses for input); `result` holds its final state."""
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(state=upgrade(**kwargs, return_state=True)))
    thread.start()
    out["thread"] = thread
    return out


def paused_run(run_name: str, exclude=(), timeout: float = 300):
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name]))
            )
            paused = [r for r in runs if r.state and r.state.is_paused() and r.id not in exclude]
            if paused:
                return paused[0]
            time.sleep(1)
    raise AssertionError(f"no paused run {run_name} within {timeout} s")


class Prober(threading.Thread):
    """GET /_health/ on web's port every 50 ms; a probe fails when two tries 50 ms apart both
    find nothing answering (one reset connection of a stopping replica is a proxy's retry)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/_health/"
        self.stop = threading.Event()
        self.probes = self.failures = 0

    def answer(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def run(self) -> None:
        while not self.stop.is_set():
            self.probes += 1
            if not self.answer():
                time.sleep(0.05)
                self.failures += not self.answer()
            time.sleep(0.05)


def test_rejected_changes_nothing_then_approved_rolls_web_without_downtime(stack, store_name):
    host, name = stack["host"], stack["name"]
    assert host.running_version() == "24.1.0"
    host.persist_scale("sentry", 2)  # two web replicas, kept by compose like the workers'
    host.compose_up("sentry", wait=True, timeout=300)
    events = [
        host.send_event({"message": f"before upgrade {i}", "level": "error"}) for i in range(5)
    ]
    wait_processed(host, events)
    before = state(host)
    assert len(before["containers"]["sentry"]) == 2
    run_name = f"upgrade-{name}-to-24.2.0"

    # the tables must come out as they were: no synthetic event (the jump test proves the probe)
    rejected = in_thread(host=name, store=store_name, target_version="24.2.0",
                         ingestion_probe=False)  # fmt: skip
    first = paused_run(run_name)
    resume_flow_run(first.id, run_input={"approve": False, "approver": "test",
                                         "comment": "not tonight"})  # fmt: skip
    rejected["thread"].join(600)
    final = rejected["state"]
    assert final.is_completed(), final
    assert final.result()["status"] == "rejected"
    assert state(host) == before  # images, .env, tables, containers: as they were

    prober = Prober(stack["info"]["web_port"])
    prober.start()
    approved = in_thread(host=name, store=store_name, target_version="24.2.0",
                         ingestion_probe=False)  # fmt: skip
    run = paused_run(run_name, exclude={first.id})
    resume_flow_run(run.id, run_input={"approve": True, "approver": "test", "comment": "go"})
    approved["thread"].join(900)
    prober.stop.set()
    prober.join()
    final = approved["state"]
    assert final.is_completed(), final
    result = final.result()
    assert result["status"] == "upgraded" and result["hops"] == ["24.2.0"], result
    assert prober.probes > 50 and prober.failures == 0, (prober.probes, prober.failures)

    after = state(host)
    assert host.running_version() == "24.2.0"
    assert after["containers"]["sentry"] == ["sentry-ops-sandbox/sentry:24.2.0"] * 2
    for service in ("sentry-worker", "sentry-cron"):
        assert after["containers"][service] == ["sentry-ops-sandbox/sentry:24.2.0"]
    assert "SENTRY_VERSION=24.2.0" in after["env"].decode()
    new = set(after["tables"]) - set(before["tables"])
    assert new == {"sentry_release"}, new
    for table, checksum in before["tables"].items():
        if table != "sentry_migrations":
            assert after["tables"][table] == checksum, table
    assert all(host.lookup_event(e) for e in events)
    text = asyncio.run(run_texts(final.state_details.flow_run_id))
    for expected in ("approved by test: go", "sentry batch 1", "sentry batch 2", "migrations",
                     "Applying sentry.24.2.0", result["backups"][0]):  # fmt: skip
        assert expected in text, expected


def test_broken_version_rolls_back_with_the_database_restored(stack, store_name):
    host, name = stack["host"], stack["name"]
    start = host.running_version()
    assert start in ("24.1.0", "24.2.0")
    with postgres.psql(host) as db:
        before = postgres.table_checksums(db)
    final = upgrade(host=name, store=store_name, target_version="24.3.0-broken",
                    require_approval=False, auto_restore=True, health_timeout=60,
                    ingestion_probe=False, return_state=True)  # fmt: skip
    assert final.is_failed(), final
    assert "rolled back" in str(final.message).lower() or "back on" in str(final.message)
    assert host.running_version() == start
    status, body = host.web_request("/_health/?full")
    assert status == 200, body
    with postgres.psql(host) as db:
        after = postgres.table_checksums(db)
        versions = {r[0] for r in db.rows("SELECT version FROM sentry_migrations")}
    assert "24.3.0-broken" not in versions
    before.pop("sentry_option", None), after.pop("sentry_option", None)
    assert after == before
    text = asyncio.run(run_texts(final.state_details.flow_run_id))
    assert "restore postgres" in text and "ROLLED BACK" in text
    assert host.marker("upgrade") is None  # back and healthy: other flows may run again
    with postgres.psql(host) as db:  # the migrated copy kept aside until then, now gone
        assert db.value("SELECT count(*) FROM pg_database WHERE datname LIKE "
                        "'%pre_rollback%'") == "0"  # fmt: skip


def test_a_rollback_whose_set_was_damaged_since_the_pre_backup_drops_nothing(
    stack, store_name, sandbox
):
    """The pre-backup verified, then one of its objects damaged in the store while the hop
    runs: the rollback re-verifies the set before anything is dropped and refuses; the audit
    says ROLLBACK FAILED with what was done, and production's database is as the hop left it."""
    host, name = stack["host"], stack["name"]
    start = host.running_version()
    counts = host.replica_counts()
    store = store_from_connection(sandbox, prefix=store_name)
    with postgres.psql(host) as db:
        before = postgres.row_counts(db)
    damaged: dict[str, str] = {}

    def damage_once_migrated() -> None:  # after the pre-backup's verification, before rollback
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not damaged:
            with postgres.psql(host) as db:
                migrated = db.value("SELECT count(*) FROM sentry_migrations WHERE version = "
                                    "'24.3.0-broken'")  # fmt: skip
            if migrated == "1":
                manifest = backup_set.pick(store, host.identity, host.label, None)
                key = manifest.object("postgres").key
                data = bytearray(store.open(key).read())
                data[-100] ^= 0x40
                store.put_bytes(key, bytes(data))
                damaged.update(backup_id=manifest.backup_id, key=key)
            time.sleep(0.3)

    watcher = threading.Thread(target=damage_once_migrated, daemon=True)
    watcher.start()
    try:
        final = upgrade(host=name, store=store_name, target_version="24.3.0-broken",
                        require_approval=False, auto_restore=True, health_timeout=60,
                        ingestion_probe=False, return_state=True)  # fmt: skip
        watcher.join(timeout=5)
        assert damaged, "the set was never damaged: the test tested nothing"
        assert final.is_failed(), final
        message = str(final.message)
        assert "ROLLBACK FAILED" in message, message
        assert f"refusing to restore from {damaged['backup_id']}: it no longer verifies" in message
        assert "nothing was dropped" in message
        with postgres.psql(host) as db:  # nothing dropped: the hop's database, every row
            migrations = before.get("sentry_migrations", 0) + 1  # the broken one's
            assert postgres.row_counts(db) == {**before, "sentry_migrations": migrations}
            assert db.value("SELECT count(*) FROM pg_database WHERE datname LIKE "
                            "'%pre_rollback%'") == "0"  # fmt: skip
        text = asyncio.run(run_texts(final.state_details.flow_run_id))
        assert "ROLLBACK FAILED" in text and "rollback: re-verify pre-backup" in text
        # the host stays marked mid-upgrade: other mutating flows refuse, an upgrade too
        marker = host.marker("upgrade")
        assert marker and marker["to"] == "24.3.0-broken", marker
        with pytest.raises(Unfinished, match="an upgrade did not finish here"):
            retention_cleanup(name, store_name)
        again = upgrade(host=name, store=store_name, target_version="24.3.0-broken",
                        require_approval=False, return_state=True)  # fmt: skip
        assert again.is_failed() and "resume_unfinished=true" in str(again.message)
    finally:  # the next tests start from `start`, healthy: the operator's repair by hand
        host.mark("upgrade", None)
        with postgres.psql(host) as db:
            db.rows("DELETE FROM sentry_migrations WHERE version = '24.3.0-broken' RETURNING 1")
        host.up_services(counts)
        assert host.running_version() == start


def test_a_jump_over_a_hard_stop_is_two_hops_each_with_its_own_verified_backup(
    stack, store_name, sandbox
):
    host, name = stack["host"], stack["name"]
    start = host.running_version()
    assert start in ("24.1.0", "24.2.0")
    state = upgrade(host=name, store=store_name, target_version="24.9.0", require_approval=False,
                    return_state=True)  # fmt: skip
    result = state.result()
    assert result["hops"] == ["24.8.0", "24.9.0"], result
    # each hop's gate sent the synthetic event through the upgraded stack (the run's report)
    text = asyncio.run(run_texts(state.state_details.flow_run_id))
    probed = '"name": "ingestion: synthetic event", "status": "ok"'
    assert text.count(probed) == 2, text[-2000:]
    assert host.running_version() == "24.9.0"
    store = store_from_connection(sandbox, prefix=store_name)
    verified = {s.backup_id for s in backup_set.list_sets(store, host.identity) if s.verified}
    taken = {}
    for backup_id in result["backups"]:
        assert backup_id in verified, backup_id
        taken[backup_id] = backup_set.load(store, host.identity, backup_id).sentry_version
    assert sorted(taken.values()) == [start, "24.8.0"], taken
    with postgres.psql(host) as db:
        assert db.value("SELECT count(*) FROM information_schema.columns WHERE "
                        "table_name = 'sentry_deploy' AND column_name = 'url'") == "1"  # fmt: skip


def test_a_migration_job_of_another_run_is_waited_for_never_doubled(stack):
    host = stack["host"]
    name = jobs.container_name(host, "upgrade")
    host.run(["docker", "run", "-d", "--name", name, "--label", f"{jobs.RUN_LABEL}=another-run",
              "--network", "none", "--entrypoint", "sh", host.tool_image, "-c",
              "echo other migration; sleep 3"], timeout=120)  # fmt: skip
    lines, starts = [], []

    def start(cname, labels):
        starts.append(cname)
        return ["docker", "run", "-d", "--name", cname, "--label",
                f"{jobs.RUN_LABEL}={labels[jobs.RUN_LABEL]}", "--network", "none", "--entrypoint",
                "echo", host.tool_image, "mine"]  # fmt: skip

    job = jobs.run(host, "upgrade", start, run_id="this-run", on_line=lines.append)
    assert any("still runs: waiting for it first" in line for line in lines), lines
    assert starts == [name] and job.ok and job.tail[-1] == "mine", (starts, job)
    assert jobs.state(host, name) is None  # removed once read


@SHARED  # the sandbox's self-hosted stack
def test_a_broken_self_hosted_release_rolls_back_with_snubas_clickhouse_restored(
    sandbox, prefect_api, store_name
):
    """install.sh at a release whose web crashes after migrating: the rollback restores Postgres
    and ClickHouse (Snuba's real tables on the modern ClickHouse) from the pre-backup, every
    table's rows and checksum as before, and reinstalls the previous release."""
    from blocks import clickhouse
    from infra.sandbox.prefect_blocks import save_blocks

    name = "test-self-hosted-broken"
    save_blocks(sandbox, name, "self-hosted")
    host = host_from_connection(sandbox, "self-hosted")
    assert host.running_version() == "24.1.0"
    wait_processed(host, [host.send_event({"message": "before a broken release"})])

    def figures() -> dict:
        with clickhouse.connect(host) as (client, _):
            tables = clickhouse.list_tables(client, host.stack.clickhouse_database)
            return {t.name: clickhouse.count_rows(client, t, None) for t in tables if t.copied}

    before = figures()
    assert before["errors_local"][0] >= 1 and len(before) >= 15, before
    final = upgrade(host=name, store=store_name, target_version="24.3.0-broken",
                    require_approval=False, auto_restore=True, health_timeout=60,
                    ingestion_probe=False, return_state=True)  # fmt: skip
    assert final.is_failed(), final
    assert host.running_version() == "24.1.0"
    assert host.git("describe", "--tags").text.strip() == "24.1.0"
    assert figures() == before
    text = asyncio.run(run_texts(final.state_details.flow_run_id))
    assert "restore postgres" in text and "restore clickhouse" in text and "ROLLED BACK" in text
    assert host.marker("upgrade") is None


@SHARED  # the sandbox's self-hosted stack
def test_self_hosted_hop_is_its_install_sh_at_the_release_tag(sandbox, prefect_api, store_name):
    """Leaves the sandbox's self-hosted stack at 24.2.0: the next `sandbox.up()` installs it anew
    (Sentry has no downgrade), so it runs last."""
    from infra.sandbox.prefect_blocks import save_blocks

    name = "test-self-hosted-upgrade"
    save_blocks(sandbox, name, "self-hosted")
    host = host_from_connection(sandbox, "self-hosted")
    assert host.running_version() == "24.1.0"
    events = [host.send_event({"message": f"self-hosted before {i}", "level": "error"})
              for i in range(3)]  # fmt: skip
    wait_processed(host, events)
    with postgres.psql(host) as db:
        before = postgres.table_checksums(db)
    state = upgrade(host=name, store=store_name, target_version="24.2.0",
                    require_approval=False, ingestion_probe=False, return_state=True)  # fmt: skip
    assert state.is_completed(), state
    assert state.result()["hops"] == ["24.2.0"]
    assert host.running_version() == "24.2.0"
    assert host.git("describe", "--tags").text.strip() == "24.2.0"
    with postgres.psql(host) as db:
        after = postgres.table_checksums(db)
    assert set(after) - set(before) == {"sentry_release"}
    for table in set(before) - {"sentry_migrations", "sentry_option"}:
        assert after[table] == before[table], table
    assert all(host.lookup_event(e) for e in events)  # payloads in SeaweedFS, rows in Postgres
    text = asyncio.run(run_texts(state.state_details.flow_run_id))
    for expected in ("install.sh: ▶ Turning things off", "migrating database",
                     "Applying sentry.24.2.0", "checkout: done"):  # fmt: skip
        assert expected in text, expected
