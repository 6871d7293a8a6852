"""A health-gated rolling restart of compose services (what an upgrade does to web, and to the
services after it): new replicas beside the old, each batch waited for (healthy, or running
STABLE_SECONDS without a healthcheck) and answering before old ones stop; a container that exits
or turns unhealthy fails the step at once, with its last lines."""

from __future__ import annotations

import time

from blocks.host_docker import NotReadyError
from blocks.host_sentry import rolling_problem
from blocks.result import Result, Status
from blocks.sentry_host import SentryHost


class RolloutError(Exception):
    pass


def roll(host: SentryHost, web: str, batch_size: int, timeout: float) -> list[Result]:
    """Replace a service's containers batch by batch: new ones started beside the old (compose
    `--scale n+b --no-recreate`), gated on their health, then the batch of old ones stopped.
    A service that cannot have a second replica (fixed port or name) is recreated in place."""
    old = host.running_ids(web)
    problem = rolling_problem(host.compose_config()["services"][web])
    if problem or not old:
        return [recreate_in_place(host, web, problem, timeout)]
    batches = [old[first : first + batch_size] for first in range(0, len(old), batch_size)]
    return [
        replace_batch(host, web, number, batch, len(old), timeout)
        for number, batch in enumerate(batches, 1)
    ]


def recreate_in_place(host: SentryHost, web: str, problem: str | None, timeout: float) -> Result:
    started = time.monotonic()
    host.compose_up(web, no_deps=True)
    wait_ready(host, host.running_ids(web), timeout, f"{web} recreated in place")
    return Result(
        f"restart {web}",
        Status.WARNING if problem else Status.DONE,
        f"recreated in place ({problem or 'it was not running'})",
        round(time.monotonic() - started, 1),
    )


def replace_batch(
    host: SentryHost, web: str, number: int, batch: list[str], n: int, timeout: float
) -> Result:
    """New replicas beside the `n` old ones, healthy and answering, then `batch` of the old
    ones stopped; new ones that fail are removed (the old batch still serves)."""
    begun = time.monotonic()
    known = {c["ID"] for c in host.service_containers(web)}
    host.compose_up(web, no_deps=True, no_recreate=True, scale={web: n + len(batch)})
    new = [i for i in host.running_ids(web) if i not in known]
    if not new:
        raise RolloutError(f"{host.label}: no new {web} container started for batch {number}")
    try:
        wait_ready(host, new, timeout, f"{web} batch {number}")
        status, body = host.web_request("/_health/", timeout=15)  # and the service answers
        if status != 200:
            raise RolloutError(f"{host.label}: {web} batch {number}: /_health/ {status} "
                               f"{body[:200]!r} with the new replicas up")  # fmt: skip
    except RolloutError:
        host.remove_containers(new, stop_timeout=10)  # the old batch still serves
        raise
    host.remove_containers(batch)
    return Result(
        f"{web} batch {number}",
        Status.DONE,
        f"{len(new)} new replica(s) healthy, then {len(batch)} old stopped",
        round(time.monotonic() - begun, 1),
    )


def recreate(host: SentryHost, others: dict[str, int], timeout: float, name: str) -> Result:
    """Services recreated (where their configuration changed) with these replica counts, then
    waited for until ready; workers finish their task in hand (warm shutdown)."""
    if not others:
        return Result(name, Status.ALREADY, "none")
    started = time.monotonic()
    host.up_services(others)
    ids = [i for s in others for i in host.running_ids(s)]
    wait_ready(host, ids, timeout, ", ".join(others))
    return Result(
        name,
        Status.DONE,
        ", ".join(f"{s} x{n}" for s, n in others.items()),
        round(time.monotonic() - started, 1),
    )


def wait_ready(host: SentryHost, ids: list[str], timeout: float, what: str) -> None:
    """`SentryHost.wait_ready`, its failure a RolloutError (the upgrade rolls back on it)."""
    try:
        host.wait_ready(ids, timeout, what)
    except NotReadyError as failed:
        raise RolloutError(str(failed)) from failed
