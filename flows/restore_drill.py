"""Restore drill: restore a backup into a scratch stack, prove it works, report RTO and RPO.

Runbook, in order:
1. pick the backup among this host's own sets (the given one, or its newest complete one: never
   one without a manifest); the manifest's seal must be right, and it must name this host and
   set and keep every object in the set's folder;
2. verify every object's size and sha256 against the manifest, before anything is created;
3. under the scratch stack's host lock: remove what a killed earlier drill left (same scratch
   name), then build the scratch stack on the drill host (default: the same host, for layouts
   whose volumes are per project; another Docker host for layouts with external volumes): its
   own directory, compose project and
   ports (every port of its `.env` shifted by the drill, never inherited from production), the
   image tags the manifest recorded (limited to production's own images, or `allowed_images`),
   the config restored from the backup; then its resolved config is checked against
   production's (project, volume and container names, ports, bind-mount sources) before anything
   runs: a clash is refused, naming it;
4. Postgres: S3 -> decrypted on the worker -> SSH -> FIFO -> pg_restore next to the scratch
   Postgres (an empty database only); data volumes: S3 -> decrypted -> SSH -> zstd -d | tar on
   the host; the stored bytes of each object hashed as it is restored, compared with the manifest;
5. checks: per-table row counts equal the manifest's; what an operator looks at: a superuser,
   projects and issues counted equal to the manifest, the newest event's payload readable from
   the restored nodestore; then Sentry web on the restored data: `/_health/` and `?full` ok;
   the result is recorded beside the set (`verification.json`, sealed);
6. tear the scratch stack down, always (kept only when keep_on_failure and it failed); teardown
   errors are reported in the drill report, never lose it.
RTO is the wall time from start to a healthy, checked scratch stack; RPO is the backup's age.
Production is never touched: every command names the scratch project.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import re
import time
from dataclasses import dataclass

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from pydantic import BaseModel, Field

from blocks import backup_set, clickhouse, postgres
from blocks.backup_set import BackupManifest
from blocks.backup_store import BackupStore
from blocks.dotenv import parse_env, render_env
from blocks.layouts import DataVolume, Role
from blocks.sentry_host import ComposeContext, SentryHost
from blocks.ssh import Prefixed
from flows.backup import pick_set, verify_objects
from flows.health import assess_full_health, probe_web
from flows.shared import HOUR, Progress, Result, Status, host_lock, load_block

DRILL_COMPOSE = "docker-compose.drill.yml"
DRILL_LABEL = "sentry-ops.drill"
# a Docker image reference: [registry[:port]/]path[:tag][@digest], nothing YAML could misread
IMAGE_REF = re.compile(
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)
PORT_KEY = re.compile(r"(PORT|^SENTRY_BIND)$")


class DrillStack(BaseModel):
    """Where the scratch stack lives beside production on the drill host."""

    suffix: str = Field(
        default="drill",
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="Appended to the project dir's and project's names.",
    )
    port_offset: int = Field(
        default=100,
        ge=1,
        le=30000,
        description="Scratch ports = production's ports + this offset (every *_PORT and "
        "SENTRY_BIND of .env, and the block's ports).",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra .env settings of the scratch stack."
    )
    web_timeout: float = Field(default=300, description="Seconds to wait for /_health/ ok.")
    allowed_images: list[str] = Field(
        default_factory=list,
        description="Images the drill may run besides those production's compose file uses "
        "(a backup taken before an upgrade recorded older tags).",
    )


class DrillError(Exception):
    pass


@dataclass
class Outcome:
    stages: list[Result]
    checks: list[Result]

    def stage(self, name: str, started: float, detail: str = "ok") -> None:
        seconds = round(time.monotonic() - started, 2)
        self.stages.append(Result(name, Status.DONE, detail, seconds))

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Result.check(name, ok, detail))
        return ok

    @property
    def failed(self) -> list[str]:
        return [f"{r.name} ({r.detail})" for r in self.checks if not r.ok]


# -- pure logic --------------------------------------------------------------------------------
def check_images(images: dict[str, str], production: dict[str, str], allowed: set[str]) -> None:
    """Each image the manifest pins must be a plain image reference, and the one production's
    compose file uses for that service (or explicitly allowed)."""
    for service, image in images.items():
        if not IMAGE_REF.match(image or ""):
            raise DrillError(f"the manifest's image for {service} is not an image name: {image!r}")
        if image != production.get(service) and image not in allowed:
            raise DrillError(
                f"the manifest's image for {service}, {image}, is not the one production's "
                f"compose file uses for it ({production.get(service)}): refusing to run it "
                "(add it to drill.allowed_images if it is yours)"
            )


def shifted(value: str, offset: int) -> str:
    """'9000' -> '9100'; '127.0.0.1:9000' -> '127.0.0.1:9100'."""
    host, sep, port = value.rpartition(":")
    if not port.isdigit():
        raise DrillError(f"cannot shift the port setting {value!r}")
    new = int(port) + offset
    if not 0 < new < 65536:
        raise DrillError(f"port {port} + offset {offset} is not a TCP port")
    return f"{host}{sep}{new}"


def scratch_env(current: dict[str, str], drill: DrillStack) -> dict[str, str]:
    """The scratch stack's own ports: every port setting of production's .env, shifted."""
    ports = {k: shifted(v, drill.port_offset) for k, v in current.items() if PORT_KEY.search(k)}
    return {**ports, **drill.env}


def scratch_of(prod: SentryHost, target: SentryHost | None, drill: DrillStack) -> SentryHost:
    """The scratch stack's host block: production's layout and names, the drill host's SSH,
    its own project dir and name, shifted ports. Validated like any block."""
    same = target is None or prod.transport.target == target.transport.target
    external = [v for v in prod.stack.volumes.values() if v.external]
    if same and external:
        raise DrillError(
            f"layout {prod.layout!r} uses external volumes ({', '.join(v.name for v in external)})"
            " that a scratch stack on the same Docker host would share with production; run the "
            "drill on another host (drill_host=...)"
        )
    base = posixpath.dirname(prod.project_dir) if same else target.project_dir
    where = target or prod
    update = {
        field: getattr(where, field)
        for field in ("ssh_host", "ssh_port", "ssh_user", "ssh_private_key", "ssh_host_key")
    }
    o = drill.port_offset
    update |= {
        "project_dir": posixpath.join(
            base, f"{posixpath.basename(prod.project_dir)}-{drill.suffix}"
        ),
        "project_name": f"{prod.project}-{drill.suffix}",
        "web_port": int(shifted(str(prod.web_port), o)),
        "postgres_port": int(shifted(str(prod.postgres_port), o)) if prod.postgres_port else None,
        "redis_port": int(shifted(str(prod.redis_port), o)),
        "clickhouse_port": int(shifted(str(prod.clickhouse_port), o)),
        "clickhouse_http_port": int(shifted(str(prod.clickhouse_http_port), o)),
    }
    return SentryHost.model_validate({**dict(prod), **update})


def _ports(config: dict) -> set[str]:
    """Host ports a resolved compose project takes: published ones, and for host-network services
    the *_PORT / SENTRY_BIND settings of their environment."""
    taken = set()
    for svc in (config.get("services") or {}).values():
        for port in svc.get("ports") or []:
            taken.add(str(port.get("published")))
        if svc.get("network_mode") == "host":
            for key, value in (svc.get("environment") or {}).items():
                if PORT_KEY.search(key) and value and str(value).rpartition(":")[2].isdigit():
                    taken.add(str(value).rpartition(":")[2])
    return taken


def isolation_problems(prod: dict, scratch: dict, same_engine: bool) -> list[str]:
    """What the scratch project would share with production (empty: isolated)."""
    problems = []
    if prod.get("name") == scratch.get("name"):
        problems.append(f"the same compose project name {scratch.get('name')!r}")
    if shared := _ports(prod) & _ports(scratch):
        problems.append(f"host ports {sorted(shared)}")
    if same_engine:
        names = [
            {v.get("name") for v in (c.get("volumes") or {}).values()} for c in (prod, scratch)
        ]
        if shared := names[0] & names[1]:
            problems.append(f"volumes {sorted(shared)}")
        containers = [
            {s.get("container_name") for s in (c.get("services") or {}).values()} - {None}
            for c in (prod, scratch)
        ]
        if shared := containers[0] & containers[1]:
            problems.append(f"container names {sorted(shared)}")
    binds = [
        {
            v.get("source")
            for s in (c.get("services") or {}).values()
            for v in s.get("volumes") or []
            if v.get("type") == "bind"
        }
        for c in (prod, scratch)
    ]
    if shared := binds[0] & binds[1]:
        problems.append(f"bind-mount sources {sorted(shared)}")
    return problems


class _OverrideDumper(yaml.SafeDumper):
    pass


class Override(list):
    """A YAML sequence tagged `!override`: compose replaces the base file's list with it."""


