"""Bootstrap a Sentry host from nothing, idempotently (the guide's install, as a flow).

Runbook, in the order getsentry/self-hosted's install/ runs it:
1. preflight: Docker and Compose versions; CPU, memory, disk against the requirements (fail
   below the minimum unless force, warn below the recommended size); the web port is free;
2. put the compose stack on the host (SFTP) when it has none;
3. the secret key: generated once, kept forever after; `.env` written 0600;
4. start the dependencies (postgres, redis, clickhouse, ...) and wait until healthy;
5. migrations: `sentry upgrade --noinput`;
6. the superuser (an existing one is not an error);
7. start web, worker, cron; 8. verify `/_health/`.
A second run changes nothing and says "already done" for each step. Secrets (secret key, admin
password, Postgres password) never appear in argv, logs, parameters or artifacts.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.blocks.system import Secret
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from blocks.layouts import Role
from blocks.sentry_host import SentryHost
from blocks.ssh import RemoteCommandError
from flows.health import artifact_slug, check_web

# actions are done / already done; checks are ok / warning; either can have failed
DONE, ALREADY, OK, FAILED, WARNING = "done", "already done", "ok", "failed", "warning"


class HostRequirements(BaseModel):
    """The guide's minimum and a recommended production size; lower them only for sandboxes."""

    min_cpus: int = Field(default=4, description="Fail below this many CPU cores.")
    min_memory_gb: float = Field(default=8, description="Fail below this much RAM (GB).")
    min_disk_gb: float = Field(default=20, description="Fail below this much free disk (GB).")
    recommended_cpus: int = Field(default=8, description="Warn below this many cores.")
    recommended_memory_gb: float = Field(default=16, description="Warn below this RAM (GB).")
    recommended_disk_gb: float = Field(default=100, description="Warn below this free disk (GB).")


@dataclass(frozen=True)
class Step:
    step: str
    status: str
    detail: str


class BootstrapError(Exception):
    pass


# -- pure logic --------------------------------------------------------------------------------
def parse_env(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key.strip()] = value
    return env


def render_env(current: str, wanted: dict[str, str]) -> str:
    """`current` .env text with `wanted` keys set: existing lines and order kept, new keys last."""
    lines, seen = [], set()
    for line in current.splitlines():
        key = line.partition("=")[0].strip()
        if key in wanted and not line.lstrip().startswith("#"):
            lines.append(f"{key}={wanted[key]}")
            seen.add(key)
        else:
            lines.append(line)
    lines += [f"{k}={v}" for k, v in wanted.items() if k not in seen]
    return "\n".join(lines) + "\n"


def assess_resources(cpus: int, memory_gb: float, disk_gb: float, req: HostRequirements):
    """-> [(what, status, detail)]: FAILED below the minimum, WARNING below recommended."""
    out = []
    for what, have, low, rec, unit in (
        ("cpu", cpus, req.min_cpus, req.recommended_cpus, "cores"),
        ("memory", memory_gb, req.min_memory_gb, req.recommended_memory_gb, "GB"),
        ("disk", disk_gb, req.min_disk_gb, req.recommended_disk_gb, "GB free"),
    ):
        have_s = f"{have:g} {unit}" if isinstance(have, int) else f"{have:.1f} {unit}"
        if have < low:
            out.append((what, FAILED, f"{have_s}, the minimum is {low:g}"))
        elif have < rec:
            out.append((what, WARNING, f"{have_s}, below the recommended {rec:g}"))
        else:
            out.append((what, OK, have_s))
    return out


# -- tasks --------------------------------------------------------------------------------------
@task(cache_policy=NO_CACHE)
def preflight(
    host: SentryHost, requirements: HostRequirements, force: bool, ports: list[int]
) -> list[Step]:
    facts = host.facts()
    steps = [Step("docker", OK, f"engine {facts.docker}, compose {facts.compose}")]
    resources = assess_resources(facts.cpus, facts.memory_gb, facts.disk_free_gb, requirements)
    for what, status, detail in resources:
        if status == FAILED and force:
            status, detail = WARNING, detail + " (force=True)"
        steps.append(Step(what, status, detail))
    running = set(host.run(host.compose_argv("ps", "-q"), timeout=60, check=False).text.split())
    if not running:  # our stack holds its own ports once it runs
        taken = facts.listening & set(ports)
        steps.append(
            Step(
                "ports",
                FAILED if taken else OK,
                f"in use: {sorted(taken)}" if taken else f"free: {sorted(ports)}",
            )
        )
    return steps


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def put_stack(host: SentryHost, stack_files: str | None) -> Step:
    compose_file = f"{host.project_dir}/docker-compose.yml"
    if host.exists(compose_file):
        return Step("stack files", ALREADY, f"{compose_file} exists")
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
    return Step("stack files", DONE, f"uploaded {len(files)} files from {stack_files}")


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def write_env(host: SentryHost, settings: dict[str, str]) -> Step:
    """The secret key is generated here once and never leaves the host's .env again."""
    stack, path = host.stack, f"{host.project_dir}/.env"
    if stack.secret_key_env is None:
        raise BootstrapError(
            f"layout {stack.name!r} keeps its secret key in sentry/config.yml; "
            "bootstrap it with its own ./install.sh"
        )
    current = host.get(path).decode() if host.exists(path) else ""
    wanted = dict(settings)
    if stack.postgres_password_env and host.postgres_password is not None:
        wanted[stack.postgres_password_env] = host.postgres_password.get_secret_value()
    have = parse_env(current)
    key_note = "secret key kept"
    if not have.get(stack.secret_key_env):
        wanted[stack.secret_key_env] = secrets.token_urlsafe(50)
        key_note = "secret key generated"
    rendered = render_env(current, wanted)
    if rendered == current:
        mode = host.transport.stat_mode(path)
        if mode & 0o077:
            host.chmod(path, 0o600)
            return Step(".env", DONE, f"{key_note}; mode {mode:o} -> 600")
        return Step(".env", ALREADY, f"{key_note}; nothing to change")
    host.put(path, rendered.encode(), mode=0o600)
    changed = sorted(k for k in wanted if have.get(k) != wanted[k])
    return Step(".env", DONE, f"{key_note}; wrote {len(changed)} settings (mode 600)")


