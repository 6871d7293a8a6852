"""Fleet runs: one operation over a list of host blocks, in parallel up to a bound.

Each host's operation is its own subflow run (its logs, artifacts, host lock and alerts are the
host's); one host's failure does not stop the others. A summary artifact lists every host with
its outcome; the fleet run fails at the end, naming each host that failed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.backup_store import BackupStore
from flows.backup import backup
from flows.health import health_check
from flows.shared import HOUR, Result, Status, failed, results_artifact

MAX_PARALLEL = 32  # the task runner's threads; `max_parallel` bounds what runs at once


class FleetError(Exception):
    pass


def describe(outcome: Any) -> str:
    if isinstance(outcome, dict) and "backup_id" in outcome:
        return f"{outcome['backup_id']}, {outcome['bytes'] / 1e6:.1f} MB"
    if isinstance(outcome, list):
        return f"{len(outcome)} checks passed"
    return "done"


@task(cache_policy=NO_CACHE, task_run_name="{operation_name}-{host}")
def on_host(
    operation: Callable[..., Any],
    operation_name: str,
    host: str,
    gate: threading.BoundedSemaphore,
    params: dict,
) -> Result:
    """The operation as a subflow for one host; its failure is this host's row, not an error."""
    with gate:
        started = time.monotonic()
        try:
            outcome = operation(host=host, **params)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"[:500]
            return Result(host, Status.FAILED, detail, round(time.monotonic() - started, 1))
        return Result(host, Status.DONE, describe(outcome), round(time.monotonic() - started, 1))


def over_fleet(
    operation: Callable[..., Any], hosts: list[str], max_parallel: int, key: str, params: dict
) -> list[dict]:
    if not hosts:
        raise ValueError("hosts: the list is empty; name the SentryHost blocks to run over")
    if len(set(hosts)) != len(hosts):
        raise ValueError(f"hosts: {sorted({h for h in hosts if hosts.count(h) > 1})} listed twice")
    if not 1 <= max_parallel <= MAX_PARALLEL:
        raise ValueError(f"max_parallel: {max_parallel} is not within 1..{MAX_PARALLEL}")
    gate = threading.BoundedSemaphore(max_parallel)
    name = operation.name  # type: ignore[attr-defined]
    futures = [on_host.submit(operation, name, h, gate, params) for h in hosts]
    results = [f.result() for f in futures]
    bad = failed(results)
    results_artifact(
        key,
        results,
        f"{name} over {len(hosts)} hosts: {len(hosts) - len(bad)} done, {len(bad)} failed",
    )
    for r in results:
        get_run_logger().info("%-6s %s: %s (%.1f s)", r.status, r.name, r.detail, r.seconds)
    if bad:
        raise FleetError(
            f"{name} failed on {len(bad)} of {len(hosts)} hosts: "
            + "; ".join(f"{r.name}: {r.detail}" for r in bad)
        )
    return [r.row() for r in results]


@flow(
    name="fleet-backup",
    flow_run_name="fleet-backup-{store}",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL),
    timeout_seconds=24 * HOUR,
)
def fleet_backup(hosts: list[str], store: BackupStore | str, max_parallel: int = 4) -> list[dict]:
    """Back up every host of the list to the store (each its own backup run), up to max_parallel
    at once; fails at the end naming each host that failed.

    Args:
        hosts: Names of the SentryHost blocks to back up.
        store: The BackupStore block (or its name) they back up to.
        max_parallel: How many backups run at once (each loads its host and the store's link).
    """
    return over_fleet(backup, hosts, max_parallel, f"fleet-backup-{store}", {"store": store})


@flow(
    name="fleet-health-check",
    flow_run_name="fleet-health-check-{store}",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL),
    timeout_seconds=2 * HOUR,
)
def fleet_health_check(
    hosts: list[str], store: BackupStore | str, max_parallel: int = 8, min_free_gb: float = 5.0
) -> list[dict]:
    """Health-check every host of the list (each its own health-check run), up to max_parallel at
    once; fails at the end naming each unhealthy or unreachable host.

    Args:
        hosts: Names of the SentryHost blocks to check.
        store: The BackupStore block (or its name) the hosts back up to (names the fleet).
        max_parallel: How many checks run at once.
        min_free_gb: Passed to each health check: the least free space on Docker's disk and on
            every data volume (GB).
    """
    return over_fleet(
        health_check,
        hosts,
        max_parallel,
        f"fleet-health-check-{store}",
        {"min_free_gb": min_free_gb},
    )