_OverrideDumper.add_representer(
    Override, lambda d, data: d.represent_sequence("!override", list(data))
)


def drill_override(images: dict[str, str], ports: dict[str, list[str]] | None = None) -> str:
    """A compose override pinning every service to the image the manifest recorded, and moving
    literal published ports; written by a YAML serializer, never by string pasting."""
    services: dict = {service: {"image": image} for service, image in sorted(images.items())}
    for service, published in (ports or {}).items():
        services.setdefault(service, {})["ports"] = Override(published)
    header = "# written by sentry-ops restore_drill: the backup's images, the scratch ports\n"
    return header + yaml.dump({"services": services}, Dumper=_OverrideDumper, sort_keys=True)


def moved_ports(config: dict, offset: int) -> dict[str, list[str]]:
    """Published ports of production's resolved config, each moved by `offset`."""
    moved = {}
    for name, svc in (config.get("services") or {}).items():
        ports = [
            f"{p.get('host_ip') + ':' if p.get('host_ip') else ''}"
            f"{shifted(str(p['published']), offset)}:{p['target']}/{p.get('protocol', 'tcp')}"
            for p in svc.get("ports") or []
            if p.get("published")
        ]
        if ports:
            moved[name] = ports
    return moved


def assess_data(
    manifest: BackupManifest, counts: dict[str, int], app: dict[str, int], payload: str | None
) -> list[Result]:
    """The restored database against the backup's manifest (pure)."""
    diff = {
        t: (manifest.row_counts.get(t), counts.get(t))
        for t in set(counts) | set(manifest.row_counts)
        if counts.get(t) != manifest.row_counts.get(t)
    }
    results = [
        Result.check(
            "row counts",
            not diff,
            f"{len(counts)} tables, {sum(counts.values())} rows equal the manifest"
            if not diff
            else f"differ (manifest, restored): {dict(sorted(diff.items())[:5])}",
        ),
        Result.check("superuser", app["superusers"] > 0, f"{app['superusers']} superuser(s)"),
    ]
    for name, table in (("projects", "sentry_project"), ("issues", "sentry_groupedmessage")):
        want = manifest.row_counts.get(table)
        results.append(
            Result.check(name, app[name] == want, f"{app[name]} restored, manifest {want}")
        )
    if manifest.newest_event is None:
        results.append(
            Result(
                "newest event payload",
                Status.OK,
                "no event in a Postgres nodestore (a layout with SeaweedFS keeps payloads there: "
                "the newest event is read through Sentry's API once web is up)",
            )
        )
    else:
        node_id = manifest.newest_event.split()[0]
        readable = payload is not None and payload.strip().startswith("{")
        results.append(
            Result.check(
                "newest event payload",
                readable,
                f"{node_id}: {len(payload)} bytes readable from the restored nodestore"
                if readable
                else f"{node_id}: missing from the restored nodestore",
            )
        )
    return results


