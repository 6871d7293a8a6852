"""`SentryHost`: a Docker host running a Sentry compose stack, reached over SSH.

Saved once (UI or `deployments/setup.py`), loaded by name in every flow. Its methods are the only
way flows touch a host: `run`, `stream`, `put`/`get`, `tunnel`, `compose`.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal

import yaml
from prefect.blocks.core import Block
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from blocks.dotenv import parse_env, render_env
from blocks.layouts import (
    PROJECT_NAME,
    DataVolume,
    Role,
    StackLayout,
    default_project_name,
    get_layout,
)
from blocks.ssh import (
    CommandResult,
    RemoteCommandError,
    SSHTarget,
    SSHTransport,
    parse_host_key,
)

# Runs a throwaway container whose stdout (mode "out") or stdin (mode "in") is a FIFO in a private
# temp dir that this SSH command reads or writes: Docker 20.10's attach relay costs more CPU than
# SSH (TESTBED.md), a FIFO avoids it. The first stdin line is a secret (a pgpass line, or empty)
# written to a 0600 file the container sees as $PGPASSFILE: never argv. The container's exit
# status is this command's; on any exit or hang-up the container and the temp dir are removed.
# Arguments: mode job image netns n_options options... command...
CONTAINER_IO = r"""set -euo pipefail
mode=$1 job=$2 image=$3 netns=$4 nopts=$5
shift 5
opts=("${@:1:$nopts}")
shift "$nopts"
d=$(mktemp -d /tmp/sentry-ops.XXXXXXXX)
cid=
cleanup() { if [ -n "$cid" ]; then docker rm -f "$cid" >/dev/null 2>&1 || true; fi; rm -rf "$d"; }
trap cleanup EXIT
trap 'exit 129' HUP INT TERM PIPE
IFS= read -r secret || true
if [ -n "$secret" ]; then (umask 077; printf '%s\n' "$secret" >"$d/pgpass"); fi
unset secret
mkfifo -m 600 "$d/fifo"
net=(--network none)
if [ -n "$netns" ]; then net=(--network "container:$netns"); fi
if [ "$mode" = out ]; then io='exec >/io/fifo'; else io='exec </io/fifo'; fi
cid=$(docker run -d --label "sentry-ops.job=$job" "${net[@]}" -v "$d:/io" \
    -e PGPASSFILE=/io/pgpass "${opts[@]}" --entrypoint sh "$image" -c "$io; exec \"\$@\"" sh "$@")
if [ "$mode" = out ]; then cat "$d/fifo"; else cat >"$d/fifo" || true; fi
code=$(docker wait "$cid")
if [ "$code" != 0 ]; then
    docker logs --tail 40 "$cid" >&2 2>&1 || true
    echo "$job container ($image) exited with $code" >&2
    exit "$code"
fi
"""


# Sums the lengths of Redis lists (KEYS) in one round trip; a missing list counts 0.
COUNT_LISTS = "local n = 0 for _, k in ipairs(KEYS) do n = n + redis.call('LLEN', k) end return n"
# 26.x taskbroker's store (getsentry/taskbroker, inflight_activation_store): status as text
PENDING_ACTIVATIONS = "SELECT count(*) FROM inflight_taskactivations WHERE status = 'Pending'"
SCALE_FILE = "sentry-ops.scale.yml"
SCALE_HEADER = (
    "# Written by sentry-ops (scale-workers / autoscale): replica counts kept across a plain\n"
    "# `docker compose up -d`. COMPOSE_FILE lists this file after the project's own. Change the\n"
    "# counts with the scale-workers deployment; an edit here is overwritten by the next run.\n"
)
# compose's default file names, in its order of preference
COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")


def _inside(path: str) -> str:
    """A relative path that stays inside the volume."""
    norm = posixpath.normpath(path)
    if posixpath.isabs(norm) or norm.startswith(".."):
        raise ValueError(f"{path!r} is not a path inside a volume")
    return norm


def compose_files_with_scale(
    current: str | None, names: Sequence[str], project_dir: str, separator: str | None = None
) -> str | None:
    """COMPOSE_FILE that adds SCALE_FILE to what compose reads today (None: it already does).
    Unset COMPOSE_FILE means compose's default file and its override; paths are absolute,
    because compose resolves them against its working directory, not the project's."""
    sep = separator or ":"
    if current:
        files = [f for f in current.split(sep) if f]
    else:
        base = next((n for n in COMPOSE_FILES if n in names), None)
        if base is None:
            raise ValueError(f"no compose file ({', '.join(COMPOSE_FILES)}) in {project_dir}")
        stem, ext = base.rsplit(".", 1)
        files = [base] + [f"{stem}.override.{ext}"] * (f"{stem}.override.{ext}" in names)
    if any(posixpath.basename(f) == SCALE_FILE for f in files):
        return None
    files.append(SCALE_FILE)
    return sep.join(f if posixpath.isabs(f) else posixpath.join(project_dir, f) for f in files)


@dataclass(frozen=True)
class ComposeContext:
    """What compose itself would resolve in the project dir: the project name and env files."""

    project: str
    env_files: tuple[str, ...] = ()


PORT = {"minimum": 1, "maximum": 65535}  # the form checks it; the validator explains


