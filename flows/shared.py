"""What several flows share: the one result type for checks and steps, how it is shown, and the
host lock."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import TypeVar
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout, ObjectAlreadyExists, ObjectNotFound
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.variables import Variable

from blocks import (
    backup_set,
    host_lease,
    jobs,
    nodestore,
    postgres,
    restore,
    retention,
    sentry_web,
    wal_archive,
)
from blocks.backup_set import BackupManifest, ObjectReader, open_object
from blocks.backup_store import BackupStore
from blocks.layouts import DataVolume, Role
from blocks.result import Report, Result, Status, failed, summary
from blocks.sentry_host import SentryHost
from blocks.upgrade_plan import INSTALL_FLAGS

__all__ = ["Report", "Result", "Status", "failed", "summary"]  # the one result type, re-exported

B = TypeVar("B", bound=Block)

# flow timeouts: the bound on a whole run (waiting for the host lock included, up to 6 h); each
# remote call has its own deadline below it. The upgrade has none: a timeout in the middle of
# its migrations or its rollback would leave the host half-changed; its steps are bounded.
MINUTE, HOUR = 60, 3600


def artifact_slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "host"


def diagnosis_key(host: str) -> str:
    """The artifact key of a host's latest diagnosis (flows/diagnose.py)."""
    return artifact_slug(f"diagnose-{host}")


def diagnosis_link(host: str) -> str:
    """Where the latest diagnosis of `host` is read: its artifact's page in the Prefect UI (the
    key's page shows the newest), or the key where no UI address is set."""
    from prefect.settings import PREFECT_UI_URL

    ui = PREFECT_UI_URL.value()
    key = diagnosis_key(host)
    return f"{ui.rstrip('/')}/artifacts/key/{key}" if ui else f"the artifact {key}"


def results_artifact(key: str, results: list[Result], description: str) -> None:
    create_table_artifact(
        key=artifact_slug(key), table=[r.row() for r in results], description=description
    )


