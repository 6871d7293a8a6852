"""The restore flow's pure parts: what the operator is asked to approve, and its deployment."""

from __future__ import annotations

import datetime as dt

from flows.move import cutover_steps
from flows.restore import approval_text, held_line
from tests.unit.test_backup_set import manifest
from tests.unit.test_prefect_yaml import deployments


class Target:
    label = "root@10.0.0.5:/opt/sentry"


def test_the_approval_names_the_host_the_set_its_age_and_what_is_overwritten():
    taken = manifest()
    held = {"p_sentry_postgres_data": 2_500_000_000, "p_sentry_data": 1_000_000}
    later = taken.finished_at + dt.timedelta(hours=30)
    text = approval_text(Target(), taken, held, later)  # type: ignore[arg-type]
    assert taken.backup_id in text and Target.label in text
    assert "taken on prod 30.0 h ago" in text
    assert "OVERWRITING" in text and "p_sentry_postgres_data (2500.0 MB)" in text
    assert "safety backup" in text and "unticked" in text
    assert held_line(held) == "p_sentry_data (1.0 MB), p_sentry_postgres_data (2500.0 MB)"


def test_restore_is_a_deployment_that_never_runs_by_itself():
    (spec,) = [d for d in deployments() if d["name"] == "restore"]
    assert spec["entrypoint"] == "flows/restore.py:restore"
    assert not spec.get("schedules") and not spec.get("triggers")


class Host:
    def __init__(self, address: str, project_dir: str) -> None:
        self.ssh = type("SSH", (), {"host": address})()
        self.label = f"root@{address}:{project_dir}"
        self.project_dir = project_dir


def test_the_cutover_names_the_new_host_the_dsn_setting_and_how_to_undo():
    old, new = Host("10.0.0.5", "/opt/sentry"), Host("10.0.0.9", "/srv/sentry")
    steps = cutover_steps(old, new, "http://10.0.0.9:9000/")  # type: ignore[arg-type]
    text = " ".join(steps)
    assert "10.0.0.9" in steps[0] and "http://10.0.0.9:9000/" in steps[0]
    assert "system.url-prefix" in text
    assert "`docker compose start` in /opt/sentry undoes the move" in steps[-1]


def test_move_is_one_deployment_per_store_never_scheduled():
    (spec,) = [d for d in deployments() if d["name"] == "move"]
    assert spec["entrypoint"] == "flows/move.py:move" and not spec.get("schedules")