class SentryHost(Block):
    """A Docker host with a self-hosted Sentry compose stack, operated over SSH."""

    _block_type_name = "Sentry Host"
    _block_type_slug = "sentry-host"
    # no logo: an operator's UI often has no internet, where a remote logo is a broken image
    _logo_url = None
    _documentation_url = "https://develop.sentry.dev/self-hosted/"  # type: ignore[assignment]
    _description = (
        "A Docker host running a self-hosted Sentry docker-compose stack, reached over SSH with a "
        "pinned host key. Service, volume and database names default to the layout's and can be "
        "overridden for installs that renamed them."
    )

    ssh_host: str = Field(description="Host name or address sshd listens on.")
    ssh_port: int = Field(default=22, json_schema_extra=PORT, description="sshd port.")
    ssh_user: str = Field(default="root", description="SSH user; must be able to run docker.")
    ssh_private_key: SecretStr = Field(
        description="Unencrypted OpenSSH private key (ed25519, ECDSA or RSA) for ssh_user."
    )
    ssh_host_key: str = Field(
        description=(
            "The host's pinned public key, 'ssh-ed25519 AAAA...' (from `ssh-keyscan`, verified "
            "against `ssh-keygen -lf` on the host). Any other key is refused."
        )
    )
    project_dir: str = Field(
        description="Absolute path of the compose project directory on the host.",
        json_schema_extra={"pattern": "^/"},  # the form checks it; the validator explains
    )
    project_name: str | None = Field(
        default=None,
        description="Compose project name. Empty: COMPOSE_PROJECT_NAME from the project's .env "
        "(and .env.custom), else compose's default (the directory's name), as compose itself does.",
    )
    layout: Literal["guide", "self-hosted"] = Field(
        default="guide",
        description="Stack layout preset: 'guide' (sentry, sentry-worker, ...) or 'self-hosted' "
        "(getsentry/self-hosted 26.x: web, taskworker, ...).",
    )
    service_names: dict[Role, str] = Field(
        default_factory=dict,
        description="Compose service per role where it differs from the layout's, e.g. "
        '{"worker": "my-worker"}.',
    )
    volume_names: dict[DataVolume, str] = Field(
        default_factory=dict,
        description="Compose volume key per data volume (postgres, files, clickhouse, nodestore) "
        "where it differs from the layout's.",
    )
    postgres_user: str | None = Field(default=None, description="Empty: the layout's.")
    postgres_db: str | None = Field(default=None, description="Empty: the layout's.")
    clickhouse_database: str | None = Field(
        default=None, description="ClickHouse database of Snuba's tables. Empty: the layout's."
    )
    secret_key_env: str | None = Field(
        default=None, description=".env variable of the secret key. Empty: the layout's."
    )
    postgres_password_env: str | None = Field(
        default=None, description=".env variable of the Postgres password. Empty: the layout's."
    )
    web_port: int = Field(
        default=9000,
        json_schema_extra=PORT,
        description="Port where Sentry answers on the host's loopback (self-hosted: nginx's "
        "SENTRY_BIND).",
    )
    postgres_port: int | None = Field(
        default=None,
        json_schema_extra=PORT,
        description="Postgres port inside its container (never published: sentry-ops reaches it "
        "from the host). Empty: the container's own (PGPORT or 5432).",
    )
    redis_port: int = Field(
        default=6379, json_schema_extra=PORT, description="Redis port inside its container."
    )
    clickhouse_port: int = Field(
        default=9000, json_schema_extra=PORT, description="ClickHouse native port in its container."
    )
    clickhouse_http_port: int = Field(
        default=8123,
        json_schema_extra=PORT,
        description="ClickHouse HTTP port in its container (never published: sentry-ops reaches "
        "it through SSH at the container's own address).",
    )
    postgres_password: SecretStr | None = Field(
        default=None,
        description="Password of the layout's Postgres user (empty where the stack uses trust).",
    )
    probe_dsn: SecretStr | None = Field(
        default=None,
        description="DSN of a project to send the health check's synthetic event to "
        "(http://<public key>@host/<project id>); empty: no ingestion probe.",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="Sentry API token (scope event:read) to confirm the synthetic event was "
        "processed; needed with probe_dsn.",
    )
    organization: str = Field(
        default="sentry", description="Organization slug the probe project belongs to."
    )
    tool_image: str = Field(
        default="postgres:17-bookworm",
        description="Image for throwaway containers next to the data: pg_dump/pg_restore >= the "
        "server's major, tar and zstd (postgres:17-bookworm plus zstd: infra/tool-image/"
        "Dockerfile). Present on the host, or pullable by it.",
    )
    pull_images: bool = Field(
        default=True,
        description="Let Docker pull the tool image when the host lacks it (off for hosts "
        "without a registry: a missing image then fails at once).",
    )
    docker_data_dir: str = Field(
        default="/var/lib/docker", description="Docker's data directory, for the free-disk check."
    )
    docker_socket: str = Field(
        default="/var/run/docker.sock",
        description="The Docker engine's socket on the host: self-hosted's install.sh runs in a "
        "container of the tool image that drives the engine through it (upgrades).",
    )
    connect_timeout: float = Field(default=10.0, description="Seconds to wait for sshd.")
    max_workers: int = Field(
        default=24,
        ge=0,
        le=500,
        description="Most replicas scale_workers may run of a scalable service (self-hosted's "
        "docs: at most 24 taskworkers per taskbroker).",
    )

    backlog_queues: list[str] = Field(
        default_factory=list,
        description="guide layout: the Celery queues (Redis lists) whose lengths make the "
        "worker backlog the autoscaler reads. Empty: Sentry's event queues.",
    )

    _compose_context: ComposeContext | None = PrivateAttr(default=None)

    @field_validator("ssh_host", "ssh_user")
    @classmethod
    def _not_blank(cls, value: str, info) -> str:
        if not value or not value.strip() or any(c.isspace() for c in value):
            raise ValueError(f"{info.field_name} must be a non-empty word, got {value!r}")
        return value

    @field_validator("project_name")
    @classmethod
    def _project_name(cls, value: str | None) -> str | None:
        if value is not None and not PROJECT_NAME.match(value):
            raise ValueError(
                f"project_name {value!r} is not a compose project name ([a-z0-9][a-z0-9_-]*)"
            )
        return value or None

    @field_validator(
        "ssh_port", "web_port", "postgres_port", "redis_port", "clickhouse_port",
        "clickhouse_http_port",
    )  # fmt: skip
    @classmethod
    def _valid_port(cls, value: int | None, info) -> int | None:
        if value is not None and not 1 <= value <= 65535:
            raise ValueError(f"{info.field_name} must be a TCP port 1-65535, got {value}")
        return value

    @field_validator("ssh_host_key")
    @classmethod
    def _parseable_host_key(cls, value: str) -> str:
        parse_host_key(value)
        return value

    @field_validator("project_dir", "docker_data_dir", "docker_socket")
    @classmethod
    def _absolute(cls, value: str, info) -> str:
        if not posixpath.isabs(value):
            raise ValueError(f"{info.field_name} must be an absolute path, got {value!r}")
        return posixpath.normpath(value)

    @model_validator(mode="after")
    def _names(self) -> SentryHost:
        self.stack  # noqa: B018  (validates every overridden name against compose's rules)
        return self

    # -- what the host is ---------------------------------------------------------------------
    @property
    def stack(self) -> StackLayout:
        """The layout preset with this host's names."""
        return get_layout(self.layout).customized(
            services=self.service_names,
            volumes=self.volume_names,
            queues=tuple(self.backlog_queues),
            postgres_user=self.postgres_user,
            postgres_db=self.postgres_db,
            clickhouse_database=self.clickhouse_database,
            secret_key_env=self.secret_key_env,
            postgres_password_env=self.postgres_password_env,
        )

    @property
    def label(self) -> str:
        return f"{self.ssh_host}:{self.ssh_port}{self.project_dir}"

    def __str__(self) -> str:
        """The block's saved name (flow run names are `backup-{host}`), else where it points."""
        return self._block_document_name or self.label

    @property
    def transport(self) -> SSHTransport:
        return SSHTransport(
            SSHTarget(
                host=self.ssh_host,
                port=self.ssh_port,
                user=self.ssh_user,
                private_key=self.ssh_private_key.get_secret_value(),
                host_key=self.ssh_host_key,
                connect_timeout=self.connect_timeout,
            )
        )

    @property
    def context(self) -> ComposeContext:
        """Project name and env files as compose resolves them in project_dir (read once)."""
        if self._compose_context is None:
            env_text, custom = "", False
            with contextlib.suppress(FileNotFoundError):
                env_text = self.get(f"{self.project_dir}/.env").decode("utf-8", "replace")
            if self.exists(f"{self.project_dir}/.env.custom"):
                custom = True
                env_text += "\n" + self.get(f"{self.project_dir}/.env.custom").decode()
            self._compose_context = resolve_context(
                self.project_dir, self.project_name, env_text, custom
            )
        return self._compose_context

    def use_context(self, context: ComposeContext) -> SentryHost:
        """Set what `context` would read (a stack this process is creating, tests)."""
        self._compose_context = context
        return self

    @property
    def project(self) -> str:
        """The compose project name in effect."""
        return self.project_name or self.context.project

    @property
    def identity(self) -> str:
        """Which stack this is, whatever the block is called: SSH target and compose project.
        Names the host's folder in a backup store and its lock."""
        raw = f"{self.ssh_host}-{self.ssh_port}-{self.project}".lower()
        return re.sub(r"[^a-z0-9]+", "-", raw).strip("-")[:150]

    def service_containers(self, service: str) -> list[dict]:
        """`docker compose ps` rows (running or not) of one service."""
        argv = self.compose_argv("ps", "--all", "--format", "json", service)
        return parse_ps(self.run(argv, timeout=60).text)

    def queue_backlog(self) -> int:
        """Tasks waiting for a worker, counted where the layout keeps them (StackLayout.backlog):
        Celery's Redis lists summed in one EVAL, or the taskbroker's pending activations read
        from its SQLite store by sqlite3 of the tool image, beside the taskbroker's volume."""
        backlog = self.stack.backlog
        if backlog.kind == "redis-lists":
            argv = self.exec_argv(
                Role.REDIS, "redis-cli", "-p", str(self.redis_port), "EVAL", COUNT_LISTS,
                str(len(backlog.queues)), *backlog.queues,
            )  # fmt: skip
            where = f"Redis lists {', '.join(backlog.queues)}"
        else:
            service = self.stack.service(Role.TASKBROKER)
            rows = [r for r in self.service_containers(service) if r.get("State") == "running"]
            if not rows:
                why = f"failed: {service} is not running"
                raise RemoteCommandError(self.label, "read the backlog", None, "", why=why)
            argv = ["docker", "run", "--rm", "--network", "none", "--label",
                    "sentry-ops.job=backlog", *self.pull_argv(), "--volumes-from", rows[0]["ID"],
                    "--entrypoint", "sqlite3", self.tool_image, "-readonly", backlog.db_path,
                    PENDING_ACTIVATIONS]  # fmt: skip
            where = f"{service}'s {backlog.db_path}"
        out = self.run(argv, timeout=60).text.strip()
        if not out.isdigit():
            raise RemoteCommandError(
                self.label, f"read the backlog from {where}", None, "",
                why=f"answered {out[:200]!r}, not a count",
            )  # fmt: skip
        return int(out)

    def persist_scale(self, service: str, replicas: int) -> str:
        """Keep `replicas` of `service` across a plain `docker compose up -d` of the stack: the
        count goes into sentry-ops' own compose file (SCALE_FILE), which COMPOSE_FILE in the
        operator's env file lists after the project's files. Returns what was changed."""
        d = self.project_dir
        path = f"{d}/{SCALE_FILE}"
        current = yaml.safe_load(self.get(path)) if self.exists(path) else None
        services = dict((current or {}).get("services") or {})
        services[service] = {"scale": replicas}
        body = yaml.safe_dump({"services": dict(sorted(services.items()))}, sort_keys=True)
        self.put(path, (SCALE_HEADER + body).encode(), mode=0o644)
        env_path = f"{d}/{self.stack.operator_env_file}"
        env_text = self.get(env_path).decode() if self.exists(env_path) else ""
        merged = {}  # what compose reads: .env, then the operator's file over it
        if self.stack.operator_env_file != ".env" and self.exists(f"{d}/.env"):
            merged.update(parse_env(self.get(f"{d}/.env").decode()))
        merged.update(parse_env(env_text))
        files = compose_files_with_scale(
            merged.get("COMPOSE_FILE"), self.listdir(d), d, merged.get("COMPOSE_PATH_SEPARATOR")
        )
        if files is None:
            return f"{SCALE_FILE}: {service} scale {replicas}"
        created = not env_text
        self.put(env_path, render_env(env_text, {"COMPOSE_FILE": files}).encode(), mode=0o600)
        self._compose_context = None  # a new .env.custom changes the env files compose reads
        return (
            f"{SCALE_FILE}: {service} scale {replicas}; COMPOSE_FILE in "
            f"{self.stack.operator_env_file}{' (created)' if created else ''} lists it"
        )

    def volume_name(self, volume: DataVolume) -> str:
        return self.stack.volumes[volume].docker_name(self.project)

    # -- commands as data ---------------------------------------------------------------------
    def compose_argv(self, *args: str) -> list[str]:
        env_files = [a for f in self.context.env_files for a in ("--env-file", f)]
        return [
            "docker",
            "compose",
            "--project-directory",
            self.project_dir,
            *env_files,
            "-p",
            self.project,
            *args,
        ]

    def exec_argv(self, role: Role, *argv: str) -> list[str]:
        """argv to run a command inside the running container of `role`."""
        return self.compose_argv("exec", "-T", self.stack.service(role), *argv)

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

    def ps_argv(self) -> list[str]:
        return self.compose_argv("ps", "--all", "--format", "json")

    def services_argv(self) -> list[str]:
        return self.compose_argv("config", "--services")

    def disk_argv(self) -> list[str]:
        return ["df", "-P", "-B1", self.docker_data_dir]

    def config_json_argv(self, interpolate: bool = True) -> list[str]:
        raw = [] if interpolate else ["--no-interpolate"]
        return self.compose_argv("config", *raw, "--format", "json")

    def sentry_version_argv(self) -> list[str]:
        return self.exec_argv(Role.WEB, "sentry", "--version")

    def sentry_argv(self, *args: str) -> list[str]:
        """A one-off `sentry <args>` in a new container of the web service (its image, config)."""
        return self.compose_argv("run", "--rm", "-T", self.stack.service(Role.WEB), *args)

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
            "run", "-d", "--name", name, *_labels(labels), *entry, self.stack.service(role), *args
        )

    def tool_job_argv(
        self, name: str, labels: dict[str, str], netns: str, *command: str, env_stdin: bool = False
    ) -> list[str]:
        """`command` of the tool image, detached, named `name`, in the network namespace of the
        container `netns`; with `env_stdin`, its environment (a secret) is read from this SSH
        command's stdin by the docker CLI, never argv."""
        env = ["--env-file", "/dev/stdin"] if env_stdin else []
        return ["docker", "run", "-d", "--name", name, *_labels(labels), *env, "--network",
                f"container:{netns}", *self.pull_argv(), "--entrypoint", command[0],
                self.tool_image, *command[1:]]  # fmt: skip

    def volume_usage_argv(self, volumes: dict[str, str], image: str) -> list[str]:
        """For each docker volume (label -> name), mounted read-only: `<label> <bytes> <oldest
        file's mtime or ->`, one line each."""
        mounts = [a for label, v in volumes.items() for a in ("-v", f"{v}:/volumes/{label}:ro")]
        script = (
            'for v in "$@"; do b=$(du -sb "/volumes/$v" | cut -f1); '
            "o=$(find \"/volumes/$v\" -type f -printf '%T@\\n' 2>/dev/null | sort -n | head -1); "
            'echo "$v $b ${o:--}"; done'
        )
        return ["docker", "run", "--rm", "--network", "none", "--label", "sentry-ops.job=usage",
                *self.pull_argv(), *mounts, "--entrypoint", "sh", image, "-c", script,
                "sentry-ops", *volumes]  # fmt: skip

    def volume_df_argv(self, volumes: Sequence[DataVolume], image: str) -> list[str]:
        """`df` of each data volume, mounted read-only in a throwaway container."""
        mounts = [a for v in volumes for a in ("-v", f"{self.volume_name(v)}:/volumes/{v}:ro")]
        return [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--label",
            "sentry-ops.job=health",
            *mounts,
            "--entrypoint",
            "df",
            image,
            "-P",
            "-B1",
            *(f"/volumes/{v}" for v in volumes),
        ]

    def volume_tar_argv(self, volume: DataVolume, image: str, path: str = ".") -> list[str]:
        """zstd-compressed tar of a data volume (or `path` in it), made on the host (read-only
        mount). A volume the layout copies with SQLite's online backup (`sqlite_copy`) gives a
        tar of that one database file, copied consistently while its writers go on."""
        mount = ["-v", f"{self.volume_name(volume)}:/volume:ro"]
        where = posixpath.join("/volume", _inside(path))
        command = ["tar", "--use-compress-program=zstd -1 -T0", "-C", where, "-cf", "-", "."]
        if db := self.stack.sqlite_copy.get(volume):
            # a WAL database's readers write its -shm (locks): mounted read-write; the copy goes
            # into the throwaway container's own /tmp (the file is small: in-flight tasks)
            mount = ["-v", f"{self.volume_name(volume)}:/volume"]
            script = (
                'mkdir /tmp/copy && sqlite3 "/volume/$0" ".backup /tmp/copy/$0" && '
                'exec tar --use-compress-program="zstd -1 -T0" -C /tmp/copy -cf - .'
            )
            command = ["sh", "-c", script, _inside(db)]
        return self.container_io_argv("out", image, None, command, job="backup", options=mount)

    def volume_untar_argv(self, volume: DataVolume, image: str, path: str = ".") -> list[str]:
        """Unpack a zstd-compressed tar into a data volume (or `path` in it, made if missing),
        on the host."""
        mount = ["-v", f"{self.volume_name(volume)}:/volume"]
        where = posixpath.join("/volume", _inside(path))
        untar = 'mkdir -p "$0" && exec tar --use-compress-program="zstd -d" -C "$0" -xf -'
        command = ["sh", "-c", untar, where]
        return self.container_io_argv("in", image, None, command, job="restore", options=mount)

    def volume_run_argv(self, volume: DataVolume, image: str, *argv: str) -> list[str]:
        """A short command of the tool image with a data volume mounted at /volume."""
        return ["docker", "run", "--rm", "--network", "none", "--label", "sentry-ops.job=volume",
                *self.pull_argv(), "-v", f"{self.volume_name(volume)}:/volume", "--entrypoint",
                argv[0], image, *argv[1:]]  # fmt: skip

    def later_argv(self, seconds: int, argv: Sequence[str]) -> list[str]:
        """Run `argv` on the host after `seconds`, detached from this SSH session: it still runs
        if the session, or the worker, dies (a dead man's switch)."""
        script = 'setsid nohup sh -c \'sleep "$0"; exec "$@"\' "$@" >/dev/null 2>&1 </dev/null &'
        return ["sh", "-c", script, "sentry-ops", str(seconds), *argv]

    def pause(self, role: Role, deadline: int) -> list[str]:
        """`docker pause` the running containers of a service (processes frozen, files still);
        returns their ids for `unpause`. The host unpauses them by itself after `deadline`
        seconds should this process, or its SSH session, die first (a dead man's switch)."""
        ids = [r["ID"] for r in self.service_containers(self.stack.service(role))
               if r.get("State") == "running"]  # fmt: skip
        if ids:
            self.run(self.later_argv(deadline, ["docker", "unpause", *ids]), timeout=30)
            self.run(["docker", "pause", *ids], timeout=60)
        return ids

    def unpause(self, ids: Sequence[str]) -> None:
        if ids:
            self.run(["docker", "unpause", *ids], timeout=60, check=False)

    def paused(self, ids: Sequence[str]) -> bool:
        """All of these containers are paused."""
        if not ids:
            return True
        out = self.run(["docker", "inspect", "-f", "{{.State.Paused}}", *ids], timeout=30).text
        return out.split() == ["true"] * len(ids)

    def container_address(self, role: Role) -> str:
        """The address of a service's running container as Docker reports it; 127.0.0.1 under
        host networking (where the container has no address of its own)."""
        rows = [r for r in self.service_containers(self.stack.service(role))
                if r.get("State") == "running"]  # fmt: skip
        if not rows:
            raise RemoteCommandError(
                self.label, f"find {self.stack.service(role)}", None, "", why="found none running"
            )
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
        out = self.run(["docker", "inspect", "-f", fmt, rows[0]["ID"]], timeout=30).text.split()
        return out[0] if out else "127.0.0.1"

    def container_io_argv(
        self,
        mode: Literal["out", "in"],
        image: str,
        netns: str | None,
        command: Sequence[str],
        *,
        job: str,
        options: Sequence[str] = (),
    ) -> list[str]:
        """Run `command` in a throwaway container of `image` (in `netns`'s network namespace, else
        none). "out": its stdout comes out of this SSH command; "in": this SSH command's stdin
        (after one secret line) becomes its stdin. Through a FIFO, not Docker's relay."""
        options = [*self.pull_argv(), *options]
        return ["bash", "-c", CONTAINER_IO, "sentry-ops", mode, job, image, netns or "",
                str(len(options)), *options, *command]  # fmt: skip

    def tool_argv(self, image: str, tool: str, *args: str) -> list[str]:
        """A short command from the tool image (no network, no mounts)."""
        return ["docker", "run", "--rm", "--network", "none", "--label", "sentry-ops.job=tool",
                *self.pull_argv(), "--entrypoint", tool, image, *args]  # fmt: skip

    def pull_argv(self) -> list[str]:
        return [] if self.pull_images else ["--pull", "never"]

    def config_tar_argv(self) -> list[str]:
        """tar of the stack's configuration files that exist (they hold secrets)."""
        return [
            "tar",
            "-C",
            self.project_dir,
            "--ignore-failed-read",
            "-cf",
            "-",
            *self.stack.config_files,
        ]

    def leftovers_argv(self) -> list[list[str]]:
        """Containers and volumes still labelled with this compose project."""
        label = f"label=com.docker.compose.project={self.project}"
        return [
            ["docker", "ps", "-aq", "--filter", label],
            ["docker", "volume", "ls", "-q", "--filter", label],
        ]

    # -- I/O, all through the one transport ----------------------------------------------------
    def run(self, argv: Sequence[str], **kwargs) -> CommandResult:
        return self.transport.run(argv, **kwargs)

    def compose(self, *args: str, **kwargs) -> CommandResult:
        return self.transport.run(self.compose_argv(*args), **kwargs)

    @contextlib.contextmanager
    def stream(self, argv: Sequence[str], **kwargs) -> Iterator[BinaryIO]:
        """argv's stdout as a readable (see SSHTransport.stream); `stdin=` a secret line."""
        with self.transport.stream(argv, **kwargs) as reader:
            yield reader

    def put(self, path: str, data: bytes | BinaryIO, *, mode: int = 0o600) -> None:
        self.transport.put(path, data, mode=mode)

    def get(self, path: str) -> bytes:
        return self.transport.get(path)

    @contextlib.contextmanager
    def tunnel(self, remote_port: int, remote_host: str = "127.0.0.1") -> Iterator[int]:
        with self.transport.tunnel(remote_port, remote_host) as port:
            yield port

    def close(self) -> None:
        self.transport.close()

    # -- files and facts, by name (flows never build argv) -------------------------------------
    def exists(self, path: str) -> bool:
        return self.transport.exists(path)

    def listdir(self, path: str) -> list[str]:
        return self.transport.listdir(path)

    def chmod(self, path: str, mode: int) -> None:
        self.transport.chmod(path, mode)

    def makedirs(self, *paths: str) -> None:
        self.run(["mkdir", "-p", "--", *paths], timeout=30)

    def extract_tar(self, directory: str, data: bytes) -> None:
        self.run(["tar", "-C", directory, "-xf", "-"], stdin=data, timeout=120)

    def remove_tree(self, path: str) -> None:
        """rm -rf of a file or directory at least two levels deep (callers decide it is theirs)."""
        path = posixpath.normpath(path)
        if not posixpath.isabs(path) or path.count("/") < 2:
            raise ValueError(f"refusing to remove {path!r}")
        self.run(["rm", "-rf", "--", path], timeout=120)

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

    def images(self) -> list[dict]:
        """`docker image ls` rows: Repository, Tag, ID, CreatedAt, Size."""
        argv = ["docker", "image", "ls", "--format", "{{json .}}"]
        return [json.loads(line) for line in self.run(argv, timeout=60).text.splitlines()]

    def service_log_tail(self, role: Role, lines: int = 20) -> list[str]:
        """The last lines of the service's container log, each with Docker's timestamp."""
        argv = self.compose_argv("logs", "--no-color", "--timestamps", "--tail", str(lines),
                                 self.stack.service(role))  # fmt: skip
        return self.run(argv, timeout=60).text.splitlines()

    def disk_free(self) -> tuple[int, int]:
        """(total, available) bytes of the file system holding Docker's data."""
        return parse_df(self.run(self.disk_argv(), timeout=30).text)[0]

    def volume_free(self, volume: DataVolume) -> tuple[int, int]:
        """(total, available) bytes of the file system holding a data volume."""
        return parse_df(self.run(self.volume_df_argv([volume], self.tool_image), timeout=60).text)[
            0
        ]

    def volume_usage(self, volumes: dict[str, str]) -> dict[str, tuple[int, float | None]]:
        """label -> (bytes, oldest file's mtime or None) of docker volumes (label -> name)."""
        if not volumes:
            return {}
        out = self.run(self.volume_usage_argv(volumes, self.tool_image), timeout=1800).text
        rows = (line.split() for line in out.splitlines())
        return {r[0]: (int(r[1]), None if r[2] == "-" else float(r[2])) for r in rows}

    def compose_config(self, interpolate: bool = True) -> dict:
        """The project as compose resolves it (`config --format json`): services, volumes.
        Without interpolation it reads before .env has every variable (names only)."""
        return json.loads(self.run(self.config_json_argv(interpolate), timeout=60).stdout)

    def volume_exists(self, volume: DataVolume) -> bool:
        name = self.volume_name(volume)
        return (
            self.run(["docker", "volume", "inspect", name], check=False, timeout=30).exit_code == 0
        )

    def service_images(self) -> dict[str, str]:
        """compose service -> image, as the project resolves them."""
        services = self.compose_config().get("services", {})
        return {name: svc.get("image", "") for name, svc in services.items()}

    def name_problems(self, volumes: Sequence[DataVolume] = ()) -> list[str]:
        """Names of this block that the host's compose project lacks (empty: all present)."""
        return name_problems(self.stack, self.compose_config(False), tuple(volumes))

    # -- upgrades: the image a stack runs, its Sentry services and their containers -------------
    def running_version(self) -> str:
        """The version `sentry --version` of the running web reports."""
        out = self.run(self.sentry_version_argv(), timeout=120).text
        match = re.search(r"version\s+(\S+)", out)
        return match.group(1) if match else out.strip()

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

    def running_ids(self, service: str) -> list[str]:
        """IDs of the service's running containers."""
        return [c["ID"] for c in self.service_containers(service) if c.get("State") == "running"]

    def replica_counts(self) -> dict[str, int]:
        """Running containers per Sentry service (what an upgrade or a rollback restores)."""
        return {s: len(self.running_ids(s)) for s in self.sentry_services()}

    def up_services(self, counts: dict[str, int]) -> None:
        """`up -d --no-deps` of these services with these replica counts (recreated where their
        configuration changed)."""
        scale = [a for s, n in counts.items() for a in ("--scale", f"{s}={n}")]
        self.compose("up", "-d", "--no-deps", *scale, *counts, timeout=1800)

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

    def image_tags(self, repository: str) -> list[str]:
        argv = ["docker", "image", "ls", repository, "--format", "{{.Tag}}"]
        return [t for t in self.run(argv, timeout=60).text.split() if t != "<none>"]

    def image_size(self, ref: str) -> int | None:
        result = self.run(["docker", "image", "inspect", "-f", "{{.Size}}", ref], check=False,
                          timeout=60)  # fmt: skip
        return int(result.text.strip()) if result.exit_code == 0 else None

    def container_states(self, ids: Sequence[str]) -> dict[str, str]:
        """container id -> "<status> <health or ->" (e.g. "running healthy", "exited -")."""
        if not ids:
            return {}
        fmt = "{{.Id}} {{json .State}}"  # .State.Health is absent without a healthcheck
        out = self.run(["docker", "inspect", "-f", fmt, *ids], check=False, timeout=60).text
        states = {}
        for line in out.splitlines():
            cid, _, raw = line.partition(" ")
            if raw.startswith("{"):
                state = json.loads(raw)
                health = (state.get("Health") or {}).get("Status") or "-"
                states[cid] = f"{state.get('Status', '?')} {health}"
        return {i: next((v for k, v in states.items() if k.startswith(i)), "gone -") for i in ids}

    def git(self, *args: str, check: bool = True) -> CommandResult:
        """git in the project dir (self-hosted's checkout)."""
        return self.run(["git", "-C", self.project_dir, *args], check=check, timeout=300)

    def install_job_argv(self, name: str, labels: dict[str, str], *args: str) -> list[str]:
        """self-hosted's `./install.sh <args>`, detached (blocks/jobs.py) in a container of the
        tool image (bash, docker CLI, compose) driving the host's engine through its socket, the
        project dir mounted at its own path so compose's bind mounts resolve on the host. No
        stdin: a prompt (a missing non-interactive flag) fails instead of waiting."""
        d = self.project_dir
        return ["docker", "run", "-d", "--name", name, *_labels(labels), "--network", "host",
                "-v", f"{self.docker_socket}:/var/run/docker.sock", "-v", f"{d}:{d}", "-w", d,
                *self.pull_argv(), "--entrypoint", "bash", self.tool_image, "./install.sh",
                *args]  # fmt: skip

    def container_log_tail(self, cid: str, lines: int = 10) -> list[str]:
        argv = ["sh", "-c", 'exec docker logs --tail "$1" "$0" 2>&1', cid, str(lines)]
        return self.run(argv, check=False, timeout=60).text.splitlines()

    def remove_containers(self, ids: Sequence[str], stop_timeout: int = 30) -> None:
        """Stop (SIGTERM, then SIGKILL after `stop_timeout` s) and remove containers."""
        if ids:
            self.run(["docker", "stop", "-t", str(stop_timeout), *ids], timeout=stop_timeout + 60)
            self.run(["docker", "rm", *ids], timeout=60)

    # -- Sentry, the way an operator talks to it ------------------------------------------------
    def upgrade(self, timeout: float = 3600) -> tuple[bool, str]:
        """`sentry upgrade --noinput` (idempotent: pending migrations only) -> (applied, log)."""
        out = self.run(self.sentry_argv("upgrade", "--noinput"), timeout=timeout).text
        return bool(re.search(r"\b(Applying|Applied)\b", out)), out

    def create_superuser(self, email: str, password: str) -> bool:
        """`sentry createuser --superuser`; True when created, False when the user exists.

        The password goes to the command's own prompt on stdin, never into argv. Current Sentry
        reports an existing user on stdout and exits 0; older releases exited non-zero.
        """
        argv = self.sentry_argv("createuser", "--email", email, "--superuser")
        result = self.run(argv, stdin=f"{password}\n{password}\n".encode(), check=False)
        if "exists" in result.text or (result.exit_code != 0 and "exists" in result.stderr):
            return False
        if result.exit_code != 0:
            raise RemoteCommandError(
                self.label, "sentry createuser", result.exit_code, result.stderr
            )
        return True

    def web_request(
        self,
        path: str,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 15,
    ) -> tuple[int, bytes]:
        """HTTP to Sentry's web port on the host, through the SSH tunnel -> (status, body).
        Status 0: nothing answered."""
        with self.tunnel(self.web_port) as port:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}{path}", data=data, headers=headers or {}
            )
            try:
                with urllib.request.urlopen(request, timeout=timeout) as resp:
                    return resp.status, resp.read(1 << 20)
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read(1 << 20)
            except OSError as exc:
                return 0, f"no answer on port {self.web_port}: {exc}".encode()

    def send_event(self, event: dict) -> str:
        """Send an event to the store endpoint of `probe_dsn`'s project, as an SDK would."""
        if self.probe_dsn is None:
            raise ValueError(f"{self.label}: the block has no probe_dsn")
        dsn = urllib.parse.urlsplit(self.probe_dsn.get_secret_value())
        project = dsn.path.strip("/").rsplit("/", 1)[-1]
        auth = f"Sentry sentry_version=7, sentry_client=sentry-ops/1, sentry_key={dsn.username}"
        status, body = self.web_request(
            f"/api/{project}/store/",
            data=json.dumps(event).encode(),
            headers={"X-Sentry-Auth": auth, "Content-Type": "application/json"},
        )
        if status != 200:
            raise RemoteCommandError(
                self.label, f"POST /api/{project}/store/", status, body.decode("utf-8", "replace")
            )
        return json.loads(body)["id"]

    def lookup_event(self, event_id: str) -> dict | None:
        """The processed event (its issue and payload) through Sentry's API; None: not (yet)."""
        if self.api_token is None:
            raise ValueError(f"{self.label}: the block has no api_token")
        status, body = self.web_request(
            f"/api/0/organizations/{self.organization}/eventids/{event_id}/",
            headers={"Authorization": f"Bearer {self.api_token.get_secret_value()}"},
        )
        if status == 404:
            return None
        if status != 200:
            raise RemoteCommandError(
                self.label, "GET .../eventids/", status, body.decode("utf-8", "replace")[:300]
            )
        found = json.loads(body)
        event = found.get("event") or {}
        # Sentry still answers for an event whose payload is gone from the nodestore (its row in
        # Snuba outlives it), with the payload's fields empty: that is not a readable event
        return found if event.get("message") or event.get("entries") else None

    def leftovers(self) -> list[str]:
        return [item for argv in self.leftovers_argv() for item in self.run(argv).text.split()]

    def leftovers_created(self) -> list[str]:
        """Creation times (RFC 3339, as Docker reports them) of the project's containers and
        volumes."""
        containers, volumes = (self.run(a).text.split() for a in self.leftovers_argv())
        times = []
        if containers:
            times += self.run(["docker", "inspect", "-f", "{{.Created}}", *containers]).text.split()
        if volumes:
            fmt = "{{.CreatedAt}}"
            times += self.run(["docker", "volume", "inspect", "-f", fmt, *volumes]).text.split()
        return times

    def leftover_volumes(self) -> list[str]:
        """Volumes still labelled with this compose project."""
        return self.run(self.leftovers_argv()[1]).text.split()

    def remove_image(self, ref: str) -> CommandResult:
        """`docker image rm` (never forced: an image a container uses stays, and says so)."""
        return self.run(["docker", "image", "rm", ref], check=False, timeout=300)

    def remove_volume(self, name: str) -> None:
        """`docker volume rm` (never forced: a volume in use stays, with an error)."""
        self.run(["docker", "volume", "rm", name], timeout=120)

    def dangling_volumes(self) -> list[str]:
        """Volumes labelled with this compose project that no container uses."""
        argv = ["docker", "volume", "ls", "-q", "--filter", "dangling=true", "--filter",
                f"label=com.docker.compose.project={self.project}"]  # fmt: skip
        return self.run(argv, timeout=60).text.split()

    def facts(self) -> HostFacts:
        """What bootstrap's preflight judges: versions, CPU, memory, free disk, open ports."""
        text = {name: self.run(argv, timeout=30).text for name, argv in FACT_ARGV.items()}
        meminfo = re.search(r"MemTotal:\s+(\d+)", text["meminfo"])
        df = self.run(self.disk_argv(), timeout=30).text.splitlines()[-1].split()
        return HostFacts(
            docker=text["docker"].strip(),
            compose=text["compose"].strip(),
            cpus=int(text["cpus"]),
            memory_gb=int(meminfo.group(1)) * 1024 / 1e9 if meminfo else 0.0,
            disk_free_gb=int(df[3]) / 1e9,
            listening=listening_ports(text["listening"]),
        )


