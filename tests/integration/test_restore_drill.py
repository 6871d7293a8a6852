"""Restore drills on the sandbox: a scratch stack beside production, through real SSH/S3/Prefect."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest

from blocks import postgres
from blocks.backup_store import new_backup_id
from deployments.setup import store_from_connection
from flows.backup import backup
from flows.health import health_check
from flows.restore_drill import DrillError, DrillStack, restore_drill
from infra.sandbox import sandbox as sb
from tests.conftest import expect_failure_until

DRILL = DrillStack(env=sb.stack_settings(1), web_timeout=20)  # production is slot 0


def leftovers(project: str) -> list[str]:
    label = f"label=com.docker.compose.project={project}"
    ps = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True)
    vols = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", label], capture_output=True, text=True
    )
    return ps.stdout.split() + vols.stdout.split()


def prod_state(host) -> tuple[dict, dict]:
    with postgres.psql(host) as db:
        return postgres.row_counts(db), postgres.table_checksums(db)


def test_drill_of_a_fresh_backup_passes_and_leaves_production_alone(
    sentry_host, saved_host, store_name, seeded
):
    sentry_host.compose("stop", "sentry-cron", "sentry-worker")  # keep production still
    try:
        taken = backup(saved_host, store_name)
        before = prod_state(sentry_host)
        result = restore_drill(saved_host, store_name, drill=DRILL)
        after = prod_state(sentry_host)
    finally:
        sentry_host.compose("start", "sentry-cron", "sentry-worker")
    assert result["passed"] and result["backup_id"] == taken["backup_id"]
    assert result["rto_seconds"] > 0 and 0 <= result["rpo_seconds"] < 600
    assert after == before  # production's data is unchanged
    assert all(c["status"] == "ok" for c in health_check(saved_host))  # and it is healthy
    assert leftovers(f"{sentry_host.project}-drill") == []
    assert not Path(f"{sentry_host.project_dir}-drill").exists()


def test_drill_on_each_layout(request, layout, saved_layout_host, store_name, layout_host):
    expect_failure_until(
        request,
        layout,
        {"self-hosted": "issues 9 and 10: dump next to its Postgres; drill on a second host"},
    )
    taken = backup(saved_layout_host, store_name)
    result = restore_drill(saved_layout_host, store_name, drill=DRILL)
    assert result["passed"] and result["backup_id"] == taken["backup_id"]
    assert leftovers(f"{layout_host.project}-drill") == []


def test_a_flipped_byte_fails_at_verification_before_any_restore(
    sentry_host, saved_host, store_name, sandbox
):
    taken = backup(saved_host, store_name)
    store = store_from_connection(sandbox, prefix=store_name)
    key = store.read_manifest(taken["backup_id"]).object("postgres").key
    data = bytearray(store.open(key).read())
    data[-100] ^= 0x40
    store.put_bytes(key, bytes(data))
    with pytest.raises(DrillError, match=r"verification \(postgres: size .* differs"):
        restore_drill(saved_host, store_name, drill=DRILL)
    assert not Path(f"{sentry_host.project_dir}-drill").exists()  # nothing was created
    assert leftovers(f"{sentry_host.project}-drill") == []


def test_a_backup_without_manifest_is_never_picked(saved_host, store_name, sandbox):
    taken = backup(saved_host, store_name)
    store = store_from_connection(sandbox, prefix=store_name)
    newer = new_backup_id("test-sandbox", dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    store.put_bytes(store.key(newer, "postgres.dump.zst"), b"half a dump")  # no manifest
    result = restore_drill(saved_host, store_name, drill=DRILL)
    assert result["backup_id"] == taken["backup_id"]
    with pytest.raises(DrillError, match="has no manifest: incomplete, never restored"):
        restore_drill(saved_host, store_name, backup_id=newer, drill=DRILL)


def test_a_failing_drill_tears_down_unless_asked_to_keep(
    sentry_host, saved_host, store_name, sandbox
):
    taken = backup(saved_host, store_name)
    store = store_from_connection(sandbox, prefix=store_name)
    manifest_key = store.key(taken["backup_id"], "manifest.json")
    manifest = json.loads(store.open(manifest_key).read())
    manifest["images"]["sentry"] = "sentry-ops-sandbox/sentry:24.3.0-broken"  # never healthy
    store.put_bytes(manifest_key, json.dumps(manifest).encode())
    scratch = f"{sentry_host.project}-drill"

    with pytest.raises(DrillError, match=r"/_health/ \(0 no answer"):
        restore_drill(saved_host, store_name, drill=DRILL)
    assert leftovers(scratch) == []
    assert not Path(f"{sentry_host.project_dir}-drill").exists()

    with pytest.raises(DrillError, match=r"/_health/"):
        restore_drill(saved_host, store_name, drill=DRILL, keep_on_failure=True)
    try:
        assert leftovers(scratch) != []  # kept for inspection
    finally:
        subprocess.run(
            [
                "docker",
                "compose",
                "--project-directory",
                f"{sentry_host.project_dir}-drill",
                "-p",
                scratch,
                "down",
                "-v",
                "-t",
                "1",
            ],
            capture_output=True,
        )
        subprocess.run(["rm", "-rf", f"{sentry_host.project_dir}-drill"])
    assert leftovers(scratch) == []
