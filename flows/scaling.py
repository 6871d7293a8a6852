"""Worker scaling: run exactly N replicas of a layout's scalable service, verified.

Runbook, in order:
1. before anything changes: the role is one the layout scales (guide: `sentry-worker`;
   self-hosted: `taskworker`), `0 <= replicas <= max_workers` of the host block, the service
   exists in the host's compose project; else a clear error and nothing changed;
2. take the host lock;
3. `docker compose up -d --no-deps --no-recreate --scale SERVICE=N --timeout STOP SERVICE`: new
   replicas start, removed ones get SIGTERM and `stop_timeout` seconds to finish the task in hand
   (Celery's and the taskworker's warm shutdown) before they are killed;
4. wait until exactly N containers of the service run (and are healthy where the service has a
   healthcheck); a before/after table artifact.
The count is applied with `--scale`: a later `docker compose up -d` of the whole stack brings the
service back to its compose file's count (see README, "Worker scaling").
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.sentry_host import SentryHost
from flows.shared import Result, Status, host_lock, results_artifact


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
    argv = host.compose_argv(
        "up", "-d", "--no-deps", "--no-recreate",
        "--scale", f"{service}={replicas}", "--timeout", str(stop_timeout), service,
    )  # fmt: skip
    host.run(argv, timeout=stop_timeout + 600)
    deadline = time.monotonic() + 300
    while True:
        rows = host.service_containers(service)
        if len(running(rows)) == replicas and len(rows) == replicas:
            return rows
        if time.monotonic() > deadline:
            states = [f"{r.get('Name')} {r.get('State')} {r.get('Health', '')}" for r in rows]
            raise ScalingError(
                f"{host.label}: {service} did not settle at {replicas} running replicas within "
                f"300 s: {states}"
            )
        time.sleep(1)


@flow(name="scale-workers", log_prints=True)
def scale_workers(host: str, replicas: int, role: str = "worker", stop_timeout: int = 60) -> dict:
    """Run exactly `replicas` containers of the layout's scalable service, verified.

    Args:
        host: Name of the SentryHost block.
        replicas: How many replicas to run, 0..the block's max_workers.
        role: Which scalable role (guide: worker = sentry-worker; self-hosted: worker =
            taskworker).
        stop_timeout: Seconds a removed replica has to finish its current task before it is
            killed.
    """
    logger = get_run_logger()
    sentry_host = SentryHost.load(host)
    service = scalable_service(sentry_host, role)
    check_replicas(sentry_host, replicas)
    problems = sentry_host.name_problems()
    if problems:
        raise ScalingError(f"{sentry_host.label}: nothing was changed: {'; '.join(problems)}")
    with host_lock(sentry_host, "scale workers"):
        before = len(running(sentry_host.service_containers(service)))
        logger.info("%s: %s from %d to %d replicas", sentry_host.label, service, before, replicas)
        rows = apply_scale(sentry_host, service, replicas, stop_timeout)
    results = [
        Result(
            f"{service} replicas",
            Status.ALREADY if before == replicas else Status.DONE,
            f"{before} -> {replicas} running",
        ),
        *(
            Result(r.get("Name", "?"), Status.OK, f"{r.get('State')} {r.get('Health', '')}")
            for r in rows
        ),
    ]
    results_artifact(
        f"scale-{host}", results, f"{service} on {sentry_host.label}: {before} -> {replicas}"
    )
    return {"service": service, "before": before, "after": replicas}
