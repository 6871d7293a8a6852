"""Why a Sentry host is unwell: the facts the guide's troubleshooting reads (container state,
restarts, OOM kills, exit codes, health; `docker stats`; `docker system df -v`; Postgres
connections and the longest queries; ClickHouse memory and parts; Redis memory; the worker
backlog; the log tails of the services that are not well), read without changing anything, and
the known causes they point to, each with its fix in one sentence.

The one module that owns the diagnosis and its support bundle (JSON, every text masked by
`Masker`). The facts are read from Docker, Postgres, ClickHouse and Redis themselves (their own
output formats; Docker's captured in tests/unit/fixtures/docker_*), never from a Sentry log line
that only the sandbox's stand-in writes: a cause that reads a log matches an operating-system or
Postgres message (strerror(EADDRINUSE), Postgres' own error texts).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, SecretStr

from blocks import clickhouse, postgres
from blocks.dotenv import parse_env
from blocks.layouts import Role
from blocks.ssh import RemoteCommandError

if TYPE_CHECKING:
    from blocks.sentry_host import SentryHost

BUNDLE_FORMAT = "sentry-ops-support-bundle/1"
MASK = "********"

# -- masking ---------------------------------------------------------------------------------------
# env keys whose values are secrets (self-hosted's .env/.env.custom and the guide's .env)
SECRET_KEY_NAME = re.compile(
    r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE|DSN|_KEY$|^KEY$", re.I
)
# a DSN's public (and legacy secret) key, `https://<key>[:<secret>]@host/<project>`, and the
# same keys as Relay and the SDKs send them (`sentry_key=`, `sentry_secret=` in X-Sentry-Auth or
# the query string): getsentry/sentry src/sentry/utils/auth.py, relay-auth
DSN_KEYS = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)([0-9a-f]{32})(:[0-9a-f]{32})?@")
SENTRY_AUTH = re.compile(r"(?i)\b(sentry_key|sentry_secret)=([0-9a-f]{16,})")
# a URL's user info: scheme://<user[:password]>@host
USERINFO = re.compile(r"(?i)[a-z][a-z0-9+.-]*://([^/\s@]+)@")
# a URL's password: scheme://user:password@host
URL_PASSWORD = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)([^@\s/]+)@")


class Masker:
    """Replaces every known secret (literally) and every DSN key or URL password (by shape)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        found = set()
        for secret in secrets:
            found.add(secret)
            # a URL's user info alone too (a DSN's key, a password), as a log may print it
            if match := USERINFO.match(secret.strip()):
                found.update(p for p in match[1].split(":") if p)
        # longest first, so a secret that contains another is masked whole
        self.secrets = sorted({s for s in found if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        text = DSN_KEYS.sub(lambda m: f"{m[1]}{MASK}@", text)
        text = SENTRY_AUTH.sub(lambda m: f"{m[1]}={MASK}", text)
        return URL_PASSWORD.sub(lambda m: f"{m[1]}{MASK}@", text)

    def deep(self, value: Any) -> Any:
        """`value` (JSON-like) with every string masked."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.deep(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.deep(v) for v in value]
        return value


# Sentry's client keys: getsentry/sentry src/sentry/models/projectkey.py (ProjectKey, db_table
# "sentry_projectkey": public_key, the DSN's user; secret_key, its legacy password)
PROJECT_KEYS_SQL = (
    "SELECT public_key, coalesce(secret_key, '') FROM sentry_projectkey "
    "WHERE to_regclass('public.sentry_projectkey') IS NOT NULL"
)


def block_secrets(model: BaseModel) -> list[str]:
    """Every SecretStr value of a block and of the blocks inside it (an SSH key, passwords)."""
    found = []
    for name in type(model).model_fields:
        value = getattr(model, name, None)
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
            # a multi-line key: each line too, should a log print one
            found += [line.strip() for line in value.get_secret_value().splitlines()]
        elif isinstance(value, BaseModel):
            found += block_secrets(value)
    return found


def env_secrets(env_text: str) -> list[str]:
    """The values of an env file's secret-looking keys (`SECRET_KEY_NAME`)."""
    return [v for k, v in parse_env(env_text).items() if SECRET_KEY_NAME.search(k) and v]


# -- Docker's outputs ------------------------------------------------------------------------------
# `docker inspect -f CONTAINER_FORMAT`: no `.Config.Env` (secrets), no labels but compose's service
CONTAINER_FORMAT = (
    '{{.Id}}\t{{.Name}}\t{{index .Config.Labels "com.docker.compose.service"}}\t'
    "{{json .State}}\t{{.RestartCount}}\t{{.HostConfig.Memory}}\t"
    '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}'
)
# (the CLI runs the template over the JSON as maps: a bind mount has no "Name" key, and `.Name`
# of it fails the whole inspect, "map has no entry for key"; `.Type` is always there)


@dataclass
class Container:
    """One container of the stack, as `docker inspect` and `docker stats` report it."""

    id: str
    name: str
    service: str
    status: str  # created, running, paused, restarting, removing, exited, dead
    health: str  # healthy, unhealthy, starting, or "-" (no healthcheck)
    restarts: int
    oom_killed: bool
    exit_code: int
    error: str  # Docker's own error for the last start ("port is already allocated", ...)
    started_at: str
    finished_at: str
    memory_limit: int  # bytes, 0: none
    volumes: list[str] = field(default_factory=list)
    cpu_percent: float | None = None
    memory_used: int | None = None
    memory_available: int | None = None  # the limit docker stats applies (the host's if none)
    oom_events: int = 0
    probe_output: str = ""

    @property
    def well(self) -> bool:
        return (
            self.status == "running"
            and self.health in ("healthy", "-", "starting")
            and not self.oom_killed
            and not self.oom_events
        )


def parse_containers(output: str) -> list[Container]:
    """`docker inspect -f CONTAINER_FORMAT <ids>` -> one Container per line."""
    found = []
    for line in output.splitlines():
        parts = line.split("\t")
        if len(parts) < 7 or not parts[3].startswith("{"):
            continue
        cid, name, service, state_json, restarts, memory, mounts = parts[:7]
        state = json.loads(state_json)
        health = state.get("Health") or {}
        log = health.get("Log") or []
        found.append(
            Container(
                id=cid[:12],
                name=name.lstrip("/"),
                service=service or name.lstrip("/"),
                status=state.get("Status", "?"),
                health=health.get("Status") or "-",
                restarts=int(restarts or 0),
                oom_killed=bool(state.get("OOMKilled")),
                exit_code=int(state.get("ExitCode") or 0),
                error=state.get("Error") or "",
                started_at=state.get("StartedAt") or "",
                finished_at=state.get("FinishedAt") or "",
                memory_limit=int(memory or 0),
                volumes=mounts.split(),
                probe_output=(log[-1].get("Output") or "").strip()[-300:] if log else "",
            )
        )
    return found


UNITS = {
    "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}  # fmt: skip


def parse_size(text: str) -> int:
    """Docker's human sizes ("24.89MiB", "1.13GB", "0B", "512kB") -> bytes."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", text)
    if not match:
        raise ValueError(f"not a size: {text!r}")
    return int(float(match[1]) * UNITS[(match[2] or "b").lower()])


def apply_stats(containers: list[Container], output: str) -> None:
    """`docker stats --no-stream --format '{{json .}}' <ids>` lines onto the containers."""
    by_id = {c.id[:12]: c for c in containers}
    for line in output.splitlines():
        if not line.startswith("{"):
            continue
        row = json.loads(line)
        container = by_id.get(str(row.get("ID", ""))[:12])
        if container is None:
            continue
        with contextlib.suppress(ValueError):
            container.cpu_percent = float(str(row.get("CPUPerc", "")).rstrip("%"))
            used, _, available = str(row.get("MemUsage", "")).partition("/")
            container.memory_used = parse_size(used)
            container.memory_available = parse_size(available)


def apply_oom_events(containers: list[Container], output: str) -> None:
    """`docker events --filter event=oom --format '{{json .}}'` lines: OOM kills inside each
    container (any of its processes; `.State.OOMKilled` says only whether its main one was)."""
    by_id = {c.id[:12]: c for c in containers}
    for line in output.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            container = by_id.get(str(row.get("id") or row.get("ID") or "")[:12])
            if container is not None:
                container.oom_events += 1


@dataclass
class DockerDisk:
    """`docker system df -v`: the bytes of each volume, and of images, containers, build cache."""

    volumes: dict[str, int]
    images: int
    containers: int
    build_cache: int


def parse_system_df(output: str) -> DockerDisk:
    """`docker system df -v --format '{{json .}}'` (one JSON object)."""
    data = json.loads(output)

    def total(rows: list[dict] | None, key: str) -> int:
        return sum(parse_size(r.get(key) or "0B") for r in rows or [])

    volumes = {v["Name"]: parse_size(v.get("Size") or "0B") for v in data.get("Volumes") or []}
    return DockerDisk(
        volumes=volumes,
        images=total(data.get("Images"), "UniqueSize"),
        containers=total(data.get("Containers"), "Size"),
        build_cache=total(data.get("BuildCache"), "Size"),
    )


def containers(host: SentryHost, oom_window: str) -> list[Container]:
    """Every container of the stack's compose project (running or not, one-off ones too), with
    `docker stats` of the running ones and the OOM kills of the last `oom_window`."""
    label = f"label=com.docker.compose.project={host.project}"
    ids = host.run(["docker", "ps", "-aq", "--filter", label], timeout=60).text.split()
    if not ids:
        return []
    found = parse_containers(host.run(["docker", "inspect", "-f", CONTAINER_FORMAT, *ids],
                                      timeout=60).text)  # fmt: skip
    running = [c.id for c in found if c.status == "running"]
    if running:
        stats = ["docker", "stats", "--no-stream", "--format", "{{json .}}", *running]
        apply_stats(found, host.run(stats, timeout=120, check=False).text)
    events = ["docker", "events", "--since", oom_window, "--until", "0s", "--filter",
              "type=container", "--filter", "event=oom", "--filter", label, "--format",
              "{{json .}}"]  # fmt: skip
    apply_oom_events(found, host.run(events, timeout=60, check=False).text)
    return found


def disk(host: SentryHost) -> tuple[list[dict], DockerDisk | None, list[str]]:
    """Free space where Docker keeps its data and on each data volume's file system, and
    `docker system df -v` (None, with the error, where it fails)."""
    from blocks.host_docker import parse_df

    df = parse_df(host.docker_df())
    rows = [{"where": f"docker ({host.docker_data_dir})", "total": df[0][0], "free": df[0][1]}]
    try:
        volumes = host.existing_volumes(list(host.stack.volumes))
        image = host.service_images().get(host.stack.service(Role.WEB), "")
    except RemoteCommandError as exc:  # compose cannot read the project: said elsewhere
        volumes, image = [], ""
        rows[0]["note"] = f"data volumes not read: {exc}"[:300]
    if volumes and image:
        sizes = parse_df(host.volumes_df(volumes, image))
        rows += [{"where": f"volume {v} ({host.volume_name(v)})", "total": t, "free": f}
                 for v, (t, f) in zip(volumes, sizes, strict=True)]  # fmt: skip
    out = host.run(["docker", "system", "df", "-v", "--format", "{{json .}}"], timeout=600,
                   check=False)  # fmt: skip
    if out.exit_code != 0:
        return rows, None, [f"docker system df -v: {out.text[-200:]}"]
    return rows, parse_system_df(out.text), []


# -- Postgres, ClickHouse, Redis -------------------------------------------------------------------
@dataclass
class PostgresFacts:
    connections: int | None = None
    max_connections: int | None = None
    reserved: int | None = None
    longest: list[dict] = field(default_factory=list)
    error: str = ""
    dsn_keys: list[str] = field(default_factory=list, repr=False)  # masked, never reported


CONNECTIONS_SQL = (
    "SELECT (SELECT count(*) FROM pg_stat_activity), current_setting('max_connections'), "
    "current_setting('superuser_reserved_connections')"
)
# the running statements, longest first (never this one); the text cut short, masked later
LONGEST_SQL = (
    "SELECT pid, coalesce(usename, ''), coalesce(state, ''), "
    "extract(epoch FROM now() - query_start)::int, coalesce(wait_event_type, ''), "
    "left(regexp_replace(query, '\\s+', ' ', 'g'), 200) FROM pg_stat_activity "
    "WHERE state IS NOT NULL AND state <> 'idle' AND pid <> pg_backend_pid() "
    "AND query_start IS NOT NULL ORDER BY query_start LIMIT 5"
)


def postgres_facts(host: SentryHost) -> PostgresFacts:
    """Connections against max_connections and the longest-running statements, read as the
    stack's own database user in its container (psql); an error (Postgres down, no slot left:
    "sorry, too many clients already") is itself a fact."""
    try:
        with postgres.psql(host) as db:
            count, limit, reserved = db.rows(CONNECTIONS_SQL)[0]
            keys = [k for row in db.rows(PROJECT_KEYS_SQL) for k in row if k]
            longest = [
                {"pid": int(p), "user": u, "state": s, "seconds": int(t or 0), "waiting": w,
                 "query": q}
                for p, u, s, t, w, q in db.rows(LONGEST_SQL)
            ]  # fmt: skip
        return PostgresFacts(int(count), int(limit), int(reserved), longest, dsn_keys=keys)
    except (RemoteCommandError, postgres.PostgresError, OSError) as exc:
        return PostgresFacts(error=str(exc)[-600:])


@dataclass
class ClickHouseFacts:
    memory_used: int | None = None
    memory_limit: int | None = None  # max_server_memory_usage as the server applies it
    parts: list[dict] = field(default_factory=list)  # active parts per table, most first
    error: str = ""


def clickhouse_facts(host: SentryHost) -> ClickHouseFacts:
    """MemoryTracking (what the server counts as used) against the memory limit it applies,
    and the active parts per table (a table with thousands is merging behind its inserts)."""
    try:
        with clickhouse.connect(host) as (client, _):
            used = client.rows("SELECT value FROM system.metrics WHERE metric = 'MemoryTracking'")
            limit = []
            with contextlib.suppress(Exception):  # system.server_settings: 23.x and later
                limit = client.rows(
                    "SELECT value FROM system.server_settings "
                    "WHERE name = 'max_server_memory_usage'"
                )
            parts = client.rows(
                "SELECT database, table, count(), sum(bytes_on_disk) FROM system.parts "
                "WHERE active GROUP BY database, table ORDER BY count() DESC LIMIT 10"
            )
        return ClickHouseFacts(
            memory_used=int(used[0][0]) if used else None,
            memory_limit=int(limit[0][0]) if limit and str(limit[0][0]).isdigit() else None,
            parts=[{"table": f"{d}.{t}", "parts": int(n), "bytes": int(b)} for d, t, n, b in parts],
        )
    except Exception as exc:
        return ClickHouseFacts(error=f"{exc.__class__.__name__}: {exc}"[-600:])


@dataclass
class RedisFacts:
    used_memory: int | None = None
    maxmemory: int | None = None
    error: str = ""


def parse_redis_info(text: str) -> dict[str, str]:
    """`INFO` output (`key:value` lines, `# Section` headers)."""
    return dict(
        line.strip().split(":", 1)
        for line in text.splitlines()
        if ":" in line and not line.startswith("#")
    )


def redis_facts(host: SentryHost) -> RedisFacts:
    argv = host.exec_argv(Role.REDIS, "redis-cli", "-p", str(host.redis_port), "INFO", "memory")
    try:
        info = parse_redis_info(host.run(argv, timeout=30).text)
    except RemoteCommandError as exc:
        return RedisFacts(error=str(exc)[-600:])
    return RedisFacts(int(info.get("used_memory", 0)), int(info.get("maxmemory", 0)))


def logged_relations(lines: Iterable[str]) -> list[str]:
    """Relations Postgres' own log says do not exist (`relation "%s" does not exist`: postgres
    src/backend/parser/parse_relation.c, parserOpenTable), unqualified public names only."""
    return sorted({m[1] for line in lines for m in MISSING_RELATION.finditer(line)
                   if re.fullmatch(r"[a-z_][a-z0-9_]*", m[1])})  # fmt: skip


def still_missing(host: SentryHost, names: Sequence[str]) -> list[str]:
    """Of relations a log named, those that still do not exist (a log keeps old errors)."""
    if not names:
        return []
    try:
        with postgres.psql(host) as db:
            return [n for n in names if db.value(f"SELECT to_regclass('public.{n}')") in ("", None)]
    except (RemoteCommandError, postgres.PostgresError, OSError):
        return list(names)  # cannot tell: as the log says


# -- the causes ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Thresholds:
    connections_ratio: float = 0.9  # of max_connections less the superusers' reserved slots
    clickhouse_memory_ratio: float = 0.9  # of the server's limit or its container's
    backlog_max: int = 10_000  # tasks waiting for a worker
    kafka_volume_gb: float = 20.0
    min_free_gb: float = 5.0


@dataclass(frozen=True)
class Cause:
    name: str
    evidence: str
    fix: str


@dataclass
class Facts:
    """Everything a diagnosis read (a support bundle holds it, masked)."""

    host: str
    layout: str
    taken_at: str
    containers: list[Container]
    defined: list[str]
    disk: list[dict]  # {"where", "free", "total"} (bytes)
    docker_disk: DockerDisk | None
    postgres: PostgresFacts
    clickhouse: ClickHouseFacts | None
    redis: RedisFacts | None
    backlog: dict | None  # {"count", "cap", "error"}
    secret_key_set: bool | None
    web_port: int
    listening: list[int]  # TCP ports something listens on (ss -Hltn)
    logs: dict[str, list[str]]  # service -> last lines (masked)
    kafka_service: str | None = None
    front_services: list[str] = field(default_factory=list)  # nginx (self-hosted), web
    compose_error: str = ""  # compose could not read the project (its own message)
    missing_relations: list[str] = field(default_factory=list)  # in Postgres' log, still missing
    postgres_service: str = ""
    clickhouse_service: str | None = None
    errors: list[str] = field(default_factory=list)  # what could not be read


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


ADDRESS_IN_USE = re.compile(r"(?i)address already in use|port is already allocated")
MISSING_RELATION = re.compile(r'relation "([^"]+)" does not exist')


def causes(facts: Facts, limits: Thresholds) -> list[Cause]:
    """The known causes the facts show, most fundamental first."""
    found: list[Cause] = []
    by_service: dict[str, list[Container]] = {}
    for c in facts.containers:
        by_service.setdefault(c.service, []).append(c)
    pg = by_service.get(facts.postgres_service, [])

    if facts.secret_key_set is False:
        found.append(Cause(
            "secret key not set",
            "the stack's config sets no Sentry secret key (or self-hosted's placeholder)",
            "run bootstrap for this host (it generates one once and keeps it), or restore the "
            "old key from the config in a backup set: Sentry will not start without it",
        ))  # fmt: skip
    if facts.compose_error:
        found.append(Cause(
            "compose cannot read the project",
            facts.compose_error.splitlines()[-1][-300:],
            "set what compose names in the project's env files (.env, .env.custom) and check "
            "with `docker compose config`: no `docker compose up` works until then",
        ))  # fmt: skip
    for service in facts.front_services:
        mine = by_service.get(service, [])
        if any(c.status == "running" for c in mine):
            continue
        said = " ".join(c.error for c in mine) + " " + " ".join(facts.logs.get(service, []))
        taken = facts.web_port in facts.listening
        if taken or ADDRESS_IN_USE.search(said):
            found.append(Cause(
                f"port {facts.web_port} in use",
                f"{service} is not running and "
                + (f"something else listens on {facts.web_port}" if taken
                   else "its start failed with 'address already in use'"),
                f"stop what holds port {facts.web_port} (`ss -ltnp 'sport = :{facts.web_port}'` "
                f"names it) or move Sentry's port, then `docker compose up -d {service}`",
            ))  # fmt: skip
            break
    pg_down = not any(c.status == "running" for c in pg) or any(c.health == "unhealthy" for c in pg)
    too_many = "too many clients" in facts.postgres.error or "remaining connection slots" in (
        facts.postgres.error
    )
    if pg_down or (facts.postgres.error and not too_many):
        state = ", ".join(f"{c.name} {c.status} {c.health}" for c in pg) or "no container"
        found.append(Cause(
            "database not ready",
            f"{facts.postgres_service}: {state}"
            + (f"; {facts.postgres.error[-200:]}" if facts.postgres.error else ""),
            f"start it (`docker compose up -d {facts.postgres_service}`) and read its log below; "
            "Sentry's services retry once it accepts connections",
        ))  # fmt: skip
    usable = None
    if facts.postgres.max_connections:
        usable = facts.postgres.max_connections - (facts.postgres.reserved or 0)
    if too_many or (
        usable and (facts.postgres.connections or 0) >= limits.connections_ratio * usable
    ):
        found.append(Cause(
            "too many database connections",
            f"{facts.postgres.connections} of max_connections {facts.postgres.max_connections} "
            f"({facts.postgres.reserved} reserved for superusers)" if not too_many
            else facts.postgres.error[-200:],
            "find who holds them (pg_stat_activity, below), end idle ones "
            "(pg_terminate_backend), and put pgbouncer in front or raise max_connections",
        ))  # fmt: skip
    if missing := facts.missing_relations:
        found.append(Cause(
            "a migration not applied",
            f"Postgres reports tables that do not exist: {', '.join(missing[:5])}",
            "run the database migrations (`sentry upgrade --noinput`: this host's upgrade or "
            "bootstrap deployment does it) and restart the Sentry services",
        ))  # fmt: skip
    for c in facts.containers:
        if c.oom_killed or c.oom_events:
            found.append(Cause(
                f"{c.service} OOM-killed",
                f"{c.name}: " + ("its main process was OOM-killed (exit 137); " if c.oom_killed
                                 else "")
                + (f"{c.oom_events} OOM kill(s) in the last hour; " if c.oom_events else "")
                + f"memory limit {_gb(c.memory_limit) if c.memory_limit else 'none'}",
                f"give {c.service} more memory (raise its mem_limit or the host's RAM) or lower "
                "its load (fewer workers or concurrency), then `docker compose up -d`",
            ))  # fmt: skip
    ch = facts.clickhouse
    ch_containers = by_service.get(facts.clickhouse_service or "", [])
    ch_limits = [(ch.memory_used, ch.memory_limit, "max_server_memory_usage")] if ch else []
    ch_limits += [(c.memory_used, c.memory_limit, f"{c.name}'s mem_limit") for c in ch_containers]
    for used, limit, what in ch_limits:
        if used and limit and used >= limits.clickhouse_memory_ratio * limit:
            found.append(Cause(
                "high ClickHouse memory",
                f"{_gb(used)} used of {_gb(limit)} ({what})",
                "cap ClickHouse below its container's memory (max_server_memory_usage_to_ram_ratio"
                " in its config, as self-hosted's clickhouse/config.xml does) or give it more; "
                "many small parts (below) mean inserts outrun merges",
            ))  # fmt: skip
            break
    if facts.backlog and facts.backlog.get("count") is not None:
        count, cap = facts.backlog["count"], facts.backlog.get("cap") or 0
        if count >= limits.backlog_max or (cap and count >= cap):
            found.append(Cause(
                "worker backlog",
                f"{count} tasks waiting" + (f" (the broker's cap is {cap})" if cap else ""),
                "scale the workers (the scale-workers deployment) and read the worker logs for "
                "a task that fails or hangs",
            ))  # fmt: skip
    for row in facts.disk:
        if row["free"] < limits.min_free_gb * 1e9:
            found.append(Cause(
                f"disk full: {row['where']}",
                f"{_gb(row['free'])} free of {_gb(row['total'])}",
                "free space (retention cleanup: `sentry cleanup` and old backups; `docker "
                "system prune` of unused images) or grow the disk; Postgres and Kafka stop when "
                "it is full",
            ))  # fmt: skip
    if facts.kafka_service and facts.docker_disk:
        mounts = {v for c in by_service.get(facts.kafka_service, []) for v in c.volumes}
        size = sum(facts.docker_disk.volumes.get(v, 0) for v in mounts)
        if size >= limits.kafka_volume_gb * 1e9:
            found.append(Cause(
                "Kafka volume growing",
                f"{facts.kafka_service}'s volumes ({', '.join(sorted(mounts))}) hold {_gb(size)}",
                "lower Kafka's retention (KAFKA_LOG_RETENTION_HOURS, self-hosted's default 3, "
                "or log.retention.bytes) and check that consumers keep up (the worker backlog)",
            ))  # fmt: skip
    return found


# -- the report ------------------------------------------------------------------------------------
def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def report_markdown(facts: Facts, found: list[Cause], bundle: str | None) -> str:
    """The diagnosis as an operator reads it: likely causes first, then the tables."""
    out = [f"# Diagnosis of {facts.host} ({facts.layout}), {facts.taken_at}", ""]
    out += ["## Likely causes", ""]
    if found:
        out += [f"{i}. **{c.name}**: {c.evidence}. Fix: {c.fix}." for i, c in
                enumerate(found, 1)]  # fmt: skip
    else:
        out.append("No known cause found.")
    out += ["", f"Support bundle (encrypted, masked): `{bundle}`" if bundle
            else "Support bundle: not stored (no store given)."]  # fmt: skip
    if facts.errors:
        out += ["", "Not read: " + "; ".join(facts.errors)]
    out += ["", "## Containers", "",
            "| service | container | state | health | restarts | OOM | exit | CPU % | memory |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in sorted(facts.containers, key=lambda c: (c.well, c.service, c.name)):
        memory = (
            f"{(c.memory_used or 0) / 2**20:.0f} MiB / "
            + (f"{c.memory_limit / 2**20:.0f} MiB" if c.memory_limit else "no limit")
            if c.memory_used is not None else ""
        )  # fmt: skip
        oom = ("killed" if c.oom_killed else "") + (f" {c.oom_events} event(s)" if c.oom_events
                                                    else "")  # fmt: skip
        cpu = f"{c.cpu_percent:.1f}" if c.cpu_percent is not None else ""
        out.append(
            f"| {c.service} | {c.name} | {c.status} {_cell(c.error)} | {c.health} | "
            f"{c.restarts} | {oom.strip() or 'no'} | {c.exit_code} | {cpu} | {memory} |"
        )
    missing = sorted(set(facts.defined) - {c.service for c in facts.containers})
    if missing:
        out += ["", "Defined but without a container: " + ", ".join(missing)]
    out += ["", "## Disk", "", "| where | free | total |", "|---|---|---|"]
    out += [f"| {r['where']} | {_gb(r['free'])} | {_gb(r['total'])} |" for r in facts.disk]
    if facts.docker_disk:
        d = facts.docker_disk
        sizes = f"images {_gb(d.images)} (unique), containers {_gb(d.containers)}, "
        sizes += f"build cache {_gb(d.build_cache)}"
        out += ["", f"Docker: {sizes}", "", "| volume | size |", "|---|---|"]
        mine = {v for c in facts.containers for v in c.volumes}
        out += [f"| {v} | {_gb(n)} |" for v, n in
                sorted(d.volumes.items(), key=lambda kv: -kv[1]) if v in mine]  # fmt: skip
    pg = facts.postgres
    out += ["", "## Postgres", ""]
    if pg.error:
        out.append(f"Not read: {_cell(pg.error[-300:])}")
    else:
        out += [
            f"Connections: {pg.connections} of max_connections {pg.max_connections} "
            f"({pg.reserved} reserved for superusers)",
            "",
            "| pid | user | state | seconds | waiting | query |",
            "|---|---|---|---|---|---|",
        ]
        out += [f"| {q['pid']} | {q['user']} | {q['state']} | {q['seconds']} | {q['waiting']} | "
                f"`{_cell(q['query'])}` |" for q in pg.longest]  # fmt: skip
    if facts.clickhouse:
        ch = facts.clickhouse
        out += ["", "## ClickHouse", ""]
        if ch.error:
            out.append(f"Not read: {_cell(ch.error[-300:])}")
        else:
            limit = _gb(ch.memory_limit) if ch.memory_limit else "no limit read"
            out += [f"Memory: {_gb(ch.memory_used or 0)} used of {limit}", "",
                    "| table | active parts | size |", "|---|---|---|"]  # fmt: skip
            out += [f"| {p['table']} | {p['parts']} | {_gb(p['bytes'])} |" for p in ch.parts]
    if facts.redis:
        r = facts.redis
        out += ["", "## Redis", "", f"Not read: {_cell(r.error[-300:])}" if r.error else
                f"Memory: {(r.used_memory or 0) / 2**20:.1f} MiB used, maxmemory "
                + (f"{r.maxmemory / 2**20:.0f} MiB" if r.maxmemory else "none")]  # fmt: skip
    if facts.backlog:
        b = facts.backlog
        cap = f" (cap {b['cap']})" if b.get("cap") else ""
        line = f"Not read: {b['error']}" if b.get("error") else f"{b['count']} tasks waiting{cap}"
        out += ["", "## Worker backlog", "", line]
    for service, lines in facts.logs.items():
        out += ["", f"## Log of {service} (last {len(lines)} lines, secrets masked)", "", "```"]
        out += [line.replace("```", "'''") for line in lines] + ["```"]
    return "\n".join(out)


def bundle_json(facts: Facts, found: list[Cause], mask: Callable[[Any], Any]) -> bytes:
    """The support bundle: every fact and cause, masked, as JSON (attach it to an upstream
    issue as it is)."""
    body = {
        "format": BUNDLE_FORMAT,
        "causes": [asdict(c) for c in found],
        "facts": asdict(facts),
    }
    body["facts"]["postgres"].pop("dsn_keys", None)
    return json.dumps(mask(body), indent=1, sort_keys=True, default=str).encode()


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def unwell_services(containers: Sequence[Container], defined: Sequence[str]) -> list[str]:
    """Services with a container that is not well, or defined without any container."""
    have = {c.service for c in containers}
    bad = {c.service for c in containers if not c.well}
    return sorted(bad | (set(defined) - have))
