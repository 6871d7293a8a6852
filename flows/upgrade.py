"""Upgrade runbook: planned hops over hard stops, a verified pre-backup per hop, approval,
migrations detached on the host, a health-gated rolling restart, rollback with data.

A Sentry upgrade must not jump a hard stop (self-hosted's release docs; `sentry upgrade` refuses
the jump): 23.6.2 -> 24.10.0 is 23.6.2 -> 23.11.0 -> 24.8.0 -> 24.10.0. `plan_upgrade`
(blocks/upgrade_plan.py) turns the current and the target version into those hops before
anything changes.

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
import time
from dataclasses import dataclass

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput
from pydantic import Field

from blocks import backup_set, postgres, restore, rollout
from blocks.backup_store import BackupStore
from blocks.host_sentry import rolling_problem
from blocks.layouts import Role
from blocks.poll import poll
from blocks.rollout import RolloutError
from blocks.sentry_host import SentryHost
from blocks.upgrade_plan import (
    FRESH_BACKUP_SECONDS,
    HARD_STOPS,
    UpgradePlanError,
    disk_needed,
    parameter_problems,
    plan_line,
    plan_markdown,
    plan_upgrade,
    restore_question,
    rollback_state,
)
from flows.shared import (
    Report,
    Result,
    Status,
    UpgradeError,
    artifact_slug,
    ask,
    checkout_clean,
    emit,
    host_lock,
    ingestion,
    install,
    load_block,
    migrate,
    pre_backup,
    reading,
    restore_clickhouse,
    results_artifact,
    summary,
    this_run,
    verify_objects,
)


class NotApproved(Exception):
    """The plan was rejected, or not answered in time: `result` is what the run returns."""

    def __init__(self, why: str, result: dict) -> None:
        super().__init__(why)
        self.why, self.result = why, result


class UpgradeApproval(RunInput):
    """The operator's answer to an upgrade plan (Prefect UI: the paused run's Resume form)."""

    approve: bool = Field(default=False, description="Apply the plan (unticked: reject it)")
    approver: str = Field(default="", description="Who decides, for the audit")
    comment: str = Field(default="", description="Why, for the audit")


class RestoreApproval(RunInput):
    """Whether a failed upgrade may put the database back from its pre-backup."""

    restore: bool = Field(default=False, description="Restore the database from the pre-backup")
    approver: str = Field(default="", description="Who decides, for the audit")


@dataclass(frozen=True)
class Settings:
    """How the hops go: the flow's parameters past host, store and target."""

    batch_size: int
    auto_restore: bool
    health_timeout: int
    approval_timeout: int
    ingestion_probe: bool = True


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


def log_step(result: Result) -> None:
    detail = f" ({result.detail})" if result.detail else ""
    get_run_logger().info("%s: %s%s", result.name, result.status, detail)


# -- before any change: plan, preflight, pre-backup, approval -------------------------------------
@task(cache_policy=NO_CACHE, timeout_seconds=600)
def plan(host: SentryHost, target: str, hard_stops: list[str] | None) -> tuple[str, list[str]]:
    """Current version and the hops to `target` (refused: downgrade, unknown, unavailable)."""
    current = host.running_version()
    available = None
    if host.layout == "guide" and not host.pull_images:  # only what the host has locally
        available = set(host.image_tags(host.sentry_repository()))
    elif host.layout != "guide":
        available = host.git_tags()
    stops = HARD_STOPS if hard_stops is None else hard_stops
    return current, plan_upgrade(current, target, stops, available)


@task(cache_policy=NO_CACHE, timeout_seconds=600)
def preflight(host: SentryHost, hops: list[str]) -> list[Result]:
    """Healthy stack, the env variable that sets the version, disk for new images and
    migrations; a web that cannot roll (fixed port) is a warning: it restarts in place."""
    results = [healthy_before(host)]
    if host.layout == "guide":
        checked, image_bytes = guide_ready(host, hops)
    else:
        # install.sh pulls and builds every image of the stack again at the new release (self-
        # hosted 26.x: ~8 pulled, ~3 built), and the old ones stay until a cleanup: per hop, as
        # much again as the images the stack runs now (sizes counted whole: an upper bound)
        refs = set(host.service_images().values())
        image_bytes = sum(host.image_size(r) or 0 for r in refs) * len(hops)
        checked = [checkout_clean(host)]
    results += checked
    results.append(disk_enough(host, image_bytes))
    return results


