"""Sentry itself, the way an operator talks to it: its CLI in the stack's containers, detached jobs,
its version and images, the queue backlog, the probes of its data services.

A part of `SentryHost` (blocks/sentry_host.py): its methods use the block's fields and its one
transport."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from blocks import commands
from blocks.layouts import Role
from blocks.ssh import RemoteCommandError

if TYPE_CHECKING:
    from blocks.sentry_host import SentryHost  # noqa: F401
from blocks.host_compose import parse_ps  # noqa: F401

# Sums the lengths of Redis lists (KEYS) in one round trip; a missing list counts 0.
COUNT_LISTS = "local n = 0 for _, k in ipairs(KEYS) do n = n + redis.call('LLEN', k) end return n"
# 26.x taskbroker's store (getsentry/taskbroker, inflight_activation_store): status as text
PENDING_ACTIVATIONS = "SELECT count(*) FROM inflight_taskactivations WHERE status = 'Pending'"
# starts a detached job (blocks/jobs.py): (container name, labels) -> argv
JobStarter = Callable[[str, dict[str, str]], Sequence[str]]


class SentryVerbs:
    """Sentry itself, the way an operator talks to it."""

    def probe_argv(self, role: Role) -> list[str]:
        """A cheap liveness probe of a data service, run inside its container."""
        stack = self.stack
        if role is Role.POSTGRES:
            # without a port, pg_isready uses the container's own PGPORT (or 5432), like the
            # stack's healthcheck
            port = ["-p", str(self.postgres_port)] if self.postgres_port else []
            return self.exec_argv(
                role,
                "pg_isready",
                "-h",
                "127.0.0.1",
                *port,
                "-U",
                stack.postgres_user,
                "-d",
                stack.postgres_db,
            )
        if role is Role.REDIS:
            return self.exec_argv(role, "redis-cli", "-p", str(self.redis_port), "ping")
        if role is Role.CLICKHOUSE:
            return self.exec_argv(
                role,
                "clickhouse-client",
                "--port",
                str(self.clickhouse_port),
                "--query",
                "SELECT 1",
            )
        raise ValueError(f"no probe for role {role}")

    def probe(self, role: Role) -> str:
        """A data service's liveness probe (pg_isready, PING, SELECT 1); its output. Raises
        RemoteCommandError when it fails."""
        return self.run(self.probe_argv(role), timeout=30).text.strip()

    def sentry_version_argv(self, role: Role = Role.WEB) -> list[str]:
        return self.exec_argv(role, "sentry", "--version")

    def one_off_argv(self, role: Role, *args: str) -> list[str]:
        """A one-off command in a new container of `role`'s service (its image, config)."""
        return self.compose_argv("run", "--rm", "-T", self.stack.service(role), *args)

    def sentry_argv(self, *args: str) -> list[str]:
        """A one-off `sentry <args>` in a new container of the web service."""
        return self.one_off_argv(Role.WEB, *args)

    def sentry_job_argv(
        self, name: str, labels: dict[str, str], role: Role, *args: str
    ) -> list[str]:
        """`sentry <args>` detached in a new container of `role`'s service, named `name` (see
        blocks/jobs.py). A service whose entrypoint is not Sentry's (self-hosted's cron-driven
        cleanup service) gets the layout's Sentry entrypoint back."""
        entry = (
            ["--entrypoint", self.stack.sentry_entrypoint] if self.stack.sentry_entrypoint else []
        )
        return self.compose_argv(
            "run",
            "-d",
            "--name",
            name,
            *commands.labels(labels),
            *entry,
            self.stack.service(role),
            *args,
        )

    def sentry_job(self, role: Role, *args: str) -> JobStarter:
        """How blocks/jobs.py starts `sentry <args>` detached in a container of `role`."""
        return lambda name, labels: self.sentry_job_argv(name, labels, role, *args)

    def install_job_argv(self, name: str, labels: dict[str, str], *args: str) -> list[str]:
        """self-hosted's `./install.sh <args>`, detached (blocks/jobs.py) in a container of the
        tool image (bash, docker CLI, compose) driving the host's engine through its socket, the
        project dir mounted at its own path so compose's bind mounts resolve on the host. No
        stdin: a prompt (a missing non-interactive flag) fails instead of waiting."""
        d = self.project_dir
        tags = commands.labels(labels)
        return ["docker", "run", "-d", "--name", name, *tags, "--network", "host",
                "-v", f"{self.docker_socket}:/var/run/docker.sock", "-v", f"{d}:{d}", "-w", d,
                *self.pull_argv(), "--entrypoint", "bash", self.tool_image, "./install.sh",
                *args]  # fmt: skip

    def install_job(self, *args: str) -> JobStarter:
        """How blocks/jobs.py starts self-hosted's `./install.sh <args>` detached."""
        return lambda name, labels: self.install_job_argv(name, labels, *args)

    def snuba_bootstrap(self, timeout: float = 3600) -> str:
        """Snuba's migrations, as self-hosted's install.sh runs them before Sentry's
        (install/bootstrap-snuba.sh: `docker compose run --rm snuba-api bootstrap --force`;
        idempotent: what exists is kept); its output."""
        return self.run(self.one_off_argv(Role.SNUBA, "bootstrap", "--force"), timeout=timeout).text

    def upgrade(self, timeout: float = 3600) -> tuple[bool, str]:
        """`sentry upgrade --noinput` (idempotent: pending migrations only) -> (applied, log)."""
        out = self.run(self.sentry_argv("upgrade", "--noinput"), timeout=timeout).text
        return migrations_applied(out), out

    def create_superuser(self, email: str, password: str) -> bool:
        """`sentry createuser --superuser`; True when created, False when the user exists.

        The password goes to the command's own prompt on stdin, never into argv. Current Sentry
        reports an existing user on stdout and exits 0; older releases exited non-zero.
        """
        argv = self.sentry_argv("createuser", "--email", email, "--superuser")
        result = self.run(argv, stdin=f"{password}\n{password}\n".encode(), check=False)
        if user_exists(result.text, result.stderr):
            return False
        if result.exit_code != 0:
            raise RemoteCommandError(
                self.label, "sentry createuser", result.exit_code, result.stderr
            )
        return True

    def running_version(self) -> str:
        """The version `sentry --version` of the running web reports; while web is stopped (a
        move's paused ingestion), the worker's (the same image)."""
        role = Role.WEB
        if self.stack.service(Role.WEB) not in self.running_services():
            role = Role.WORKER
        return parse_version(self.run(self.sentry_version_argv(role), timeout=120).text)

    def sentry_services(self) -> list[str]:
        """The compose services running the web's image (web first): what an upgrade changes."""
        services = self.compose_config().get("services", {})
        web = self.stack.service(Role.WEB)
        image = (services.get(web) or {}).get("image")
        others = sorted(n for n, s in services.items() if n != web and s.get("image") == image)
        return [web, *others] if image else [web]

    def sentry_repository(self) -> str:
        """The repository of web's image (`getsentry/sentry` of `getsentry/sentry:24.1.0`)."""
        image = self.service_images().get(self.stack.service(Role.WEB), "")
        return image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image

    def sentry_images(self) -> set[str]:
        """Image references the stack's Sentry services run or are built from (a `build:` arg
        such as self-hosted's SENTRY_IMAGE), as the project resolves them."""
        services = self.compose_config().get("services", {})
        roles = (Role.WEB, Role.WORKER, Role.CRON, Role.CLEANUP)
        refs = set()
        for name in (self.stack.services[r] for r in roles if r in self.stack.services):
            svc = services.get(name) or {}
            refs |= {svc.get("image") or ""} | {
                str(v) for v in ((svc.get("build") or {}).get("args") or {}).values()
            }
        return {r for r in refs if r and re.fullmatch(r"[\w./:@-]+", r)}

    def replica_counts(self) -> dict[str, int]:
        """Running containers per Sentry service (what an upgrade or a rollback restores)."""
        return {s: len(self.running_ids(s)) for s in self.sentry_services()}

    def image_setting(self, version: str) -> tuple[str, str]:
        """(.env variable, value) that makes the Sentry services run `version`; refuses a
        compose file whose web image is not set from a variable."""
        web = self.stack.service(Role.WEB)
        raw = (self.compose_config(False).get("services", {}).get(web) or {}).get("image", "")
        resolved = self.service_images().get(web, "")
        setting = image_setting(raw, resolved, version)
        if setting is None:
            raise ValueError(
                f"{self.label}: the image of service {web} is fixed in the compose file "
                f"({raw or 'none'}): make it `<repository>:${{SENTRY_VERSION}}` and set "
                f"SENTRY_VERSION in {self.stack.operator_env_file}, so an upgrade (and you) "
                "change the version in one place"
            )
        return setting

    def event_retention(self) -> tuple[int, str]:
        """The days of events this install keeps, and where that was read: the variable its own
        cleanup cron reads (SENTRY_EVENT_RETENTION_DAYS) in its env files, else the layout's
        default."""
        key = "SENTRY_EVENT_RETENTION_DAYS"
        setting = self.env_setting(key)
        if setting is None:
            days = self.stack.event_retention_days
            return days, f"the {self.stack.name} layout's default ({key} is not set)"
        value, name = setting
        if not value.isdigit() or int(value) < 1:
            raise ValueError(
                f"{self.label}: {key}={value!r} in {self.project_dir}/{name} is not a number of "
                "days: fix the file (compose and Sentry's own cleanup read it too)"
            )
        return int(value), f"{key} in {name}"

    def queue_backlog(self) -> BacklogCount:
        """Tasks waiting for a worker, counted where the layout keeps them (StackLayout.backlog):
        Celery's Redis lists summed in one EVAL, or the taskbroker's pending activations read
        from its SQLite store by sqlite3 of the tool image, beside the taskbroker's volume (a
        count, with the broker's cap: at the cap, more waits in Kafka)."""
        backlog = self.stack.backlog
        cap = backlog.max_pending
        if backlog.kind == "redis-lists":
            argv = self.exec_argv(
                Role.REDIS, "redis-cli", "-p", str(self.redis_port), "EVAL", COUNT_LISTS,
                str(len(backlog.queues)), *backlog.queues,
            )  # fmt: skip
            where = f"Redis lists {', '.join(backlog.queues)}"
        else:
            service = self.stack.service(Role.TASKBROKER)
            ids = self.running_ids(service)
            if not ids:
                why = f"failed: {service} is not running"
                raise RemoteCommandError(self.label, "read the backlog", None, "", why=why)
            argv = ["docker", "run", "--rm", "--network", "none", "--label",
                    "sentry-ops.job=backlog", *self.pull_argv(), "--volumes-from", ids[0],
                    "--entrypoint", "sqlite3", self.tool_image, "-readonly", backlog.db_path,
                    PENDING_ACTIVATIONS]  # fmt: skip
            where = f"{service}'s {backlog.db_path}"
            environment = self.compose_config().get("services", {}).get(service, {})
            setting = str((environment.get("environment") or {}).get(backlog.max_pending_env, ""))
            cap = int(setting) if setting.isdigit() else cap
        out = self.run(argv, timeout=60).text.strip()
        if not out.isdigit():
            raise RemoteCommandError(
                self.label, f"read the backlog from {where}", None, "",
                why=f"answered {out[:200]!r}, not a count",
            )  # fmt: skip
        return BacklogCount(int(out), cap)


