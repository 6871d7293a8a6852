"""The one place that knows how a Sentry stack is laid out.

Flows speak roles (web, worker, postgres, ...); compose knows service and volume names. A
`StackLayout` maps one to the other for one install layout. The presets are defaults taken from
the real projects (the guide's docker-compose.yml; getsentry/self-hosted docker-compose.yml and
.env at the 26.x tags); every name is per-host data that a host block can override
(`StackLayout.customized`), because real installs rename things.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field, field_validator

# compose's own rules (compose-spec): service and volume keys, project names; plus .env and SQL
SERVICE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SQL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")


class Role(StrEnum):
    WEB = "web"
    WORKER = "worker"
    CRON = "cron"
    POSTGRES = "postgres"
    PGBOUNCER = "pgbouncer"
    REDIS = "redis"
    CLICKHOUSE = "clickhouse"
    KAFKA = "kafka"
    ZOOKEEPER = "zookeeper"
    TASKBROKER = "taskbroker"
    CLEANUP = "cleanup"
    NODESTORE = "nodestore"
    NGINX = "nginx"
    RELAY = "relay"
    SNUBA = "snuba"


class DataVolume(StrEnum):
    """Volumes whose contents are the stack's data (what a backup set is made of)."""

    POSTGRES = "postgres"
    FILES = "files"
    CLICKHOUSE = "clickhouse"
    NODESTORE = "nodestore"
    TASKBROKER = "taskbroker"
    REDIS = "redis"


class VolumeRef(BaseModel):
    name: str = Field(description="The volume's key in the compose file")
    external: bool = Field(
        default=False,
        description="External volumes keep their literal name; others get the project prefix",
    )

    @field_validator("name")
    @classmethod
    def _compose_name(cls, value: str) -> str:
        if not VOLUME_NAME.match(value):
            raise ValueError(f"{value!r} is not a compose volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)")
        return value

    def docker_name(self, project_name: str) -> str:
        """The name `docker volume ls` shows for this volume in the given compose project."""
        return self.name if self.external else f"{project_name}_{self.name}"


class Backlog(BaseModel):
    """Where the worker service's pending tasks can be counted (the autoscaler reads it)."""

    # redis-lists: Celery's broker in Redis (the guide's era): one Redis list per queue, named
    # as the queue. taskbroker-sqlite: 26.x's taskbroker keeps the activations it has taken from
    # Kafka in SQLite, `inflight_taskactivations`, status 'Pending' until a taskworker takes one.
    kind: Literal["redis-lists", "taskbroker-sqlite"]
    queues: tuple[str, ...] = ()

    @field_validator("queues")
    @classmethod
    def _queue_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not QUEUE_NAME.match(name):
                raise ValueError(f"queue name {name!r} is not a Celery queue name")
        return value

    db_path: str = ""  # taskbroker-sqlite: the database inside the taskbroker's container
    # taskbroker-sqlite: the broker stops reading Kafka once this many activations are pending
    # (getsentry/taskbroker src/config/store.rs max_pending_count, 2048 at 25.6.0-26.7.2), so
    # a count at the cap means "at least": the rest waits in Kafka. 0: no cap (Redis lists).
    max_pending: int = 0
    # the taskbroker service's environment variable that overrides it, if the stack sets one
    max_pending_env: str = "TASKBROKER_MAX_PENDING_COUNT"


