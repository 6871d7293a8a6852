"""The one place that knows how a Sentry stack is laid out.

Flows speak roles (web, worker, postgres, ...); compose knows service and volume names. A
`StackLayout` maps one to the other for one install layout. See shared/LAYOUTS.md for the sources.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class Role(StrEnum):
    WEB = "web"
    WORKER = "worker"
    CRON = "cron"
    POSTGRES = "postgres"
    REDIS = "redis"
    CLICKHOUSE = "clickhouse"
    KAFKA = "kafka"
    ZOOKEEPER = "zookeeper"
    TASKBROKER = "taskbroker"
    CLEANUP = "cleanup"
    NODESTORE = "nodestore"


class DataVolume(StrEnum):
    """Volumes whose contents are the stack's data (what a backup set is made of)."""

    POSTGRES = "postgres"
    FILES = "files"
    CLICKHOUSE = "clickhouse"
    NODESTORE = "nodestore"


class VolumeRef(BaseModel):
    name: str = Field(description="The volume's key in the compose file")
    external: bool = Field(
        default=False,
        description="External volumes keep their literal name; others get the project prefix",
    )

    def docker_name(self, project_name: str) -> str:
        """The name `docker volume ls` shows for this volume in the given compose project."""
        return self.name if self.external else f"{project_name}_{self.name}"


class StackLayout(BaseModel):
    name: str
    services: dict[Role, str]
    volumes: dict[DataVolume, VolumeRef]
    # Roles a working stack must have running; others are checked only when the stack defines them.
    required: frozenset[Role]
    postgres_user: str
    postgres_db: str
    # Data volumes that together make a full backup set (order = backup order).
    backup_volumes: tuple[DataVolume, ...]
    # Where the stack's secrets are configured: .env variables (None: not by .env).
    secret_key_env: str | None
    postgres_password_env: str | None
    # Dependencies started (and waited for) before migrations, in order.
    dependencies: tuple[Role, ...]

    def service(self, role: Role) -> str:
        return self.services[role]

    def role_of(self, service: str) -> Role | None:
        for role, name in self.services.items():
            if name == service:
                return role
        return None


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
    },
    volumes={
        DataVolume.POSTGRES: VolumeRef(name="sentry-postgres"),
        DataVolume.FILES: VolumeRef(name="sentry-data"),
        DataVolume.CLICKHOUSE: VolumeRef(name="sentry-clickhouse"),
    },
    required=frozenset({Role.WEB, Role.WORKER, Role.CRON, Role.POSTGRES, Role.REDIS}),
    postgres_user="sentry",
    postgres_db="sentry",
    backup_volumes=(DataVolume.FILES,),
    secret_key_env="SENTRY_SECRET_KEY",
    postgres_password_env="POSTGRES_PASSWORD",
    dependencies=(Role.POSTGRES, Role.REDIS, Role.CLICKHOUSE, Role.ZOOKEEPER, Role.KAFKA),
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
        Role.REDIS: "redis",
        Role.CLICKHOUSE: "clickhouse",
        Role.KAFKA: "kafka",
        Role.NODESTORE: "seaweedfs",
    },
    volumes={
        DataVolume.POSTGRES: VolumeRef(name="sentry-postgres", external=True),
        DataVolume.FILES: VolumeRef(name="sentry-data", external=True),
        DataVolume.CLICKHOUSE: VolumeRef(name="sentry-clickhouse", external=True),
        DataVolume.NODESTORE: VolumeRef(name="sentry-seaweedfs", external=True),
    },
    required=frozenset(
        {
            Role.WEB,
            Role.WORKER,
            Role.CRON,
            Role.TASKBROKER,
            Role.POSTGRES,
            Role.REDIS,
            Role.CLICKHOUSE,
            Role.KAFKA,
            Role.NODESTORE,
        }
    ),
    postgres_user="postgres",
    postgres_db="postgres",
    backup_volumes=(DataVolume.FILES, DataVolume.NODESTORE),
    # self-hosted keeps its secret key in sentry/config.yml (system.secret-key) and runs
    # Postgres with trust auth; its ./install.sh bootstraps it.
    secret_key_env=None,
    postgres_password_env=None,
    dependencies=(Role.POSTGRES, Role.REDIS, Role.CLICKHOUSE, Role.KAFKA, Role.NODESTORE),
)

LAYOUTS: dict[str, StackLayout] = {layout.name: layout for layout in (GUIDE, SELF_HOSTED)}


def get_layout(name: str) -> StackLayout:
    try:
        return LAYOUTS[name]
    except KeyError:
        known = ", ".join(sorted(LAYOUTS))
        raise ValueError(f"unknown stack layout {name!r}; choose one of: {known}") from None
