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


def test_a_layout_change_is_guide_onto_self_hosted_at_a_named_release():
    from blocks.restore import not_carried, onto_problem

    assert onto_problem("guide", "guide", None) is None
    assert "needs target_version" in (onto_problem("guide", "self-hosted", None) or "")
    assert onto_problem("guide", "self-hosted", "26.8.0") is None
    assert "cannot be restored onto a guide host" in (
        onto_problem("self-hosted", "guide", "24.1.0") or ""
    )
    assert "upgrade flow" in (onto_problem("guide", "guide", "24.9.0") or "")
    text = not_carried(manifest())
    assert "only into the database it came from" in text and "secret key is carried" in text


def test_the_set_env_and_the_secret_key_come_from_the_sets_config_tar():
    import io
    import tarfile

    from blocks.restore import set_env

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        body = b"SENTRY_SECRET_KEY='k=1'\nSENTRY_VERSION=24.1.0\n"
        info = tarfile.TarInfo("./.env")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    assert set_env(buf.getvalue(), "guide")["SENTRY_SECRET_KEY"] == "k=1"