class StackLayout(BaseModel):
    name: str
    services: dict[Role, str]
    volumes: dict[DataVolume, VolumeRef]
    # Roles a working stack must have running; others are checked only when the stack defines them.
    required: frozenset[Role]
    postgres_user: str
    postgres_db: str
    clickhouse_database: str
    # Data volumes that together make a full backup set (order = backup order).
    backup_volumes: tuple[DataVolume, ...]
    # Where the stack's secrets are configured: .env variables (None: not by .env).
    secret_key_env: str | None
    postgres_password_env: str | None
    # Dependencies started (and waited for) before migrations, in order.
    dependencies: tuple[Role, ...]
    # Files and folders (relative to the project dir) a restore of this install needs, if present.
    config_files: tuple[str, ...]
    # Roles whose service runs as N identical replicas (`up --scale`): queue consumers.
    scalable: tuple[Role, ...] = (Role.WORKER,)
    backlog: Backlog
    # The .env file operators edit (compose reads COMPOSE_FILE there): where a persisted worker
    # count is wired in (self-hosted: its git-ignored `.env.custom`, merged over `.env`).
    operator_env_file: str = ".env"
    # The stack's own event retention when its env files do not set SENTRY_EVENT_RETENTION_DAYS
    # (the variable self-hosted's cleanup cron, Snuba's TTL and its SeaweedFS lifecycle read):
    # the guide's `sentry cleanup --days 30`; self-hosted's `.env` ships 90.
    event_retention_days: int
    # The Sentry image's entrypoint as the layout's compose file sets it for Sentry services
    # (self-hosted: /etc/sentry/entrypoint.sh), used to run `sentry` verbs in the cleanup service,
    # whose own entrypoint is cron's. None: the service's own entrypoint takes `sentry` verbs.
    sentry_entrypoint: str | None = None
    # How a backup makes a volume's copy consistent, where a plain live tar would not be:
    # paused: the service (role) that writes it is `docker pause`d during the tar (a crash-
    # consistent copy of every file: data, indexes, its key file); sqlite: the named database
    # file is copied with SQLite's online backup. Other volumes: a live tar (files written once).
    paused_for_copy: dict[DataVolume, Role] = Field(default_factory=dict)
    sqlite_copy: dict[DataVolume, str] = Field(default_factory=dict)
    # The services events come in through, stopped first to pause ingestion (a move's final
    # backup): the guide publishes web itself; self-hosted publishes only nginx (SENTRY_BIND:80),
    # which sends /api/store/ and /api/<project>/ to relay and the rest to web
    # (getsentry/self-hosted docker-compose.yml and nginx.conf, 26.8.0).
    ingest: tuple[Role, ...] = (Role.WEB,)
    # What a stack needs to ingest at all: Sentry since 2020 takes events only through Relay
    # (the Python store endpoint was removed, getsentry/sentry#19135) and reads them through
    # Snuba (events in ClickHouse). The guide's own service list has neither: its preset names
    # them as a working guide-shaped install adds them (optional there, required on self-hosted)
    pipeline: tuple[Role, ...] = (Role.RELAY, Role.SNUBA)

    @field_validator("services")
    @classmethod
    def _service_names(cls, value: dict[Role, str]) -> dict[Role, str]:
        for role, name in value.items():
            if not SERVICE_NAME.match(name):
                raise ValueError(f"service name {name!r} for role {role} is not a compose name")
        return value

    @field_validator("postgres_user", "postgres_db", "clickhouse_database")
    @classmethod
    def _sql_name(cls, value: str, info) -> str:
        if not SQL_NAME.match(value):
            raise ValueError(f"{info.field_name} {value!r} is not a plain SQL identifier")
        return value

    @field_validator("secret_key_env", "postgres_password_env")
    @classmethod
    def _env_name(cls, value: str | None, info) -> str | None:
        if value is not None and not ENV_NAME.match(value):
            raise ValueError(f"{info.field_name} {value!r} is not an environment variable name")
        return value

    def service(self, role: Role) -> str:
        return self.services[role]

    def role_of(self, service: str) -> Role | None:
        for role, name in self.services.items():
            if name == service:
                return role
        return None

    def customized(
        self,
        services: dict[Role, str] | None = None,
        volumes: dict[DataVolume, str] | None = None,
        queues: tuple[str, ...] = (),
        **names: str | None,
    ) -> StackLayout:
        """This layout with some names replaced (a host that renamed things); validated."""
        data = self.model_dump()
        data["services"].update(services or {})
        if queues:
            data["backlog"]["queues"] = tuple(queues)
        for volume, name in (volumes or {}).items():
            ref = data["volumes"].get(volume, {"external": False})
            data["volumes"][volume] = {**ref, "name": name}
        data.update({k: v for k, v in names.items() if v is not None})
        return StackLayout.model_validate(data)


GUIDE = StackLayout(
    name="guide",
    services={
        Role.WEB: "sentry",
        Role.WORKER: "sentry-worker",
        Role.CRON: "sentry-cron",
        Role.POSTGRES: "sentry-postgres",
        Role.REDIS: "sentry-redis",
        Role.CLICKHOUSE: "sentry-clickhouse",
        Role.KAFKA: "sentry-kafka",
        Role.ZOOKEEPER: "sentry-zookeeper",
        # not in the guide: what a guide-shaped install must add to ingest (Relay taking the
        # SDKs' events, Snuba over a ClickHouse >= 23.8), under the guide's naming
        Role.RELAY: "sentry-relay",
        Role.SNUBA: "sentry-snuba",
    },
    # compose keys as in the guide; compose prefixes them with the project name
    volumes={
        DataVolume.POSTGRES: VolumeRef(name="sentry_postgres_data"),  # not named by the guide
        DataVolume.FILES: VolumeRef(name="sentry_data"),
        DataVolume.CLICKHOUSE: VolumeRef(name="sentry_clickhouse_data"),
    },
    required=frozenset({Role.WEB, Role.WORKER, Role.CRON, Role.POSTGRES, Role.REDIS}),
    postgres_user="sentry",
    postgres_db="sentry",
    clickhouse_database="sentry",
    backup_volumes=(DataVolume.FILES,),
    secret_key_env="SENTRY_SECRET_KEY",
    postgres_password_env="SENTRY_DB_PASSWORD",
    dependencies=(Role.POSTGRES, Role.REDIS, Role.CLICKHOUSE, Role.ZOOKEEPER, Role.KAFKA),
    config_files=(
        ".env",
        "docker-compose.yml",
        "docker-compose.override.yml",
        "sentry/config.yml",
        "sentry/sentry.conf.py",
        "sentry-ops.scale.yml",
    ),
    event_retention_days=30,
    # Sentry's Celery queues that hold event work (sentry/conf/server.py), summed
    # SDKs post to Relay (the DSN's port), people and the API use web: both stopped
    ingest=(Role.RELAY, Role.WEB),
    backlog=Backlog(
        kind="redis-lists",
        queues=(
            "default",
            "events.preprocess_event",
            "events.process_event",
            "events.save_event",
            "events.save_event_transaction",
            "events.symbolicate_event",
            "post_process_errors",
        ),
    ),
)