def _running(host: SentryHost) -> set[str]:
    out = host.run(host.compose_argv("ps", "--status", "running", "--services"), timeout=60)
    return set(out.text.split())


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def start_services(host: SentryHost, roles: list[Role], name: str) -> Step:
    defined = set(host.run(host.services_argv(), timeout=60).text.split())
    services = [host.stack.service(r) for r in roles if host.stack.services.get(r) in defined]
    before = _running(host)
    host.run(host.compose_argv("up", "-d", "--wait", *services), timeout=600)
    if set(services) <= before:
        return Step(name, ALREADY, f"running: {', '.join(services)}")
    return Step(name, DONE, f"started and healthy: {', '.join(services)}")


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def migrate(host: SentryHost, web_already_healthy: bool) -> Step:
    if web_already_healthy:
        return Step("migrations", ALREADY, "web is up and healthy on this version")
    out = host.run(
        host.compose_argv(
            "run", "--rm", "-T", host.stack.service(Role.WEB), "upgrade", "--noinput"
        ),
        timeout=3600,
    )
    return Step("migrations", DONE, out.text.strip().splitlines()[-1][-200:] if out.text else "")


@task(cache_policy=NO_CACHE)
def create_superuser(host: SentryHost, email: str, password_secret: str) -> Step:
    # The password goes on stdin to the command's own prompt, never into argv.
    password = Secret.load(password_secret).get()
    argv = host.compose_argv(
        "run",
        "--rm",
        "-T",
        host.stack.service(Role.WEB),
        "createuser",
        "--email",
        email,
        "--superuser",
    )
    try:
        host.run(argv, stdin=f"{password}\n{password}\n".encode(), timeout=600)
    except RemoteCommandError as exc:
        if "exists" in exc.stderr_tail:
            return Step("superuser", ALREADY, f"{email} exists")
        raise
    return Step("superuser", DONE, f"{email} created")


# -- flow ---------------------------------------------------------------------------------------
@flow(name="bootstrap", log_prints=True)
def bootstrap(
    host: str,
    admin_email: str,
    admin_password_secret: str,
    stack_files: str | None = None,
    settings: dict[str, str] | None = None,
    requirements: HostRequirements | None = None,
    force: bool = False,
    extra_ports: list[int] | None = None,
) -> list[dict]:
    """Bring a Sentry host from nothing to healthy; safe to run again.

    host: SentryHost block. admin_password_secret: name of a Prefect Secret block.
    stack_files: local directory with docker-compose.yml (+ config) to upload when the host has
    none. settings: non-secret .env values (image versions, ports). requirements: the resource
    thresholds (the guide's minimum by default). force: go on below the minimum.
    extra_ports: host ports besides web_port that must be free on a first bootstrap.
    """
    logger = get_run_logger()
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", admin_email or ""):
        raise BootstrapError(f"admin_email={admin_email!r} is not an email address")
    Secret.load(admin_password_secret)  # fails early, naming the block, if it does not exist
    sentry_host = SentryHost.load(host)
    steps = preflight(
        sentry_host,
        requirements or HostRequirements(),
        force,
        [sentry_host.web_port, *(extra_ports or [])],
    )
    failed = [s for s in steps if s.status == FAILED]
    if failed:
        report(host, sentry_host, steps)
        raise BootstrapError(
            f"{sentry_host.label}: preflight failed, nothing was changed: "
            + "; ".join(f"{s.step}: {s.detail}" for s in failed)
        )
    web_before = check_web(sentry_host).ok if _running(sentry_host) else False
    try:
        steps.append(put_stack(sentry_host, stack_files))
        steps.append(write_env(sentry_host, settings or {}))
        steps.append(
            start_services(sentry_host, list(sentry_host.stack.dependencies), "dependencies")
        )
        steps.append(migrate(sentry_host, web_before))
        steps.append(create_superuser(sentry_host, admin_email, admin_password_secret))
        steps.append(start_services(sentry_host, [Role.WEB, Role.WORKER, Role.CRON], "services"))
        health = check_web(sentry_host)
        steps.append(Step("/_health/", OK if health.ok else FAILED, health.detail))
    except Exception as exc:
        steps.append(Step("(stopped)", FAILED, f"{exc.__class__.__name__}: {exc}"[:300]))
        report(host, sentry_host, steps)
        raise
    report(host, sentry_host, steps)
    if steps[-1].status == FAILED:
        raise BootstrapError(f"{sentry_host.label}: /_health/ failed: {steps[-1].detail}")
    changed = [s.step for s in steps if s.status == DONE]
    logger.info(
        "bootstrap of %s: %s",
        sentry_host.label,
        f"changed {', '.join(changed)}" if changed else "nothing to do",
    )
    return [asdict(s) for s in steps]


def report(host: str, sentry_host: SentryHost, steps: list[Step]) -> None:
    create_table_artifact(
        key=f"bootstrap-{artifact_slug(host)}",
        table=[asdict(s) for s in steps],
        description=f"Bootstrap of {sentry_host.label}",
    )


if __name__ == "__main__":
    import sys

    bootstrap(sys.argv[1], sys.argv[2], sys.argv[3])
