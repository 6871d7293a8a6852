"""Retention cleanup: `sentry cleanup`, old backups, VACUUM, leftovers, and what it gave back.

retention_cleanup, in order (each step a row of the report, with the bytes it gave back):
1. parameters checked before anything is touched (event_retention_days 1..3650, table names that
   exist);
2. the host lock; refused at once while a backup of the host holds it (the two would fight for
   disk and I/O, and a cleanup would delete what the backup is copying);
3. usage before: free space where Docker keeps its data, each data volume (size, oldest file),
   Postgres (database; largest tables with live and dead rows, `nodestore_node` first),
   ClickHouse tables (bytes on disk);
4. `sentry cleanup --days N` as a detached, named container (blocks/jobs.py: a dropped SSH
   connection does not kill it; a retry re-attaches instead of starting a second): guide, a
   one-off of the web service; self-hosted, in its `sentry-cleanup` service (with Sentry's
   entrypoint), after reporting that service's own last cron run;
5. the backup store's retention for this host (the planner used after each backup) and stale
   multipart uploads;
6. Postgres: `VACUUM (ANALYZE)` (the rows `sentry cleanup` deleted become reusable space; the file
   system gets nothing back), and `VACUUM (FULL, ANALYZE)` of the tables named in `vacuum_full`
   only, each after checking its volume has room for the copy it writes; detached like step 4;
7. leftovers: frozen ClickHouse copies older than a day; this host's scratch drill stack older
   than a day; Sentry images older than the running version, except the newest of them (kept
   for a rollback; newer ones, such as a pre-pulled upgrade target, are never touched); volumes
   labelled with this compose project that no container uses and its compose file does not
   declare;
8. usage after; artifacts: each item with what was (or would be) removed and the bytes
   reclaimed, and the usage before and after.
`dry_run` lists what each step would remove and changes nothing: no `sentry cleanup`, no VACUUM,
nothing deleted. Not done yet: Kafka topic sizes against their retention (no Kafka in the
sandbox to prove it against).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from blocks import clickhouse, jobs, postgres
from blocks import scratch as scratch_stack
from blocks.backup_store import BackupStore
from blocks.clickhouse import ClickHouseError
from blocks.layouts import DataVolume, Role
from blocks.scratch import DrillError, DrillStack, scratch_of
from blocks.sentry_host import SentryHost
from flows.shared import (
    HOUR,
    LockTimeout,
    Result,
    Status,
    apply_retention,
    artifact_slug,
    emit,
    host_lock,
    load_block,
    lock_holder,
    results_artifact,
)

MAX_DAYS = 3650
LEFTOVER_AGE = dt.timedelta(days=1)
BACKUP_PURPOSES = ("backup", "clickhouse snapshot")
TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
VERSION_TAG = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)$")
FULL_VACUUM_ROOM = 1.2  # VACUUM FULL writes a new copy of the table and its indexes


class CleanupError(Exception):
    pass


# -- pure decisions -------------------------------------------------------------------------------
def parameter_problems(days: object, vacuum: bool, vacuum_full: list[str]) -> list[str]:
    problems = []
    if days is not None and (
        isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS
    ):
        problems.append(
            f"event_retention_days={days!r}: must be a whole number of days from 1 to "
            f"{MAX_DAYS} (events older than that are deleted)"
        )
    bad = [t for t in vacuum_full if not TABLE_NAME.match(t)]
    if bad:
        problems.append(f"vacuum_full: {bad} are not table names (table or schema.table)")
    if vacuum_full and not vacuum:
        problems.append("vacuum_full names tables but vacuum=false: set vacuum=true")
    return problems


def retention_problem(asked: int, kept: int, where: str, shorter: bool) -> str | None:
    """Why `sentry cleanup --days asked` must not run on a host that keeps `kept` days: Sentry's
    cleanup deletes Postgres rows (issues, nodestore payloads) while the host's own retention
    (its cleanup cron, Snuba's TTL, the SeaweedFS lifecycle) keeps their ClickHouse rows and
    objects, so search would list events whose details are gone."""
    if asked >= kept or shorter:
        return None
    return (
        f"event_retention_days={asked} is shorter than the host's own retention, {kept} days "
        f"({where}): Sentry's cleanup would delete Postgres rows aged {asked}-{kept} days whose "
        f"ClickHouse rows and payloads stay. Leave event_retention_days empty to use {kept}, "
        "lower the host's retention first, or set shorter_than_host_retention=true to delete "
        "them anyway"
    )


def split_ref(ref: str) -> tuple[str, str]:
    """'repo/name:tag' -> ('repo/name', 'tag'); no tag -> 'latest' (a registry port is not a
    tag)."""
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return repo, tag


def tag_version(tag: str) -> tuple[int, ...] | None:
    """A version tag as numbers to compare (None: the tag is not a version, e.g. `latest`)."""
    match = VERSION_TAG.match(tag)
    return tuple(int(g) for g in match.groups()) if match else None


def plan_images(
    images: list[tuple[str, str]], in_use: set[str]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(remove, keep) as (image ref, why), among the repositories of the images the stack runs:
    versions older than the oldest one in use go, except the newest of them (the rollback
    target); newer versions (a pre-pulled upgrade) and tags that are not versions stay."""
    current: dict[str, tuple[int, ...]] = {}
    for repo, tag in map(split_ref, in_use):
        key = tag_version(tag)
        if key is not None:
            current[repo] = min(current.get(repo, key), key)
    remove, keep = [], []
    for repo, running in sorted(current.items()):
        shown = ".".join(map(str, running))
        older = sorted(
            (
                (key, tag)
                for r, tag in images
                if r == repo and (key := tag_version(tag)) is not None and key < running
            ),
        )
        for i, (_, tag) in enumerate(older):
            ref = f"{repo}:{tag}"
            if i == len(older) - 1:
                keep.append((ref, f"the version before the running {shown}: kept for a rollback"))
            else:
                remove.append((ref, f"older than the running {shown} and the one before it"))
    return remove, keep


def parse_time(text: str) -> dt.datetime:
    """Docker's RFC 3339 times (nanoseconds, Z or an offset) -> aware datetime."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00")
    return dt.datetime.fromisoformat(text)


def human(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


# -- what the host holds ------------------------------------------------------------------------
@dataclass
class Usage:
    docker_free: int
    volumes: dict[str, tuple[int, float | None]]  # label -> (bytes, oldest file's mtime)
    postgres_bytes: int
    tables: list[postgres.TableUsage]
    clickhouse: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def data_volumes(host: SentryHost) -> dict[str, str]:
    return {str(v): host.volume_name(v) for v in host.existing_volumes(list(host.stack.volumes))}


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, timeout_seconds=3600)
def measure(host: SentryHost) -> Usage:
    with postgres.psql(host) as db:
        db_bytes, tables = postgres.database_bytes(db), postgres.table_usage(db)
    usage = Usage(host.disk_free()[1], host.volume_usage(data_volumes(host)), db_bytes, tables)
    try:
        with clickhouse.connect(host) as (client, _):
            usage.clickhouse = clickhouse.table_bytes(client, host.stack.clickhouse_database)
    except ClickHouseError as exc:
        usage.notes.append(f"ClickHouse not measured: {exc}")
    return usage


def usage_rows(before: Usage, after: Usage | None) -> list[dict]:
    now = dt.datetime.now(dt.UTC).timestamp()

    def row(what: str, a: int, b: int | None, note: str = "") -> dict:
        change = None if b is None else b - a
        return {"what": what, "before": human(a), "after": human(b),
                "change": human(change), "note": note}  # fmt: skip

    after = after or before
    rows = [row("free space, Docker data dir", before.docker_free, after.docker_free)]
    for label, (size, oldest) in before.volumes.items():
        age = f"oldest file {(now - oldest) / 86400:.0f} days old" if oldest else "empty"
        rows.append(row(f"volume {label}", size, after.volumes.get(label, (None,))[0], age))
    rows.append(row("Postgres database", before.postgres_bytes, after.postgres_bytes))
    later = {t.name: t for t in after.tables}
    for t in before.tables:
        dead = f"live {t.live}, dead {t.dead}"
        if t.name in later:
            dead += f" -> live {later[t.name].live}, dead {later[t.name].dead}"
        rows.append(
            row(f"table {t.name}", t.bytes, getattr(later.get(t.name), "bytes", None), dead)
        )
    for table, size in before.clickhouse.items():
        rows.append(row(f"ClickHouse {table}", size, after.clickhouse.get(table)))
    return rows + [{"what": "note", "note": n} for n in before.notes]


# -- the steps ----------------------------------------------------------------------------------
def run_id() -> str:
    return str(flow_run.id or "local")


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def sentry_cleanup(host: SentryHost, days: int, dry_run: bool) -> list[Result]:
    """`sentry cleanup --days N` in the stack, detached; re-attached when retried."""
    logger = get_run_logger()
    results = []
    role = Role.CLEANUP if Role.CLEANUP in host.stack.services else Role.WEB
    service = host.stack.service(role)
    if role is Role.CLEANUP:
        tail = [line for line in host.service_log_tail(role, 50) if line.strip()]
        last = tail[-1] if tail else "nothing in its log yet (its cron runs daily at 00:00)"
        results.append(Result(f"{service}: its last scheduled run", Status.OK, last[-300:]))
    name = f"sentry cleanup --days {days}"
    in_postgres = Role.NODESTORE not in host.stack.services  # else payloads are in SeaweedFS
    with postgres.psql(host) as db:
        old = postgres.older_than(db, days, in_postgres)
    counts = ", ".join(f"{n} {what}" for what, n in old.items())
    if dry_run:
        detail = f"would run in a one-off container of {service}"
        return [
            *results,
            Result(name, Status.OK, detail + (f"; older now: {counts}" if old else "")),
        ]
    job = jobs.run(
        host,
        "cleanup",
        host.sentry_job(role, "cleanup", "--days", str(days)),
        run_id=run_id(),
        on_line=lambda line: logger.info("sentry cleanup: %s", line),
    )
    if problem := job.failure(f"{host.label}: `{name}` in {service}"):
        raise CleanupError(problem)
    with postgres.psql(host) as db:
        left = postgres.older_than(db, days, in_postgres)
    gone = ", ".join(f"{what} {old[what]} -> {left.get(what, 0)}" for what in old)
    detail = f"{service}, exit 0{' (re-attached)' if job.reattached else ''}; older than {days} d: "
    detail += (gone or "none counted") + (f"; last line: {job.tail[-1]}" if job.tail else "")
    # rows go, space stays: Postgres reuses it after VACUUM; only VACUUM FULL gives it back
    return [*results, Result(name, Status.DONE, detail[:500], job.seconds, 0)]


@task(cache_policy=NO_CACHE)
def old_backups(host: SentryHost, store: BackupStore, dry_run: bool) -> Result:
    plan, uploads = apply_retention(store, host.set_folders, dry_run=dry_run)
    size = sum(s.size for s in plan.delete)
    verb = "would delete" if dry_run else "deleted"
    sets = ", ".join(s.backup_id for s in plan.delete) or "none"
    return Result(
        f"backups in {store.where}",
        Status.DONE if plan.delete and not dry_run else Status.OK,
        f"{verb} {len(plan.delete)} set(s) ({sets}); kept {len(plan.keep)}; {uploads} stale "
        "multipart upload(s)" + (" to abort" if dry_run else " aborted"),
        reclaimed=size,
    )


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def vacuum_postgres(host: SentryHost, full_tables: list[str], dry_run: bool) -> list[Result]:
    """VACUUM (ANALYZE), then VACUUM FULL of the named tables that have room; detached."""
    logger = get_run_logger()
    where = postgres.target(host)
    with postgres.psql(host, where) as db:
        before_db = postgres.database_bytes(db)
        sizes = postgres.relation_bytes(db, full_tables)
    volume = DataVolume.POSTGRES
    if volume in host.stack.volumes and host.volume_exists(volume):
        free = host.volume_free(volume)[1]
    else:
        free = host.disk_free()[1]
    results, fits = [], []
    for table, size in sizes.items():
        need = int((size or 0) * FULL_VACUUM_ROOM)
        if need > free:
            results.append(Result(
                f"VACUUM FULL {table}", Status.WARNING,
                f"skipped: it writes a copy of {human(size)} and needs ~{human(need)} free; "
                f"{human(free)} free on the Postgres volume",
            ))  # fmt: skip
        else:
            fits.append(table)
    statements = postgres.vacuum_statements(fits)
    if dry_run:
        return [
            *results,
            Result("VACUUM (ANALYZE)", Status.OK, f"would run (database {human(before_db)})"),
            *(
                Result(f"VACUUM FULL {t}", Status.OK, f"would rewrite {human(sizes[t])}")
                for t in fits
            ),
        ]
    job = jobs.run(
        host,
        "vacuum",
        postgres.vacuum_job(host, where, statements),
        run_id=run_id(),
        on_line=lambda line: logger.info("vacuum: %s", line),
        stdin=postgres.password_file(where),
    )
    if problem := job.failure(f"{host.label}: VACUUM"):
        raise CleanupError(problem)
    with postgres.psql(host, where) as db:
        after_db = postgres.database_bytes(db)
        after = postgres.relation_bytes(db, fits)
    results.append(Result(
        "VACUUM (ANALYZE)", Status.DONE,
        f"dead rows reusable, statistics fresh; database {human(before_db)} -> "
        f"{human(after_db)}", job.seconds,
    ))  # fmt: skip
    for table in fits:
        size, now = sizes[table] or 0, after[table] or 0
        results.append(Result(
            f"VACUUM FULL {table}", Status.DONE, f"{human(size)} -> {human(now)}",
            reclaimed=max(0, size - now),
        ))  # fmt: skip
    return results


@task(cache_policy=NO_CACHE, retries=1)
def frozen_leftovers(host: SentryHost, dry_run: bool, now: dt.datetime) -> list[Result]:
    volume = DataVolume.CLICKHOUSE
    if volume not in host.stack.volumes or not host.volume_exists(volume):
        return [Result("ClickHouse frozen copies", Status.OK, "no ClickHouse volume")]
    results = []
    for frozen in clickhouse.frozen_copies(host):
        name = f"ClickHouse frozen copy {frozen.name}"
        age = now - dt.datetime.fromtimestamp(frozen.mtime, dt.UTC)
        if age < LEFTOVER_AGE:
            results.append(Result(name, Status.OK, f"kept: {age.total_seconds() / 3600:.1f} h old"))
            continue
        if not dry_run:
            clickhouse.unfreeze(host, frozen.name)
        verb = "would remove" if dry_run else "removed"
        detail = f"{verb}: {age.days} day(s) old, left by a backup that did not finish"
        results.append(Result(name, Status.OK if dry_run else Status.DONE, detail,
                              reclaimed=frozen.bytes))  # fmt: skip
    return results or [Result("ClickHouse frozen copies", Status.OK, "none")]


@task(cache_policy=NO_CACHE, retries=1)
def drill_leftovers(host: SentryHost, dry_run: bool, now: dt.datetime) -> Result:
    name = "scratch drill stack"
    try:
        scratch = scratch_of(host, None, DrillStack())
    except DrillError:
        return Result(name, Status.OK, "this layout's drills run on a drill host; the next "
                      "drill there clears what an earlier one left")  # fmt: skip
    name = f"scratch drill stack {scratch.project}"
    created = [parse_time(t) for t in scratch.leftovers_created()]
    if not created and not scratch.exists(scratch.project_dir):
        return Result(name, Status.OK, "none")
    if created and now - min(created) < LEFTOVER_AGE:
        return Result(name, Status.OK, "kept: less than a day old (a drill may be running)")
    volumes = {v: v for v in scratch.leftover_volumes()}
    size = sum(b for b, _ in host.volume_usage(volumes).values())
    if dry_run:
        return Result(name, Status.OK, f"would remove it ({len(volumes)} volumes)", reclaimed=size)
    try:
        with host_lock(scratch, "cleanup of a drill's leftovers", wait_seconds=0):
            detail = scratch_stack.teardown(scratch, host)
    except LockTimeout:
        return Result(name, Status.WARNING, "kept: a drill holds its lock")
    except DrillError as exc:  # another stack holds the name: never ours to remove
        return Result(name, Status.WARNING, f"kept: {exc}")
    return Result(name, Status.DONE, f"removed; {detail}", reclaimed=size)


@task(cache_policy=NO_CACHE, retries=1)
def old_images(host: SentryHost, dry_run: bool) -> list[Result]:
    in_use = host.sentry_images()
    rows = host.images()
    remove, keep = plan_images([(r["Repository"], r["Tag"]) for r in rows], in_use)
    sizes = {f"{r['Repository']}:{r['Tag']}": r.get("Size", "?") for r in rows}
    results = [Result(f"image {ref}", Status.OK, why) for ref, why in keep]
    for ref, why in remove:
        if dry_run:
            results.append(Result(f"image {ref}", Status.OK,
                                  f"would remove ({sizes.get(ref)}): {why}"))  # fmt: skip
            continue
        free = host.disk_free()[1]
        result = host.remove_image(ref)
        if result.exit_code != 0:
            results.append(Result(f"image {ref}", Status.WARNING,
                                  f"kept: {result.stderr.strip()[-200:]}"))  # fmt: skip
            continue
        # measured: shared layers stay, so the image's own size would overstate it
        reclaimed = max(0, host.disk_free()[1] - free)
        results.append(Result(f"image {ref}", Status.DONE, f"removed: {why}", reclaimed=reclaimed))
    return results or [Result("Sentry images", Status.OK, "no older versions on the host")]


@task(cache_policy=NO_CACHE, retries=1)
def orphan_volumes(host: SentryHost, dry_run: bool) -> list[Result]:
    """Volumes of this project that no container uses and its compose file does not declare
    (declared ones hold data even while their service is down: never touched)."""
    declared = {v.get("name") for v in (host.compose_config().get("volumes") or {}).values()}
    declared |= {host.volume_name(v) for v in host.stack.volumes}
    orphans = [v for v in host.dangling_volumes() if v not in declared]
    sizes = host.volume_usage({v: v for v in orphans})
    results = []
    for volume in orphans:
        size = sizes.get(volume, (0, None))[0]
        if not dry_run:
            host.remove_volume(volume)
        verb = "would remove" if dry_run else "removed"
        results.append(Result(f"volume {volume}", Status.OK if dry_run else Status.DONE,
                              f"{verb}: not declared by the project, no container uses it",
                              reclaimed=size))  # fmt: skip
    return results or [Result("orphan volumes", Status.OK, "none")]


# -- the flow -----------------------------------------------------------------------------------
@flow(
    name="retention-cleanup",
    flow_run_name="cleanup-{host}",
    log_prints=True,
    persist_result=True,
    timeout_seconds=24 * HOUR,
)
def retention_cleanup(
    host: SentryHost | str,
    store: BackupStore | str,
    event_retention_days: int | None = None,
    dry_run: bool = False,
    vacuum: bool = True,
    vacuum_full: list[str] | None = None,
    shorter_than_host_retention: bool = False,
) -> dict:
    """Delete events older than N days (`sentry cleanup`), old backups and leftovers, VACUUM
    Postgres, and report the space each step gave back.

    Args:
        host: The Sentry host: a SentryHost block, or its name.
        store: The BackupStore block (or its name) whose retention applies to this host's
            backups.
        event_retention_days: Keep this many days of events (1..3650). Empty: the host's own
            retention, SENTRY_EVENT_RETENTION_DAYS in its env files (`.env`, `.env.custom`),
            else the layout's default (guide: 30 days, its `sentry cleanup --days 30`;
            self-hosted: 90, its `.env`).
        dry_run: List what would be removed; change nothing.
        vacuum: Run a plain VACUUM (ANALYZE) of the database (online).
        vacuum_full: Tables to rewrite with VACUUM FULL (e.g. nodestore_node), giving their
            space back to the file system; each locks its table for its duration and needs
            free space for the copy (checked first).
        shorter_than_host_retention: Run even when event_retention_days is below the host's
            own retention: Postgres rows (issues, payloads) of the days between are deleted
            while their ClickHouse rows and SeaweedFS objects stay until the host's TTL.
    """
    logger = get_run_logger()
    full = list(vacuum_full or [])
    problems = parameter_problems(event_retention_days, vacuum, full)
    if problems:
        raise CleanupError(f"retention cleanup of {host}: {'; '.join(problems)} (nothing was run)")
    host, sentry_host = load_block(host, SentryHost)
    store, backup_store = load_block(store, BackupStore)
    try:
        kept, where = sentry_host.event_retention()
    except ValueError as e:
        raise CleanupError(f"{e} (nothing was run)") from None
    days = kept if event_retention_days is None else event_retention_days
    if problem := retention_problem(days, kept, where, shorter_than_host_retention):
        raise CleanupError(f"{sentry_host.label}: {problem} (nothing was run)")
    logger.info("%s: events older than %d days go (host keeps %d: %s)", sentry_host.label, days,
                kept, where)  # fmt: skip
    if full:
        with postgres.psql(sentry_host) as db:
            missing = [t for t, size in postgres.relation_bytes(db, full).items() if size is None]
        if missing:
            raise CleanupError(
                f"{sentry_host.label}: vacuum_full: no table {missing} in the database "
                f"{sentry_host.stack.postgres_db} (nothing was run)"
            )
    holder = lock_holder(sentry_host)
    if holder.get("purpose") in BACKUP_PURPOSES:
        raise CleanupError(
            f"{sentry_host.label}: refused while {holder.get('purpose')} run {holder.get('run')} "
            f"({holder.get('run_id')}) holds the host lock since {holder.get('since')}: run the "
            "cleanup after it (nothing was run)"
        )
    now = dt.datetime.now(dt.UTC)
    with host_lock(sentry_host, "retention cleanup", wait_seconds=1800, engine=True):
        before = measure(sentry_host)
        results = sentry_cleanup(sentry_host, days, dry_run)
        results.append(old_backups(sentry_host, backup_store, dry_run))
        if vacuum:
            results += vacuum_postgres(sentry_host, full, dry_run)
        results += frozen_leftovers(sentry_host, dry_run, now)
        results.append(drill_leftovers(sentry_host, dry_run, now))
        results += old_images(sentry_host, dry_run)
        results += orphan_volumes(sentry_host, dry_run)
        after = None if dry_run else measure(sentry_host)
    reclaimed = sum(r.reclaimed or 0 for r in results)
    head = "DRY RUN: nothing was removed; bytes are what would be reclaimed. " if dry_run else ""
    results_artifact(
        f"cleanup-{host}",
        results,
        f"{head}Retention cleanup of {sentry_host.label}, events older than "
        f"{days} days: {human(reclaimed)} reclaimed",
    )
    create_table_artifact(
        key=artifact_slug(f"cleanup-usage-{host}"),
        table=usage_rows(before, after),
        description=f"{head}Disk usage of {sentry_host.label} before and after the cleanup",
    )
    logger.info("%s%s: %s reclaimed", head, sentry_host.label, human(reclaimed))
    if not dry_run:
        emit("sentry.cleanup.completed", sentry_host.identity, host,
             {"reclaimed_bytes": reclaimed, "days": days}, kind="host")  # fmt: skip
    return {
        "dry_run": dry_run,
        "days": days,
        "reclaimed": reclaimed,
        "items": [r.row() for r in results],
    }