class Progress:
    """A progress artifact of a long transfer: bytes moved against the bytes expected (exact for
    a restore; for a backup, the same object of the host's previous backup). Created in the task
    (it belongs to its run); updates may come from any thread."""

    def __init__(self, what: str, expected: int | None) -> None:
        self.what, self.expected = what, expected or None
        about = f" (~{self.expected / 1e6:.0f} MB expected)" if self.expected else ""
        self.id = create_progress_artifact(0.0, description=f"{what}{about}")

    def update(self, done: int) -> None:
        pct = min(99.0, 100.0 * done / self.expected) if self.expected else 0.0
        update_progress_artifact(self.id, pct, f"{self.what}: {done / 1e6:.1f} MB")

    def finish(self, done: int) -> None:
        update_progress_artifact(self.id, 100.0, f"{self.what}: {done / 1e6:.1f} MB, done")

    @contextlib.contextmanager
    def watching(self, done: Callable[[], int], every: float = 2.0) -> Iterator[None]:
        """Update from `done()` every few seconds while the body runs; finished when it ends."""
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(every):
                with contextlib.suppress(Exception):  # a missed update is not a failure
                    self.update(done())

        watcher = threading.Thread(target=watch, name="progress", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join()
        self.finish(done())


@contextlib.contextmanager
def reading(
    store: BackupStore, manifest: BackupManifest, name: str, what: str
) -> Iterator[ObjectReader]:
    """Object `name` of the set, decrypted and hashed as it is read, with a progress artifact
    against its stored size; its size and sha256 are checked against the manifest at the end
    (the one way a flow restores an object)."""
    reader = open_object(store, manifest, name)
    with Progress(what, reader.obj.size).watching(lambda: reader.stored_bytes_read):
        yield reader
    reader.verify()


def emit(event: str, subject: str, host: str, payload: dict, kind: str = "backup") -> None:
    """A `sentry.*` event about `subject` (a set, a host) that automations can trigger on."""
    emit_event(
        event=event,
        resource={
            "prefect.resource.id": f"sentry-ops.{kind}.{subject}",
            "prefect.resource.name": subject,
            "sentry-ops.host": host,
        },
        payload=payload,
    )


def load_block(value: B | str, block_type: type[B]) -> tuple[str, B]:
    """A flow's block parameter: a block (picked in the run form, or passed from Python) or the
    name of a saved one; returns its name and the block."""
    if isinstance(value, str):
        return value, block_type.load(value)
    return str(value), value


def ask(kind: type[RunInput], timeout: int, key: str, description: str):
    """Pause the run for an operator's typed answer (the paused run's Resume form in the
    Prefect UI); None on a timeout."""
    try:
        return pause_flow_run(
            wait_for_input=kind.with_initial_data(description=description),
            timeout=timeout,
            poll_interval=2,
            key=key,
        )
    except FlowPauseTimeout:
        return None


# -- the host lock --------------------------------------------------------------------------------
LOCK_LEASE_SECONDS = 60  # a killed holder frees the lock within this; renewed every 15 s
LOCK_POLL_SECONDS = 20  # a waiting run says who holds the lock this often
LOCK_WAIT_SECONDS = 6 * 3600


class RestoreError(Exception):
    """A restore (the restore flow's, or a drill's) cannot go on."""


class Unfinished(Exception):
    """The host is mid-upgrade or mid-restore: mutating flows wait for an operator."""


class LockTimeout(Exception):
    pass


def lock_name(host: SentryHost) -> str:
    """One lock per stack (SSH target and compose project), whatever the block is called."""
    return f"sentry-ops-host-{host.identity}"


def ensure_lock(name: str) -> None:
    """The lock is a strict Prefect global concurrency limit of 1 slot, created when missing."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run made it meanwhile
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )


def engine_lock_name(host: SentryHost) -> str:
    """One lock per Docker engine, told by the engine's own ID: what fills or restarts the
    engine's disk and containers (a drill, cleanup, an upgrade, autoscale) runs one at a time."""
    return f"sentry-ops-engine-{hashlib.sha256(host.engine_id().encode()).hexdigest()[:16]}"


def lock_holder(host: SentryHost) -> dict:
    """Who holds the host's lock (flow, run, run_id, since, purpose); {} when nobody does."""
    return Variable.get(f"{lock_name(host)}-holder", default=None) or {}


def _holder() -> dict:
    return {
        "flow": flow_run.flow_name or "?",
        "run": flow_run.name or "?",
        "run_id": str(flow_run.id or "?"),
        "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def refuse_unfinished(host: SentryHost, purpose: str, unfinished_ok: Collection[str] = ()) -> None:
    """Raise `Unfinished` when an upgrade or a restore did not finish on the host (its marker in
    the project dir), unless `unfinished_ok` names that kind."""
    if "upgrade" not in unfinished_ok and (marker := host.marker("upgrade")):
        raise Unfinished(
            f"{host.label}: refusing {purpose}: an upgrade did not finish here (run "
            f"{marker.get('run', '?')}, {marker.get('from', '?')} -> "
            f"{marker.get('to', '?')}, since {marker.get('since', '?')}; its pre-backup "
            f"{marker.get('backup_id', '?')}). Run the upgrade again with "
            "resume_unfinished=true once the host is checked (nothing was changed)"
        )
    if "restore" not in unfinished_ok and (marker := host.marker("restore")):
        raise Unfinished(
            f"{host.label}: refusing {purpose}: a restore did not finish here (run "
            f"{marker.get('run', '?')} of set {marker.get('backup_id', '?')}, since "
            f"{marker.get('since', '?')}): the stack is half-restored. Run the restore "
            "again with unfinished=resume (the same set, from the start) or "
            "unfinished=abandon (its services stopped, the marker removed; nothing was "
            "changed)"
        )


@contextlib.contextmanager
def host_lock(
    host: SentryHost,
    purpose: str,
    wait_seconds: float = LOCK_WAIT_SECONDS,
    unfinished_ok: Collection[str] = (),
    engine: bool = False,
) -> Iterator[None]:
    """Hold the host's lock for `purpose` (every flow that changes a host takes it); with
    `engine`, the lock of its Docker engine first (a drill, cleanup, an upgrade, autoscale: what
    fills the engine's disk or restarts its containers runs one at a time on one engine,
    whatever stack it is for). While it waits, a run logs who holds the lock and since when. The
    holder renews its lease every quarter lease: a short Prefect API outage is logged; a lease
    lost (not renewed for a whole lease, or gone from the server) stops the run at its next
    command on the host (blocks/host_lease.py), never lets it go on unlocked. A host an upgrade
    or a restore left unfinished (its marker in the project dir: a killed run, a failed rollback
    or restore) is refused to every flow but those that name that kind in `unfinished_ok` (the
    upgrade itself and a backup, a copy of whatever state it is in; the restore itself: a
    half-restored stack is never backed up as if it were whole)."""
    logger = get_run_logger()
    name = lock_name(host)
    holder = lock_holder(host)
    ancestors = {str(i) for i in (flow_run.parent_flow_run_id, flow_run.root_flow_run_id) if i}
    if holder.get("run_id") in ancestors:  # a subflow (an upgrade's pre-backup): its parent
        logger.info(  # holds the lock and waits for it, so it runs under the parent's hold
            "the host lock %s is held by the parent run %s (%s): %s runs under it",
            name, holder.get("run"), holder.get("purpose"), purpose,
        )  # fmt: skip
        yield
        return
    with contextlib.ExitStack() as held:
        if engine:  # always before the host lock: one order, no deadlock
            lock = engine_lock_name(host)
            held.enter_context(_hold(host, "engine lock", lock, purpose, wait_seconds))
        held.enter_context(_hold(host, "host lock", name, purpose, wait_seconds))
        refuse_unfinished(host, purpose, unfinished_ok)
        yield


@contextlib.contextmanager
def _hold(
    host: SentryHost, kind: str, name: str, purpose: str, wait_seconds: float
) -> Iterator[None]:
    """One lock (a strict global concurrency limit of 1 slot) held with a renewed lease; its
    holder recorded in the Variable `<name>-holder` for those who wait."""
    logger = get_run_logger()
    ensure_lock(name)
    holder_var = f"{name}-holder"
    started = time.monotonic()
    run_id = UUID(str(flow_run.id)) if flow_run.id else None
    while (
        lease_id := host_lease.acquire(name, LOCK_LEASE_SECONDS, LOCK_POLL_SECONDS, run_id)
    ) is None:
        waited = time.monotonic() - started
        holder = Variable.get(holder_var, default=None) or {}
        who = (
            f"{holder.get('flow')} run {holder.get('run')} ({holder.get('run_id')}) since "
            f"{holder.get('since')} for {holder.get('purpose')}"
            if holder
            else "an unknown run"
        )
        if waited >= wait_seconds:
            raise LockTimeout(
                f"{host.label}: gave up on {purpose} after waiting {waited:.0f} s for the "
                f"{kind} {name}, held by {who}"
            )
        logger.warning(
            "%s of %s waits for the %s %s (%.0f s so far): held by %s; a holder that "
            "was killed frees it within %d s",
            purpose, host.label, kind, name, waited, who, LOCK_LEASE_SECONDS,
        )  # fmt: skip
    with host_lease.Lease(host.ssh.target, lease_id, LOCK_LEASE_SECONDS, logger.warning):
        Variable.set(holder_var, {**_holder(), "purpose": purpose}, overwrite=True)
        logger.info("holding the %s %s for %s", kind, name, purpose)
        try:
            yield
        finally:
            try:
                Variable.unset(holder_var)
            except Exception as exc:  # the lease then expires by itself
                logger.warning("could not clear the lock holder %s (%s)", holder_var, exc)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30])
