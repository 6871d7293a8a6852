"""Bootstrap a Sentry host from nothing, idempotently (the guide's install, as a flow).

Runbook, in the order getsentry/self-hosted's install/ runs it:
1. preflight: Docker and Compose versions; CPU, memory, disk against the requirements (fail
   below the minimum unless force, warn below the recommended size); the web port is free;
2. put the compose stack on the host (SFTP) when it has none;
3. the secret key: generated once, kept forever after; `.env` written 0600;
4. start the dependencies (postgres, redis, clickhouse, ...) and wait until healthy;
5. migrations: Snuba's (`bootstrap --force`, where the stack has Snuba), then
   `sentry upgrade --noinput`;
6. the superuser (an existing one is not an error);
7. start snuba, relay, web, worker, cron; 8. verify `/_health/`.
A second run changes nothing and says "already done" for each step. Secrets (secret key, admin
password, Postgres password) never appear in argv, logs, parameters or artifacts.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.blocks.system import Secret
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from blocks import clickhouse
from blocks.layouts import Role
from blocks.sentry_host import SentryHost
from flows.shared import (
    HOUR,
    Result,
    Status,
    check_web,
    failed,
    host_lock,
    load_block,
    results_artifact,
    summary,
)


class HostRequirements(BaseModel):
    """The guide's minimum and a recommended production size; lower them only for sandboxes."""

    min_cpus: int = Field(default=4, description="Fail below this many CPU cores.")
    min_memory_gb: float = Field(default=8, description="Fail below this much RAM (GB).")
    min_disk_gb: float = Field(default=20, description="Fail below this much free disk (GB).")
    recommended_cpus: int = Field(default=8, description="Warn below this many cores.")
    recommended_memory_gb: float = Field(default=16, description="Warn below this RAM (GB).")
    recommended_disk_gb: float = Field(default=100, description="Warn below this free disk (GB).")


class BootstrapError(Exception):
    pass


# -- pure logic --------------------------------------------------------------------------------
def assess_resources(
    cpus: int, memory_gb: float, disk_gb: float, req: HostRequirements
) -> list[Result]:
    """FAILED below the minimum, WARNING below the recommended size, else OK."""
    out = []
    for what, have, low, rec, unit in (
        ("cpu", cpus, req.min_cpus, req.recommended_cpus, "cores"),
        ("memory", memory_gb, req.min_memory_gb, req.recommended_memory_gb, "GB"),
        ("disk", disk_gb, req.min_disk_gb, req.recommended_disk_gb, "GB free"),
    ):
        have_s = f"{have:g} {unit}" if isinstance(have, int) else f"{have:.1f} {unit}"
        if have < low:
            out.append(Result(what, Status.FAILED, f"{have_s}, the minimum is {low:g}"))
        elif have < rec:
            out.append(Result(what, Status.WARNING, f"{have_s}, below the recommended {rec:g}"))
        else:
            out.append(Result(what, Status.OK, have_s))
    return out


# -- tasks --------------------------------------------------------------------------------------
@task(cache_policy=NO_CACHE, timeout_seconds=300)
def preflight(
    host: SentryHost, requirements: HostRequirements, force: bool, ports: list[int]
) -> list[Result]:
    facts = host.facts()
    steps = [Result("docker", Status.OK, f"engine {facts.docker}, compose {facts.compose}")]
    for result in assess_resources(facts.cpus, facts.memory_gb, facts.disk_free_gb, requirements):
        if result.status is Status.FAILED and force:
            result = Result(result.name, Status.WARNING, result.detail + " (force=True)")
        steps.append(result)
    if host.exists(f"{host.project_dir}/docker-compose.yml"):  # names, before anything is written
        problems = host.name_problems()
        steps += [Result("names", Status.FAILED, p) for p in problems] or [
            Result("names", Status.OK, f"project {host.project}: every role's service found")
        ]
    if not host.project_containers():  # our stack holds its own ports once it runs
        taken = facts.listening & set(ports)
        steps.append(
            Result.check(
                "ports",
                not taken,
                f"in use: {sorted(taken)}" if taken else f"free: {sorted(ports)}",
            )
        )
    return steps


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, timeout_seconds=600)
def put_stack(host: SentryHost, stack_files: str | None) -> Result:
    compose_file = f"{host.project_dir}/docker-compose.yml"
    if host.exists(compose_file):
        return Result("stack files", Status.ALREADY, f"{compose_file} exists")
    if not stack_files:
        raise BootstrapError(
            f"{host.label}: {compose_file} does not exist and no stack_files "
            "directory was given to upload"
        )
    source = Path(stack_files)
    files = sorted(p for p in source.rglob("*") if p.is_file())
    if not any(p.name == "docker-compose.yml" for p in files):
        raise BootstrapError(f"stack_files={stack_files!r} has no docker-compose.yml")
    dirs = sorted({f"{host.project_dir}/{p.parent.relative_to(source)}" for p in files})
    host.makedirs(*dirs)
    for path in files:
        host.put(f"{host.project_dir}/{path.relative_to(source)}", path.read_bytes(), mode=0o644)
    problems = host.name_problems()
    if problems:
        raise BootstrapError(f"{host.label}: the uploaded stack: {'; '.join(problems)}")
    return Result("stack files", Status.DONE, f"uploaded {len(files)} files from {stack_files}")