# -- tasks --------------------------------------------------------------------------------------
@task(cache_policy=NO_CACHE, timeout_seconds=1800)
def clear_leftovers(scratch: SentryHost, prod: SentryHost) -> str:
    """A scratch stack left by a killed drill (same name) goes before a new one is built."""
    if scratch.exists(scratch.project_dir) or scratch.leftovers():
        return "removed a previous drill's leftovers: " + teardown.fn(scratch, prod)
    return "none"


@task(cache_policy=NO_CACHE, timeout_seconds=1800)
def prepare_scratch(
    prod: SentryHost,
    scratch: SentryHost,
    store: BackupStore,
    manifest: BackupManifest,
    drill: DrillStack,
) -> str:
    """Scratch project dir with the backup's config (or production's), pinned images, its own
    ports; then its resolved config checked against production's, before anything runs."""
    prod_config = prod.compose_config()
    prod_images = {name: svc.get("image") for name, svc in prod_config["services"].items()}
    check_images(manifest.images, prod_images, set(drill.allowed_images))
    d = scratch.project_dir
    scratch.makedirs(d)
    if manifest.config_included:
        scratch.extract_tar(d, backup_set.read_object(store, manifest, "config"))
        source = "the backup's (decrypted) config"
    else:
        for name in ("docker-compose.yml", ".env"):
            scratch.put(f"{d}/{name}", prod.get(f"{prod.project_dir}/{name}"), mode=0o600)
        source = "production's compose file and .env (the backup has no config)"
    names = set(scratch.listdir(d))
    files = ["docker-compose.yml"]
    if "docker-compose.override.yml" in names:
        files.append("docker-compose.override.yml")
    override = drill_override(manifest.images, moved_ports(prod_config, drill.port_offset))
    scratch.put(f"{d}/{DRILL_COMPOSE}", override.encode(), mode=0o644)
    current = scratch.get(f"{d}/.env").decode()
    custom: dict[str, str] = {}
    if ".env.custom" in names:
        # compose would read it after .env and let it win: fold it into .env (as self-hosted's
        # install.sh merges them), so the scratch's own ports, project and files below win
        custom = parse_env(scratch.get(f"{d}/.env.custom").decode())
        scratch.remove_tree(f"{d}/.env.custom")
    scratch.use_context(ComposeContext(scratch.project, ()))
    wanted = {
        **custom,
        **scratch_env({**parse_env(current), **custom}, drill),
        "COMPOSE_PROJECT_NAME": scratch.project,
        # absolute: compose resolves COMPOSE_FILE against its working dir, not the project dir
        "COMPOSE_FILE": ":".join(f"{d}/{f}" for f in [*files, DRILL_COMPOSE]),
    }
    scratch.put(f"{d}/.env", render_env(current, wanted).encode(), mode=0o600)
    same_engine = scratch.transport.target == prod.transport.target
    clashes = isolation_problems(prod_config, scratch.compose_config(), same_engine)
    if clashes:
        scratch.remove_tree(d)
        raise DrillError(
            f"refusing to start the scratch stack: it would share with production "
            f"{'; '.join(clashes)} (nothing was started)"
        )
    return source