def apply_retention(
    store: BackupStore,
    host_ids: Sequence[str] | None = None,
    now: dt.datetime | None = None,
    dry_run: bool = False,
) -> tuple[retention.RetentionPlan, int]:
    """The store's retention (blocks/retention.py) applied to one host's sets (its folders,
    `SentryHost.set_folders`), or to every host's (after each backup, and by cleanup and
    backup-retention); a table of what it did."""
    logger = get_run_logger()
    plan, aborted = retention.apply(
        store, host_ids, now or dt.datetime.now(dt.UTC), dry_run, logger.info
    )
    create_table_artifact(
        key="backup-retention",
        table=retention.rows(plan, dry_run),
        description=f"Retention{' (dry run: nothing deleted)' if dry_run else ''}: "
        f"{len(plan.delete)} to delete, {len(plan.keep)} kept, {aborted} stale multipart uploads",
    )
    return plan, aborted


@task(cache_policy=NO_CACHE, timeout_seconds=120)
def check_web(host: SentryHost) -> list[Result]:
    """/_health/ (the process answers) and /_health/?full (its status checks)."""
    return [sentry_web.probe_web(host), sentry_web.full_health(host)]


@task(cache_policy=NO_CACHE)
def verify_objects(store: BackupStore, manifest: BackupManifest) -> list[Result]:
    """Re-read every stored object; size and sha256 against the (sealed) manifest."""
    return backup_set.verify_objects(store, manifest)