def healthy_before(host: SentryHost) -> Result:
    status, body = host.web_request("/_health/?full", timeout=30)
    if status != 200:
        raise UpgradeError(
            f"{host.label}: not healthy before the upgrade ({status} "
            f"{body[:300]!r}): fix that first; nothing was changed"
        )
    return Result.check("health", True, f"/_health/?full: {status} {body[:200]!r}")


def guide_ready(host: SentryHost, hops: list[str]) -> tuple[list[Result], int]:
    """The version setting, the hops' images (on the host when not pulled), whether web can
    roll; with the bytes the pulled images will take."""
    var, value = host.image_setting(hops[0])
    where = f"{var} in {host.stack.operator_env_file} (first hop: {value})"
    results = [Result("version setting", Status.OK, where)]
    web = host.stack.service(Role.WEB)
    size = host.image_size(host.service_images().get(web, "")) or 0
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
        detail = f"{web} restarts in place, web is down meanwhile: {problem}"
        results.append(Result("rolling restart", Status.WARNING, detail))
    return results, (size * len(hops) if host.pull_images else 0)


def disk_enough(host: SentryHost, image_bytes: int) -> Result:
    """Free space for Docker's data: the images pulled, and room for migrations."""
    with postgres.psql(host) as db:
        need = disk_needed(postgres.database_bytes(db), image_bytes)
    _, free = host.disk_free()
    if free < need:
        raise UpgradeError(
            f"{host.label}: {free / 1e9:.1f} GB free, {need / 1e9:.1f} GB needed "
            "(new images, migrations); free space first; nothing was changed"
        )
    detail = f"{free / 1e9:.1f} GB free for Docker's data, {need / 1e9:.1f} GB needed"
    return Result.check("disk", True, detail)


def approve(
    host: SentryHost,
    name: str,
    current: str,
    hops: list[str],
    backup_id: str,
    how: Settings,
    report: Report,
) -> None:
    """The plan shown and the run paused for an operator's answer; a rejection or no answer
    raises NotApproved (the run then ends, nothing changed)."""
    md = plan_markdown(host.label, current, hops, backup_id, how.batch_size, how.auto_restore)
    create_markdown_artifact(md, key=artifact_slug(f"upgrade-plan-{name}"))
    answer = ask(UpgradeApproval, how.approval_timeout, "approve", md)
    who = f"{answer.approver or 'unnamed'}: {answer.comment or 'no comment'}" if answer else ""
    if answer and answer.approve:
        report.add(Result("approval", Status.OK, f"approved by {who}"))
        return
    why = f"rejected ({who})" if answer else f"no answer in {how.approval_timeout} s"
    report.add(Result("approval", Status.WARNING, why))
    status = "rejected" if answer else "timed out"
    raise NotApproved(
        why, {"status": status, "version": current, "hops": hops, "backups": [backup_id]}
    )


