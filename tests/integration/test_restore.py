"""The restore flow (issue 27): a host's stack destroyed and restored from its newest set, a
restore killed mid-way resumed, and a host holding data replaced only with replace=true, the
operator's approval in the paused run's form and a verified safety backup; through real SSH,
Docker, S3 and Prefect."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_URL

from blocks import backup_set, postgres
from blocks.layouts import Role
from blocks.sentry_host import SentryHost
from flows.backup import backup
from flows.health import health_check
from flows.move import move
from flows.restore import restore
from flows.shared import RestoreError, Unfinished
from infra import sandbox as sb
from infra.sandbox.prefect_blocks import (
    drill_host_from_connection,
    host_from_connection,
    store_from_connection,
)
from tests.helpers import SHARED
from tests.integration.test_scaling import wait_processed
from tests.integration.test_upgrade import paused_run

# ports of their own (infra/sandbox/stacks.py): the restore test's stack, and the move test's (the
# two run in different pytest processes, side by side)
RESTORE_SLOT, MOVE_SLOT = 6, 8


def stack_of_its_own(sandbox, slot: int) -> Iterator[dict]:
    """A guide stack of its own, reached through its own sshd (the shared one's connections are
    cut at times by tests of the other process)."""
    name = f"rst{uuid.uuid4().hex[:6]}"
    info = sb.ensure_stack("guide", name, slot)
    host = host_from_connection({**sandbox, "ssh": sandbox["own_ssh"], "stacks": {"guide": info}})
    host.save(name, overwrite=True)
    yield {"name": name, "host": host}
    sb.remove_stack(name)


@pytest.fixture()
def own_stack(sandbox, prefect_api):
    yield from stack_of_its_own(sandbox, RESTORE_SLOT)


@pytest.fixture()
def move_stack(sandbox, prefect_api):
    yield from stack_of_its_own(sandbox, MOVE_SLOT)


def counts(host) -> dict[str, int]:
    """Rows per table, but the cron's heartbeat in sentry_option."""
    with postgres.psql(host) as db:
        found = postgres.row_counts(db)
    found.pop("sentry_option", None)
    return found


def postgres_running(host) -> bool:
    """The stack's Postgres container runs (a restore started it for pg_restore)."""
    argv = [
        "docker",
        "ps",
        "-q",
        "--filter",
        "status=running",
        "--filter",
        f"label=com.docker.compose.project={host.project}",
        "--filter",
        f"label=com.docker.compose.service={host.stack.service(Role.POSTGRES)}",
    ]
    return bool(subprocess.run(argv, capture_output=True, text=True).stdout.split())  # fmt: skip


def test_a_destroyed_stack_is_restored_and_a_killed_restore_resumed(own_stack, store_name):
    host, name = own_stack["host"], own_stack["name"]
    events = [host.send_event({"message": f"before the loss {i}", "level": "error"})
              for i in range(3)]  # fmt: skip
    wait_processed(host, events)
    taken = backup(name, store_name)
    before = counts(host)

    # a host that holds data: refused without replace, before anything changes
    with pytest.raises(RestoreError, match="holds Sentry data"):
        restore(name, store_name)
    assert host.marker("restore") is None and counts(host) == before

    # the host is lost: containers, volumes and its directory
    host.compose_down(remove_volumes=True, stop_timeout=2)
    host.remove_tree(host.project_dir)

    # a restore killed once it started Postgres for pg_restore (then volumes, ClickHouse and the
    # stack are still to come) leaves its marker: the host is refused to others
    code = f"from flows.restore import restore; restore({name!r}, {store_name!r})"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    first = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=sb.REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    sb.wait_for("the first restore's Postgres", lambda: postgres_running(host), 300, 0.1)
    first.kill()  # SIGKILL: no cleanup
    first.wait()
    marker = host.marker("restore")
    assert marker and marker["backup_id"] == taken["backup_id"], marker
    with pytest.raises(Unfinished, match="a restore did not finish here"):
        backup(name, store_name)  # a half-restored stack is never backed up as if whole
    with pytest.raises(Exception, match="unfinished restore: run"):  # red while it is there
        health_check(name, ingestion_within_seconds=5)
    with pytest.raises(RestoreError, match="did not finish here"):
        restore(name, store_name)  # refused by default, nothing changed

    result = restore(name, store_name, unfinished="resume")
    assert result["passed"] and result["backup_id"] == taken["backup_id"], result["failed"]
    assert host.marker("restore") is None
    assert counts(host) == before
    found = {c["name"]: c["status"] for c in result["checks"]}
    assert found["row counts"] == "ok" and found["newest event through Sentry's API"] == "ok"
    names = [s["name"] for s in result["steps"]]
    assert names.index("wait for the engine and host locks") < names.index("clear the stack")
    wait_processed(host, events)  # the events lost with the host, read back through its API
    assert all(c["status"] == "ok" for c in health_check(name))