@task(cache_policy=NO_CACHE, timeout_seconds=6 * 3600)
def restore_clickhouse(
    host: SentryHost, store: BackupStore, manifest: BackupManifest
) -> list[Result]:
    """Tables from the recorded DDL, the frozen parts attached, rows and checksums compared."""
    assert manifest.clickhouse is not None
    has_parts = any(o.name == "clickhouse" for o in manifest.objects)
    what = f"restore clickhouse of {manifest.backup_id}"
    parts = (lambda: reading(store, manifest, "clickhouse", what)) if has_parts else None
    return restore.restore_clickhouse(host, manifest.clickhouse, manifest.backup_id, parts)


# -- restoring a set: the drill's scratch stack, the restore's target -------------------------
def assess_data(
    manifest: BackupManifest, counts: dict[str, int], app: dict[str, int], payload: str | None
) -> list[Result]:
    """The restored database against the backup's manifest (pure)."""
    diff = {
        t: (manifest.row_counts.get(t), counts.get(t))
        for t in set(counts) | set(manifest.row_counts)
        if counts.get(t) != manifest.row_counts.get(t)
    }
    results = [
        Result.check(
            "row counts",
            not diff,
            f"{len(counts)} tables, {sum(counts.values())} rows equal the manifest"
            if not diff
            else f"differ (manifest, restored): {dict(sorted(diff.items())[:5])}",
        ),
        Result.check("superuser", app["superusers"] > 0, f"{app['superusers']} superuser(s)"),
    ]
    for name, table in (("projects", "sentry_project"), ("issues", "sentry_groupedmessage")):
        want = manifest.row_counts.get(table)
        results.append(
            Result.check(name, app[name] == want, f"{app[name]} restored, manifest {want}")
        )
    if manifest.newest_event is None:
        results.append(
            Result(
                "newest event payload",
                Status.OK,
                "no event in a Postgres nodestore (a layout with SeaweedFS keeps payloads there: "
                "the newest event is read through Sentry's API once web is up)",
            )
        )
    else:
        node_id = manifest.newest_event.split()[0]
        if payload is None:
            missing = f"{node_id}: missing from the restored nodestore"
            results.append(Result.check("newest event payload", False, missing))
        else:
            try:
                node = nodestore.decode(payload)
                detail = (f"{node_id}: {len(payload)} bytes, decoded as Sentry reads it (event "
                          f"{node.get('event_id', '?')})")  # fmt: skip
                results.append(Result.check("newest event payload", True, detail))
            except nodestore.NodeFormatError as exc:
                results.append(Result.check("newest event payload", False, f"{node_id}: {exc}"))
    return results


@task(cache_policy=NO_CACHE, timeout_seconds=6 * 3600)
def restore_postgres(scratch: SentryHost, store: BackupStore, manifest: BackupManifest) -> float:
    """pg_restore next to the scratch database, fed from S3 and hashed on the way."""
    restore.start_postgres(scratch)
    with reading(store, manifest, "postgres", f"restore postgres of {manifest.backup_id}") as dump:
        return restore.restore_postgres(scratch, dump)


@task(cache_policy=NO_CACHE, timeout_seconds=6 * 3600)
def restore_volume(
    scratch: SentryHost, store: BackupStore, manifest: BackupManifest, name: str
) -> None:
    """The volume's tar.zst from S3, unpacked (and decompressed) on the host; hashed."""
    volume = DataVolume(name.removeprefix("volume:"))
    with reading(store, manifest, name, f"restore {name} of {manifest.backup_id}") as tar:
        scratch.restore_volume(volume, tar)


@task(cache_policy=NO_CACHE, timeout_seconds=1800)
def check_data(scratch: SentryHost, manifest: BackupManifest) -> list[Result]:
    with postgres.psql(scratch) as db:
        counts = postgres.row_counts(db)
        app = postgres.app_counts(db)
        newest = manifest.newest_event
        payload = postgres.node_payload(db, newest.split()[0]) if newest else None
    return assess_data(manifest, counts, app, payload)


def check_newest_event(scratch: SentryHost, manifest: BackupManifest) -> Result:
    """The backup's newest event (ClickHouse), read through the restored Sentry's own API: its
    searchable row and its payload from the restored nodestore, wherever the layout keeps it."""
    name = "newest event through Sentry's API"
    event = manifest.clickhouse.newest_event_id if manifest.clickhouse else None
    if event is None:
        return Result(name, Status.WARNING, "not checked: no event in the backup's ClickHouse")
    if scratch.api_token is None:
        return Result(name, Status.WARNING, "not checked: the host block has no api_token")
    found = scratch.lookup_event(event)
    return Result.check(
        name,
        found is not None,
        f"{event}: found, payload from the restored nodestore" if found else f"{event}: not found",
    )