FACT_ARGV = {
    "docker": ["docker", "version", "--format", "{{.Server.Version}}"],
    "compose": ["docker", "compose", "version", "--short"],
    "cpus": ["nproc"],
    "meminfo": ["cat", "/proc/meminfo"],
    "listening": ["ss", "-Hltn"],
}


@dataclass(frozen=True)
class HostFacts:
    docker: str
    compose: str
    cpus: int
    memory_gb: float
    disk_free_gb: float
    listening: frozenset[int]


def listening_ports(ss_output: str) -> frozenset[int]:
    """Ports in `ss -Hltn` output (local address is the 4th column)."""
    ports = set()
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) >= 4 and (m := re.search(r":(\d+)$", fields[3])):
            ports.add(int(m.group(1)))
    return frozenset(ports)


def resolve_context(
    project_dir: str, project_name: str | None, env_text: str, has_custom: bool
) -> ComposeContext:
    """compose's own resolution: -p, else COMPOSE_PROJECT_NAME from the env files, else the
    directory's name; `.env.custom` (self-hosted's override file) is added when it exists."""
    env_files = (f"{project_dir}/.env", f"{project_dir}/.env.custom") if has_custom else ()
    name = project_name or parse_env(env_text).get("COMPOSE_PROJECT_NAME") or ""
    return ComposeContext(name or default_project_name(project_dir), env_files)


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


