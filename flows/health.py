"""Health check of a Sentry host: is every part of the stack up, and is it ingesting?

Runbook, in order: the block's names exist in the compose project; containers of every role running
(and healthy where they have a healthcheck); the stack has what ingestion needs (Relay and Snuba: a
guide-shaped stack without them cannot ingest); Sentry web answers `/_health/` and its full status
checks `/_health/?full`; Postgres `pg_isready`; Redis PING; ClickHouse `SELECT 1`; free disk where
Docker keeps its data and on every data volume; the WAL archive's replication slot (armed by
ship-wal: fails before WAL it keeps for a gone shipper fills the disk); then, because
`/_health/` stays green while nothing is ingested, a synthetic event sent to the probe project's
store endpoint must come out processed
(its issue and its payload) through Sentry's API within a bound. Every check runs even when
another fails; the flow then fails naming each failed check.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.variables import Variable

from blocks import wal
from blocks.host_docker import parse_df
from blocks.layouts import DataVolume, Role, StackLayout
from blocks.postgres import PostgresError
from blocks.sentry_host import SentryHost
from blocks.ssh import RemoteCommandError
from flows.shared import (
    MINUTE,
    Result,
    Status,
    artifact_slug,
    check_web,
    diagnosis_link,
    emit,
    failed,
    ingestion,
    load_block,
    results_artifact,
    summary,
)


class UnhealthyError(Exception):
    pass


# -- pure logic --------------------------------------------------------------------------------
def assess_containers(rows: list[dict], defined: set[str], layout: StackLayout) -> list[Result]:
    """One check per role the layout knows and the project defines (or requires)."""
    checks = []
    for role, service in layout.services.items():
        if service not in defined:
            if role in layout.required:
                checks.append(
                    Result.check(f"{role}: container", False, f"service {service} is not defined")
                )
            continue
        mine = [r for r in rows if r.get("Service") == service]
        if not mine:
            checks.append(Result.check(f"{role}: container", False, f"{service} has no container"))
            continue
        bad = [
            f"{r.get('Name')} {r.get('State')}" + (f"/{r['Health']}" if r.get("Health") else "")
            for r in mine
            if r.get("State") != "running" or r.get("Health") not in ("", None, "healthy")
        ]
        detail = "; ".join(bad) if bad else f"{len(mine)} running"
        checks.append(Result.check(f"{role}: container", not bad, detail))
    return checks


def assess_pipeline(defined: set[str], layout: StackLayout) -> list[Result]:
    """The services a stack needs to ingest at all (`StackLayout.pipeline`: Relay and Snuba),
    defined by the project: one check, failing in one sentence that names what is missing."""
    missing = [(role, layout.services[role]) for role in layout.pipeline
               if layout.services.get(role) not in defined]  # fmt: skip
    if not missing:
        names = ", ".join(layout.services[role] for role in layout.pipeline)
        return [Result.check("ingestion pipeline", True, f"{names} defined")]
    what = " and ".join(f"no {role.name.title()} (service {name})" for role, name in missing)
    return [Result.check("ingestion pipeline", False,
        f"this stack has {what}, so it cannot ingest: Sentry takes events only through Relay "
        "(its Python store endpoint was removed in 2020, getsentry/sentry#19135) and reads "
        "them through Snuba; add the missing services (README: a guide host needs Relay and "
        "Snuba), or name yours in the block's service_names")]  # fmt: skip


def assess_disk(df_output: str, min_free_gb: float, names: list[str]) -> list[Result]:
    """`df -P -B1 A B ...` -> one check per path (named by `names`): at least `min_free_gb`."""
    results = []
    for name, (total, available) in zip(names, parse_df(df_output), strict=True):
        free_gb = available / 1e9
        detail = f"{free_gb:.1f} GB free of {total / 1e9:.1f} GB ({100 * available / total:.0f}%)"
        results.append(Result.check(f"disk: {name}", free_gb >= min_free_gb, detail))
    return results


HISTORY_DAYS = 13  # free-space samples kept per series (a Prefect Variable holds 5000 chars)
SAMPLE_SPACING = 5400  # seconds: at most one sample per 1.5 h per series (a closer one replaces it)
TREND_DAYS = 7  # the forecast's fit uses this window
MIN_SPAN = 86400  # and needs samples spanning at least a day (minutes of noise are no trend)
SPARK = "▁▂▃▄▅▆▇█"


def record(series: list[list[int]], when: int, available_mb: int) -> list[list[int]]:
    """`series` ([[unix time, free MB], ...], oldest first) with a sample of now: samples stay
    at least SAMPLE_SPACING apart but the newest, which is always now's; none older than
    HISTORY_DAYS."""
    kept = [s for s in series if when - HISTORY_DAYS * 86400 <= s[0] < when]
    if len(kept) >= 2 and kept[-1][0] - kept[-2][0] < SAMPLE_SPACING:
        # the newest is replaced until it is spaced from the one before
        kept[-1] = [when, available_mb]
    else:
        kept.append([when, available_mb])
    return kept


def days_until_full(series: list[list[float]], now: float) -> float | None:
    """Days until free space reaches 0 at the least-squares trend of the last TREND_DAYS;
    None without a trend: fewer than 3 samples, spanning under MIN_SPAN, or not shrinking."""
    points = [(t, a) for t, a in series if t >= now - TREND_DAYS * 86400]
    if len(points) < 3 or points[-1][0] - points[0][0] < MIN_SPAN:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_a = sum(a for _, a in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    slope = sum((t - mean_t) * (a - mean_a) for t, a in points) / var  # bytes per second
    if slope >= 0:
        return None
    return max(0.0, points[-1][1] / -slope / 86400)


def sparkline(series: list[list[float]]) -> str:
    values = [a for _, a in series]
    low, high = min(values), max(values)
    return "".join(SPARK[int((a - low) / (high - low) * 7) if high > low else 3] for a in values)


def assess_forecast(name: str, series: list[list[float]], now: float, fail_days: float) -> Result:
    days = days_until_full(series, now)
    if days is None:
        span = (series[-1][0] - series[0][0]) / 3600 if series else 0
        return Result(f"disk forecast: {name}", Status.OK,
                      f"no shrinking trend ({len(series)} samples over {span:.0f} h)")  # fmt: skip
    return Result.check(f"disk forecast: {name}", days >= fail_days,
                        f"full in {days:.1f} days at the last {TREND_DAYS} days' trend "
                        f"(alert below {fail_days:g})")  # fmt: skip


# -- tasks --------------------------------------------------------------------------------------
@task(cache_policy=NO_CACHE, timeout_seconds=120)
def check_names(host: SentryHost) -> list[Result]:
    problems = host.name_problems(host.stack.backup_volumes)
    if not problems:
        return [Result.check("names", True, f"project {host.project}: services and volumes found")]
    return [Result.check("names", False, p) for p in problems]


@task(cache_policy=NO_CACHE, timeout_seconds=60)
def check_unfinished(host: SentryHost) -> list[Result]:
    """An upgrade or a restore that did not finish here (its marker in the project dir): the
    stack may answer, but it is not whole."""
    found = [(kind, m) for kind in ("upgrade", "restore") if (m := host.marker(kind))]
    if not found:
        return [Result.check("unfinished operations", True, "none")]
    return [
        Result.check(f"unfinished {kind}", False, f"run {m.get('run')} since {m.get('since')} "
                     f"(set {m.get('backup_id')}): run the {kind} again to resume or abandon it")
        for kind, m in found
    ]  # fmt: skip


@task(cache_policy=NO_CACHE, timeout_seconds=120)
def check_containers(host: SentryHost) -> list[Result]:
    defined = host.defined_services()
    return assess_containers(host.ps(probe=True), defined, host.stack) + assess_pipeline(
        defined, host.stack
    )


@task(cache_policy=NO_CACHE, timeout_seconds=60)
def check_service(host: SentryHost, role: Role) -> Result:
    name = {Role.POSTGRES: "pg_isready", Role.REDIS: "PING", Role.CLICKHOUSE: "SELECT 1"}[role]
    try:
        out = host.probe(role)
    except RemoteCommandError as exc:
        return Result.check(f"{role}: {name}", False, exc.stderr_tail.strip()[-300:] or str(exc))
    return Result.check(f"{role}: {name}", True, out[-200:])


@task(cache_policy=NO_CACHE, timeout_seconds=120)
def check_disk(host: SentryHost, min_free_gb: float, forecast_days: float) -> list[Result]:
    """Free space where Docker keeps its data, and on the filesystem of each data volume; each
    recorded (a JSON block per host) and forecast: days until full at the recent trend."""
    df = host.docker_df()
    results = assess_disk(df, min_free_gb, ["docker"])
    free = {"docker": parse_df(df)[0][1]}
    volumes = host.existing_volumes(list(host.stack.volumes))
    image = host.service_images().get(host.stack.service(Role.WEB), "")
    if volumes and image:
        df = host.volumes_df(volumes, image)
        names = [f"volume {v} ({host.volume_name(v)})" for v in volumes]
        results += assess_disk(df, min_free_gb, names)
        free.update({str(v): avail for v, (_, avail) in zip(volumes, parse_df(df), strict=True)})
    now = int(time.time())
    history = {}
    for name, available in free.items():
        var = artifact_slug(f"disk-{host.identity}-{name}")[:255]
        history[name] = record(Variable.get(var, default=None) or [], now, available // 10**6)
        Variable.set(var, history[name], overwrite=True)
    forecasts = [assess_forecast(n, history[n], now, forecast_days) for n in free]
    lines = [f"| {n} | {free[n] / 1e9:.1f} GB | {sparkline(history[n])} | {r.detail} |"
             for n, r in zip(free, forecasts, strict=True)]  # fmt: skip
    table = [
        f"## Free space on {host.label}, last {HISTORY_DAYS} days",
        "",
        "| where | free now | trend (oldest to newest) | forecast |",
        "|---|---|---|---|",
        *lines,
    ]
    create_markdown_artifact(
        "\n".join(table),
        key=artifact_slug(f"disk-forecast-{host.identity}"),
        description=f"Free space forecast of {host.label}",
    )
    return results + forecasts


def assess_wal_slot(state: wal.WalStatus, free_bytes: int, max_slot_gb: float) -> list[Result]:
    """The WAL archive's slot on the host (pure): it keeps every segment its shipper has not
    received, so an abandoned one grows pg_wal until the disk is full. Fails once it keeps more
    than `max_slot_gb` or half the free space left beside the database."""
    if state.slot is None:
        return [Result("wal archiving", Status.OK, f"not armed (no slot {wal.SLOT})")]
    kept = state.slot.retained_bytes
    limit = min(max_slot_gb * 1e9, free_bytes / 2)
    active = "active" if state.slot.active else "INACTIVE: nothing receives it"
    detail = (
        f"slot {wal.SLOT} keeps {kept / 1e6:.1f} MB of WAL ({active}; shipper {state.shipper}; "
        f"{free_bytes / 1e9:.1f} GB free beside Postgres; fails above {limit / 1e9:.2f} GB)"
    )
    if kept > limit:
        detail += (
            ": restart the shipper (run ship-wal) or drop the slot in one step "
            "(stop-wal-archiving) before it fills the disk"
        )
    return [Result.check("wal archiving: slot", kept <= limit, detail)]


@task(cache_policy=NO_CACHE, timeout_seconds=120)
def check_wal(host: SentryHost, max_slot_gb: float) -> list[Result]:
    """The slot's check; not checked (a warning) when Postgres does not answer: its own check
    fails then, naming it."""
    try:
        state = wal.status(host)
    except (PostgresError, RemoteCommandError) as exc:
        why = str(exc)[-200:]
        return [Result("wal archiving: slot", Status.WARNING, f"not checked: {why}")]
    free = host.volume_free(DataVolume.POSTGRES)[1] if state.slot else 0
    return assess_wal_slot(state, free, max_slot_gb)


# -- flow ---------------------------------------------------------------------------------------
def unhealthy(host: str, failed_checks: list[str]) -> None:
    """`sentry.health.failed` for the host: setup's automation runs diagnose/<host> on it (the
    failure's message names that diagnosis's report, `diagnosis_link`)."""
    emit("sentry.health.failed", host, host, {"host": host, "failed": failed_checks}, kind="health")


@flow(
    name="health-check",
    flow_run_name="health-{host}",
    log_prints=True,
    persist_result=True,
    timeout_seconds=15 * MINUTE,
)
def health_check(
    host: SentryHost | str,
    min_free_gb: float = 5.0,
    ingestion_within_seconds: float = 60.0,
    disk_forecast_days: float = 7.0,
    max_wal_slot_gb: float = 10.0,
) -> list[dict]:
    """Check every part of the Sentry stack on a host, ingestion included.

    Args:
        host: The Sentry host: a SentryHost block, or its name.
        min_free_gb: Fail when Docker's disk or a data volume has less free space (GB).
        ingestion_within_seconds: A synthetic event must be processed within this many seconds.
        disk_forecast_days: Fail when Docker's disk or a data volume would be full within this
            many days at the trend of the free space recorded by past checks.
        max_wal_slot_gb: Fail when the WAL archive's replication slot keeps more WAL than
            this (or than half the free space beside Postgres): its shipper is gone.
    """
    logger = get_run_logger()
    host, sentry_host = load_block(host, SentryHost)
    futures = [
        check_names.submit(sentry_host),
        check_unfinished.submit(sentry_host),
        check_containers.submit(sentry_host),
        check_web.submit(sentry_host),
        *(
            check_service.submit(sentry_host, role)
            for role in (Role.POSTGRES, Role.REDIS, Role.CLICKHOUSE)
            if role in sentry_host.stack.services
        ),
        check_disk.submit(sentry_host, min_free_gb, disk_forecast_days),
        check_wal.submit(sentry_host, max_wal_slot_gb),
        ingestion.submit(sentry_host, ingestion_within_seconds),
    ]
    checks: list[Result] = []
    try:
        for future in futures:
            result = future.result()
            checks.extend(result if isinstance(result, list) else [result])
    except Exception as exc:  # a check that could not run at all (sshd unreachable, ...)
        unhealthy(host, ["a check could not run"])
        raise UnhealthyError(
            f"{sentry_host.label}: a check could not run: {exc}. Why: {diagnosis_link(host)}"
        ) from exc
    bad = failed(checks)
    results_artifact(
        f"health-{host}",
        checks,
        f"Health of {sentry_host.label}: " + (f"{len(bad)} failed" if bad else "all passed"),
    )
    for c in checks:
        logger.info("%-8s %s: %s", c.status, c.name, c.detail)
    if bad:
        unhealthy(host, [c.name for c in bad])
        raise UnhealthyError(
            f"{sentry_host.label} is unhealthy: {summary(checks)}. Why: {diagnosis_link(host)}"
        )
    return [c.row() for c in checks]


if __name__ == "__main__":
    import sys

    health_check(sys.argv[1] if len(sys.argv) > 1 else "sandbox")