def point_in_time(
    store: BackupStore,
    manifest: BackupManifest,
    target_time: dt.datetime | None,
    method: str,
) -> restore.PointInTime | None:
    """How the set's Postgres comes back (`blocks.restore.plan_point_in_time`), refused as a
    RestoreError before anything changes."""
    try:
        return restore.plan_point_in_time(store, manifest, target_time, method)
    except (restore.RestoreRefused, backup_set.SetError) as exc:
        raise RestoreError(str(exc)) from None


def pick_for_time(
    store: BackupStore,
    folders: Sequence[str],
    label: str,
    backup_id: str | None,
    target_time: dt.datetime | None,
    error: type[Exception] = RestoreError,
) -> BackupManifest:
    """`pick_full`, but for a `target_time` (and no backup_id) the newest full set whose base
    backup ended before it."""
    if backup_id or target_time is None:
        return pick_full(store, folders, label, backup_id, error)
    sets = backup_set.list_sets(store, folders)
    for listing in reversed(sets):
        if not (listing.complete and listing.trusted and listing.scope == "full"):
            continue
        manifest = backup_set.load_listed(store, sets, listing.backup_id)
        base = manifest.postgres_base
        if base and base.finished_at <= target_time:
            return manifest
    raise error(
        f"{label}: no full set with a base backup ended before {target_time}: nothing to replay "
        "the WAL archive onto; nothing was changed"
    )


@task(cache_policy=NO_CACHE, timeout_seconds=24 * 3600)
def restore_postgres_to_point(
    host: SentryHost,
    store: BackupStore,
    manifest: BackupManifest,
    pitr: restore.PointInTime,
    timeout: float = 6 * 3600,
) -> dt.datetime | None:
    """The set's base backup, then the host's WAL archive replayed onto it to the point."""
    staged = wal_archive.staging_tar(store, pitr.host_id, pitr.base.system_identifier,
                                     pitr.base.wal_start)  # fmt: skip
    what = f"restore base of {manifest.backup_id}"
    with staged, reading(store, manifest, "postgres-base", what) as base:
        return restore.restore_point_in_time(host, base, staged, pitr, timeout)


@task(cache_policy=NO_CACHE, timeout_seconds=1800)
def check_point_in_time(
    host: SentryHost,
    manifest: BackupManifest,
    pitr: restore.PointInTime,
    reached: dt.datetime | None,
    expected_marks: list[dt.datetime] | None = None,
) -> list[Result]:
    with postgres.psql(host) as db:
        marks = postgres.marks(db)
        app = postgres.app_counts(db)
    return restore.assess_point_in_time(manifest, pitr, reached, marks, app, expected_marks)


def restore_objects(
    host: SentryHost,
    store: BackupStore,
    manifest: BackupManifest,
    out: Report,
    with_clickhouse: bool = True,
    pitr: restore.PointInTime | None = None,
    expected_marks: Callable[[], list[dt.datetime]] | None = None,
) -> dt.datetime | None:
    """Every object of the set into the host's stack (its containers created, nothing else
    running yet): Postgres (from the dump, or with `pitr` its base backup and the WAL archive
    replayed to the point), each data volume, ClickHouse (unless `with_clickhouse` is off: a
    restore onto another layout's Snuba schema); then the data checked against the manifest
    (or, replayed, against the archive's marks: `expected_marks` gives production's, when it
    can be read). A drill's scratch stack, a restore's target. Returns the point replayed to."""
    t = time.monotonic()
    reached = None
    if pitr is None:
        restore_postgres(host, store, manifest)
        out.stage("restore postgres", t, "bytes hashed equal the manifest")
    else:
        reached = restore_postgres_to_point(host, store, manifest, pitr)
        out.stage(
            "restore postgres to a point in time", t,
            f"base backup, then WAL replayed to {reached or pitr.base.finished_at:%H:%M:%S}Z",
        )  # fmt: skip
    for obj in manifest.objects:
        if obj.name.startswith("volume:"):
            t = time.monotonic()
            restore_volume(host, store, manifest, obj.name)
            out.stage(f"restore {obj.name}", t, "bytes hashed equal the manifest")
        elif obj.name not in ("postgres", "postgres-base", "config", "clickhouse"):
            raise RestoreError(f"this sentry-ops cannot restore object {obj.name!r}")
    if manifest.clickhouse is not None and with_clickhouse:
        t = time.monotonic()
        out.checks += restore_clickhouse(host, store, manifest)
        out.stage("restore clickhouse", t, f"{len(manifest.clickhouse.tables)} tables")
    t = time.monotonic()
    if pitr is None:
        out.checks += check_data(host, manifest)
    else:
        until = (reached or pitr.base.finished_at) if expected_marks else None
        expected = [m for m in expected_marks() if until and m <= until] if expected_marks else None
        out.checks += check_point_in_time(host, manifest, pitr, reached, expected)
    out.stage("check data", t)
    return reached