def external_volumes(config: dict) -> list[str]:
    """Names of the external volumes a resolved compose project needs."""
    return sorted(
        v.get("name") or key
        for key, v in (config.get("volumes") or {}).items()
        if v.get("external")
    )


@task(cache_policy=NO_CACHE, timeout_seconds=600)
def create_external_volumes(scratch: SentryHost) -> list[str]:
    """External volumes (self-hosted's) on the drill host: created for the drill, labelled,
    removed after; refused if the host already has one (it would be someone's data)."""
    names = external_volumes(scratch.compose_config())
    for name in names:
        inspect = ["docker", "volume", "inspect", name]
        if scratch.run(inspect, check=False, timeout=60).exit_code == 0:
            raise DrillError(
                f"{scratch.label}: volume {name} already exists on the drill host: refusing to "
                "restore into it (use a drill host without a Sentry install)"
            )
    for name in names:
        label = f"{DRILL_LABEL}={scratch.project}"
        scratch.run(["docker", "volume", "create", "--label", label, name], timeout=60)
    return names


@task(cache_policy=NO_CACHE, timeout_seconds=6 * 3600)
def restore_postgres(scratch: SentryHost, store: BackupStore, manifest: BackupManifest) -> float:
    """pg_restore next to the scratch database, fed from S3 and hashed on the way."""
    scratch.run(scratch.compose_argv("create"), timeout=600)
    service = scratch.stack.service(Role.POSTGRES)
    scratch.run(scratch.compose_argv("up", "-d", "--wait", service), timeout=600)
    reader = backup_set.open_object(store, manifest, "postgres")  # decrypted, hashed
    progress = Progress(f"restore postgres of {manifest.backup_id}", reader.obj.size)
    with progress.watching(lambda: reader.stored_bytes_read):
        seconds = postgres.restore(scratch, scratch.tool_image, reader)
    reader.verify()
    return seconds


@task(cache_policy=NO_CACHE, timeout_seconds=6 * 3600)
def restore_volume(
    scratch: SentryHost, store: BackupStore, manifest: BackupManifest, name: str
) -> None:
    """The volume's tar.zst from S3, unpacked (and decompressed) on the host; hashed."""
    volume = DataVolume(name.removeprefix("volume:"))
    reader = backup_set.open_object(store, manifest, name)  # decrypted, hashed
    argv = scratch.volume_untar_argv(volume, scratch.tool_image)
    progress = Progress(f"restore {name} of {manifest.backup_id}", reader.obj.size)
    with progress.watching(lambda: reader.stored_bytes_read):
        scratch.run(argv, stdin=Prefixed(b"\n", reader), timeout=6 * 3600)
    reader.verify()