@dataclass(frozen=True)
class BacklogCount:
    """Waiting tasks as counted, and the most the place they were counted in holds (0: no cap)."""

    count: int
    cap: int = 0

    @property
    def capped(self) -> bool:
        return bool(self.cap) and self.count >= self.cap

    def __str__(self) -> str:
        if self.capped:
            cap = f"the taskbroker holds at most {self.cap}; the rest waits in Kafka"
            return f"at least {self.count} ({cap})"
        return str(self.count)


def parse_version(out: str) -> str:
    """The release in `sentry --version`'s "sentry, version 25.10.0+<sha>": official images set
    SENTRY_BUILD, which click prints after a `+` (getsentry/sentry src/sentry/__init__.py
    __semantic_version__; fixture sentry_cli_outputs.json); the build is not the release."""
    match = re.search(r"version\s+(\S+)", out)
    return (match.group(1) if match else out.strip()).split("+", 1)[0]


def migrations_applied(out: str) -> bool:
    """`sentry upgrade` ran a migration: Django's "  Applying <app>.<name>... OK" lines
    (fixture sentry_cli_outputs.json; "No migrations to apply." when there was none)."""
    return bool(re.search(r"^\s*Applying \S+\.\S+\.\.\.", out, re.M))


def user_exists(stdout: str, stderr: str) -> bool:
    """`sentry createuser` refused an existing user: "User: E exists, use --force-update to
    force." on stdout and exit 0 today, exit 3 (no period) or "Error: ..." on stderr and exit 1
    in older releases (src/sentry/runner/commands/createuser.py; fixture
    sentry_cli_outputs.json)."""
    return any(re.search(r"User: \S+ exists, use --force-update", t) for t in (stdout, stderr))