def render_report(
    manifest: BackupManifest,
    out: Report,
    rto,
    rpo,
    title: str = "Restore drill of",
    replayed: bool = False,
) -> str:
    lines = [
        f"# {title} `{manifest.backup_id}`",
        "",
        f"**{'PASSED' if not out.failed else 'FAILED'}** - RTO "
        f"{f'{rto:.1f} s' if rto is not None else 'n/a (not restored)'}, RPO {rpo:.0f} s "
        f"({'age of the point replayed to' if replayed else 'backup age'}). "
        f"Sentry {manifest.sentry_version}, Postgres {manifest.postgres_version}, "
        f"layout {manifest.layout}.",
        "",
        "| stage | seconds | detail |",
        "|---|---:|---|",
        *(f"| {r.name} | {r.seconds or 0:.2f} | {r.detail} |" for r in out.steps),
        "",
        "| check | result | detail |",
        "|---|---|---|",
        *(f"| {r.name} | {r.status} | {r.detail} |" for r in out.checks),
    ]
    return "\n".join(lines)


def pre_backup(
    host: SentryHost | str, store: BackupStore | str, report: Report, name: str = "pre-backup"
) -> str:
    """The backup flow, then its verification, as subflows (under the calling run's host lock):
    an upgrade's pre-backup, a restore's safety backup of what it replaces."""
    from flows.backup import backup, verify_backup  # flows that import this module

    started = time.monotonic()
    made = backup(host=host, store=store)
    verify_backup(host=host, store=store, backup_id=made["backup_id"])
    detail = f"{made['backup_id']} ({made['bytes'] / 1e6:.1f} MB), verified"
    report.add(Result(name, Status.DONE, detail, round(time.monotonic() - started, 1)))
    return made["backup_id"]


def pick_full(
    store: BackupStore,
    folders: Sequence[str],
    label: str,
    backup_id: str | None,
    error: type[Exception] = RestoreError,
) -> BackupManifest:
    """The set a restore (or a drill) puts back: the asked one, or the newest complete, sealed
    one of these folders; refused (`error`) when it is a ClickHouse snapshot taken alone."""
    manifest = backup_set.pick(store, folders, label, backup_id)
    if manifest.scope != "full":
        raise error(
            f"backup {manifest.backup_id} is a {manifest.scope} snapshot taken alone, not a whole "
            "install; restore a full backup (leave backup_id empty for the newest)"
        )
    return manifest


def close_restore(
    store: BackupStore,
    manifest: BackupManifest,
    out: Report,
    rto: float | None,
    started_at: dt.datetime,
    by: str,
    title: str,
    key: str,
    host: str,
    record_failure: bool = True,
    point: dt.datetime | None = None,
) -> dict:
    """The end of a restore (a drill's, the restore flow's): its result recorded beside the set
    (retention keeps the newest verified one; the report is never lost to it; a failure only
    with `record_failure`: a restore can fail for its target's sake, not the set's), the report
    as a markdown artifact and the event `sentry.<by>.completed`; the result."""
    passed = not out.failed
    try:
        if passed or record_failure:
            backup_set.record_verification(
                store, manifest, passed, by,
                "restored and checked" if passed else "; ".join(out.failed)[:1000], rto,
            )  # fmt: skip
    except Exception as exc:
        out.add(Result("record verification", Status.WARNING, str(exc)[:300]))
    rpo = round((started_at - (point or manifest.finished_at)).total_seconds(), 1)
    result = {
        "backup_id": manifest.backup_id,
        "passed": passed,
        "rto_seconds": rto,
        "rpo_seconds": rpo,
        "point": point.isoformat() if point else None,
        "failed": out.failed,
        "checks": [r.row() for r in out.checks],
        "steps": [r.row() for r in out.steps],
    }
    create_markdown_artifact(
        key=key,
        markdown=render_report(manifest, out, rto, rpo, title, point is not None),
        description=f"{title} {manifest.backup_id}",
    )
    emit(f"sentry.{by.replace('-', '_')}.completed", manifest.backup_id, host, result)
    return result


