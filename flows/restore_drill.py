"""Restore drill: restore a backup into a scratch stack, prove it works, report RTO and RPO.

Runbook, in order:
1. pick the backup among this host's own sets (the given one, or its newest complete one: never
   one without a manifest); the manifest's seal must be right, and it must name this host and
   set and keep every object in the set's folder;
2. verify every object's size and sha256 against the manifest, before anything is created;
3. under the scratch stack's host lock: remove what a killed earlier drill left (same scratch
   name); refuse when the drill engine's disk has no room for the restored set (every object's
   size before compression, Postgres at its recorded database size, plus 10 % and 1 GiB); then
   build the scratch stack on the drill host (default: the same host, for layouts whose volumes
   are per project; another Docker host for layouts with external volumes): its own directory
   (marked as a drill's), compose project and ports (every port of its `.env` shifted by the
   drill, never inherited from production), the image tags the manifest recorded (limited to
   production's own images, or `allowed_images`), the config restored from the backup; then its
   resolved config is checked against production's before anything runs (project, volume,
   container and network names on one engine, told by the engine's ID; host paths of binds and
   device-bound volumes, ports published or already listening, external networks, links into
   other containers): a clash is refused, naming it;
4. Postgres: S3 -> decrypted on the worker -> SSH -> FIFO -> pg_restore next to the scratch
   Postgres (an empty database only); data volumes: S3 -> decrypted -> SSH -> zstd -d | tar on
   the host; the stored bytes of each object hashed as it is restored, compared with the manifest;
5. checks: per-table row counts equal the manifest's; what an operator looks at: a superuser,
   projects and issues counted equal to the manifest, the newest event's payload readable from
   the restored nodestore; then Sentry web on the restored data: `/_health/` and `?full` ok;
   the result is recorded beside the set (`verification.json`, sealed);
6. tear the scratch stack down, always (kept only when keep_on_failure and it failed); teardown
   errors are reported in the drill report, never lose it.
With a base backup in the set and the host's WAL archive (`target_minutes_ago`, `pitr-drill`, or
by default), Postgres is replayed to that point instead (flows/restore.py) and checked to hold
every WAL mark production wrote up to it and none after.
RTO is the wall time from the first restoring step (under the locks) to a healthy, checked scratch
stack; RPO is the backup's age (replayed: the point's age).
Production is never touched: every command names the scratch project.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks import backup_set, postgres
from blocks import scratch as scratch_stack
from blocks.backup_set import BackupManifest
from blocks.backup_store import BackupStore
from blocks.layouts import DataVolume, Role
from blocks.poll import poll
from blocks.restore import PointInTime
from blocks.scratch import DrillError, DrillStack, scratch_of
from blocks.sentry_host import SentryHost
from blocks.sentry_web import full_health, probe_web
from flows.shared import (
    HOUR,
    Report,
    RestoreError,
    Result,
    Status,
    check_newest_event,
    close_restore,
    host_lock,
    load_block,
    pick_for_time,
    point_in_time,
    restore_objects,
    verify_objects,
)


class WebExited(Exception):
    """Web's container exited while the drill waited for it to answer."""

    def __init__(self, result: Result) -> None:
        super().__init__(result.detail)
        self.result = result


# -- tasks --------------------------------------------------------------------------------------
@task(cache_policy=NO_CACHE, timeout_seconds=1800)
def clear_leftovers(scratch: SentryHost, prod: SentryHost) -> str:
    """A scratch stack left by a killed drill (same name) goes before a new one is built."""
    if scratch_stack.has_leftovers(scratch):
        return "removed a previous drill's leftovers: " + teardown.fn(scratch, prod)
    return "none"


@task(cache_policy=NO_CACHE, timeout_seconds=1800)
def prepare_scratch(
    prod: SentryHost,
    scratch: SentryHost,
    store: BackupStore,
    manifest: BackupManifest,
    drill: DrillStack,
) -> str:
    """Scratch project dir with the backup's config (or production's), pinned images, its own
    ports; then its resolved config checked against production's, before anything runs."""
    config = backup_set.read_object(store, manifest, "config") if manifest.config_included else None
    return scratch_stack.prepare(prod, scratch, config, manifest.images, drill)


@task(cache_policy=NO_CACHE, timeout_seconds=120)
def check_room(scratch: SentryHost, manifest: BackupManifest) -> Result:
    """What the drill will write against the drill engine's free space."""
    return scratch_stack.check_room(scratch, manifest)


@task(cache_policy=NO_CACHE, timeout_seconds=6 * 3600)
def bring_images(prod: SentryHost, scratch: SentryHost) -> Result:
    """The images the scratch stack runs onto the drill engine, copied from production."""
    return scratch_stack.bring_images(prod, scratch)