def _labels(labels: dict[str, str]) -> list[str]:
    return [a for k, v in labels.items() for a in ("--label", f"{k}={v}")]


def parse_df(output: str) -> list[tuple[int, int]]:
    """`df -P -B1 A B ...` -> (total, available) bytes per path, in order."""
    return [(int(f[1]), int(f[3])) for f in (r.split() for r in output.strip().splitlines()[1:])]


def parse_ps(output: str) -> list[dict]:
    """`docker compose ps --format json`: NDJSON (compose >= 2.21) or one JSON array (older)."""
    text = output.strip()
    if not text:
        return []
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def name_problems(stack: StackLayout, config: dict, volumes: tuple[DataVolume, ...]) -> list[str]:
    """Names this host's layout expects that the resolved compose project does not define,
    each with the block field to set."""
    services = set(config.get("services", {}))
    problems = []
    for role in sorted(stack.required):
        name = stack.services.get(role)
        if name not in services:
            problems.append(
                f"service {name!r} (role {role}) is not in the compose project (it has: "
                f"{', '.join(sorted(services)) or 'none'}); set service_names.{role} in the block"
            )
    defined = config.get("volumes", {}) or {}
    for volume in volumes:
        ref = stack.volumes[volume]
        if ref.name not in defined:
            problems.append(
                f"volume {ref.name!r} ({volume}) is not in the compose project (it has: "
                f"{', '.join(sorted(defined)) or 'none'}); set volume_names.{volume} in the block"
            )
    return problems
