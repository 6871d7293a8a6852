"""Move: Sentry from one host to another in one run, the source kept to fall back on.

Runbook, in order:
1. before anything changes: source and target must be two stacks (not one project dir on one
   engine); a target holding Sentry data is refused unless `replace` (the restore then asks for
   the operator's approval in the UI and takes a verified safety backup of it);
2. under the source's host lock: ingestion paused (the layout's ingest services stopped: the
   guide's web, self-hosted's nginx, the only services that publish a port), the worker backlog
   drained (bounded by `drain_timeout`), a final backup taken and verified, then the whole source
   stack stopped: its data is not touched, `docker compose start` (or a failed move) brings it
   back;
3. the restore flow onto the target from that set (`source`: its images copied where the target
   lacks them), checked like a drill (row counts, ClickHouse, the newest event through Sentry's
   API, `/_health/`); a guide host onto a self-hosted checkout at `target_version`: the
   database migrated there across the hard stops (flows/restore.py `restore_onto`);
4. passed: the cut-over steps in the report (DNS, DSN host, `system.url-prefix`); the source
   stays stopped and untouched until the operator removes it. Failed: the source is started
   again, as it was, and the move fails naming why.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from blocks import restore as restoring
from blocks.backup_store import BackupStore
from blocks.poll import poll
from blocks.scratch import same_engine
from blocks.sentry_host import SentryHost
from flows.restore import restore
from flows.shared import (
    HOUR,
    Report,
    Result,
    Status,
    artifact_slug,
    emit,
    host_lock,
    load_block,
    pre_backup,
)


class MoveError(Exception):
    pass


def cutover_steps(source: SentryHost, target: SentryHost, web_url: str) -> list[str]:
    """What the operator does once the target is checked (pure)."""
    return [
        f"Point Sentry's DNS name at the new host {target.ssh.host} (it answers on "
        f"{web_url}); until then SDKs keep sending to the stopped source.",
        "DSNs carry the host name, not the machine: with the DNS name moved, SDKs need no change. "
        "If your DSNs name the old machine directly, change `system.url-prefix` (sentry/config.yml"
        " or the Admin > Settings page) to the new URL: Sentry builds every DSN it shows from it, "
        "then update the SDKs' DSNs.",
        "Check the new host's health-check/<host> deployment passes, then move the old host's "
        "schedules (nightly-backup, restore-drill, retention-cleanup) to the new host's block.",
        f"The source {source.label} is stopped, its data untouched: `docker compose start` in "
        f"{source.project_dir} undoes the move. Remove it only when you are sure.",
    ]


# -- tasks --------------------------------------------------------------------------------------
@task(cache_policy=NO_CACHE, timeout_seconds=600)
def target_data(target: SentryHost) -> dict[str, int]:
    """The target's data volumes that are not empty (what the restore would overwrite)."""
    return restoring.held_data(target)


@task(cache_policy=NO_CACHE, timeout_seconds=600)
def pause_ingestion(source: SentryHost) -> str:
    return f"stopped {', '.join(source.stop_ingestion())}"


@task(cache_policy=NO_CACHE, timeout_seconds=3600)
def drain(source: SentryHost, timeout: float) -> Result:
    """Wait until the workers took every queued task (events already in), or `timeout`."""
    count, done = poll(source.queue_backlog, lambda c: c.count == 0, timeout=timeout, interval=2)
    if done:
        return Result("drain the backlog", Status.DONE, "no task waits")
    return Result("drain the backlog", Status.WARNING, f"{count} after {timeout:.0f} s: those "
                  "tasks are in the final backup and run on the target")  # fmt: skip


@task(cache_policy=NO_CACHE, timeout_seconds=1800)
def stop_source(source: SentryHost) -> None:
    source.compose_stop()


@task(cache_policy=NO_CACHE, timeout_seconds=1800)
def restart_source(source: SentryHost) -> None:
    source.compose_up(wait=True)