@task(cache_policy=NO_CACHE, timeout_seconds=600)
def create_external_volumes(scratch: SentryHost) -> list[str]:
    """External volumes (self-hosted's) on the drill host: created for the drill, labelled,
    removed after; refused if the host already has one (it would be someone's data)."""
    return scratch_stack.create_external_volumes(scratch)


@task(cache_policy=NO_CACHE, timeout_seconds=1800)
def start_web(scratch: SentryHost, timeout: float) -> list[Result]:
    """Start web (and nginx, where the layout fronts it) on the restored data, poll /_health/
    until ok, `timeout`, or its container exits (a crash), then ?full."""
    services = [scratch.stack.service(Role.WEB)]
    if Role.NGINX in scratch.stack.services:
        services.append(scratch.stack.service(Role.NGINX))
    scratch.compose_up(*services)

    def answer() -> Result:
        """/_health/, failing at once when web's container has exited (a crash will not
        answer: say so now, with its last words)."""
        web = probe_web(scratch)
        dead = [r for r in scratch.service_containers(services[0])
                if r.get("State") in ("exited", "dead")]  # fmt: skip
        if not web.ok and dead:
            last = " | ".join(scratch.service_log_tail(Role.WEB, 5))[-300:]
            detail = f"{web.detail}; its container exited ({dead[0].get('ExitCode')}): {last}"
            raise WebExited(Result.check(web.name, False, detail))
        return web

    try:
        web, _ = poll(answer, lambda r: r.ok, timeout=timeout, interval=1)
    except WebExited as exc:
        web = exc.result
    return [web, full_health(scratch)] if web.ok else [web]


@task(cache_policy=NO_CACHE, timeout_seconds=1800)
def teardown(scratch: SentryHost, prod: SentryHost) -> str:
    """Remove the scratch stack's containers, volumes (external ones it made too) and directory;
    report any leftover."""
    return scratch_stack.teardown(scratch, prod)


def restore_and_check(
    prod: SentryHost,
    scratch: SentryHost,
    backup_store: BackupStore,
    manifest: BackupManifest,
    drill: DrillStack,
    keep_on_failure: bool,
    out: Report,
    pitr: PointInTime | None = None,
) -> tuple[float | None, dt.datetime | None]:
    """Scratch stack up, restored, checked, torn down (under the scratch host's lock); returns
    the RTO when it got healthy and checked: from this first restoring step (the locks held, the
    set verified) to the newest event read back through the restored Sentry."""
    logger = get_run_logger()
    rto = reached = None
    t0 = t = time.monotonic()
    out.stage("clear leftovers", t, clear_leftovers(scratch, prod))
    out.add(check_room(scratch, manifest))  # refused here: nothing was written
    healthy = False
    try:
        t = time.monotonic()
        source = prepare_scratch(prod, scratch, backup_store, manifest, drill)
        out.stage("prepare scratch stack", t, source)
        out.add(bring_images(prod, scratch))  # timed, with the bytes it moved
        if scratch.stack.volumes[DataVolume.POSTGRES].external:
            t = time.monotonic()
            made = create_external_volumes(scratch)
            out.stage("create external volumes", t, ", ".join(made))
        reached = restore_objects(
            scratch, backup_store, manifest, out, pitr=pitr,
            expected_marks=lambda: production_marks(prod),
        )  # fmt: skip
        t = time.monotonic()
        web = start_web(scratch, drill.web_timeout)
        out.checks += web
        healthy = all(r.ok for r in web)
        if healthy:
            out.checks.append(check_newest_event(scratch, manifest))
        out.stage("start web", t)
        rto = round(time.monotonic() - t0, 1)
    except Exception as exc:
        out.check("restore", False, f"{exc.__class__.__name__}: {exc}"[:500])
    finally:
        if out.failed and keep_on_failure:
            kept = f"kept for inspection: {scratch.project_dir}"
            out.add(Result("teardown", Status.WARNING, kept, 0.0))
        else:
            t = time.monotonic()
            try:
                left = teardown(scratch, prod)
            except Exception as exc:  # reported; the drill report is never lost
                left = f"teardown failed: {exc.__class__.__name__}: {exc}"[:400]
            out.check("teardown", left.startswith("no "), left)
            out.stage("teardown", t, left)
    logger.info("scratch stack healthy: %s", healthy)
    return rto, reached


@task(cache_policy=NO_CACHE, timeout_seconds=600)
def production_marks(prod: SentryHost) -> list[dt.datetime]:
    """Production's WAL marks (read only): what a replay up to a point must hold."""
    with postgres.psql(prod) as db:
        return postgres.marks(db)