# -- shared by the upgrade and the restore onto self-hosted: install.sh, migrations, checks --
class UpgradeError(Exception):
    """A step that failed; `rolled_back` says where the rollback of its hop left the host."""

    def __init__(
        self, message: str, rolled_back: str | None = None, left: str | None = None
    ) -> None:
        super().__init__(message)
        self.rolled_back, self.left = rolled_back, left


def this_run() -> str:
    return str(flow_run.id or "local")


def checkout_clean(host: SentryHost) -> Result:
    """self-hosted's checkout ready for `git checkout <tag>` + install.sh: no tracked file
    modified, and the block's docker_socket (the engine install.sh drives from its container)
    the engine `docker` reaches over SSH: else install.sh would turn another engine's stack off
    and start this one's there, on that engine's volumes of the same names."""
    engine, socket_engine = host.engine_id(), host.socket_engine_id()
    if engine != socket_engine:
        raise UpgradeError(
            f"{host.label}: docker_socket {host.docker_socket} is the socket of engine "
            f"{socket_engine}, not of the engine `docker` reaches over SSH ({engine}): set the "
            "block's docker_socket to that engine's socket; nothing was changed"
        )
    changed = host.modified_files()
    if changed:
        raise UpgradeError(
            f"{host.label}: tracked files of the self-hosted checkout are modified "
            f"({changed[:300]}): `git checkout <tag>` would refuse or lose them; move "
            "overrides to .env.custom or docker-compose.override.yml; nothing was changed"
        )
    return Result("checkout", Status.OK, "clean: the release tags are there")


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, timeout_seconds=24 * 3600)
def migrate(host: SentryHost, version: str) -> Result:
    """`sentry upgrade --noinput` with the new image, detached in a named container; its log
    lines go to the run's logs; a retry (a dropped SSH connection) re-attaches to it."""
    logger = get_run_logger()
    progress = create_progress_artifact(
        0.0,
        key=artifact_slug(f"migrations-{host.project}"),
        description=f"sentry upgrade to {version} on {host.label}",
    )
    applied = [0]

    def on_line(line: str) -> None:
        logger.info("sentry upgrade: %s", line)
        if re.search(r"\bAppl(y|ied)", line):
            applied[0] += 1
            update_progress_artifact(progress, min(95.0, 10.0 * applied[0]))

    starter = host.sentry_job(Role.WEB, "upgrade", "--noinput")
    job = jobs.run(host, "upgrade", starter, run_id=this_run(), on_line=on_line)
    update_progress_artifact(progress, 100.0)
    problem = job.failure(f"{host.label}: `sentry upgrade --noinput` to {version}")
    if problem:
        raise UpgradeError(problem)
    how = "re-attached" if job.reattached else "detached"
    return Result(
        "migrations",
        Status.DONE,
        f"to {version}, {how} job {job.name}: " + (job.tail[-1] if job.tail else ""),
        job.seconds,
    )


@task(cache_policy=NO_CACHE, timeout_seconds=3600)
def ingestion(host: SentryHost, timeout: float) -> Result:
    """The health check's ingestion probe (a warning, not a pass, without probe credentials)."""
    return sentry_web.probe_ingestion(host, within=timeout)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, timeout_seconds=24 * 3600)
def install(host: SentryHost, version: str) -> Result:
    """self-hosted's `./install.sh` of the checked-out release, detached in a named container
    (it stops the stack, builds, runs `sentry upgrade`); re-attached on a retry."""
    logger = get_run_logger()

    def on_line(line: str) -> None:
        logger.info("install.sh: %s", line)

    job = jobs.run(
        host, "install", host.install_job(*INSTALL_FLAGS), run_id=this_run(), on_line=on_line
    )
    problem = job.failure(f"{host.label}: ./install.sh of {version}")
    if problem:
        raise UpgradeError(problem)
    return Result(
        f"install.sh {version}", Status.DONE, job.tail[-1] if job.tail else "", job.seconds
    )
