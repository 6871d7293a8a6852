"""Upgrade runbook: planned hops over hard stops, a verified pre-backup per hop, approval,
migrations detached on the host, a health-gated rolling restart, rollback with data.

A Sentry upgrade must not jump a hard stop (self-hosted's release docs; `sentry upgrade` refuses
the jump): 23.6.2 -> 24.10.0 is 23.6.2 -> 23.11.0 -> 24.8.0 -> 24.10.0. `plan_upgrade` turns the
current and the target version into those hops before anything changes.

Per hop, on the guide's layout: the pre-backup (the backup flow, then its verification), the new
version in the env file (the variable the compose file's Sentry image reads), `sentry upgrade
--noinput` once, detached in a named container (blocks/jobs.py: a dropped SSH session never kills
a migration; a retry re-attaches), then web replaced batch by batch (new replicas started beside
the old ones, each batch gated on its containers' health before old ones stop), the other Sentry
services recreated, `/_health/?full` and the version checked. Any failure after the first change
rolls back: the env file's old bytes, the database (and ClickHouse) from the hop's pre-backup when
migrations ran (at once with `auto_restore`, else after an approval), the old containers, health.
On self-hosted the hop is its own `./install.sh` at the release tag.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from pydantic import Field

from blocks import backup_set, clickhouse, jobs, postgres
from blocks.backup_store import BackupStore
from blocks.dotenv import render_env
from blocks.layouts import Role
from blocks.sentry_host import SentryHost, rolling_problem
from flows.backup import backup, pick_set, verify_backup
from flows.restore_drill import restore_clickhouse
from flows.shared import (
    Progress,
    Result,
    Status,
    artifact_slug,
    host_lock,
    load_block,
    results_artifact,
)

# getsentry/self-hosted's hard stops (shared/LAYOUTS.md); the flow's `hard_stops` overrides them
HARD_STOPS = ("9.1.2", "21.5.0", "21.6.3", "23.6.2", "23.11.0", "24.8.0", "25.5.1", "26.5.0",
              "26.7.0")  # fmt: skip
VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(-[A-Za-z0-9.]+)?$")
FRESH_BACKUP_SECONDS = 1800  # an approval later than this after the pre-backup takes a new one
STABLE_SECONDS = 5  # a container without a healthcheck must stay running this long


class UpgradePlanError(Exception):
    pass


class UpgradeError(Exception):
    pass


def version_key(version: str) -> tuple[int, int, int]:
    match = VERSION.match(version)
    if not match:
        raise UpgradePlanError(
            f"{version!r} is not a Sentry version (YY.M.P, as its image tags and self-hosted's "
            "release tags are, e.g. 24.8.0)"
        )
    return int(match[1]), int(match[2]), int(match[3])


def plan_upgrade(
    current: str,
    target: str,
    hard_stops: Iterable[str] = HARD_STOPS,
    available: Collection[str] | None = None,
) -> list[str]:
    """The versions to upgrade to, in order: every hard stop strictly between `current` and
    `target`, then `target` ([] when already there). Refuses a downgrade, a version that is
    not one, and (given `available`, e.g. the tags a host can run) a hop it cannot run."""
    now, goal = version_key(current), version_key(target)
    stops = sorted(set(hard_stops), key=version_key)
    if goal < now:
        raise UpgradePlanError(
            f"{current} -> {target} is a downgrade: Sentry's migrations only go forward; to go "
            f"back, restore a backup taken on {target}"
        )
    if goal == now:
        return []
    hops = [s for s in stops if now < version_key(s) < goal] + [target]
    if available is not None:
        missing = [h for h in hops if h not in available]
        if missing:
            raise UpgradePlanError(
                f"{current} -> {target} goes through {' -> '.join(hops)}, and {missing} "
                f"{'is' if len(missing) == 1 else 'are'} not available: known versions "
                f"{sorted(available, key=version_key)[-8:]}"
            )
    return hops


def parameter_problems(
    target_version: str, batch_size: int, health_timeout: int, approval_timeout: int
) -> list[str]:
    problems = []
    if not isinstance(target_version, str) or not VERSION.match(target_version):
        problems.append(
            f"target_version {target_version!r} is not a Sentry version (YY.M.P, e.g. 24.8.0)"
        )
    for name, value, low, high in (
        ("batch_size", batch_size, 1, 100),
        ("health_timeout", health_timeout, 10, 86400),
        ("approval_timeout", approval_timeout, 60, 7 * 86400),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    return problems


class UpgradeApproval(RunInput):
    """The operator's answer to an upgrade plan (Prefect UI: the paused run's Resume form)."""

    approve: bool = Field(default=False, description="Apply the plan (unticked: reject it)")
    approver: str = Field(default="", description="Who decides, for the audit")
    comment: str = Field(default="", description="Why, for the audit")


class RestoreApproval(RunInput):
    """Whether a failed upgrade may put the database back from its pre-backup."""

    restore: bool = Field(default=False, description="Restore the database from the pre-backup")
    approver: str = Field(default="", description="Who decides, for the audit")


@dataclass
class Audit:
    """Every step of the run, in order, for the audit artifact."""

    host: str
    results: list[Result] = field(default_factory=list)

    def add(self, *results: Result) -> None:
        logger = get_run_logger()
        for r in results:
            self.results.append(r)
            logger.info("%s: %s%s", r.name, r.status, f" ({r.detail})" if r.detail else "")

    def publish(self, headline: str) -> None:
        results_artifact(f"upgrade-{self.host}", self.results, headline)


@dataclass
class Hop:
    """What one hop changed so far: what a rollback must undo."""

    version: str
    previous: str
    backup_id: str
    env_path: str = ""
    env_before: bytes | None = None
    git_before: str | None = None  # self-hosted: the commit checked out before
    migrated: bool = False


# -- steps ----------------------------------------------------------------------------------------
@task(cache_policy=NO_CACHE, timeout_seconds=600)
def plan(host: SentryHost, target: str, hard_stops: list[str] | None) -> tuple[str, list[str]]:
    """Current version and the hops to `target` (refused: downgrade, unknown, unavailable)."""
    current = host.running_version()
    available = None
    if host.layout == "guide" and not host.pull_images:  # only what the host has locally
        available = set(host.image_tags(host.sentry_repository()))
    elif host.layout != "guide":
        available = set(host.git("tag", "-l").text.split())
    stops = HARD_STOPS if hard_stops is None else hard_stops
    return current, plan_upgrade(current, target, stops, available)


@task(cache_policy=NO_CACHE, timeout_seconds=600)
def preflight(host: SentryHost, hops: list[str]) -> list[Result]:
    """Healthy stack, the env variable that sets the version, disk for new images and
    migrations; a web that cannot roll (fixed port) is a warning: it restarts in place."""
    results = []
    status, body = host.web_request("/_health/?full", timeout=30)
    results.append(
        Result.check("health", status == 200, f"/_health/?full: {status} {body[:200]!r}")
    )
    if status != 200:
        raise UpgradeError(
            f"{host.label}: not healthy before the upgrade ({status} "
            f"{body[:300]!r}): fix that first; nothing was changed"
        )
    if host.layout == "guide":
        var, value = host.image_setting(hops[0])
        results.append(
            Result(
                "version setting",
                Status.OK,
                f"{var} in {host.stack.operator_env_file} (first hop: {value})",
            )
        )
        web = host.stack.service(Role.WEB)
        current_image = host.service_images().get(web, "")
        size = host.image_size(current_image) or 0
        need = (1 << 30) + (size * len(hops) if host.pull_images else 0)
        if not host.pull_images:
            repository = host.sentry_repository()
            missing = [h for h in hops if host.image_size(f"{repository}:{h}") is None]
            if missing:
                raise UpgradeError(
                    f"{host.label}: images {[f'{repository}:{h}' for h in missing]} are not on "
                    "the host and pull_images is off: load them first; nothing was changed"
                )
        problem = rolling_problem(host.compose_config()["services"][web])
        if problem:
            results.append(
                Result(
                    "rolling restart",
                    Status.WARNING,
                    f"{web} restarts in place, web is down meanwhile: {problem}",
                )
            )
    else:
        changed = host.git("status", "--porcelain", "--untracked-files=no").text.strip()
        if changed:
            raise UpgradeError(
                f"{host.label}: tracked files of the self-hosted checkout are modified "
                f"({changed[:300]}): `git checkout <tag>` would refuse or lose them; move "
                "overrides to .env.custom or docker-compose.override.yml; nothing was changed"
            )
        results.append(Result("checkout", Status.OK, "clean: the release tags are there"))
        need = 1 << 30
    with postgres.psql(host) as db:
        need += postgres.database_bytes(db) // 10  # migrations rewrite tables: 10% headroom
    _, free = host.disk_free()
    results.append(
        Result.check(
            "disk",
            free >= need,
            f"{free / 1e9:.1f} GB free for Docker's data, {need / 1e9:.1f} GB needed",
        )
    )
    if free < need:
        raise UpgradeError(
            f"{host.label}: {free / 1e9:.1f} GB free, {need / 1e9:.1f} GB needed "
            "(new images, migrations); free space first; nothing was changed"
        )
    return results


def pre_backup(host: SentryHost | str, store: BackupStore | str, audit: Audit) -> str:
    """The backup flow, then its verification, as subflows (under this run's host lock)."""
    started = time.monotonic()
    made = backup(host=host, store=store)
    verify_backup(host=host, store=store, backup_id=made["backup_id"])
    audit.add(
        Result(
            "pre-backup",
            Status.DONE,
            f"{made['backup_id']} ({made['bytes'] / 1e6:.1f} MB), verified",
            round(time.monotonic() - started, 1),
        )
    )
    return made["backup_id"]


def plan_markdown(
    label: str, current: str, hops: list[str], backup_id: str, batch_size: int, auto_restore: bool
) -> str:
    path = " -> ".join([current, *hops])
    return (
        f"## Upgrade of {label}: {path}\n\n"
        f"- hops: {len(hops)} ({', '.join(hops)}); each gets its own verified pre-backup\n"
        f"- pre-backup of the first hop: `{backup_id}` (verified)\n"
        f"- web replaced {batch_size} replica(s) at a time, each batch gated on health\n"
        f"- on failure: rollback; the database is restored from the hop's pre-backup "
        f"{'at once' if auto_restore else 'after a second approval'} if migrations ran\n\n"
        "Tick **approve** to apply it; leave it unticked to reject (nothing changes)."
    )


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

    job = jobs.run(
        host,
        "upgrade",
        lambda name, labels: host.sentry_job_argv(name, labels, Role.WEB, "upgrade", "--noinput"),
        run_id=str(flow_run.id or "local"),
        on_line=on_line,
    )
    update_progress_artifact(progress, 100.0)
    if not job.ok:
        raise UpgradeError(
            f"{host.label}: `sentry upgrade --noinput` to {version} exited "
            f"{job.exit_code}: " + " | ".join(job.tail[-5:])
        )
    how = "re-attached" if job.reattached else "detached"
    return Result(
        "migrations",
        Status.DONE,
        f"to {version}, {how} job {job.name}: " + (job.tail[-1] if job.tail else ""),
        job.seconds,
    )


def wait_ready(host: SentryHost, ids: list[str], timeout: float, what: str) -> None:
    """Every container running and healthy (or running STABLE_SECONDS without a healthcheck);
    one that exits or turns unhealthy fails at once, with its last lines."""
    deadline, since = time.monotonic() + timeout, time.monotonic()
    while True:
        states = host.container_states(ids)
        for cid, state in states.items():
            if not state.startswith("running") or state.endswith("unhealthy"):
                tail = " | ".join(host.container_log_tail(cid, 5))
                raise UpgradeError(f"{host.label}: {what}: container {cid[:12]} is {state}: {tail}")
        if all(
            s == "running healthy"
            or (s == "running -" and time.monotonic() - since >= STABLE_SECONDS)
            for s in states.values()
        ):
            return
        if time.monotonic() > deadline:
            raise UpgradeError(
                f"{host.label}: {what}: not healthy within {timeout:.0f} s: {states}"
            )
        time.sleep(1)


def wait_healthy(host: SentryHost, timeout: float) -> tuple[int, bytes]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = host.web_request("/_health/?full", timeout=15)
        if status == 200 or time.monotonic() > deadline:
            return status, body
        time.sleep(2)


@task(cache_policy=NO_CACHE, timeout_seconds=6 * 3600)
def roll_web(host: SentryHost, batch_size: int, timeout: float) -> list[Result]:
    """Replace web's containers batch by batch: new ones started beside the old (compose
    `--scale n+b --no-recreate`), gated on their health, then the batch of old ones stopped.
    A web that cannot have a second replica (fixed port or name) is recreated in place."""
    web = host.stack.service(Role.WEB)
    old = host.running_ids(web)
    problem = rolling_problem(host.compose_config()["services"][web])
    started = time.monotonic()
    if problem or not old:
        host.compose("up", "-d", "--no-deps", web, timeout=600)
        wait_ready(host, host.running_ids(web), timeout, f"{web} recreated in place")
        return [
            Result(
                f"restart {web}",
                Status.WARNING if problem else Status.DONE,
                f"recreated in place ({problem or 'it was not running'})",
                round(time.monotonic() - started, 1),
            )
        ]
    results, n = [], len(old)
    for number, first in enumerate(range(0, n, batch_size), 1):
        begun = time.monotonic()
        batch = old[first : first + batch_size]
        known = {c["ID"] for c in host.service_containers(web)}
        host.compose(
            "up",
            "-d",
            "--no-deps",
            "--no-recreate",
            "--scale",
            f"{web}={n + len(batch)}",
            web,
            timeout=600,
        )
        new = [i for i in host.running_ids(web) if i not in known]
        if not new:
            raise UpgradeError(f"{host.label}: no new {web} container started for batch {number}")
        try:
            wait_ready(host, new, timeout, f"{web} batch {number}")
            status, body = host.web_request("/_health/", timeout=15)  # and the service answers
            if status != 200:
                raise UpgradeError(f"{host.label}: {web} batch {number}: /_health/ {status} "
                                   f"{body[:200]!r} with the new replicas up")  # fmt: skip
        except UpgradeError:
            host.remove_containers(new, stop_timeout=10)  # the old batch still serves
            raise
        host.remove_containers(batch)
        results.append(
            Result(
                f"{web} batch {number}",
                Status.DONE,
                f"{len(new)} new replica(s) healthy, then {len(batch)} old stopped",
                round(time.monotonic() - begun, 1),
            )
        )
    return results


@task(cache_policy=NO_CACHE, timeout_seconds=3600)
def restart_others(host: SentryHost, counts: dict[str, int], timeout: float) -> Result:
    """The other Sentry services (workers, cron, ...) recreated on the new image, each with
    the replica count it had; workers finish their task in hand (warm shutdown)."""
    others = {s: n for s, n in counts.items() if s != host.stack.service(Role.WEB)}
    if not others:
        return Result("other Sentry services", Status.ALREADY, "none")
    started = time.monotonic()
    host.up_services(others)
    ids = [i for s in others for i in host.running_ids(s)]
    wait_ready(host, ids, timeout, ", ".join(others))
    return Result(
        "other Sentry services",
        Status.DONE,
        ", ".join(f"{s} x{n}" for s, n in others.items()),
        round(time.monotonic() - started, 1),
    )


@task(cache_policy=NO_CACHE, timeout_seconds=3600)
def verify(host: SentryHost, version: str, timeout: float) -> Result:
    status, body = wait_healthy(host, timeout)
    running = host.running_version() if status == 200 else "?"
    ok = status == 200 and running == version
    return Result.check(
        f"health on {version}",
        ok,
        f"/_health/?full {status}, sentry --version {running}: {body[:200]!r}",
    )


def apply_guide(
    host: SentryHost,
    hop: Hop,
    counts: dict[str, int],
    batch_size: int,
    timeout: float,
    audit: Audit,
) -> None:
    var, value = host.image_setting(hop.version)
    hop.env_path = f"{host.project_dir}/{host.stack.operator_env_file}"
    hop.env_before = host.get(hop.env_path) if host.exists(hop.env_path) else b""
    host.put(hop.env_path, render_env(hop.env_before.decode(), {var: value}).encode(), mode=0o600)
    audit.add(Result("version setting", Status.DONE, f"{var}={value} in {hop.env_path}"))
    if host.pull_images:
        host.compose("pull", *counts, timeout=3600)
    hop.migrated = True  # from here on the database may have changed
    audit.add(migrate(host, hop.version))
    audit.add(*roll_web(host, batch_size, timeout))
    audit.add(restart_others(host, counts, timeout))
    checked = verify(host, hop.version, timeout)
    audit.add(checked)
    if not checked.ok:
        raise UpgradeError(f"{host.label}: {checked.detail}")


def apply_hop(
    host: SentryHost,
    hop: Hop,
    counts: dict[str, int],
    batch_size: int,
    timeout: float,
    audit: Audit,
) -> None:
    if host.layout == "guide":
        apply_guide(host, hop, counts, batch_size, timeout, audit)
    else:
        apply_install_sh(host, hop, timeout, audit)


# self-hosted's non-interactive install (shared/LAYOUTS.md)
INSTALL_FLAGS = ("--skip-user-creation", "--no-report-self-hosted-issues",
                 "--apply-automatic-config-updates")  # fmt: skip


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, timeout_seconds=24 * 3600)
def install(host: SentryHost, version: str) -> Result:
    """self-hosted's `./install.sh` of the checked-out release, detached in a named container
    (it stops the stack, builds, runs `sentry upgrade`); re-attached on a retry."""
    logger = get_run_logger()
    job = jobs.run(
        host,
        "install",
        lambda name, labels: host.install_job_argv(name, labels, *INSTALL_FLAGS),
        run_id=str(flow_run.id or "local"),
        on_line=lambda line: logger.info("install.sh: %s", line),
    )
    if not job.ok:
        raise UpgradeError(f"{host.label}: ./install.sh of {version} exited {job.exit_code}: "
                           + " | ".join(job.tail[-5:]))  # fmt: skip
    return Result(
        f"install.sh {version}", Status.DONE, job.tail[-1] if job.tail else "", job.seconds
    )