def new_secret_key() -> str:
    return secrets.token_urlsafe(50)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, timeout_seconds=120)
def write_env(host: SentryHost, settings: dict[str, str]) -> Result:
    """The secret key is generated here once and never leaves the host's .env again; an existing
    secret key or database password is never changed."""
    stack, path = host.stack, f"{host.project_dir}/.env"
    if stack.secret_key_env is None:
        raise BootstrapError(
            f"layout {stack.name!r} keeps its secret key in sentry/config.yml; "
            "bootstrap it with its own ./install.sh"
        )
    current = host.read_env()
    wanted = dict(settings)
    if stack.postgres_password_env and host.postgres_password is not None:
        wanted[stack.postgres_password_env] = host.postgres_password.get_secret_value()
    kept = {
        stack.secret_key_env,
        *([stack.postgres_password_env] * bool(stack.postgres_password_env)),
    }
    env = host.settle_env(current, wanted, kept, {stack.secret_key_env: new_secret_key})
    if env.conflicts:
        raise BootstrapError(
            f"{host.label}: {path} already sets {', '.join(env.conflicts)} to another value than "
            "this run would write; refusing to change a secret that existing data depends on. "
            "Put the existing value in the block (or settings), or remove it from .env on purpose"
        )
    key_note = "secret key generated" if env.generated else "secret key kept"
    rendered = env.text
    if rendered == current:
        mode = host.file_mode(path)
        if mode & 0o077:
            host.chmod(path, 0o600)
            return Result(".env", Status.DONE, f"{key_note}; mode {mode:o} -> 600")
        return Result(".env", Status.ALREADY, f"{key_note}; nothing to change")
    host.put(path, rendered.encode(), mode=0o600)
    return Result(".env", Status.DONE, f"{key_note}; wrote {len(env.changed)} settings (mode 600)")


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10, timeout_seconds=900)
def start_services(host: SentryHost, roles: list[Role], name: str) -> Result:
    defined = host.defined_services()
    services = [host.stack.service(r) for r in roles if host.stack.services.get(r) in defined]
    before = host.running_services()
    host.compose_up(*services, wait=True)
    if set(services) <= before:
        return Result(name, Status.ALREADY, f"running: {', '.join(services)}")
    return Result(name, Status.DONE, f"started and healthy: {', '.join(services)}")


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def migrate_snuba(host: SentryHost) -> Result:
    """Snuba's tables before Sentry's migrations (self-hosted's install order), where the stack
    has Snuba; done when it created tables, already when all were there."""
    if host.stack.services.get(Role.SNUBA) not in host.defined_services():
        return Result("snuba migrations", Status.WARNING, "the stack has no Snuba service: it "
                      "cannot ingest (the health check says what to add)")  # fmt: skip
    before = clickhouse.table_names(host)
    out = host.snuba_bootstrap()
    created = sorted(clickhouse.table_names(host) - before)
    last = out.strip().splitlines()[-1][-200:] if out.strip() else ""
    if created:
        return Result("snuba migrations", Status.DONE, f"{len(created)} tables created; {last}")
    return Result("snuba migrations", Status.ALREADY, f"every table there; {last}")


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def migrate(host: SentryHost) -> Result:
    """Always run: health is no proof of a migrated schema, and `upgrade` runs only what is
    pending."""
    applied, out = host.upgrade()
    last = out.strip().splitlines()[-1][-200:] if out.strip() else ""
    return Result("migrations", Status.DONE if applied else Status.ALREADY, last)