SELF_HOSTED = StackLayout(
    name="self-hosted",
    services={
        Role.WEB: "web",
        Role.WORKER: "taskworker",
        Role.CRON: "taskscheduler",
        Role.TASKBROKER: "taskbroker",
        Role.CLEANUP: "sentry-cleanup",
        Role.POSTGRES: "postgres",
        Role.PGBOUNCER: "pgbouncer",
        Role.REDIS: "redis",
        Role.CLICKHOUSE: "clickhouse",
        Role.KAFKA: "kafka",
        Role.NODESTORE: "seaweedfs",
        Role.NGINX: "nginx",
        Role.RELAY: "relay",
        Role.SNUBA: "snuba-api",
    },
    volumes={
        DataVolume.POSTGRES: VolumeRef(name="sentry-postgres", external=True),
        DataVolume.FILES: VolumeRef(name="sentry-data", external=True),
        DataVolume.CLICKHOUSE: VolumeRef(name="sentry-clickhouse", external=True),
        DataVolume.NODESTORE: VolumeRef(name="sentry-seaweedfs", external=True),
        DataVolume.TASKBROKER: VolumeRef(name="sentry-taskbroker"),
        DataVolume.REDIS: VolumeRef(name="sentry-redis", external=True),
    },
    required=frozenset(
        {
            Role.WEB,
            Role.WORKER,
            Role.CRON,
            Role.TASKBROKER,
            Role.POSTGRES,
            Role.PGBOUNCER,
            Role.REDIS,
            Role.CLICKHOUSE,
            Role.KAFKA,
            Role.NODESTORE,
            Role.NGINX,
            Role.RELAY,
            Role.SNUBA,
        }
    ),
    postgres_user="postgres",
    postgres_db="postgres",
    clickhouse_database="default",
    # the docs' full backup (develop-docs/self-hosted/backup.mdx) includes sentry-redis: the
    # taskbroker's activations point into it
    backup_volumes=(
        DataVolume.FILES,
        DataVolume.NODESTORE,
        DataVolume.TASKBROKER,
        DataVolume.REDIS,
    ),
    # self-hosted keeps its secret key in sentry/config.yml (system.secret-key) and runs
    # Postgres with trust auth; its ./install.sh bootstraps it.
    secret_key_env=None,
    postgres_password_env=None,
    dependencies=(Role.POSTGRES, Role.REDIS, Role.CLICKHOUSE, Role.KAFKA, Role.NODESTORE),
    config_files=(
        ".env",
        ".env.custom",
        "docker-compose.yml",
        "docker-compose.override.yml",
        "nginx.conf",
        "sentry/config.yml",
        "sentry/sentry.conf.py",
        "relay/config.yml",
        "relay/credentials.json",
        "certificates",
        "sentry/entrypoint.sh",
        "sentry-ops.scale.yml",
    ),
    # TASKBROKER_DB_PATH in self-hosted's compose file (volume sentry-taskbroker at /opt/sqlite)
    backlog=Backlog(
        kind="taskbroker-sqlite",
        db_path="/opt/sqlite/taskbroker-activations.sqlite",
        max_pending=2048,
    ),
    operator_env_file=".env.custom",
    event_retention_days=90,  # getsentry/self-hosted .env @ 26.x
    sentry_entrypoint="/etc/sentry/entrypoint.sh",
    # SeaweedFS keeps objects, indexes, filer metadata and its SSE key (/data/.mini_sse_kek) on
    # the volume: paused for the copy (measured against an object-by-object copy: README)
    # Redis (its RDB and AOF files) likewise, for the second or so its copy takes
    paused_for_copy={DataVolume.NODESTORE: Role.NODESTORE, DataVolume.REDIS: Role.REDIS},
    sqlite_copy={DataVolume.TASKBROKER: "taskbroker-activations.sqlite"},
    ingest=(Role.NGINX, Role.RELAY),
)

LAYOUTS: dict[str, StackLayout] = {layout.name: layout for layout in (GUIDE, SELF_HOSTED)}


def get_layout(name: str) -> StackLayout:
    try:
        return LAYOUTS[name]
    except KeyError:
        known = ", ".join(sorted(LAYOUTS))
        raise ValueError(f"unknown stack layout {name!r}; choose one of: {known}") from None


def default_project_name(project_dir: str) -> str:
    """compose's default project name: the directory's base name, lowercased, [a-z0-9_-] kept."""
    base = project_dir.rstrip("/").rsplit("/", 1)[-1].lower()
    return re.sub(r"^[^a-z0-9]+", "", re.sub(r"[^a-z0-9_-]", "", base))
