"""What several flows share: the one result type for checks and steps, how it is shown, and the
host lock."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.events import emit_event
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.runtime import flow_run
from prefect.variables import Variable

from blocks import backup_set, host_lease, restore, retention, sentry_web
from blocks.backup_set import BackupManifest, ObjectReader, open_object
from blocks.backup_store import BackupStore
from blocks.result import Report, Result, Status, failed, summary
from blocks.sentry_host import SentryHost

__all__ = ["Report", "Result", "Status", "failed", "summary"]  # the one result type, re-exported

B = TypeVar("B", bound=Block)

# flow timeouts: the bound on a whole run (waiting for the host lock included, up to 6 h); each
# remote call has its own deadline below it. The upgrade has none: a timeout in the middle of
# its migrations or its rollback would leave the host half-changed; its steps are bounded.
MINUTE, HOUR = 60, 3600


def artifact_slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "host"


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


# -- the host lock --------------------------------------------------------------------------------
LOCK_LEASE_SECONDS = 60  # a killed holder frees the lock within this; renewed every 15 s
LOCK_POLL_SECONDS = 20  # a waiting run says who holds the lock this often
LOCK_WAIT_SECONDS = 6 * 3600


class UnfinishedUpgrade(Exception):
    """The host is mid-upgrade: mutating flows wait for an operator."""


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


@contextlib.contextmanager
def host_lock(
    host: SentryHost,
    purpose: str,
    wait_seconds: float = LOCK_WAIT_SECONDS,
    mid_upgrade_ok: bool = False,
    engine: bool = False,
) -> Iterator[None]:
    """Hold the host's lock for `purpose` (every flow that changes a host takes it); with
    `engine`, the lock of its Docker engine first (a drill, cleanup, an upgrade, autoscale: what
    fills the engine's disk or restarts its containers runs one at a time on one engine,
    whatever stack it is for). While it waits, a run logs who holds the lock and since when. The
    holder renews its lease every quarter lease: a short Prefect API outage is logged; a lease
    lost (not renewed for a whole lease, or gone from the server) stops the run at its next
    command on the host (blocks/host_lease.py), never lets it go on unlocked. A host an upgrade
    left unfinished (its marker in the project dir: a killed run, a failed rollback) is refused
    to every flow but those that say `mid_upgrade_ok` (a backup, the upgrade itself)."""
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
        if not mid_upgrade_ok and (marker := host.upgrade_marker()):
            raise UnfinishedUpgrade(
                f"{host.label}: refusing {purpose}: an upgrade did not finish here (run "
                f"{marker.get('run', '?')}, {marker.get('from', '?')} -> "
                f"{marker.get('to', '?')}, since {marker.get('since', '?')}; its pre-backup "
                f"{marker.get('backup_id', '?')}). Run the upgrade again with "
                "resume_unfinished=true once the host is checked (nothing was changed)"
            )
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