# -- one hop, and its rollback --------------------------------------------------------------------
def run_hop(
    host: SentryHost, name: str, store: BackupStore, hop: Hop, how: Settings, report: Report
) -> None:
    """Apply one hop (guide: rolling; self-hosted: its install.sh); on any failure roll it
    back, announce it, and raise an UpgradeError saying where the host was left."""
    counts = host.replica_counts()
    host.mark("upgrade", {"run": this_run(), "from": hop.previous, "to": hop.version,
                       "backup_id": hop.backup_id,
                       "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})  # fmt: skip
    try:
        if host.layout == "guide":
            apply_guide(host, hop, counts, how, report)
        else:
            apply_install_sh(host, hop, how, report)
    except Exception as exc:
        report.add(Result(f"hop to {hop.version}", Status.FAILED, str(exc)[:500]))
        failed_at = len(report.steps)
        payload = {"from": hop.previous, "to": hop.version, "backup_id": hop.backup_id,
                   "error": str(exc)[:500]}  # fmt: skip
        try:
            state = rollback(host, store, hop, counts, how, report)
        except Exception as failed:  # the audit names the rollback steps that were done
            done = [r.name for r in report.steps[failed_at:] if r.ok]
            state = (
                f"ROLLBACK FAILED on {host.label} ({failed}); done before it: "
                f"{', '.join(done) or 'nothing'}; the host needs an operator"
            )[:900]
            report.add(Result("rollback", Status.FAILED, state))
            emit("sentry.upgrade.rollback_failed", host.identity, name,
                 {**payload, "state": state}, kind="host")  # fmt: skip
            raise UpgradeError(
                f"upgrade {hop.previous} -> {hop.version} failed ({exc}); {state}", left=state
            ) from failed
        if "(healthy)" in state:  # back where it was: other flows may run again
            host.mark("upgrade", None)
        emit("sentry.upgrade.rolled_back", host.identity, name, {**payload, "state": state},
             kind="host")  # fmt: skip
        raise UpgradeError(
            f"upgrade {hop.previous} -> {hop.version} failed ({exc}); {state}", state
        ) from exc
    host.mark("upgrade", None)


def apply_guide(
    host: SentryHost, hop: Hop, counts: dict[str, int], how: Settings, report: Report
) -> None:
    """The version in the env file, the images pulled, migrations, web rolled, the other
    Sentry services recreated, health and version checked."""
    set_version(host, hop, report)
    if host.pull_images:
        host.compose_pull(*counts)
    hop.migrated = True  # from here on the database may have changed
    report.add(migrate(host, hop.version))
    report.add(*roll_web(host, how.batch_size, how.health_timeout))
    report.add(restart_others(host, counts, how.health_timeout))
    require_healthy(host, hop.version, how, report)


def apply_install_sh(host: SentryHost, hop: Hop, how: Settings, report: Report) -> None:
    """self-hosted: `git checkout <tag>`, its `./install.sh`, `up -d` until ready, health."""
    hop.git_before = host.git_head()
    host.checkout(hop.version)
    report.add(Result("checkout", Status.DONE, f"{hop.version} (was {hop.git_before[:12]})"))
    hop.migrated = True  # install.sh runs the migrations
    report.add(install(host, hop.version))
    report.add(start_stack(host, how.health_timeout))
    require_healthy(host, hop.version, how, report)


def set_version(host: SentryHost, hop: Hop, report: Report) -> None:
    """The variable the compose file's Sentry image reads, set in the env file (its old bytes
    kept on the hop for a rollback)."""
    var, value = host.image_setting(hop.version)
    hop.env_path, hop.env_before = host.write_env({var: value}, host.stack.operator_env_file)
    report.add(Result("version setting", Status.DONE, f"{var}={value} in {hop.env_path}"))


def require_healthy(host: SentryHost, version: str, how: Settings, report: Report) -> None:
    """Web answers on the new version, and (with probe credentials) an event goes all the way
    through: `/_health/?full` of current Sentry checks nothing of the pipeline."""
    checks = [verify(host, version, how.health_timeout)]
    if how.ingestion_probe:
        checks.append(ingestion(host, how.health_timeout))
    for checked in checks:
        report.add(checked)
        if not checked.ok:
            raise UpgradeError(f"{host.label}: {checked.name}: {checked.detail}")


def rollback(
    host: SentryHost,
    store: BackupStore,
    hop: Hop,
    counts: dict[str, int],
    how: Settings,
    report: Report,
) -> str:
    """Undo what the hop changed; returns the host's state in one sentence."""
    put_back_files(host, hop, report)
    restoring = hop.migrated and restore_allowed(host, hop, how, report)
    aside = restore_database(host, store, hop.backup_id, report) if restoring else None
    restart_previous(host, hop, counts, how.health_timeout, report)
    checked = verify(host, hop.previous, how.health_timeout)
    report.add(Result(f"rollback: {checked.name}", checked.status, checked.detail))
    if checked.ok and how.ingestion_probe:
        probed = ingestion(host, how.health_timeout)
        report.add(Result(f"rollback: {probed.name}", probed.status, probed.detail))
    state = rollback_state(
        host.label, hop.previous, hop.backup_id, hop.migrated, restoring, checked.ok
    )
    if aside and checked.ok:  # proven: the migrated copy goes
        postgres.drop_database(host, aside)
        report.add(Result("rollback: migrated database dropped", Status.DONE, aside))
    elif aside:
        state += f"; the migrated database is kept as {aside}"
    return state


def put_back_files(host: SentryHost, hop: Hop, report: Report) -> None:
    """The commit checked out before (self-hosted), the env file's old bytes (guide)."""
    if hop.git_before is not None:
        host.checkout(hop.git_before)
        report.add(Result("rollback: checkout", Status.DONE, hop.git_before[:12]))
    if hop.env_before is not None:
        host.put(hop.env_path, hop.env_before, mode=0o600)
        report.add(Result("rollback: version setting", Status.DONE, f"{hop.env_path} as it was"))


def restore_allowed(host: SentryHost, hop: Hop, how: Settings, report: Report) -> bool:
    """`auto_restore`, or an operator's answer (none in approval_timeout: no restore)."""
    allowed, who = how.auto_restore, "auto_restore"
    if not how.auto_restore:
        question = restore_question(host.label, hop.version, hop.previous, hop.backup_id)
        key = artifact_slug(f"restore-{hop.version}")
        answer = ask(RestoreApproval, how.approval_timeout, key, question)
        allowed, who = bool(answer and answer.restore), (answer.approver if answer else "")
    detail = f"{'restore' if allowed else 'no restore'} ({who or 'nobody answered'})"
    status = Status.OK if allowed else Status.WARNING
    report.add(Result("rollback: restore approval", status, detail))
    return allowed


def restore_database(host: SentryHost, store: BackupStore, backup_id: str, report: Report) -> str:
    """Postgres (and ClickHouse when in the set) put back from the pre-backup, with the Sentry
    services stopped so nothing writes meanwhile. The set is verified again first (seal, every
    object's bytes): a set damaged since the pre-backup is refused before anything is dropped.
    The migrated database is renamed aside, not dropped, and put back if the restore fails;
    returns its name (dropped by the caller once the rollback is proven healthy)."""
    started = time.monotonic()
    manifest = backup_set.pick(store, host.set_folders, host.label, backup_id)  # the seal
    bad = summary(verify_objects(store, manifest))
    if bad:
        report.add(Result("rollback: re-verify pre-backup", Status.FAILED, bad[:400]))
        raise UpgradeError(
            f"{host.label}: refusing to restore from {backup_id}: it no longer verifies ({bad}); "
            "nothing was dropped"
        )
    report.add(Result("rollback: re-verify pre-backup", Status.OK, f"{backup_id}: every object"))
    host.compose_stop(*host.sentry_services())
    host.compose_up(host.stack.service(Role.POSTGRES), wait=True)
    aside = postgres.set_aside_database(host, f"pre_rollback_{int(time.time())}")
    report.add(Result("rollback: database set aside", Status.DONE, f"the migrated one as {aside}"))
    what = f"restore postgres of {host.label} from {backup_id}"
    try:
        with reading(store, manifest, "postgres", what) as dump:  # decrypted, hashed, verified
            restore.restore_postgres(host, dump)
    except Exception as exc:
        postgres.put_back_database(host, aside)
        back = f"restore failed ({exc.__class__.__name__}): {aside} is back"
        report.add(Result("rollback: database put back", Status.DONE, back))
        raise
    seconds = round(time.monotonic() - started, 1)
    report.add(Result("restore postgres", Status.DONE, f"from {backup_id}", seconds))
    if manifest.clickhouse is not None and any(t.copied for t in manifest.clickhouse.tables):
        restore.drop_clickhouse_tables(host, manifest.clickhouse)
        checks = restore_clickhouse(host, store, manifest)
        bad = summary(checks)
        status = Status.FAILED if bad else Status.DONE
        report.add(Result("restore clickhouse", status, bad or f"from {backup_id}"))
    return aside


def restart_previous(
    host: SentryHost, hop: Hop, counts: dict[str, int], timeout: float, report: Report
) -> None:
    """The previous release's containers back, with the replica counts they had."""
    if hop.git_before is not None:  # self-hosted: its install.sh rebuilds the old release
        if hop.migrated:
            report.add(install(host, hop.previous))
        report.add(start_stack(host, timeout))
    else:
        host.up_services(counts)


# -- the steps that run long: tasks ---------------------------------------------------------------
@task(cache_policy=NO_CACHE, timeout_seconds=6 * 3600)
def roll_web(host: SentryHost, batch_size: int, timeout: float) -> list[Result]:
    """Replace web's containers batch by batch, each batch gated on health (blocks/rollout.py);
    a web that cannot have a second replica (fixed port or name) is recreated in place."""
    try:
        return rollout.roll(host, host.stack.service(Role.WEB), batch_size, timeout)
    except RolloutError as exc:
        raise UpgradeError(str(exc)) from exc


@task(cache_policy=NO_CACHE, timeout_seconds=3600)
def restart_others(host: SentryHost, counts: dict[str, int], timeout: float) -> Result:
    """The other Sentry services (workers, cron, ...) recreated on the new image, each with
    the replica count it had; workers finish their task in hand (warm shutdown)."""
    others = {s: n for s, n in counts.items() if s != host.stack.service(Role.WEB)}
    try:
        return rollout.recreate(host, others, timeout, "other Sentry services")
    except RolloutError as exc:
        raise UpgradeError(str(exc)) from exc


@task(cache_policy=NO_CACHE, timeout_seconds=3600)
def verify(host: SentryHost, version: str, timeout: float) -> Result:
    """/_health/?full polled until 200 (or `timeout`), then the version web runs."""
    (status, body), _ = poll(
        lambda: host.web_request("/_health/?full", timeout=15),
        lambda answer: answer[0] == 200,
        timeout=timeout,
        interval=2,
    )
    running = host.running_version() if status == 200 else "?"
    ok = status == 200 and running == version
    return Result.check(
        f"health on {version}",
        ok,
        f"/_health/?full {status}, sentry --version {running}: {body[:200]!r}",
    )


@task(cache_policy=NO_CACHE, timeout_seconds=3600)
def start_stack(host: SentryHost, timeout: float) -> Result:
    """`docker compose up -d --wait` (what self-hosted's install.sh tells the operator to run), its
    wait done by probing the healthchecks now (`SentryHost.wait_ready`)."""
    started = time.monotonic()
    host.compose_up(wait=True, timeout=timeout + 600)
    return Result(
        "start the stack", Status.DONE, "compose up -d --wait", round(time.monotonic() - started, 1)
    )


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
    ingestion_probe: bool = True,
    resume_unfinished: bool = False,
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
        ingestion_probe: After each hop (and a rollback), send the health check's synthetic
            event and require it processed (with probe_dsn and api_token in the block): the
            health endpoints of current Sentry check nothing of the pipeline. It adds one
            event and its issue to the probe project.
        resume_unfinished: Go on from the version the host runs although an earlier upgrade
            did not finish (its marker in the project dir: a killed run or a failed rollback);
            without it that upgrade refuses, as every other mutating flow does.
    """
    problems = parameter_problems(target_version, batch_size, health_timeout, approval_timeout)
    if problems:
        raise UpgradePlanError(f"upgrade of {host}: {'; '.join(problems)} (nothing was changed)")
    host, sentry_host = load_block(host, SentryHost)
    store, backup_store = load_block(store, BackupStore)
    how = Settings(batch_size, auto_restore, health_timeout, approval_timeout, ingestion_probe)
    report = Report(on_add=log_step)
    outcome = "failed before any change"
    try:
        with host_lock(sentry_host, "upgrade", unfinished_ok=("upgrade",), engine=True):
            if unfinished := sentry_host.marker("upgrade"):
                if not resume_unfinished:
                    raise UpgradePlanError(
                        f"{sentry_host.label}: an upgrade did not finish here (run "
                        f"{unfinished.get('run')}, {unfinished.get('from')} -> "
                        f"{unfinished.get('to')}, since {unfinished.get('since')}; its "
                        f"pre-backup {unfinished.get('backup_id')}): check the host, then run "
                        "again with resume_unfinished=true (nothing was changed)"
                    )
                report.add(Result("unfinished upgrade", Status.WARNING, f"resumed: {unfinished}"))
            current, hops = plan(sentry_host, target_version, hard_stops)
            report.add(Result("plan", Status.OK, plan_line(current, hops)))
            if not hops:
                outcome = f"already at {current}: nothing to do"
                return {"status": "already", "version": current, "hops": []}
            report.add(*preflight(sentry_host, hops))
            previous, backups = current, []
            for version in hops:
                backup_id = pre_backup(host, store, report)
                backed_up = time.monotonic()
                if version == hops[0] and require_approval:
                    approve(sentry_host, host, current, hops, backup_id, how, report)
                    if time.monotonic() - backed_up > FRESH_BACKUP_SECONDS:
                        backup_id = pre_backup(host, store, report)  # the approval took long
                backups.append(backup_id)
                hop = Hop(version, previous, backup_id)
                run_hop(sentry_host, host, backup_store, hop, how, report)
                previous = version
            outcome = f"upgraded {current} -> {previous}"
            done = {"from": current, "to": previous, "hops": hops, "backups": backups}
            emit("sentry.upgrade.completed", sentry_host.identity, host, done, kind="host")
            return {"status": "upgraded", "version": previous, "hops": hops, "backups": backups}
    except NotApproved as refused:
        outcome = f"{refused.why}: nothing was changed"
        return refused.result
    except Exception as exc:
        if isinstance(exc, UpgradeError) and exc.rolled_back:
            outcome = f"ROLLED BACK: {exc.rolled_back}"
        elif isinstance(exc, UpgradeError) and exc.left:
            outcome = exc.left
        elif outcome == "failed before any change":
            outcome = f"failed before any change: {exc}"[:500]
        raise
    finally:
        when = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
        headline = f"Upgrade of {sentry_host.label} to {target_version} ({when}): {outcome}"
        results_artifact(f"upgrade-{host}", report.steps, headline)
