"""The Prefect UI in headless Chromium, as an operator sees it after setup: the deployments page,
the backup run form (block pickers with the blocks picked, every parameter described) and a
finished drill's report artifact. Each page is screenshotted (paths printed with the test output,
files in the sandbox state dir) and asserted on its rendered text; none may be the UI's error page.
Runs after the drill tests (file order): it shows the newest drill report of this test session,
and drills one itself when there is none (the file run alone)."""

from __future__ import annotations

import re
import subprocess
import uuid

import pytest
from prefect.client.orchestration import get_client

from deployments.setup import main
from flows.backup import backup
from flows.restore_drill import restore_drill
from infra import sandbox as sb
from tests.helpers import SHARED

pytestmark = SHARED  # the sandbox's shared stacks (tests/helpers.py)

ERROR_PAGE = ("Oops", "Something went wrong", "Page not found")


def render(sandbox: dict, url: str, name: str) -> str:
    """The page's text once its scripts have run; a screenshot of it beside the sandbox state."""
    shots = sb.STATE / "ui-screenshots"
    shots.mkdir(exist_ok=True)
    common = [
        sandbox["chromium"], "--headless=new", "--no-sandbox", "--disable-gpu",
        "--virtual-time-budget=15000", "--window-size=1280,1500",
    ]  # fmt: skip
    shot = shots / f"{name}.png"
    subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000, f"no screenshot of {url}"
    print(f"screenshot of {url}: {shot}")
    dom = subprocess.run(
        [*common, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    text = " ".join(re.sub(r"<[^>]+>", " ", dom).split())
    assert not [e for e in ERROR_PAGE if e in text], text[:2000]
    return text


@pytest.fixture(scope="module")
def ui(sandbox, prefect_api, tmp_path_factory) -> dict:
    tag = uuid.uuid4().hex[:6]
    hosts = {f"ui-{tag}": "guide"}
    config = sb.setup_config(sandbox, tmp_path_factory.mktemp("ui"), hosts, store=f"ui-store-{tag}")
    assert main(["--config", str(config)]) == 0
    return {
        "base": prefect_api.removesuffix("/api"),
        "host": f"ui-{tag}",
        "store": f"ui-store-{tag}",
    }


def test_the_deployments_page_lists_each_operation_of_the_host(ui, sandbox):
    text = render(sandbox, f"{ui['base']}/deployments", "deployments")
    assert "Deployments" in text
    for operation in ("backup", "health-check", "restore-drill", "upgrade"):
        assert operation in text
    assert f"target:{ui['host']}" in text  # the tags setup gives


def test_the_backup_run_form_has_block_pickers_with_the_blocks_and_descriptions(ui, sandbox):
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"backup/{ui['host']}")
    text = render(
        sandbox, f"{ui['base']}/deployments/deployment/{deployment.id}/run", "backup-form"
    )
    assert "The Sentry host: a SentryHost block, or its name." in text
    assert "The backup store: a BackupStore block, or its name." in text
    assert "Per-object retries of transient SSH/S3 failures" in text
    assert "SentryHost" in text and "BackupStore" in text  # the block type of each picker
    assert ui["host"] in text and ui["store"] in text  # the saved blocks, picked
    assert "Add" in text  # a new block can be made from the form


def newest_drill_report():
    with get_client(sync_client=True) as client:
        latest = client.read_latest_artifacts(limit=200)
    return next((a for a in latest if a.key == "restore-drill"), None)


def test_a_finished_drills_report_artifact_reads_as_a_report(ui, sandbox, saved_host, store_name):
    if newest_drill_report() is None:  # this file alone: drill a fresh backup first
        taken = backup(saved_host, store_name)
        restore_drill(saved_host, store_name, backup_id=taken["backup_id"])
    artifact = newest_drill_report()
    text = render(sandbox, f"{ui['base']}/artifacts/artifact/{artifact.latest_id}", "drill-report")
    assert "Restore drill of" in text
    # the newest report may be a refused drill's (another test's): no RTO then
    rto = r"RTO ([0-9.]+ s|n/a \(not restored\))"
    assert re.search(rf"(PASSED|FAILED) - {rto}, RPO [0-9]+ s", text), text[:3000]
    for heading in ("stage", "seconds", "check", "result"):
        assert heading in text