@SHARED  # the drill host's engine is shared with the drills, which expect it clean
def test_a_move_to_another_engine_keeps_the_source_to_fall_back_on(move_stack, store_name, sandbox):
    """The stack moves to the drill host's engine (the same ports: the source is stopped first,
    as on two machines): ingestion paused, final backup, the source stopped, the set restored
    and checked there; the source's data untouched, so starting it again undoes the move."""
    source, name = move_stack["host"], move_stack["name"]
    events = [source.send_event({"message": f"moved {i}", "level": "error"}) for i in range(2)]
    wait_processed(source, events)
    drill = drill_host_from_connection(sandbox)
    target = SentryHost.model_validate({
        **dict(source), "ssh": drill.ssh, "project_dir": f"{sandbox['drill_dir']}/{name}-moved",
        "docker_data_dir": drill.docker_data_dir, "docker_socket": drill.docker_socket,
    })  # fmt: skip
    target.save(f"{name}-moved", overwrite=True)
    before = counts(source)
    try:
        result = move(name, f"{name}-moved", store_name)
        assert result["restore"]["passed"], result["restore"]["failed"]
        names = [s["name"] for s in result["steps"]]
        assert names[:3] == ["wait for the source's host lock", "pause ingestion",
                             "drain the backlog"], names  # fmt: skip
        assert "final backup" in names and names[-1] == "stop the source"
        assert source.running_services() == set()  # stopped, kept
        assert counts(target) == before
        wait_processed(target, events)  # read back through the target's Sentry
        assert all(c["status"] == "ok" for c in health_check(f"{name}-moved"))
        assert any("system.url-prefix" in step for step in result["cutover"])

        # the operator falls back: the target stopped, the source started again, as it was
        target.compose_stop()
        source.compose_up(wait=True)
        assert counts(source) == before
        wait_processed(source, events)
    finally:
        if target.exists(target.project_dir):
            target.compose_down(remove_volumes=True, stop_timeout=2)
            target.remove_tree(target.project_dir)


@SHARED
def test_replacing_a_hosts_data_asks_then_backs_it_up_and_restores_the_set(
    sandbox, prefect_api, store_name
):
    """Self-hosted, in place: the set restored over the host's data. Rejected in the paused
    run's form: nothing changes; approved: a verified safety backup, then the set; an event sent
    after the set was taken is gone, the set's are there."""
    host = host_from_connection(sandbox, "self-hosted")
    name = "restore-self-hosted"
    host.save(name, overwrite=True)
    kept = [host.send_event({"message": f"in the set {i}", "level": "error"}) for i in range(2)]
    wait_processed(host, kept)
    taken = backup(name, store_name)
    after = host.send_event({"message": "after the set", "level": "error"})
    wait_processed(host, [after])
    before = counts(host)
    store = store_from_connection(sandbox, prefix=store_name)

    def run_in_thread() -> dict:
        out: dict = {}

        def go() -> None:
            out["state"] = restore(name, store_name, replace=True, return_state=True)

        out["thread"] = threading.Thread(target=go)
        out["thread"].start()
        return out

    rejected = run_in_thread()
    first = paused_run(f"restore-{name}")
    resume_flow_run(first.id, run_input={"approve": False, "approver": "test",
                                         "comment": "not this one"})  # fmt: skip
    rejected["thread"].join(600)
    assert rejected["state"].is_failed()
    assert "not approved (refused by test)" in str(rejected["state"].message)
    assert counts(host) == before and host.marker("restore") is None
    assert [s.backup_id for s in backup_set.list_sets(store) if s.complete] == [taken["backup_id"]]

    started = time.monotonic()
    approved = run_in_thread()
    second = paused_run(f"restore-{name}", exclude={first.id})
    resume_flow_run(second.id, run_input={"approve": True, "approver": "test", "comment": "go"})
    approved["thread"].join(1200)
    if host.marker("restore"):  # failed: the next tests get a stack, installed anew
        sb.remove_stack("self-hosted")
        sb.remove_external_volumes()
        sb.ensure_stack("self-hosted")
    result = approved["state"].result()
    assert result["passed"] and result["backup_id"] == taken["backup_id"], result["failed"]
    steps = {s["name"]: s for s in result["steps"]}
    assert steps["approval"]["detail"] == "approved by test: go"
    safety = steps["safety backup"]["detail"].split()[0]
    sets = {s.backup_id: s for s in backup_set.list_sets(store)}
    assert sets[safety].complete and sets[safety].verified  # what it replaced, kept
    wait_processed(host, kept)
    assert host.lookup_event(after) is None  # taken after the set: not in it
    assert all(c["status"] == "ok" for c in health_check(name))
    assert time.monotonic() - started < 1200
    # the restored host backs up again: ClickHouse can FREEZE into the shadow dir the restore's
    # staging used (it was left root's: "Access to file denied" on the next backup)
    assert backup(name, store_name)["backup_id"] != taken["backup_id"]