@task(cache_policy=NO_CACHE, timeout_seconds=3600)
def start_stack(host: SentryHost, timeout: float) -> Result:
    """`docker compose up -d --wait` (what self-hosted's install.sh tells the operator to run)."""
    started = time.monotonic()
    host.run(host.compose_argv("up", "-d", "--wait"), timeout=timeout + 600)
    return Result(
        "start the stack", Status.DONE, "compose up -d --wait", round(time.monotonic() - started, 1)
    )


def checkout(host: SentryHost, ref: str) -> None:
    host.git("-c", "advice.detachedHead=false", "checkout", "--quiet", ref)


def apply_install_sh(host: SentryHost, hop: Hop, timeout: float, audit: Audit) -> None:
    """self-hosted: `git checkout <tag>`, its `./install.sh`, `compose up -d --wait`, health."""
    hop.git_before = host.git("rev-parse", "HEAD").text.strip()
    checkout(host, hop.version)
    audit.add(Result("checkout", Status.DONE, f"{hop.version} (was {hop.git_before[:12]})"))
    hop.migrated = True  # install.sh runs the migrations
    audit.add(install(host, hop.version))
    audit.add(start_stack(host, timeout))
    checked = verify(host, hop.version, timeout)
    audit.add(checked)
    if not checked.ok:
        raise UpgradeError(f"{host.label}: {checked.detail}")