# -- flow ---------------------------------------------------------------------------------------
@flow(
    name="restore-drill",
    flow_run_name="drill-{host}",
    log_prints=True,
    persist_result=True,
    timeout_seconds=12 * HOUR,
)
def restore_drill(
    host: SentryHost | str,
    store: BackupStore | str,
    backup_id: str | None = None,
    drill_host: SentryHost | str | None = None,
    keep_on_failure: bool = False,
    drill: DrillStack | None = None,
    target_minutes_ago: float | None = None,
    method: Literal["auto", "dump", "point-in-time"] = "auto",
) -> dict:
    """Restore a backup of a host into a scratch stack, check it, report RTO and RPO.

    Args:
        host: Production's SentryHost block, or its name.
        store: The backup store: a BackupStore block, or its name.
        backup_id: The backup to drill; default the newest complete one.
        drill_host: SentryHost block of another Docker host to drill on (required for layouts
            with external volumes); default the production host.
        keep_on_failure: Leave a failed scratch stack for inspection.
        drill: Scratch stack settings (suffix, port offset, timeouts, allowed images).
        target_minutes_ago: Prove point-in-time recovery: Postgres replayed from the newest
            base backup before "now minus this many minutes" to that moment, through the WAL
            archive, and checked to hold every WAL mark production wrote up to it and none
            after (the weekly drill uses a few minutes); default the newest WAL (method auto,
            a set with a base backup) or the dump.
        method: auto, dump or point-in-time: as the restore flow's.
    """
    drill = drill or DrillStack()
    started_at = dt.datetime.now(dt.UTC)
    host, prod = load_block(host, SentryHost)
    store, backup_store = load_block(store, BackupStore)
    target = load_block(drill_host, SentryHost)[1] if drill_host else None
    scratch = scratch_of(prod, target, drill)  # validated before anything is touched
    out = Report()

    t = time.monotonic()
    # this host's, sealed, or refused
    target_time = (
        started_at - dt.timedelta(minutes=target_minutes_ago) if target_minutes_ago else None
    )
    manifest = pick_for_time(
        backup_store, prod.set_folders, prod.label, backup_id, target_time, DrillError
    )
    chosen = manifest.backup_id
    try:
        pitr = point_in_time(backup_store, manifest, target_time, method)
    except RestoreError as exc:
        raise DrillError(str(exc)) from None
    out.stage("pick backup", t, "seal checked")  # its id heads the report (a long one in
    # a table cell widened the stage table past a 1280 px UI)
    t = time.monotonic()
    results = verify_objects(backup_store, manifest)
    bad = [f"{r.name}: {r.detail}" for r in results if not r.ok]
    out.check("verification", not bad, "; ".join(bad) or f"{len(results)} objects match")
    out.stage("verify objects", t)
    rto = reached = None
    if not bad:
        t = time.monotonic()
        with host_lock(scratch, "restore drill", engine=True):
            out.stage("wait for the engine and host locks", t, "held (not part of the RTO)")
            rto, reached = restore_and_check(
                prod, scratch, backup_store, manifest, drill, keep_on_failure, out, pitr
            )
    result = close_restore(
        backup_store, manifest, out, rto, started_at, "restore-drill", "Restore drill of",
        "restore-drill", host, point=(reached or pitr.base.finished_at) if pitr else None,
    )  # fmt: skip
    if out.failed:
        raise DrillError(f"restore drill of {chosen} failed: {'; '.join(out.failed)}")
    return result


@flow(
    name="pitr-drill",
    flow_run_name="pitr-drill-{host}",
    log_prints=True,
    persist_result=True,
    timeout_seconds=12 * HOUR,
)
def pitr_drill(
    host: SentryHost | str,
    store: BackupStore | str,
    drill_host: SentryHost | str | None = None,
    minutes_ago: float = 5,
    keep_on_failure: bool = False,
    drill: DrillStack | None = None,
) -> dict:
    """Prove point-in-time recovery: the restore drill with Postgres replayed from the newest
    base backup through the host's WAL archive to "now minus `minutes_ago`", checked to hold
    every WAL mark production wrote up to then and none after.

    Args:
        host: Production's SentryHost block, or its name.
        store: The backup store: a BackupStore block, or its name.
        drill_host: SentryHost block of another Docker host to drill on (required for layouts
            with external volumes); default the production host.
        minutes_ago: The point: this many minutes before the drill starts.
        keep_on_failure: Leave a failed scratch stack for inspection.
        drill: Scratch stack settings (suffix, port offset, timeouts, allowed images).
    """
    return restore_drill(
        host, store, drill_host=drill_host, keep_on_failure=keep_on_failure, drill=drill,
        target_minutes_ago=minutes_ago, method="point-in-time",
    )  # fmt: skip


if __name__ == "__main__":
    import sys

    restore_drill(sys.argv[1] if len(sys.argv) > 1 else "sandbox", "sandbox")