def image_setting(raw: str, resolved: str, version: str) -> tuple[str, str] | None:
    """Which variable of the env file sets the image's version, and to what, read from the
    un-interpolated compose image `raw` (e.g. `getsentry/sentry:${SENTRY_VERSION}` -> the tag
    variable; self-hosted's `${SENTRY_IMAGE}` -> the whole reference). None: a fixed image."""
    var = r"\$\{([A-Za-z_]\w*)(?:[:?-][^}]*)?\}"
    if match := re.fullmatch(var, raw):
        repository = resolved.rsplit(":", 1)[0] if ":" in resolved.rsplit("/", 1)[-1] else resolved
        return match.group(1), f"{repository}:{version}" if repository else version
    if (match := re.fullmatch(rf"[^$]+:{var}", raw)) and "/" not in raw.rsplit(":", 1)[-1]:
        return match.group(1), version
    return None


def rolling_problem(service: dict) -> str | None:
    """Why a second replica of this service cannot start beside the first (then it is
    recreated in place, with a gap): a fixed container name or a fixed published host port."""
    if service.get("container_name"):
        return f"it sets container_name {service['container_name']!r}"
    fixed = [str(p.get("published")) for p in service.get("ports") or [] if p.get("published")]
    if fixed:
        return f"it publishes host port {', '.join(fixed)}"
    return None