@task(cache_policy=NO_CACHE, timeout_seconds=900)
def create_superuser(host: SentryHost, email: str, password: Secret) -> Result:
    created = host.create_superuser(email, password.get())
    if created:
        return Result("superuser", Status.DONE, f"{email} created")
    return Result("superuser", Status.ALREADY, f"{email} exists")


# -- flow ---------------------------------------------------------------------------------------
@flow(
    name="bootstrap",
    flow_run_name="bootstrap-{host}",
    log_prints=True,
    persist_result=True,
    timeout_seconds=6 * HOUR,
)
def bootstrap(
    host: SentryHost | str,
    admin_email: str,
    admin_password_secret: Secret | str,
    stack_files: str | None = None,
    settings: dict[str, str] | None = None,
    requirements: HostRequirements | None = None,
    force: bool = False,
    extra_ports: list[int] | None = None,
) -> list[dict]:
    """Bring a Sentry host in the guide's layout from nothing to healthy; safe to run again.

    Args:
        host: The Sentry host: a SentryHost block, or its name.
        admin_email: Email of the superuser to create (kept if it exists).
        admin_password_secret: The Prefect Secret block holding the admin password, or its
            name.
        stack_files: Local directory with docker-compose.yml (+ config) to upload when the host
            has none.
        settings: Non-secret .env values (image versions, ports).
        requirements: Resource thresholds (the guide's minimum by default).
        force: Go on below the minimum size.
        extra_ports: Host ports besides web_port that must be free on a first bootstrap.
    """
    logger = get_run_logger()
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", admin_email or ""):
        raise BootstrapError(f"admin_email={admin_email!r} is not an email address")
    # loaded first: a missing block fails the run, naming it, before anything changes
    _, password = load_block(admin_password_secret, Secret)
    host, sentry_host = load_block(host, SentryHost)
    if sentry_host.stack.secret_key_env is None:
        raise BootstrapError(
            f"{sentry_host.label}: layout {sentry_host.layout!r} keeps its secret key in "
            "sentry/config.yml and is installed by its own ./install.sh; run that instead "
            "(nothing was changed)"
        )
    steps = preflight(
        sentry_host,
        requirements or HostRequirements(),
        force,
        [sentry_host.web_port, *(extra_ports or [])],
    )
    if failed(steps):
        report(host, sentry_host, steps)
        raise BootstrapError(
            f"{sentry_host.label}: preflight failed, nothing was changed: {summary(steps)}"
        )
    with host_lock(sentry_host, "bootstrap"):
        try:
            steps.append(put_stack(sentry_host, stack_files))
            steps.append(write_env(sentry_host, settings or {}))
            steps.append(
                start_services(sentry_host, list(sentry_host.stack.dependencies), "dependencies")
            )
            steps.append(migrate_snuba(sentry_host))
            steps.append(migrate(sentry_host))
            steps.append(create_superuser(sentry_host, admin_email, password))
            services = [Role.SNUBA, Role.RELAY, Role.WEB, Role.WORKER, Role.CRON]
            steps.append(start_services(sentry_host, services, "services"))
            steps += check_web(sentry_host)
        except Exception as exc:
            detail = f"{exc.__class__.__name__}: {exc}"[:300]
            steps.append(Result("(stopped)", Status.FAILED, detail))
            report(host, sentry_host, steps)
            raise
    report(host, sentry_host, steps)
    if failed(steps):
        raise BootstrapError(f"{sentry_host.label}: not healthy after bootstrap: {summary(steps)}")
    changed = [s.name for s in steps if s.status is Status.DONE]
    logger.info(
        "bootstrap of %s: %s",
        sentry_host.label,
        f"changed {', '.join(changed)}" if changed else "nothing to do",
    )
    return [s.row() for s in steps]


def report(host: SentryHost | str, sentry_host: SentryHost, steps: list[Result]) -> None:
    results_artifact(f"bootstrap-{host}", steps, f"Bootstrap of {sentry_host.label}")


if __name__ == "__main__":
    import sys

    bootstrap(sys.argv[1], sys.argv[2], sys.argv[3])