@task(cache_policy=NO_CACHE, timeout_seconds=6 * 3600)
def restore_clickhouse(
    scratch: SentryHost, store: BackupStore, manifest: BackupManifest
) -> list[Result]:
    """Tables from the recorded DDL, the frozen parts attached, rows and checksums compared."""
    snapshot = manifest.clickhouse
    assert snapshot is not None
    service = scratch.stack.service(Role.CLICKHOUSE)
    scratch.run(scratch.compose_argv("up", "-d", "--wait", service), timeout=600)
    staging = clickhouse.freeze_name(f"restore_{manifest.backup_id}")
    staged = clickhouse.shadow_path(staging)
    with clickhouse.connect(scratch) as (client, version):
        try:
            if any(o.name == "clickhouse" for o in manifest.objects):
                reader = backup_set.open_object(store, manifest, "clickhouse")  # decrypted, hashed
                argv = scratch.volume_untar_argv(DataVolume.CLICKHOUSE, scratch.tool_image, staged)
                progress = Progress(f"restore clickhouse of {manifest.backup_id}", reader.obj.size)
                with progress.watching(lambda: reader.stored_bytes_read):
                    scratch.run(argv, stdin=Prefixed(b"\n", reader), timeout=6 * 3600)
                reader.verify()
            clickhouse.restore(scratch, client, snapshot, staged)
        finally:
            clickhouse.unfreeze(scratch, staging)
        compared = clickhouse.compare(client, snapshot)
        newest = clickhouse.newest_event(client, snapshot.database)
    results = [Result(f"clickhouse {name}", Status.OK if ok else Status.FAILED, detail)
               for name, ok, detail in compared]  # fmt: skip
    results += [
        Result(f"clickhouse {t.name}", Status.WARNING if t.why.startswith("UNKNOWN") else Status.OK,
               f"{t.engine}: {t.why}")
        for t in snapshot.tables if not t.copied
    ]  # fmt: skip
    same = newest == snapshot.newest_event
    results.append(Result(
        "clickhouse newest event", Status.OK if same else Status.FAILED,
        f"{newest} in the scratch ClickHouse {version} (backup: {snapshot.newest_event})",
    ))  # fmt: skip
    return results


@task(cache_policy=NO_CACHE, timeout_seconds=1800)
def check_data(scratch: SentryHost, manifest: BackupManifest) -> list[Result]:
    with postgres.psql(scratch) as db:
        counts = postgres.row_counts(db)
        app = postgres.app_counts(db)
        newest = manifest.newest_event
        payload = postgres.node_payload(db, newest.split()[0]) if newest else None
    return assess_data(manifest, counts, app, payload)


def check_newest_event(scratch: SentryHost, manifest: BackupManifest) -> Result:
    """The backup's newest event (ClickHouse), read through the restored Sentry's own API: its
    searchable row and its payload from the restored nodestore, wherever the layout keeps it."""
    name = "newest event through Sentry's API"
    event = manifest.clickhouse.newest_event_id if manifest.clickhouse else None
    if event is None:
        return Result(name, Status.WARNING, "not checked: no event in the backup's ClickHouse")
    if scratch.api_token is None:
        return Result(name, Status.WARNING, "not checked: the host block has no api_token")
    found = scratch.lookup_event(event)
    return Result.check(
        name,
        found is not None,
        f"{event}: found, payload from the restored nodestore" if found else f"{event}: not found",
    )


@task(cache_policy=NO_CACHE, timeout_seconds=1800)
def start_web(scratch: SentryHost, timeout: float) -> list[Result]:
    """Start web (and nginx, where the layout fronts it) on the restored data, poll /_health/
    until ok, `timeout`, or its container exits (a crash), then ?full."""
    services = [scratch.stack.service(Role.WEB)]
    if Role.NGINX in scratch.stack.services:
        services.append(scratch.stack.service(Role.NGINX))
    scratch.run(scratch.compose_argv("up", "-d", *services), timeout=600)
    deadline = time.monotonic() + timeout
    while True:
        web = probe_web(scratch)
        if web.ok or time.monotonic() > deadline:
            break
        # a web that crashed will not answer: say so now, with its last words
        dead = [r for r in scratch.service_containers(services[0])
                if r.get("State") in ("exited", "dead")]  # fmt: skip
        if dead:
            last = " | ".join(scratch.service_log_tail(Role.WEB, 5))[-300:]
            detail = f"{web.detail}; its container exited ({dead[0].get('ExitCode')}): {last}"
            web = Result.check(web.name, False, detail)
            break
        time.sleep(1)
    return [web, assess_full_health(*scratch.web_request("/_health/?full"))] if web.ok else [web]


