"""`SentryHost`: a Docker host running a Sentry compose stack, reached over SSH.

Saved once (UI or `deployments/setup.py`), loaded by name in every flow. The block itself holds
what the host is (its fields, its layout with this host's names, its compose project and
identity) and the one transport (`run`, `stream`, `put`/`get`, `tunnel`). What flows call are
its named verbs, one room per job, mixed in from:
- blocks/host_compose.py: the compose project (services, containers, config, up/down);
- blocks/host_docker.py: the engine (containers, volumes, images, disk, the host's facts);
- blocks/host_data.py: throwaway tool containers next to the data (volume tars, config tar);
- blocks/host_project.py: the project dir's files (`.env`, git checkout, replica counts);
- blocks/host_sentry.py: Sentry's CLI, jobs, version, images, backlog, service probes;
- blocks/sentry_api.py: Sentry's HTTP interface (health, store, event lookup).
The argv behind the verbs comes from pure builders (blocks/commands.py and the `*_argv` methods).
"""

from __future__ import annotations

import contextlib
import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal

from prefect.blocks.core import Block
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from blocks import host_lease
from blocks.backup_set import host_id_of
from blocks.dotenv import parse_env
from blocks.host_compose import ComposeVerbs
from blocks.host_data import DataVerbs
from blocks.host_docker import DockerVerbs
from blocks.host_project import ProjectVerbs
from blocks.host_sentry import SentryVerbs
from blocks.layouts import (
    PROJECT_NAME,
    DataVolume,
    Role,
    StackLayout,
    default_project_name,
    get_layout,
)
from blocks.sentry_api import SentryAPI
from blocks.ssh import (
    CommandResult,
    SSHTransport,
)
from blocks.ssh_connection import SSHConnection


@dataclass(frozen=True)
class ComposeContext:
    """What compose itself would resolve in the project dir: the project name and env files."""

    project: str
    env_files: tuple[str, ...] = ()


PORT = {"minimum": 1, "maximum": 65535}  # the form checks it; the validator explains


class SentryHost(ComposeVerbs, DockerVerbs, DataVerbs, ProjectVerbs, SentryVerbs, SentryAPI, Block):
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

    ssh: SSHConnection = Field(
        description="How to reach the Docker host (an SSH Connection block: address, user, key, "
        "pinned host key)."
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
        "(http://<public key>@host[:port]/<project id>): posted on the host to the DSN's port "
        "(where Relay takes events), or web_port when it names none; empty: no ingestion probe.",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="Sentry API token with the org:read scope (the event-ID lookup's "
        "permission) to confirm the synthetic event was processed; needed with probe_dsn.",
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
    _identity: str | None = PrivateAttr(default=None)

    @field_validator("project_name")
    @classmethod
    def _project_name(cls, value: str | None) -> str | None:
        if value is not None and not PROJECT_NAME.match(value):
            raise ValueError(
                f"project_name {value!r} is not a compose project name ([a-z0-9][a-z0-9_-]*)"
            )
        return value or None

    @field_validator(
        "web_port", "postgres_port", "redis_port", "clickhouse_port",
        "clickhouse_http_port",
    )  # fmt: skip
    @classmethod
    def _valid_port(cls, value: int | None, info) -> int | None:
        if value is not None and not 1 <= value <= 65535:
            raise ValueError(f"{info.field_name} must be a TCP port 1-65535, got {value}")
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
        return f"{self.ssh.host}:{self.ssh.port}{self.project_dir}"

    def __str__(self) -> str:
        """The block's saved name (flow run names are `backup-{host}`), else where it points."""
        return self._block_document_name or self.label

    @property
    def transport(self) -> SSHTransport:
        """The one way to the host; refused once this process lost a lock lease on it."""
        host_lease.check(self.ssh.target)
        return SSHTransport(self.ssh.target)

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
        """Which stack this is, whatever the block is called and however SSH reaches it: the
        compose project and the Docker engine's own ID (`engine_id`, hashed),
        `<project>-<12 hex>`. Names the host's folder in a backup store and its lock: a
        machine reached by address and by name is one host. Asked once per block instance."""
        if self._identity is None:
            self._identity = host_id_of(self.project, self.engine_id())
        return self._identity

    @property
    def legacy_identity(self) -> str:
        """The host id releases before the engine-based one used (SSH target and compose
        project, `127-0-0-1-22022-sentry`): their sets stay readable, and age out, there."""
        raw = f"{self.ssh.host}-{self.ssh.port}-{self.project}".lower()
        return re.sub(r"[^a-z0-9]+", "-", raw).strip("-")[:150]

    @property
    def set_folders(self) -> tuple[str, ...]:
        """The host ids its backup sets may sit under, current first."""
        return tuple(dict.fromkeys((self.identity, self.legacy_identity)))

    # -- commands as data ---------------------------------------------------------------------

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

    # -- named verbs: what flows call (the argv behind them is built in blocks/commands.py) -----

    # -- files and facts, by name (flows never build argv) -------------------------------------
    def exists(self, path: str) -> bool:
        return self.transport.exists(path)

    def listdir(self, path: str) -> list[str]:
        return self.transport.listdir(path)

    def file_mode(self, path: str) -> int:
        return self.transport.stat_mode(path)

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

    # -- upgrades: the image a stack runs, its Sentry services and their containers -------------

    # -- Sentry, the way an operator talks to it ------------------------------------------------


def resolve_context(
    project_dir: str, project_name: str | None, env_text: str, has_custom: bool
) -> ComposeContext:
    """compose's own resolution: -p, else COMPOSE_PROJECT_NAME from the env files, else the
    directory's name; `.env.custom` (self-hosted's override file) is added when it exists."""
    env_files = (f"{project_dir}/.env", f"{project_dir}/.env.custom") if has_custom else ()
    name = project_name or parse_env(env_text).get("COMPOSE_PROJECT_NAME") or ""
    return ComposeContext(name or default_project_name(project_dir), env_files)
