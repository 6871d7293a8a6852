"""The restore flow (issue 27): a host's stack destroyed and restored from its newest set, a
restore killed mid-way resumed, and a host holding data replaced only with replace=true, the
operator's approval in the paused run's form and a verified safety backup; through real SSH,
Docker, S3 and Prefect."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_URL
from pydantic import SecretStr

from blocks import backup_set, nodestore, postgres, sentry_config
from blocks.layouts import Role
from blocks.sentry_host import SentryHost
from blocks.sentry_web import PROBE_MESSAGE
from flows.backup import backup
from flows.health import health_check
from flows.move import MoveError, move
from flows.restore import restore
from flows.shared import RestoreError, Unfinished
from infra import sandbox as sb
from infra.sandbox.prefect_blocks import (
    drill_host_from_connection,
    host_from_connection,
    store_from_connection,
)
from infra.sandbox.stacks import EXTERNAL_VOLUMES
from tests.helpers import SHARED
from tests.integration.test_scaling import wait_processed
from tests.integration.test_upgrade import paused_run

# ports of their own (infra/sandbox/stacks.py): the restore test's stack, and the move test's (the
# two run in different pytest processes, side by side); the self-hosted checkout a guide host moves
# onto
RESTORE_SLOT, MOVE_SLOT, ONTO_SLOT = 6, 8, 9
# that checkout's release tags: 24.8.0 is a hard stop between the guide stack's 24.1.0 and 24.9.0
ONTO_RELEASES = ("24.1.0", "24.2.0", "24.8.0", "24.9.0")


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
    """Rows per table, but the cron's heartbeat in sentry_option and the rows of the ingestion
    probes (the health check's, and the restore's own: an issue and, in Postgres, a payload
    each)."""
    with postgres.psql(host) as db:
        found = postgres.row_counts(db)
        probes = int(db.value("SELECT count(*) FROM sentry_groupedmessage WHERE title LIKE "
                              f"'{PROBE_MESSAGE} %'") or 0)  # fmt: skip
        payloads = [data for (data,) in db.rows("SELECT data FROM nodestore_node") if data]
    found.pop("sentry_option", None)
    found["sentry_groupedmessage"] -= probes
    found["nodestore_node"] -= sum(
        str(nodestore.decode(data).get("message", "")).startswith(PROBE_MESSAGE)
        for data in payloads
    )
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


@SHARED  # on the drill host's engine, like the move above
def test_a_guide_host_moves_onto_self_hosted_across_a_hard_stop(move_stack, store_name, sandbox):
    """Issue 27, item 3: the guide stack (Sentry 24.1.0) moved onto a self-hosted checkout that
    was never installed, on another engine, to end on 24.9.0: through the hard stop 24.8.0
    (install.sh there, the set's database restored and migrated, then 24.9.0's install.sh). The
    guide's secret key is carried into sentry/config.yml (its placeholder would stop the web),
    the nodestore reads the Postgres payloads through; ClickHouse is reported not carried; the
    new host ingests; the source starts again as it was."""
    source, name = move_stack["host"], move_stack["name"]
    events = [source.send_event({"message": f"guide era {i}", "level": "error"}) for i in range(2)]
    wait_processed(source, events)
    drill = drill_host_from_connection(sandbox)
    onto = f"{name}-sh"
    d = Path(sandbox["drill_dir"]) / onto
    sb.self_hosted_checkout(d, onto, ONTO_SLOT, ONTO_RELEASES)
    # what its install.sh would pull or build (the sandbox's install.sh does neither)
    sb.copy_images_to_drill(
        *(f"sentry-ops-sandbox/sentry:{v}" for v in ONTO_RELEASES[2:]),
        "sentry-ops-sandbox/services:latest", sb.TOOL_IMAGE, "sentry-ops-sandbox/seaweedfs:latest",
        sb.CLICKHOUSE_IMAGE, sb.SNUBA_IMAGE,
    )  # fmt: skip
    info = {**sb.stack_info("self-hosted", onto, ONTO_SLOT), "project_dir": str(d)}
    # the DSN's key and project are carried in the database; its host is the new one (the
    # cut-over moves it): self-hosted's nginx, which sends the store endpoint to Relay
    key, project = re.match(r"http://(\w+)@[^/]+/(\d+)$",
                            source.probe_dsn.get_secret_value()).groups()  # fmt: skip
    dsn = SecretStr(f"http://{key}@127.0.0.1:{info['web_port']}/{project}")
    target = host_from_connection(
        {**sandbox, "ssh": sandbox["drill_ssh"], "stacks": {"self-hosted": info}}, "self-hosted"
    ).model_copy(update={
        "docker_data_dir": drill.docker_data_dir, "docker_socket": drill.docker_socket,
        "probe_dsn": dsn, "api_token": source.api_token,
    })  # fmt: skip
    assert target.docker_socket != "/var/run/docker.sock"  # the drill engine's own
    target.save(onto, overwrite=True)
    before = counts(source)
    try:
        with pytest.raises(MoveError, match="needs target_version"):
            move(name, onto, store_name)  # refused before anything changes
        assert source.running_services() != set()
        result = move(name, onto, store_name, target_version="24.9.0")
        restored = result["restore"]
        assert restored["passed"], restored["failed"]
        assert restored["hops"] == ["24.8.0", "24.9.0"]
        names = [s["name"] for s in restored["steps"]]
        assert (
            names.index("check out 24.8.0")
            < names.index("install.sh 24.8.0")
            < names.index("restore postgres")
            < names.index("migrations")
            < names.index("install.sh 24.9.0")
        )
        checks = {c["name"]: c for c in restored["checks"]}
        assert checks["release"]["status"] == "ok" and "24.9.0" in checks["release"]["detail"]
        assert checks["not carried"]["status"] == "warning"
        assert "ClickHouse database 'sentry'" in checks["not carried"]["detail"]
        assert target.running_version() == "24.9.0"
        after = counts(target)
        migrated = {t for t in before if t.endswith("_migrations")}  # the hops' own bookkeeping
        kept = {t: n for t, n in before.items() if t not in migrated}
        assert {t: after.get(t) for t in kept} == kept  # every row the guide had
        assert "sentry_deploy" in after  # 24.8.0's table: the migrations ran
        guide_env = dict(
            line.split("=", 1)
            for line in Path(source.project_dir, ".env").read_text().splitlines()
            if "=" in line
        )
        config = (d / "sentry" / "config.yml").read_text()
        assert sentry_config.secret_key(config) == guide_env["SENTRY_SECRET_KEY"]
        conf = (d / "sentry" / "sentry.conf.py").read_text()
        assert sentry_config.nodestore_reads_through(conf) is True
        assert target.modified_files() == ""  # the checkout stays clean for the next upgrade
        assert target.lookup_event(events[0]) is None  # not in the new Snuba: as reported
        fresh = target.send_event({"message": "on self-hosted now", "level": "error"})
        wait_processed(target, [fresh])  # the new host ingests, with the guide's DSN key

        # a block whose docker_socket is another engine's (install.sh would drive that one's
        # stack, self-hosted's shared volume names and all): refused before anything changes
        wrong = target.model_copy(update={"docker_socket": "/var/run/docker.sock"})
        wrong.save(f"{onto}-wrong", overwrite=True)
        with pytest.raises(RestoreError, match=r"docker\.sock is the socket"):
            restore(f"{onto}-wrong", store_name, source=name, target_version="24.9.0")

        target.compose_stop()  # the operator falls back: the source, as it was
        source.compose_up(wait=True)
        assert counts(source) == before
        wait_processed(source, events)
    finally:
        if target.exists(target.project_dir):
            target.compose_down(remove_volumes=True, stop_timeout=2)
            target.remove_tree(target.project_dir)
        left = sb.drill_docker("volume", "ls", "-q").stdout.split()
        external = [v for v in left if v in EXTERNAL_VOLUMES or v == "sentry-taskbroker"]
        if external:  # install.sh's, which `down -v` keeps
            sb.drill_docker("volume", "rm", "-f", *external)