@task(cache_policy=NO_CACHE, timeout_seconds=1800)
def teardown(scratch: SentryHost, prod: SentryHost) -> str:
    """Remove the scratch stack's containers, volumes (external ones it made too) and directory;
    report any leftover."""
    d = scratch.project_dir
    if d == prod.project_dir or scratch.project == prod.project or d.count("/") < 2:
        raise DrillError(f"refusing to remove {d}: not a scratch stack")
    if scratch.exists(f"{d}/docker-compose.yml"):
        scratch.run(scratch.compose_argv("down", "-v", "--remove-orphans", "-t", "5"), timeout=600)
    label = f"label={DRILL_LABEL}={scratch.project}"
    ours = scratch.run(["docker", "volume", "ls", "-q", "--filter", label], timeout=60).text.split()
    if ours:
        scratch.run(["docker", "volume", "rm", "-f", *ours], timeout=300)
    scratch.remove_tree(d)
    left = scratch.leftovers()
    return f"leftovers: {left}" if left else "no containers or volumes left"


def restore_and_check(
    prod: SentryHost,
    scratch: SentryHost,
    backup_store: BackupStore,
    manifest: BackupManifest,
    drill: DrillStack,
    keep_on_failure: bool,
    out: Outcome,
    t0: float,
) -> float | None:
    """Scratch stack up, restored, checked, torn down (under the scratch host's lock); returns
    the RTO when it got healthy and checked."""
    logger = get_run_logger()
    rto = None
    t = time.monotonic()
    out.stage("clear leftovers", t, clear_leftovers(scratch, prod))
    healthy = False
    try:
        t = time.monotonic()
        source = prepare_scratch(prod, scratch, backup_store, manifest, drill)
        out.stage("prepare scratch stack", t, source)
        if scratch.stack.volumes[DataVolume.POSTGRES].external:
            t = time.monotonic()
            made = create_external_volumes(scratch)
            out.stage("create external volumes", t, ", ".join(made))
        t = time.monotonic()
        restore_postgres(scratch, backup_store, manifest)
        out.stage("restore postgres", t, "bytes hashed equal the manifest")
        for obj in manifest.objects:
            if obj.name.startswith("volume:"):
                t = time.monotonic()
                restore_volume(scratch, backup_store, manifest, obj.name)
                out.stage(f"restore {obj.name}", t, "bytes hashed equal the manifest")
            elif obj.name not in ("postgres", "config", "clickhouse"):
                raise DrillError(f"this sentry-ops cannot restore object {obj.name!r}")
        if manifest.clickhouse is not None:
            t = time.monotonic()
            out.checks += restore_clickhouse(scratch, backup_store, manifest)
            out.stage("restore clickhouse", t, f"{len(manifest.clickhouse.tables)} tables")
        t = time.monotonic()
        out.checks += check_data(scratch, manifest)
        out.stage("check data", t)
        t = time.monotonic()
        web = start_web(scratch, drill.web_timeout)
        out.checks += web
        healthy = all(r.ok for r in web)
        if healthy:
            out.checks.append(check_newest_event(scratch, manifest))
        out.stage("start web", t)
        rto = round(time.monotonic() - t0, 1)
    except Exception as exc:
        out.check("restore", False, f"{exc.__class__.__name__}: {exc}"[:500])
    finally:
        if out.failed and keep_on_failure:
            kept = f"kept for inspection: {scratch.project_dir}"
            out.stages.append(Result("teardown", Status.WARNING, kept, 0.0))
        else:
            t = time.monotonic()
            try:
                left = teardown(scratch, prod)
            except Exception as exc:  # reported; the drill report is never lost
                left = f"teardown failed: {exc.__class__.__name__}: {exc}"[:400]
            out.check("teardown", left.startswith("no "), left)
            out.stage("teardown", t, left)
    logger.info("scratch stack healthy: %s", healthy)
    return rto


