"""Restore: recover a host's Sentry from a backup set, in place (its stack lost or broken) or on a
new host (the old one gone), as the disaster-recovery runbook.

Runbook, in order:
1. pick the set: the target's own (its folders in the store), or another host's: `source` (a host
   block that can still be reached: its folders, and the images it runs) or `source_host_id`
   (the store folder of a host that is gone); the given set or the newest complete, sealed, full
   one; every object re-read and hashed against the manifest, before anything changes;
2. on the target, before anything changes: an unfinished restore (its marker) is refused, resumed
   (the same set, from the start) or abandoned (its services stopped, the marker removed), as
   `unfinished` says; the images the set ran must be on the target (or `source` gives them); room
   on Docker's disk for the restored set; the Sentry data the target holds (its data volumes that
   are not empty): a target with data is refused unless `replace`;
3. under the target's engine and host locks: with data to replace, the operator approves in the
   Prefect UI (a form naming the host, the set, its age and what is overwritten), then a safety
   backup of the target is taken and verified; the restore marker is written; the stack's
   containers are removed and its data volumes emptied (kept: names, labels, driver options);
   the set's config laid down, external volumes created where missing, Postgres, every volume and
   ClickHouse restored (each object hashed as it is read); the data checked against the manifest;
   the whole stack started (`compose up --wait`), `/_health/` and `?full`, the newest event read
   back through the restored Sentry's API, then the ingestion probe (a new event sent and read
   back processed, with the host block's probe credentials: a warning without them);
4. every check passed: the marker is removed and the result recorded beside the set; a check
   failed: the marker stays, so the host is refused to other mutating flows (backups too: a
   half-restored stack is never backed up as if whole) and red in health, and the run fails
   naming what. A report artifact `restore-<host>` and the event `sentry.restore.completed`.
Point in time (`target_time`, or by default when the set has a base backup and its host a WAL
archive): Postgres comes from the set's base backup with the host's WAL archive replayed onto it,
to the target or the newest point shipped, checked against sentry-ops' WAL marks instead of the
set's row counts (`blocks/restore.py`); refused before anything changes when the archive cannot
get there.
RTO: from the first restoring step (locks held, set verified, safety backup taken) to a checked,
healthy stack, lock waits and the approval shown as stages of their own; RPO: the set's age, or
the age of the point Postgres was replayed to.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput
from prefect.runtime import flow_run
from pydantic import Field

from blocks import backup_set, postgres, wal
from blocks import restore as restoring
from blocks import scratch as scratch_stack
from blocks.backup_set import BackupManifest
from blocks.backup_store import BackupStore
from blocks.layouts import DataVolume
from blocks.poll import poll
from blocks.sentry_host import SentryHost
from blocks.sentry_web import full_health, probe_web
from blocks.ssh import RemoteCommandError
from blocks.upgrade_plan import UpgradePlanError, plan_line, plan_upgrade
from flows.shared import (
    HOUR,
    Report,
    RestoreError,
    Result,
    Status,
    UpgradeError,
    artifact_slug,
    ask,
    check_newest_event,
    checkout_clean,
    close_restore,
    host_lock,
    ingestion,
    install,
    load_block,
    migrate,
    pick_for_time,
    point_in_time,
    pre_backup,
    restore_objects,
    verify_objects,
)


class ReplaceApproval(RunInput):
    """The operator's answer to a restore over a host's data (the paused run's Resume form)."""

    approve: bool = Field(default=False, description="Overwrite it (unticked: refuse)")
    approver: str = Field(default="", description="Who decides, for the audit")
    comment: str = Field(default="", description="Why, for the audit")


def pitr_line(pitr: restoring.PointInTime) -> str:
    """What a point-in-time restore will do (pure)."""
    head = pitr.head
    to = f"{pitr.target_time:%Y-%m-%d %H:%M:%S}Z" if pitr.target_time else "the newest WAL"
    return (
        f"base backup of {pitr.base.finished_at:%Y-%m-%d %H:%M:%S}Z, then WAL of cluster "
        f"{pitr.base.system_identifier} replayed to {to} (archive: {head.segments} segments, "
        f"newest mark {head.newest_mark:%Y-%m-%d %H:%M:%S}Z)"
        if head.newest_mark
        else f"base backup, then WAL replayed to {to}"
    )


def held_line(held: dict[str, int]) -> str:
    return ", ".join(f"{name} ({size / 1e6:.1f} MB)" for name, size in sorted(held.items()))


def approval_text(
    target: SentryHost, manifest: BackupManifest, held: dict[str, int], now: dt.datetime
) -> str:
    """What the operator approves: the host, the set, its age, what is overwritten (pure)."""
    age = (now - manifest.finished_at).total_seconds() / 3600
    return (
        f"Restore {manifest.backup_id} (Sentry {manifest.sentry_version}, layout "
        f"{manifest.layout}, taken on {manifest.host} {age:.1f} h ago) onto {target.label}, "
        f"OVERWRITING its Sentry data: {held_line(held)}. A safety backup of it is taken and "
        "verified first. Tick approve to go on; leave it unticked to refuse (nothing changes)."
    )


# -- tasks --------------------------------------------------------------------------------------
@task(cache_policy=NO_CACHE, timeout_seconds=600)
def onto_preflight(
    target: SentryHost, manifest: BackupManifest, target_version: str
) -> tuple[list[str], list[Result]]:
    """A set onto another layout's host: the hops from the set's release to `target_version`
    (every hard stop between) among the checkout's release tags; the checkout clean."""
    try:
        tags = target.git_tags()
    except RemoteCommandError as exc:
        raise RestoreError(
            f"{target.label}: {target.project_dir} is not a git checkout of getsentry/self-hosted"
            f" ({exc}): clone it there first (its release tags are the versions a restore can "
            "end on); nothing was changed"
        ) from exc
    try:
        hops = plan_upgrade(manifest.sentry_version, target_version, available=tags)
    except UpgradePlanError as exc:
        raise RestoreError(f"{target.label}: {exc}; nothing was changed") from exc
    if not hops and target_version not in tags:
        raise RestoreError(f"{target.label}: no release tag {target_version}; nothing was changed")
    hops = hops or [target_version]
    try:
        clean = checkout_clean(target)
    except UpgradeError as exc:
        raise RestoreError(str(exc)) from exc
    line = plan_line(manifest.sentry_version, hops)
    return hops, [clean, Result("hops", Status.OK, f"{line} (install.sh at each)")]


@task(cache_policy=NO_CACHE, timeout_seconds=3600)
def preflight(
    target: SentryHost,
    source: SentryHost | None,
    manifest: BackupManifest,
    replace: bool,
    onto: bool = False,
) -> list[Result]:
    """What the target holds and lacks, before anything changes: its data volumes in use, the
    set's images (onto another layout: the target's install.sh makes its own), room on its
    Docker disk."""
    missing = (
        []
        if onto
        else sorted({ref for ref in manifest.images.values() if target.image_id(ref) is None})
    )
    if missing and source is None:
        raise RestoreError(
            f"{target.label} lacks images the set ran: {', '.join(missing)}: pull or build them "
            "there (self-hosted: its install.sh at the set's release), or give source=<the host "
            "block it ran on> to copy them from there; nothing was changed"
        )
    held = restoring.held_data(target)
    if held and not replace:
        raise RestoreError(
            f"{target.label} holds Sentry data: {held_line(held)}. A restore overwrites it: run "
            "again with replace=true (you approve in the Prefect UI, and a verified safety "
            "backup of it is taken first); nothing was changed"
        )
    room = scratch_stack.check_room(
        target, manifest, "the restore", "free space on the target's Docker disk",
        freed=sum(held.values()),
    )  # fmt: skip
    images = (
        "the target's own release's (install.sh)"
        if onto
        else f"{len(missing)} to copy from {source.label}"
        if missing and source
        else "all on the target"
    )
    return [room, Result("images", Status.OK, images)]


@task(cache_policy=NO_CACHE, timeout_seconds=6 * 3600)
def clear_stack(target: SentryHost, only: set[DataVolume] | None = None) -> list[str]:
    """Containers removed, data volumes (or `only` those) emptied (kept: names, labels, driver
    options)."""
    return restoring.clear_stack(target, only)


@task(cache_policy=NO_CACHE, timeout_seconds=1800)
def lay_config(target: SentryHost, store: BackupStore, manifest: BackupManifest) -> str:
    config = backup_set.read_object(store, manifest, "config") if manifest.config_included else None
    return restoring.lay_config(target, config)


@task(cache_policy=NO_CACHE, timeout_seconds=6 * 3600)
def bring_images(source: SentryHost, target: SentryHost) -> Result:
    """The images the restored stack runs, copied from the source host's engine where missing."""
    return scratch_stack.bring_images(source, target)


@task(cache_policy=NO_CACHE, timeout_seconds=600)
def create_external_volumes(target: SentryHost, backup_id: str) -> list[str]:
    return restoring.create_external_volumes(target, backup_id)


@task(cache_policy=NO_CACHE, timeout_seconds=600)
def check_out(target: SentryHost, version: str) -> None:
    target.checkout(version)


@task(cache_policy=NO_CACHE, timeout_seconds=1800)
def carry_config(target: SentryHost, store: BackupStore, manifest: BackupManifest) -> str:
    config = backup_set.read_object(store, manifest, "config") if manifest.config_included else None
    return restoring.carry_secret_key(target, config, manifest.layout)


@task(cache_policy=NO_CACHE, timeout_seconds=600)
def read_through(target: SentryHost) -> str:
    return restoring.nodestore_read_through(target)


@task(cache_policy=NO_CACHE, timeout_seconds=1800)
def check_migrated(target: SentryHost, manifest: BackupManifest, version: str) -> list[Result]:
    """After the hops: the release web runs, and the set's projects, issues and superuser still
    there (the row counts were compared before the migrations; they may add and fill tables)."""
    running = target.running_version()
    with postgres.psql(target) as db:
        app = postgres.app_counts(db)
    results = [Result.check("release", running == version, f"sentry --version {running}")]
    for name, table in (("projects", "sentry_project"), ("issues", "sentry_groupedmessage")):
        want = manifest.row_counts.get(table)
        results.append(Result.check(f"{name} after the migrations", app[name] == want,
                                    f"{app[name]}, the set {want}"))  # fmt: skip
    results.append(Result.check("superuser after the migrations", app["superusers"] > 0,
                                f"{app['superusers']} superuser(s)"))  # fmt: skip
    return results


@task(cache_policy=NO_CACHE, timeout_seconds=3600)
def start_stack(target: SentryHost, timeout: float) -> list[Result]:
    """The whole stack up (`compose up -d --wait`), then /_health/ until ok and ?full."""
    target.compose_up(wait=True, timeout=timeout)
    web, _ = poll(lambda: probe_web(target), lambda r: r.ok, timeout=timeout, interval=1)
    return [web, full_health(target)] if web.ok else [web]


def restore_onto(
    target: SentryHost, store: BackupStore, manifest: BackupManifest, hops: list[str], out: Report
) -> None:
    """A guide set into the target's self-hosted checkout, migrated across the hard stops:
    the first hop's release checked out with the set's secret key in sentry/config.yml; its
    install.sh (volumes, images, Snuba's tables, an empty schema); the Postgres and files
    volumes emptied again and the set's Postgres and volumes restored (ClickHouse not: see
    `blocks.restore.not_carried`), checked against the manifest; the nodestore told to read the
    restored payloads; `sentry upgrade` at the first hop, then each later hop's checkout +
    install.sh."""
    t = time.monotonic()
    check_out(target, hops[0])
    out.stage(f"check out {hops[0]}", t, carry_config(target, store, manifest))
    out.add(install(target, hops[0]))
    t = time.monotonic()
    volumes = {DataVolume.POSTGRES} | {
        DataVolume(o.name.removeprefix("volume:"))
        for o in manifest.objects
        if o.name.startswith("volume:")
    }
    emptied = clear_stack(target, volumes)
    out.stage("empty what the set restores", t, ", ".join(emptied) or "empty")
    restore_objects(target, store, manifest, out, with_clickhouse=False)
    if manifest.row_counts.get("nodestore_node"):
        t = time.monotonic()
        out.stage("nodestore", t, read_through(target))
    out.add(migrate(target, hops[0]))
    for hop in hops[1:]:
        t = time.monotonic()
        check_out(target, hop)
        out.stage(f"check out {hop}", t)
        out.add(install(target, hop))


def restore_into(
    target: SentryHost,
    source: SentryHost | None,
    store: BackupStore,
    manifest: BackupManifest,
    web_timeout: float,
    out: Report,
    onto: list[str] | None = None,
    ingestion_within: float = 120,
    pitr: restoring.PointInTime | None = None,
) -> tuple[float | None, dt.datetime | None]:
    """The restore proper, under the locks, the marker written first; the RTO when every check
    passed (the marker then removed), else None (the marker stays), and the point Postgres was
    replayed to (with `pitr`). `onto`: the hops of a set
    restored onto another layout (`restore_onto`). Its checks end with the health check's
    ingestion probe (with the target block's probe credentials: after a move, the source's,
    which the restored database holds)."""
    t0 = t = time.monotonic()
    reached = None
    target.makedirs(target.project_dir)  # a new host may have none yet
    target.mark("restore", {
        "run": str(flow_run.id or "local"),
        "backup_id": manifest.backup_id,
        "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    })  # fmt: skip
    try:
        emptied = clear_stack(target)
        wal.forget_local(target)  # its shipper followed the cluster being replaced
        out.stage("clear the stack", t, f"emptied {', '.join(emptied)}" if emptied else "empty")
        if onto:
            restore_onto(target, store, manifest, onto, out)
        else:
            t = time.monotonic()
            out.stage("lay the config", t, lay_config(target, store, manifest))
            if source is not None:
                out.add(bring_images(source, target))
            t = time.monotonic()
            made = create_external_volumes(target, manifest.backup_id)
            out.stage("external volumes", t, f"created {', '.join(made)}" if made else "all there")
            reached = restore_objects(target, store, manifest, out, pitr=pitr)
        t = time.monotonic()
        out.checks += start_stack(target, web_timeout)
        if not out.failed and onto:
            out.checks += check_migrated(target, manifest, onto[-1])
            out.checks.append(
                Result("not carried", Status.WARNING, restoring.not_carried(manifest))
            )
        elif not out.failed:
            out.checks.append(check_newest_event(target, manifest))
        if not out.failed:
            out.checks.append(ingestion(target, ingestion_within))
        out.stage("start the stack", t)
    except Exception as exc:
        out.check("restore", False, f"{exc.__class__.__name__}: {exc}"[:500])
    if out.failed:
        return None, reached
    target.mark("restore", None)
    return round(time.monotonic() - t0, 1), reached


def abandon(target: SentryHost, marker: dict, out: Report) -> dict:
    """An unfinished restore given up: every service stopped (a half-restored stack never
    answers health as if whole), the marker removed; the data is left as it is, for
    inspection or another restore."""
    with host_lock(target, "abandon an unfinished restore", unfinished_ok=("restore",)):
        if restoring.has_compose_file(target):
            target.compose_stop()
        target.mark("restore", None)
    detail = (
        f"run {marker.get('run')} of set {marker.get('backup_id')}, since {marker.get('since')}"
    )
    out.add(Result("abandon", Status.DONE, f"{detail}: services stopped, marker removed"))
    return {"status": "abandoned", "marker": marker, "steps": [r.row() for r in out.steps]}


# -- flow ---------------------------------------------------------------------------------------
@flow(
    name="restore",
    flow_run_name="restore-{host}",
    log_prints=True,
    persist_result=True,
    timeout_seconds=24 * HOUR,
)
def restore(
    host: SentryHost | str,
    store: BackupStore | str,
    backup_id: str | None = None,
    source: SentryHost | str | None = None,
    source_host_id: str | None = None,
    replace: bool = False,
    unfinished: Literal["refuse", "resume", "abandon"] = "refuse",
    target_version: str | None = None,
    target_time: dt.datetime | None = None,
    method: Literal["auto", "dump", "point-in-time"] = "auto",
    approval_timeout: int = 4 * HOUR,
    web_timeout: float = 600,
    ingestion_within_seconds: float = 120,
) -> dict:
    """Restore a backup set onto a host: its own (in place), or another host's (a move, or a
    host that is gone); checked like a drill; RTO and RPO reported.

    Args:
        host: The host to restore onto: a SentryHost block, or its name.
        store: The backup store: a BackupStore block, or its name.
        backup_id: The set to restore; default the newest complete, sealed, full one.
        source: The host the set was taken on, when it is another one that can still be
            reached: its sets, and the images it runs (copied where the target lacks them).
        source_host_id: The store folder of the host the set was taken on, when that host is
            gone (`list-backups` shows the ids).
        replace: Overwrite the Sentry data the target holds (after your approval in the UI and
            a verified safety backup of it); without it such a target is refused.
        unfinished: What to do when an earlier restore did not finish here: refuse (default),
            resume (restore the same set again, from the start) or abandon (stop its services,
            remove the marker, keep the data as it is).
        target_version: Only for a set of another layout (a guide host's set onto a
            self-hosted checkout): the release (a tag of the checkout) to end on; the set's
            database is migrated to it across the hard stops, install.sh at each.
        target_time: Point-in-time recovery: the moment (UTC) Postgres is brought back to,
            replaying the host's WAL archive onto the newest set whose base backup ended
            before it; default the newest WAL shipped (with method auto and a set that has a
            base backup). Files, nodestore and ClickHouse come from the set.
        method: How Postgres comes back: auto (point in time when the set has a base backup
            and its host a WAL archive, else the dump), dump (the set's pg_dump, as of the
            set), point-in-time (refused when it cannot be done).
        approval_timeout: Seconds to wait for the approval of a replace; then nothing changes.
        web_timeout: Seconds for the restored stack to get healthy.
        ingestion_within_seconds: Seconds for the ingestion probe's event (sent with the
            host block's probe_dsn, read back with its api_token) to come out processed.
    """
    logger = get_run_logger()
    started_at = dt.datetime.now(dt.UTC)
    host, target = load_block(host, SentryHost)
    store, backup_store = load_block(store, BackupStore)
    src = load_block(source, SentryHost)[1] if source else None
    if source_host_id and not backup_set.HOST_ID.match(source_host_id):
        raise RestoreError(f"source_host_id={source_host_id!r} is not a host id of the store")
    out = Report(on_add=lambda r: logger.info("%s: %s (%s)", r.name, r.status, r.detail))

    marker = target.marker("restore")
    if marker and unfinished == "refuse":
        raise RestoreError(
            f"{target.label}: a restore did not finish here (run {marker.get('run')} of set "
            f"{marker.get('backup_id')}, since {marker.get('since')}): run again with "
            "unfinished=resume (the same set, from the start) or unfinished=abandon (its "
            "services stopped, the marker removed); nothing was changed"
        )
    if marker and unfinished == "abandon":
        return abandon(target, marker, out)
    if marker:  # resume: the same set
        if backup_id and backup_id != marker.get("backup_id"):
            raise RestoreError(
                f"unfinished=resume resumes set {marker.get('backup_id')}, not {backup_id}: "
                "leave backup_id empty, or abandon it first; nothing was changed"
            )
        backup_id = marker.get("backup_id")
        out.add(Result("unfinished restore", Status.WARNING, f"resumed: {marker}"))
    elif unfinished != "refuse":
        out.add(Result("unfinished restore", Status.ALREADY, "none here"))
        if unfinished == "abandon":
            return {"status": "nothing to abandon", "steps": [r.row() for r in out.steps]}

    t = time.monotonic()
    folders = (source_host_id,) if source_host_id else (src or target).set_folders
    label = source_host_id or (src or target).label
    manifest = pick_for_time(backup_store, folders, label, backup_id, target_time)
    out.stage("pick backup", t, "seal checked")
    t = time.monotonic()
    bad = [f"{r.name}: {r.detail}" for r in verify_objects(backup_store, manifest) if not r.ok]
    if bad:
        raise RestoreError(f"set {manifest.backup_id} fails verification: {'; '.join(bad)}; "
                           "nothing was changed")  # fmt: skip
    out.stage("verify objects", t, f"{len(manifest.objects)} objects match the manifest")
    onto: list[str] | None = None
    if problem := restoring.onto_problem(manifest.layout, target.layout, target_version):
        raise RestoreError(problem)
    if manifest.layout != target.layout:
        if target_time or method == "point-in-time":
            raise RestoreError("a point-in-time restore keeps the set's layout and Postgres "
                               "major; onto another layout use method dump")  # fmt: skip
        onto, checked = onto_preflight(target, manifest, str(target_version))
        out.add(*checked)
    pitr = None if onto else point_in_time(backup_store, manifest, target_time, method)
    if pitr:
        out.add(Result("point in time", Status.OK, pitr_line(pitr)))
    out.add(*preflight(target, src, manifest, replace or bool(marker), onto is not None))

    t = time.monotonic()
    with host_lock(target, "restore", unfinished_ok=("restore",), engine=True):
        out.stage("wait for the engine and host locks", t, "held (not part of the RTO)")
        held = restoring.held_data(target) if not marker else {}  # again, under the lock
        if held:
            if not replace:
                raise RestoreError(f"{target.label} got Sentry data while this run waited: "
                                   f"{held_line(held)}; nothing was changed")  # fmt: skip
            t = time.monotonic()
            text = approval_text(target, manifest, held, dt.datetime.now(dt.UTC))
            answer = ask(ReplaceApproval, approval_timeout, "approve-replace", text)
            if answer is None or not answer.approve:
                why = "no answer" if answer is None else f"refused by {answer.approver or '?'}"
                raise RestoreError(f"restore onto {target.label} not approved ({why}): "
                                   "nothing was changed")  # fmt: skip
            who = f"approved by {answer.approver or '?'}: {answer.comment or 'no comment'}"
            out.stage("approval", t, who)
            pre_backup(host, store, out, "safety backup")
        rto, reached = restore_into(
            target, src, backup_store, manifest, web_timeout, out, onto,
            ingestion_within_seconds, pitr,
        )  # fmt: skip
    result = close_restore(
        backup_store, manifest, out, rto, started_at, "restore",
        f"Restore onto {target.label} of", artifact_slug(f"restore-{host}"), host,
        record_failure=False, point=(reached or pitr.base.finished_at) if pitr else None,
    )  # fmt: skip
    passed = result["passed"]
    result["status"] = "restored" if passed else "failed"
    if onto:
        result["hops"] = onto
    if not passed:
        raise RestoreError(
            f"restore of {manifest.backup_id} onto {target.label} failed: "
            f"{'; '.join(out.failed)}. The restore marker stays: the host is refused to other "
            "mutating flows; run again with unfinished=resume or unfinished=abandon"
        )
    return result
