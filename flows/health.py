"""Health check of a Sentry host: is every part of the stack up and answering?

Runbook, in order: containers of every role running (and healthy where they have a healthcheck);
Sentry web answers `/_health/`; Postgres `pg_isready`; Redis PING; ClickHouse `SELECT 1`; enough
free disk where Docker keeps its data. Every check runs even when another fails; the flow then
fails naming each failed check.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from blocks.layouts import Role, StackLayout
from blocks.sentry_host import SentryHost
from blocks.ssh import RemoteCommandError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


class UnhealthyError(Exception):
    pass


# -- pure logic --------------------------------------------------------------------------------
def parse_ps(output: str) -> list[dict]:
    """`docker compose ps --format json`: NDJSON (compose >= 2.21) or one JSON array (older)."""
    text = output.strip()
    if not text:
        return []
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assess_containers(rows: list[dict], defined: set[str], layout: StackLayout) -> list[Check]:
    """One check per role the layout knows and the project defines (or requires)."""
    checks = []
    for role, service in layout.services.items():
        if service not in defined:
            if role in layout.required:
                checks.append(
                    Check(f"{role}: container", False, f"service {service} is not defined")
                )
            continue
        mine = [r for r in rows if r.get("Service") == service]
        if not mine:
            checks.append(Check(f"{role}: container", False, f"{service} has no container"))
            continue
        bad = [
            f"{r.get('Name')} {r.get('State')}" + (f"/{r['Health']}" if r.get("Health") else "")
            for r in mine
            if r.get("State") != "running" or r.get("Health") not in ("", None, "healthy")
        ]
        detail = "; ".join(bad) if bad else f"{len(mine)} running"
        checks.append(Check(f"{role}: container", not bad, detail))
    return checks


def assess_disk(df_output: str, min_free_gb: float) -> Check:
    """`df -P -B1 DIR` -> a check that at least `min_free_gb` is free."""
    fields = df_output.strip().splitlines()[-1].split()
    total, available = int(fields[1]), int(fields[3])
    free_gb = available / 1e9
    detail = f"{free_gb:.1f} GB free of {total / 1e9:.1f} GB on {fields[5]}"
    return Check("docker disk", free_gb >= min_free_gb, detail)


# -- tasks --------------------------------------------------------------------------------------
@task(cache_policy=NO_CACHE)
def check_containers(host: SentryHost) -> list[Check]:
    defined = set(host.run(host.services_argv(), timeout=60).text.split())
    rows = parse_ps(host.run(host.ps_argv(), timeout=60).text)
    return assess_containers(rows, defined, host.stack)


def probe_web(host: SentryHost) -> Check:
    """GET /_health/ on the host's web port through the SSH tunnel (plain function: pollable)."""
    name = f"{Role.WEB}: /_health/"
    with host.tunnel(host.web_port) as port:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_health/", timeout=15) as resp:
                body = resp.read(200).decode("utf-8", "replace").strip()
                return Check(name, resp.status == 200 and "ok" in body, f"{resp.status} {body}")
        except urllib.error.HTTPError as exc:
            return Check(name, False, f"{exc.code} {exc.read(200).decode('utf-8', 'replace')}")
        except OSError as exc:
            return Check(name, False, f"no answer on port {host.web_port}: {exc}")


@task(cache_policy=NO_CACHE)
def check_web(host: SentryHost) -> Check:
    return probe_web(host)


@task(cache_policy=NO_CACHE)
def check_service(host: SentryHost, role: Role) -> Check:
    name = {Role.POSTGRES: "pg_isready", Role.REDIS: "PING", Role.CLICKHOUSE: "SELECT 1"}[role]
    try:
        out = host.run(host.probe_argv(role), timeout=30).text.strip()
    except RemoteCommandError as exc:
        return Check(f"{role}: {name}", False, exc.stderr_tail.strip()[-300:] or str(exc))
    return Check(f"{role}: {name}", True, out[-200:])


@task(cache_policy=NO_CACHE)
def check_disk(host: SentryHost, min_free_gb: float) -> Check:
    return assess_disk(host.run(host.disk_argv(), timeout=30).text, min_free_gb)


# -- flow ---------------------------------------------------------------------------------------
@flow(name="health-check", log_prints=True)
def health_check(host: str, min_free_gb: float = 5.0) -> list[dict]:
    """Check every part of the Sentry stack on `host` (the name of a SentryHost block)."""
    logger = get_run_logger()
    sentry_host = SentryHost.load(host)
    futures = [
        check_containers.submit(sentry_host),
        check_web.submit(sentry_host),
        *(
            check_service.submit(sentry_host, role)
            for role in (Role.POSTGRES, Role.REDIS, Role.CLICKHOUSE)
            if role in sentry_host.stack.services
        ),
        check_disk.submit(sentry_host, min_free_gb),
    ]
    checks: list[Check] = []
    for future in futures:
        result = future.result()
        checks.extend(result if isinstance(result, list) else [result])
    rows = [
        {"check": c.name, "ok": "yes" if c.ok else "FAILED", "detail": c.detail} for c in checks
    ]
    failed = [c for c in checks if not c.ok]
    create_table_artifact(
        key=f"health-{artifact_slug(host)}",
        table=rows,
        description=f"Health of {sentry_host.label}: "
        + (f"{len(failed)} failed" if failed else "all checks passed"),
    )
    for c in checks:
        logger.info("%s %s: %s", "ok    " if c.ok else "FAILED", c.name, c.detail)
    if failed:
        names = ", ".join(f"{c.name} ({c.detail})" for c in failed)
        raise UnhealthyError(f"{sentry_host.label} is unhealthy: {names}")
    return [asdict(c) for c in checks]


def artifact_slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "host"


if __name__ == "__main__":
    import sys

    health_check(sys.argv[1] if len(sys.argv) > 1 else "sandbox")