# -- flow ---------------------------------------------------------------------------------------
@flow(
    name="move",
    flow_run_name="move-{source}-to-{target}",
    log_prints=True,
    persist_result=True,
    timeout_seconds=24 * HOUR,
)
def move(
    source: SentryHost | str,
    target: SentryHost | str,
    store: BackupStore | str,
    replace: bool = False,
    target_version: str | None = None,
    drain_timeout: float = 300,
    web_timeout: float = 600,
) -> dict:
    """Move Sentry from `source` to `target`: final backup with ingestion paused, restore on the
    target, checks; the source is stopped and kept until you remove it.

    Args:
        source: The host Sentry runs on now: a SentryHost block, or its name.
        target: The host it moves to (its block: SSH, project dir, ports): a SentryHost block, or
            its name.
        store: The backup store the final backup goes to: a BackupStore block, or its name.
        replace: The target holds Sentry data that may be overwritten (after your approval in
            the UI and a verified safety backup of it).
        target_version: Only when the target is of another layout (a guide host moving onto a
            self-hosted checkout): the release to end on; the database is migrated to it across
            the hard stops (the restore flow's `target_version`).
        drain_timeout: Seconds to let the workers finish queued tasks once ingestion is paused.
        web_timeout: Seconds for the restored stack to get healthy.
    """
    logger = get_run_logger()
    source, src = load_block(source, SentryHost)
    target, tgt = load_block(target, SentryHost)
    store, _ = load_block(store, BackupStore)
    if src.project_dir == tgt.project_dir and same_engine(src, tgt):
        raise MoveError(f"{src.label} and {tgt.label} are one stack: nothing to move")
    if problem := restoring.onto_problem(src.layout, tgt.layout, target_version):
        raise MoveError(f"{src.label} -> {tgt.label}: {problem}")
    held = target_data(tgt)
    if held and not replace:
        raise MoveError(
            f"{tgt.label} holds Sentry data ({', '.join(sorted(held))}): a move onto it needs "
            "replace=true (you approve in the UI, a safety backup of it is taken first); "
            "nothing was changed"
        )
    out = Report(on_add=lambda r: logger.info("%s: %s (%s)", r.name, r.status, r.detail))
    started = time.monotonic()
    t = time.monotonic()
    with host_lock(src, "move (final backup)"):
        out.stage("wait for the source's host lock", t, "held")
        t = time.monotonic()
        out.stage("pause ingestion", t, pause_ingestion(src))
        out.add(drain(src, drain_timeout))
        final = pre_backup(source, store, out, "final backup")
        t = time.monotonic()
        stop_source(src)
        out.stage("stop the source", t, "every service stopped, its data untouched")
    try:
        restored = restore(target, store, backup_id=final, source=source, replace=replace,
                           target_version=target_version, web_timeout=web_timeout)  # fmt: skip
    except Exception as exc:
        t = time.monotonic()
        restart_source(src)
        out.stage("restart the source", t, "the move failed: the source runs again as it was")
        raise MoveError(
            f"move of {src.label} to {tgt.label} failed in the restore ({exc}); the source was "
            "started again with its data as it was"
        ) from exc
    web_url = f"http://{tgt.ssh.host}:{tgt.web_port}/"
    steps = cutover_steps(src, tgt, web_url)
    downtime = round(time.monotonic() - started, 1)
    lines = [
        f"# Move of `{src.label}` to `{tgt.label}`",
        "",
        f"**DONE** - set {final} restored and checked on the target (RTO "
        f"{restored['rto_seconds']} s); ingestion paused for {downtime} s so far (until the "
        "cut-over below).",
        "",
        "## Cut-over (yours)",
        *(f"{i}. {step}" for i, step in enumerate(steps, 1)),
        "",
        "| stage | seconds | detail |",
        "|---|---:|---|",
        *(f"| {r.name} | {r.seconds or 0:.2f} | {r.detail} |" for r in out.steps),
    ]
    create_markdown_artifact(
        key=artifact_slug(f"move-{source}-to-{target}"),
        markdown="\n".join(lines),
        description=f"Move of {src.label} to {tgt.label}",
    )
    result = {
        "backup_id": final,
        "rto_seconds": restored["rto_seconds"],
        "paused_seconds": downtime,
        "cutover": steps,
        "steps": [r.row() for r in out.steps],
        "restore": restored,
    }
    emit("sentry.move.completed", final, target, result, kind="host")
    return result
