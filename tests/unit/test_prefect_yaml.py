"""prefect.yaml is the one list of deployments: every entrypoint must import, and its
parameters must be parameters of that flow."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import yaml
from prefect.events import DeploymentEventTrigger

ROOT = Path(__file__).resolve().parents[2]


def deployments() -> list[dict]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def test_every_deployment_points_at_a_flow_with_those_parameters():
    seen = set()
    for deployment in deployments():
        path, func = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        params = inspect.signature(flow.fn).parameters
        assert set(deployment.get("parameters", {})) <= set(params), deployment["name"]
        assert deployment["work_pool"]["name"] == "sentry-ops"
        assert deployment["name"] not in seen
        seen.add(deployment["name"])
    assert {
        "health-check",
        "bootstrap",
        "nightly-backup",
        "verify-backup",
        "list-backups",
        "backup-retention",
    } <= seen


def test_nightly_backup_is_at_two_with_a_timezone_and_one_at_a_time():
    nightly = next(d for d in deployments() if d["name"] == "nightly-backup")
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"
    assert nightly["schedules"][0]["timezone"]
    assert nightly["concurrency_limit"] == 1


def test_restore_drill_can_follow_each_backup_by_event():
    drill = next(d for d in deployments() if d["name"] == "restore-drill")
    trigger = drill["triggers"][0]
    assert trigger["expect"] == ["sentry.backup.completed"]
    assert "event.payload.backup_id" in trigger["parameters"]["backup_id"]
    parsed = DeploymentEventTrigger(**{k: v for k, v in trigger.items() if k != "type"})
    assert parsed.expect == {"sentry.backup.completed"}
    # the drill that follows a backup drills that backup's host from that backup's store
    assert "event.payload.host" in trigger["parameters"]["host"]
    assert "event.payload.store" in trigger["parameters"]["store"]


def test_templates_default_no_host_or_store():
    """There is no host every install has: setup fills host and store per deployment."""
    for deployment in deployments():
        params = deployment.get("parameters") or {}
        assert not {"host", "store", "admin_password_secret"} & set(params), deployment["name"]
        assert "sandbox" not in str(params)


def test_every_operation_but_the_upgrade_has_a_flow_timeout():
    """A hung run ends; the upgrade alone has none (a timeout mid-migration or mid-rollback would
    leave the host half-changed: its steps carry their own bounds)."""
    for deployment in deployments():
        path, func = deployment["entrypoint"].split(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)
        if flow.name == "upgrade":
            assert flow.timeout_seconds is None
        else:
            assert flow.timeout_seconds and flow.timeout_seconds <= 24 * 3600, flow.name