def restore_database(host: SentryHost, store: BackupStore, backup_id: str, audit: Audit) -> None:
    """Postgres (and ClickHouse when in the set) put back from the pre-backup, with the Sentry
    services stopped so nothing writes meanwhile."""
    started = time.monotonic()
    manifest = pick_set(store, host, backup_id)
    host.compose("stop", *host.sentry_services(), timeout=600)
    host.compose("up", "-d", "--wait", host.stack.service(Role.POSTGRES), timeout=600)
    postgres.recreate_database(host)
    reader = backup_set.open_object(store, manifest, "postgres")  # decrypted, hashed
    progress = Progress(f"restore postgres of {host.label} from {backup_id}", reader.obj.size)
    with progress.watching(lambda: reader.stored_bytes_read):
        postgres.restore(host, host.tool_image, reader)
    reader.verify()
    audit.add(
        Result(
            "restore postgres",
            Status.DONE,
            f"from {backup_id}",
            round(time.monotonic() - started, 1),
        )
    )
    if manifest.clickhouse is not None and any(t.copied for t in manifest.clickhouse.tables):
        with clickhouse.connect(host) as (client, _):
            clickhouse.drop_tables(client, manifest.clickhouse)
        checks = restore_clickhouse(host, store, manifest)
        bad = [r for r in checks if not r.ok]
        audit.add(
            Result(
                "restore clickhouse",
                Status.FAILED if bad else Status.DONE,
                "; ".join(f"{r.name}: {r.detail}" for r in bad) or f"from {backup_id}",
            )
        )


