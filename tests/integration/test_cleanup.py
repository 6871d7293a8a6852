"""Retention cleanup on the sandbox, both layouts: old events gone from Postgres and the nodestore,
newer ones kept; a dry run changes nothing; leftovers (a stale frozen ClickHouse copy, an orphan
volume, old Sentry images) go, the running image and the one before it stay; long steps run
detached and survive a cut SSH connection."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest

from blocks import backup_set, clickhouse, jobs, postgres
from blocks.layouts import DataVolume
from blocks.ssh import RemoteCommandError
from flows.cleanup import CleanupError, retention_cleanup
from infra.sandbox.prefect_blocks import store_from_connection
from tests.helpers import SHARED
from tests.integration.test_backup import cut_ssh_when
from tests.integration.test_scaling import wait_processed

pytestmark = SHARED  # the sandbox's shared stacks (tests/helpers.py)

OLD_VERSIONS = ("23.1.0", "23.2.0")  # older than the sandbox's running 24.1.0


def old_image(host, repo: str, tag: str) -> str:
    """An older Sentry version on the host: the running image plus a layer of its own."""
    dockerfile = f"FROM {repo}:24.1.0\nRUN head -c 3000000 /dev/urandom > /old-{tag}\n"
    argv = ["docker", "build", "-q", "--network", "none", "-t", f"{repo}:{tag}", "-"]
    host.run(argv, stdin=dockerfile.encode(), timeout=300)
    return f"{repo}:{tag}"


def state(host, store) -> dict:
    """What a dry run must leave exactly as it was."""
    with postgres.psql(host) as db:
        counts = postgres.row_counts(db)
    counts.pop("sentry_option", None)  # the cron's heartbeat
    return {
        "rows": counts,
        "images": sorted(f"{r['Repository']}:{r['Tag']}" for r in host.images()),
        "freezes": clickhouse.leftover_freezes(host),
        "volumes": sorted(host.dangling_volumes()),
        "backups": [s.backup_id for s in backup_set.list_sets(store)],
    }


def issues_titled(host, prefix: str) -> int:
    with postgres.psql(host) as db:
        return int(
            db.value(f"SELECT count(*) FROM sentry_groupedmessage WHERE title LIKE '{prefix}%'")
        )


def test_cleanup_removes_old_events_and_leftovers_and_a_dry_run_nothing(
    layout_host, saved_layout_host, store_name, sandbox
):
    host = layout_host
    store = store_from_connection(sandbox, prefix=store_name)
    tag = uuid.uuid4().hex[:8]
    now = dt.datetime.now(dt.UTC)
    # the host's own retention: the guide's 30 days, self-hosted's SENTRY_EVENT_RETENTION_DAYS=90
    keep = {"guide": 30, "self-hosted": 90}[host.layout]
    assert host.event_retention()[0] == keep
    old = [host.send_event({"message": f"old-{tag} {i}", "level": "error",
                            "timestamp": (now - dt.timedelta(days=keep + 10)).isoformat()})
           for i in range(3)]  # fmt: skip
    new = [host.send_event({"message": f"new-{tag} {i}", "level": "error"}) for i in range(3)]
    wait_processed(host, new)
    # the old ones: their issues and payloads; on self-hosted Snuba's TTL (retention_days,
    # ttl_only_drop_parts) has already dropped their ClickHouse rows, as it would on a real host
    deadline = time.monotonic() + 60
    while issues_titled(host, f"old-{tag}") < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert issues_titled(host, f"old-{tag}") == 3
    # leftovers: a frozen copy a killed backup left two days ago, an orphan volume, old images
    with clickhouse.connect(host) as (client, _):
        db = host.stack.clickhouse_database
        client.command(f"ALTER TABLE `{db}`.errors_local FREEZE WITH NAME 'stale_{tag}'")
    host.run(host.volume_run_argv(DataVolume.CLICKHOUSE, host.tool_image, "touch", "-d",
                                  "2 days ago", f"/volume/shadow/stale_{tag}"))  # fmt: skip
    orphan = f"{host.project}_orphan_{tag}"
    host.run(["docker", "volume", "create", "--label",
              f"com.docker.compose.project={host.project}", orphan])  # fmt: skip
    repo = "sentry-ops-sandbox/sentry"
    oldest, previous = (old_image(host, repo, v) for v in OLD_VERSIONS)

    before = state(host, store)
    dry = retention_cleanup(saved_layout_host, store_name, dry_run=True,
                            vacuum_full=["sentry_groupedmessage"])  # fmt: skip
    assert state(host, store) == before, "a dry run changed something"
    assert dry["dry_run"] and dry["reclaimed"] > 0
    would = {r["name"]: r["detail"] for r in dry["items"]}
    assert "would remove" in would[f"image {oldest}"]
    assert "would remove" in would[f"volume {orphan}"]
    assert issues_titled(host, f"old-{tag}") == 3

    result = retention_cleanup(saved_layout_host, store_name, vacuum_full=["sentry_groupedmessage"])
    items = {r["name"]: r for r in result["items"]}
    # events: older than the host's retention gone (issue, payload), newer kept
    assert [host.lookup_event(e) for e in old] == [None] * 3
    assert all(host.lookup_event(e) for e in new)
    assert issues_titled(host, f"old-{tag}") == 0 and issues_titled(host, f"new-{tag}") == 3
    assert result["days"] == keep and items[f"sentry cleanup --days {keep}"]["status"] == "done"
    # leftovers gone, with the bytes they took
    assert f"stale_{tag}" not in clickhouse.leftover_freezes(host)
    assert items[f"ClickHouse frozen copy stale_{tag}"]["reclaimed"] > 0
    assert orphan not in host.dangling_volumes()
    assert result["reclaimed"] > 0
    # images: the oldest goes; the one before the running version and the running one stay
    images = {f"{r['Repository']}:{r['Tag']}" for r in host.images()}
    assert oldest not in images
    assert {previous, f"{repo}:24.1.0", f"{repo}:24.2.0"} <= images
    assert items[f"image {previous}"]["status"] == "ok"
    assert items["VACUUM (ANALYZE)"]["status"] == "done"
    assert items["VACUUM FULL sentry_groupedmessage"]["status"] == "done"


def test_days_below_the_hosts_retention_are_refused_before_anything_runs(
    layout_host, saved_layout_host, store_name
):
    """Self-hosted keeps 90 days (.env.custom here); its cleanup cron, Snuba's TTL and SeaweedFS
    follow it: a shorter `--days` would delete Postgres rows whose ClickHouse rows stay."""
    keep, where = layout_host.event_retention()
    with pytest.raises(CleanupError, match=rf"shorter than the host's own retention, {keep} days"):
        retention_cleanup(saved_layout_host, store_name, event_retention_days=keep - 1)
    assert jobs.state(layout_host, jobs.container_name(layout_host, "cleanup")) is None
    if layout_host.layout == "self-hosted":
        assert where == "SENTRY_EVENT_RETENTION_DAYS in .env.custom"


def test_invalid_days_is_refused_before_anything_runs(saved_host, store_name, sentry_host):
    for days in (0, 3651, -5):
        with pytest.raises(CleanupError, match=rf"event_retention_days={days}: must be .* 1 to "):
            retention_cleanup(saved_host, store_name, event_retention_days=days)
    with pytest.raises(CleanupError, match="vacuum_full names tables but vacuum=false"):
        retention_cleanup(saved_host, store_name, vacuum=False, vacuum_full=["nodestore_node"])
    with pytest.raises(CleanupError, match=r"no table \['no_such_table'\]"):
        retention_cleanup(saved_host, store_name, vacuum_full=["no_such_table"])
    assert jobs.state(sentry_host, jobs.container_name(sentry_host, "cleanup")) is None


def test_a_detached_step_survives_a_cut_connection_and_is_reattached(sentry_host):
    host = sentry_host
    lines: list[str] = []

    def start(name: str, labels: dict[str, str]) -> list[str]:
        tags = [a for k, v in labels.items() for a in ("--label", f"{k}={v}")]
        return ["docker", "run", "-d", "--name", name, *tags, "--network", "none",
                "--entrypoint", "sh", host.tool_image, "-c",
                'echo "started $(date +%s%N)"; sleep 6; echo finished']  # fmt: skip

    watcher, cut = cut_ssh_when(lambda: any(line.startswith("started") for line in lines))
    # the SSH session dies under the follower (`docker logs -f`): it ends with no exit status
    with pytest.raises(RemoteCommandError):
        jobs.run(host, "test-job", start, run_id="run-1", on_line=lines.append)
    watcher.join()
    assert cut.is_set(), "the connection was never cut: the test did not test anything"
    host.close()
    assert jobs.state(host, jobs.container_name(host, "test-job"))[0] == "running"
    again = jobs.run(host, "test-job", start, run_id="run-1", on_line=lines.append)
    assert again.ok and again.reattached
    starts = [line for line in again.tail if line.startswith("started")]
    assert len(starts) == 1 and again.tail[-1] == "finished"  # the same container, to its end
    assert lines.count(starts[0]) == 2  # seen before the cut, and again after re-attaching
    assert jobs.state(host, jobs.container_name(host, "test-job")) is None  # removed once read


def test_a_detached_jobs_secret_is_a_0600_file_never_its_environment(sentry_host):
    """VACUUM's job shape (tool_job_argv with a secret file): the secret comes in on stdin as a
    file copied into the created container; neither `docker inspect` nor argv has it."""
    host = sentry_host
    secret = f"hush-{uuid.uuid4().hex}"
    netns = postgres.target(host).container
    script = "stat -c 'mode %a' /sentry-ops-pgpass; cat /sentry-ops-pgpass; sleep 3"
    seen: dict[str, str] = {}

    def start(name: str, labels: dict[str, str]) -> list[str]:
        return host.tool_job_argv(name, labels, netns, "sh", "-c", script,
                                  secret_file=postgres.PGPASS_FILE)  # fmt: skip

    def on_line(line: str) -> None:
        if not seen:  # while it runs: what `docker inspect` shows of it
            name = jobs.container_name(host, "secret-test")
            seen["inspect"] = host.run(["docker", "inspect", name]).text
        seen.setdefault("lines", "")
        seen["lines"] += line + "\n"

    where = postgres.Target(netns, 5432, "u", "d", secret)
    job = jobs.run(host, "secret-test", start, run_id="r", on_line=on_line,
                   stdin=postgres.password_file(where))  # fmt: skip
    assert job.ok
    assert "mode 600" in seen["lines"] and secret in seen["lines"]
    assert secret not in seen["inspect"] and "PGPASSWORD" not in seen["inspect"]