# -- flow ---------------------------------------------------------------------------------------
@flow(
    name="restore-drill",
    flow_run_name="drill-{host}",
    log_prints=True,
    persist_result=True,
    timeout_seconds=12 * HOUR,
)
def restore_drill(
    host: SentryHost | str,
    store: BackupStore | str,
    backup_id: str | None = None,
    drill_host: SentryHost | str | None = None,
    keep_on_failure: bool = False,
    drill: DrillStack | None = None,
) -> dict:
    """Restore a backup of a host into a scratch stack, check it, report RTO and RPO.

    Args:
        host: Production's SentryHost block, or its name.
        store: The backup store: a BackupStore block, or its name.
        backup_id: The backup to drill; default the newest complete one.
        drill_host: SentryHost block of another Docker host to drill on (required for layouts
            with external volumes); default the production host.
        keep_on_failure: Leave a failed scratch stack for inspection.
        drill: Scratch stack settings (suffix, port offset, timeouts, allowed images).
    """
    drill = drill or DrillStack()
    started_at, t0 = dt.datetime.now(dt.UTC), time.monotonic()
    host, prod = load_block(host, SentryHost)
    store, backup_store = load_block(store, BackupStore)
    target = load_block(drill_host, SentryHost)[1] if drill_host else None
    scratch = scratch_of(prod, target, drill)  # validated before anything is touched
    out = Outcome([], [])

    t = time.monotonic()
    manifest = pick_set(backup_store, prod, backup_id)  # this host's, sealed, or refused
    if manifest.scope != "full":
        raise DrillError(
            f"backup {manifest.backup_id} is a {manifest.scope} snapshot taken alone, not a whole "
            "install; a drill restores a full backup (leave backup_id empty for the newest)"
        )
    chosen = manifest.backup_id
    out.stage("pick backup", t, f"{chosen} (seal checked)")
    t = time.monotonic()
    results = verify_objects(backup_store, manifest)
    bad = [f"{r.name}: {r.detail}" for r in results if not r.ok]
    out.check("verification", not bad, "; ".join(bad) or f"{len(results)} objects match")
    out.stage("verify objects", t)
    rto = None
    if not bad:
        with host_lock(scratch, "restore drill"):
            rto = restore_and_check(
                prod, scratch, backup_store, manifest, drill, keep_on_failure, out, t0
            )
    passed = not out.failed
    try:  # beside the set: retention keeps the newest verified one
        backup_set.record_verification(
            backup_store,
            manifest,
            passed,
            "restore-drill",
            "restored and checked" if passed else "; ".join(out.failed)[:1000],
            rto,
        )
    except Exception as exc:  # the report is never lost to it
        out.stages.append(Result("record verification", Status.WARNING, str(exc)[:300]))
    rpo = round((started_at - manifest.finished_at).total_seconds(), 1)
    result = {
        "backup_id": chosen,
        "passed": not out.failed,
        "rto_seconds": rto,
        "rpo_seconds": rpo,
        "failed": out.failed,
        "checks": [r.row() for r in out.checks],
    }
    create_markdown_artifact(
        key="restore-drill",
        markdown=render_report(manifest, out, rto, rpo),
        description=f"Restore drill of {chosen}",
    )
    emit_event(
        event="sentry.restore_drill.completed",
        resource={
            "prefect.resource.id": f"sentry-ops.backup.{chosen}",
            "prefect.resource.name": chosen,
            "sentry-ops.host": host,
        },
        payload=result,
    )
    if out.failed:
        raise DrillError(f"restore drill of {chosen} failed: {'; '.join(out.failed)}")
    return result


def render_report(manifest: BackupManifest, out: Outcome, rto, rpo) -> str:
    lines = [
        f"# Restore drill of `{manifest.backup_id}`",
        "",
        f"**{'PASSED' if not out.failed else 'FAILED'}** - RTO "
        f"{f'{rto:.1f} s' if rto is not None else 'n/a (not restored)'}, RPO {rpo:.0f} s "
        f"(backup age). Sentry {manifest.sentry_version}, Postgres {manifest.postgres_version}, "
        f"layout {manifest.layout}.",
        "",
        "| stage | seconds | detail |",
        "|---|---:|---|",
        *(f"| {r.name} | {r.seconds or 0:.2f} | {r.detail} |" for r in out.stages),
        "",
        "| check | result | detail |",
        "|---|---|---|",
        *(f"| {r.name} | {r.status} | {r.detail} |" for r in out.checks),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    restore_drill(sys.argv[1] if len(sys.argv) > 1 else "sandbox", "sandbox")