def rollback(
    host: SentryHost,
    store: BackupStore,
    hop: Hop,
    auto_restore: bool,
    approval_timeout: int,
    counts: dict[str, int],
    timeout: float,
    audit: Audit,
) -> str:
    """Undo what the hop changed; returns the host's state in one sentence."""
    if hop.git_before is not None:
        checkout(host, hop.git_before)
        audit.add(Result("rollback: checkout", Status.DONE, hop.git_before[:12]))
    if hop.env_before is not None:
        host.put(hop.env_path, hop.env_before, mode=0o600)
        audit.add(Result("rollback: version setting", Status.DONE, f"{hop.env_path} as it was"))
    restored = False
    if hop.migrated:
        allowed, who = auto_restore, "auto_restore"
        if not auto_restore:
            answer = ask(
                RestoreApproval,
                approval_timeout,
                artifact_slug(f"restore-{hop.version}"),
                f"## The upgrade of {host.label} to {hop.version} failed after its "
                f"migrations started\n\nRestore the database from `{hop.backup_id}` "
                f"(taken on {hop.previous})? Data written since then is lost; without it "
                f"{hop.previous} runs on a schema migrated towards {hop.version}.",
            )
            allowed, who = bool(answer and answer.restore), (answer.approver if answer else "")
        audit.add(
            Result(
                "rollback: restore approval",
                Status.OK if allowed else Status.WARNING,
                f"{'restore' if allowed else 'no restore'} ({who or 'nobody answered'})",
            )
        )
        if allowed:
            restore_database(host, store, hop.backup_id, audit)
            restored = True
    if hop.git_before is not None:  # self-hosted: its install.sh rebuilds the old release
        if hop.migrated:
            audit.add(install(host, hop.previous))
        audit.add(start_stack(host, timeout))
    else:
        host.up_services(counts)
    checked = verify(host, hop.previous, timeout)
    audit.add(Result(f"rollback: {checked.name}", checked.status, checked.detail))
    data = (
        f"database restored from {hop.backup_id}"
        if restored
        else "database as the migrations left it"
        if hop.migrated
        else "database untouched"
    )
    health = "healthy" if checked.ok else "NOT healthy"
    return f"{host.label} is back on {hop.previous} ({health}), {data}"


