"""Worker scaling: run exactly N replicas of a layout's scalable service, verified; and an
autoscaler that sets N from the queue backlog.

scale_workers, in order:
1. before anything changes: the role is one the layout scales (guide: `sentry-worker`;
   self-hosted: `taskworker`), `0 <= replicas <= max_workers` of the host block, the service
   exists in the host's compose project; else a clear error and nothing changed;
2. take the host lock;
3. `docker compose up -d --no-deps --no-recreate --scale SERVICE=N --timeout STOP SERVICE`: new
   replicas start, removed ones get SIGTERM and `stop_timeout` seconds to finish the task in hand
   (Celery's and the taskworker's warm shutdown) before they are killed;
4. wait until exactly N containers of the service run (and are healthy where the service has a
   healthcheck);
5. persist N: sentry-ops' compose file `sentry-ops.scale.yml` in the project dir, listed by
   COMPOSE_FILE in the operator's env file (guide: `.env`; self-hosted: `.env.custom`), so a
   plain `docker compose up -d` of the whole stack keeps N; a before/after table artifact.

autoscale reads the backlog where the layout keeps it (guide era: Celery's lists in Redis;
26.x: the taskbroker's pending activations in its SQLite store), computes the target with
`autoscale_target` (clamped, a headroom band against flapping, a cooldown before scaling down),
and scales with the same steps. Its last change is kept in a Prefect Variable per host.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.variables import Variable

from blocks.host_sentry import BacklogCount, rolling_problem
from blocks.poll import poll
from blocks.sentry_host import SentryHost
from flows.shared import (
    HOUR,
    MINUTE,
    LockTimeout,
    Result,
    Status,
    host_lock,
    load_block,
    lock_name,
    results_artifact,
)


class ScalingError(Exception):
    pass


def scalable_service(host: SentryHost, role: str) -> str:
    """The compose service of `role`, if the layout scales it (pure: the block only)."""
    roles = {str(r): r for r in host.stack.scalable}
    if role not in roles:
        raise ScalingError(
            f"{host.label}: role {role!r} cannot be scaled; scalable roles of layout "
            f"{host.layout}: {', '.join(sorted(roles))} (nothing was changed)"
        )
    return host.stack.service(roles[role])


def check_replicas(host: SentryHost, replicas: int) -> None:
    if not 0 <= replicas <= host.max_workers:
        raise ScalingError(
            f"{host.label}: replicas={replicas} is outside 0..{host.max_workers} (the block's "
            "max_workers; raise it there if the host and its queue can take more) "
            "(nothing was changed)"
        )


def running(rows: list[dict]) -> list[dict]:
    """Containers that run, and are healthy where the service has a healthcheck."""
    return [
        r for r in rows if r.get("State") == "running" and r.get("Health", "") in ("", "healthy")
    ]


@task(cache_policy=NO_CACHE, timeout_seconds=900)
def apply_scale(host: SentryHost, service: str, replicas: int, stop_timeout: int) -> list[dict]:
    host.compose_up(service, no_deps=True, no_recreate=True, scale={service: replicas},
                    stop_timeout=stop_timeout)  # fmt: skip
    rows, settled = poll(
        lambda: host.service_containers(service, probe=True),
        lambda rows: len(running(rows)) == replicas and len(rows) == replicas,
        timeout=300,
    )
    if not settled:
        states = [f"{r.get('Name')} {r.get('State')} {r.get('Health', '')}" for r in rows]
        raise ScalingError(
            f"{host.label}: {service} did not settle at {replicas} running replicas within "
            f"300 s: {states}"
        )
    return rows


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, timeout_seconds=120)
def persist_scale(host: SentryHost, service: str, replicas: int) -> str:
    return host.persist_scale(service, replicas)


def checked_service(host: SentryHost, role: str, *counts: int) -> str:
    """The service to scale, after every check that needs no change: role, counts, names."""
    service = scalable_service(host, role)
    for count in counts:
        check_replicas(host, count)
    problems = host.name_problems()
    if problems:
        raise ScalingError(f"{host.label}: nothing was changed: {'; '.join(problems)}")
    most = max(counts, default=1)
    config = host.compose_config().get("services", {}).get(service) or {}
    if most > 1 and (why := rolling_problem(config)):
        raise ScalingError(
            f"{host.label}: {service} cannot run {most} replicas: {why}, which two containers "
            "cannot share; remove it from the compose file (sentry-ops finds containers by "
            "service) (nothing was changed)"
        )
    return service


def rescale(
    host: SentryHost, service: str, before: int, replicas: int, stop_timeout: int
) -> list[Result]:
    """Apply, verify and persist `replicas` (the caller holds the host lock) -> result rows."""
    rows = apply_scale(host, service, replicas, stop_timeout)
    kept = persist_scale(host, service, replicas)
    return [
        Result(
            f"{service} replicas",
            Status.ALREADY if before == replicas else Status.DONE,
            f"{before} -> {replicas} running",
        ),
        Result("persisted", Status.DONE, kept),
        *(
            Result(r.get("Name", "?"), Status.OK, f"{r.get('State')} {r.get('Health', '')}")
            for r in rows
        ),
    ]


@flow(
    name="scale-workers",
    flow_run_name="scale-{host}-to-{replicas}",
    log_prints=True,
    timeout_seconds=HOUR,
)
def scale_workers(
    host: SentryHost | str, replicas: int, role: str = "worker", stop_timeout: int = 60
) -> dict:
    """Run exactly `replicas` containers of the layout's scalable service, verified, and keep
    that count across a plain `docker compose up -d`.

    Args:
        host: The Sentry host: a SentryHost block, or its name.
        replicas: How many replicas to run, 0..the block's max_workers.
        role: Which scalable role (guide: worker = sentry-worker; self-hosted: worker =
            taskworker).
        stop_timeout: Seconds a removed replica has to finish its current task before it is
            killed.
    """
    logger = get_run_logger()
    host, sentry_host = load_block(host, SentryHost)
    service = checked_service(sentry_host, role, replicas)
    with host_lock(sentry_host, "scale workers", engine=True):
        before = len(running(sentry_host.service_containers(service)))
        logger.info("%s: %s from %d to %d replicas", sentry_host.label, service, before, replicas)
        results = rescale(sentry_host, service, before, replicas, stop_timeout)
    results_artifact(
        f"scale-{host}", results, f"{service} on {sentry_host.label}: {before} -> {replicas}"
    )
    return {"service": service, "before": before, "after": replicas}


# -- the autoscaler -------------------------------------------------------------------------------
@dataclass(frozen=True)
class AutoscalePolicy:
    min_replicas: int
    max_replicas: int
    backlog_per_worker: int
    cooldown_seconds: float = 600
    # scale down only to a count that leaves this share of each worker's capacity free, so the
    # next run (same backlog) does not scale straight back up
    headroom: float = 0.25

    def problems(self) -> list[str]:
        out = []
        if not 0 <= self.min_replicas <= self.max_replicas:
            out.append(
                f"min_replicas={self.min_replicas} and max_replicas={self.max_replicas}: need "
                "0 <= min_replicas <= max_replicas"
            )
        if self.backlog_per_worker < 1:
            out.append(f"backlog_per_worker={self.backlog_per_worker}: must be >= 1")
        if self.cooldown_seconds < 0:
            out.append(f"cooldown_seconds={self.cooldown_seconds}: must be >= 0")
        if not 0 <= self.headroom < 1:
            out.append(f"headroom={self.headroom}: must be in [0, 1)")
        return out


def autoscale_target(
    current: int, counted: BacklogCount | int, policy: AutoscalePolicy, since_change: float
) -> tuple[int, str]:
    """(replicas to run, why) for `counted` waiting tasks and `current` running replicas.

    Up at once to ceil(backlog / per_worker); down only after `cooldown_seconds` since the last
    change, and only to a count whose load stays below (1 - headroom) of capacity; clamped to
    min..max. A target never makes the next call with the same backlog move the other way. A
    count at its store's cap (the taskbroker stops reading Kafka there) is a floor, not the
    backlog: up to max_replicas, never down.
    """
    if isinstance(counted, int):
        counted = BacklogCount(counted)
    backlog = counted.count
    lo, hi = policy.min_replicas, policy.max_replicas

    def clamp(n: int) -> int:
        return max(lo, min(hi, n))

    if current > hi:
        return hi, f"{current} running is above max_replicas={hi}"
    if counted.capped:
        target = max(current, hi)
        verb = f"up to max_replicas={hi}" if target > current else f"keeping {current}"
        return target, f"backlog {counted}: {verb}"
    per = policy.backlog_per_worker
    need = clamp(math.ceil(backlog / per))
    if need > current:  # also brings a count below min_replicas up, to at least min
        return need, f"backlog {backlog}, {current} x {per} running: up to {need}"
    calm = clamp(math.ceil(backlog / (per * (1 - policy.headroom))))
    if calm < current:
        if since_change < policy.cooldown_seconds:
            wait = policy.cooldown_seconds - since_change
            return current, f"backlog {backlog} allows {calm}, cooldown: {wait:.0f} s left"
        return calm, f"backlog {backlog} drained: down to {calm}"
    return current, f"backlog {backlog} fits {current} x {per}"


def state_name(host: SentryHost) -> str:
    return f"{lock_name(host)}-autoscale"


@flow(
    name="autoscale", flow_run_name="autoscale-{host}", log_prints=True, timeout_seconds=15 * MINUTE
)
def autoscale(
    host: SentryHost | str,
    min_replicas: int = 1,
    max_replicas: int = 4,
    backlog_per_worker: int = 500,
    cooldown_seconds: float = 600,
    role: str = "worker",
    stop_timeout: int = 60,
) -> dict:
    """Set the worker count from the queue backlog: up at once, down after a cooldown.

    Args:
        host: The Sentry host: a SentryHost block, or its name.
        min_replicas: Never fewer replicas than this.
        max_replicas: Never more than this (and never more than the block's max_workers).
        backlog_per_worker: Waiting tasks one replica is expected to keep up with.
        cooldown_seconds: Seconds after the last change before the autoscaler scales down.
        role: Which scalable role (guide: sentry-worker; self-hosted: taskworker).
        stop_timeout: Seconds a removed replica has to finish its current task.
    """
    logger = get_run_logger()
    host, sentry_host = load_block(host, SentryHost)
    policy = AutoscalePolicy(min_replicas, max_replicas, backlog_per_worker, cooldown_seconds)
    problems = policy.problems()
    if problems:
        raise ScalingError(f"{sentry_host.label}: {'; '.join(problems)} (nothing was changed)")
    service = checked_service(sentry_host, role, min_replicas, max_replicas)
    try:
        # a backup or an upgrade of the host comes first: this run gives way, the next decides
        with host_lock(sentry_host, "autoscale", wait_seconds=60, engine=True):
            backlog = sentry_host.queue_backlog()
            before = len(running(sentry_host.service_containers(service)))
            state = Variable.get(state_name(sentry_host), default=None) or {}
            since = time.time() - float(state.get("changed_at", 0))
            target, why = autoscale_target(before, backlog, policy, since)
            logger.info("%s: %s, %s", sentry_host.label, service, why)
            if target == before:
                results = [Result(f"{service} replicas", Status.ALREADY, why)]
            else:
                results = rescale(sentry_host, service, before, target, stop_timeout)
                results.insert(0, Result("decision", Status.DONE, why))
                Variable.set(
                    state_name(sentry_host),
                    {"changed_at": time.time(), "replicas": target, "backlog": backlog.count},
                    overwrite=True,
                )
    except LockTimeout as exc:
        logger.warning("autoscale skipped this run: %s", exc)
        return {"service": service, "skipped": str(exc)}
    results_artifact(
        f"autoscale-{host}", results, f"{service} on {sentry_host.label}: {before} -> {target}"
    )
    return {"service": service, "backlog": backlog.count, "backlog_capped": backlog.capped,
            "before": before, "after": target, "why": why}  # fmt: skip