def ask(kind: type[RunInput], timeout: int, key: str, description: str):
    """Pause the run for an operator's typed answer; None on a timeout."""
    try:
        return pause_flow_run(
            wait_for_input=kind.with_initial_data(description=description),
            timeout=timeout,
            poll_interval=2,
            key=key,
        )
    except FlowPauseTimeout:
        return None


# -- the flow -------------------------------------------------------------------------------------
@flow(name="upgrade", flow_run_name="upgrade-{host}-to-{target_version}", log_prints=True)
def upgrade(
    host: SentryHost | str,
    store: BackupStore | str,
    target_version: str,
    require_approval: bool = True,
    batch_size: int = 1,
    auto_restore: bool = False,
    hard_stops: list[str] | None = None,
    health_timeout: int = 300,
    approval_timeout: int = 3600,
) -> dict:
    """Upgrade Sentry on `host` to `target_version`, hop by hop over the hard stops, each hop
    after its own verified backup; rolled back on failure.

    Args:
        host: The Sentry host: a SentryHost block, or its name.
        store: The BackupStore block (or its name) for the pre-backups and a rollback's
            restore.
        target_version: The Sentry version to end on (e.g. 24.8.0: an image tag on the guide's
            layout, a release tag of the self-hosted checkout).
        require_approval: Pause after the plan and the first pre-backup until an operator
            approves (Prefect UI: Resume); a rejection or no answer changes nothing.
        batch_size: Web replicas replaced at a time (keep it below the replica count so web is
            never fully down).
        auto_restore: After a failure past the migrations, restore the database from the
            hop's pre-backup at once instead of asking first.
        hard_stops: Versions no upgrade may skip; default: getsentry/self-hosted's list.
        health_timeout: Seconds each health gate waits.
        approval_timeout: Seconds an approval waits before the run ends without a change.
    """
    problems = parameter_problems(target_version, batch_size, health_timeout, approval_timeout)
    if problems:
        raise UpgradePlanError(f"upgrade of {host}: {'; '.join(problems)} (nothing was changed)")
    host, sentry_host = load_block(host, SentryHost)
    store, backup_store = load_block(store, BackupStore)
    audit = Audit(host)
    outcome = "failed before any change"
    try:
        with host_lock(sentry_host, "upgrade"):
            current, hops = plan(sentry_host, target_version, hard_stops)
            audit.add(
                Result(
                    "plan",
                    Status.OK,
                    " -> ".join([current, *hops]) if hops else f"already at {current}",
                )
            )
            if not hops:
                outcome = f"already at {current}: nothing to do"
                return {"status": "already", "version": current, "hops": []}
            audit.add(*preflight(sentry_host, hops))
            previous, backups = current, []
            for index, version in enumerate(hops):
                backup_id = pre_backup(host, store, audit)
                backed_up = time.monotonic()
                if index == 0 and require_approval:
                    md = plan_markdown(
                        sentry_host.label, current, hops, backup_id, batch_size, auto_restore
                    )
                    create_markdown_artifact(md, key=artifact_slug(f"upgrade-plan-{host}"))
                    answer = ask(UpgradeApproval, approval_timeout, "approve", md)
                    who = (
                        f"{answer.approver or 'unnamed'}: {answer.comment or 'no comment'}"
                        if answer
                        else ""
                    )
                    if not answer or not answer.approve:
                        why = (
                            f"rejected ({who})" if answer else f"no answer in {approval_timeout} s"
                        )
                        audit.add(Result("approval", Status.WARNING, why))
                        outcome = f"{why}: nothing was changed"
                        return {
                            "status": "rejected" if answer else "timed out",
                            "version": current,
                            "hops": hops,
                            "backups": [backup_id],
                        }
                    audit.add(Result("approval", Status.OK, f"approved by {who}"))
                    if time.monotonic() - backed_up > FRESH_BACKUP_SECONDS:
                        backup_id = pre_backup(host, store, audit)  # the approval took long
                backups.append(backup_id)
                hop = Hop(version, previous, backup_id)
                counts = sentry_host.replica_counts()
                try:
                    apply_hop(sentry_host, hop, counts, batch_size, health_timeout, audit)
                except Exception as exc:
                    audit.add(Result(f"hop to {version}", Status.FAILED, str(exc)[:500]))
                    state = rollback(
                        sentry_host,
                        backup_store,
                        hop,
                        auto_restore,
                        approval_timeout,
                        counts,
                        health_timeout,
                        audit,
                    )
                    outcome = f"ROLLED BACK: {state}"
                    emit_event(
                        event="sentry.upgrade.rolled_back",
                        resource={
                            "prefect.resource.id": f"sentry-ops.host.{sentry_host.identity}",
                            "sentry-ops.host": host,
                        },
                        payload={
                            "from": previous,
                            "to": version,
                            "backup_id": backup_id,
                            "error": str(exc)[:500],
                            "state": state,
                        },
                    )
                    raise UpgradeError(
                        f"upgrade {previous} -> {version} failed ({exc}); {state}"
                    ) from exc
                previous = version
            outcome = f"upgraded {current} -> {previous}"
            emit_event(
                event="sentry.upgrade.completed",
                resource={
                    "prefect.resource.id": f"sentry-ops.host.{sentry_host.identity}",
                    "sentry-ops.host": host,
                },
                payload={"from": current, "to": previous, "hops": hops, "backups": backups},
            )
            return {"status": "upgraded", "version": previous, "hops": hops, "backups": backups}
    except Exception as exc:
        if outcome == "failed before any change":
            outcome = f"failed before any change: {exc}"[:500]
        raise
    finally:
        audit.publish(
            f"Upgrade of {sentry_host.label} to {target_version} "
            f"({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC): {outcome}"
        )
