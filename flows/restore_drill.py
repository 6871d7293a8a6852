"""Restore drill: restore a backup into a scratch stack, prove it works, report RTO and RPO.

Runbook, in order:
1. pick the backup (the given one, or the newest complete one: never one without a manifest);
2. verify every object's size and sha256 against the manifest, before anything is created;
3. a scratch stack on the drill host (default: the same host): its own compose project, volumes
   and ports, the image tags the manifest recorded, the config restored from the backup;
4. Postgres: S3 -> SSH -> FIFO -> pg_restore in a tool container next to the scratch Postgres
   (into an empty database only); data volumes: S3 -> SSH -> zstd -d | tar on the host;
5. checks: per-table row counts equal the manifest's; what an operator looks at: a superuser,
   projects and issues counted equal to the manifest, the newest event's payload readable from
   the restored nodestore; then Sentry web on the restored data: `/_health/` and `?full` ok;
6. tear the scratch stack down, always (kept only when keep_on_failure and it failed).
RTO is the wall time from start to a healthy, checked scratch stack; RPO is the backup's age.
Production is never touched: every command names the scratch project.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import BinaryIO

import zstandard
from cryptography.fernet import Fernet
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from pydantic import BaseModel, Field

from blocks import postgres
from blocks.backup_store import BackupManifest, BackupStore, StoredObject
from blocks.dotenv import render_env
from blocks.layouts import DataVolume, Role
from blocks.sentry_host import SentryHost
from blocks.ssh import Prefixed
from flows.backup import verify_object
from flows.health import assess_full_health, probe_web
from flows.shared import Result, Status

DRILL_COMPOSE = "docker-compose.drill.yml"


class DrillStack(BaseModel):
    """Where the scratch stack lives beside production on the drill host."""

    suffix: str = Field(default="drill", description="Appended to project dir and name.")
    port_offset: int = Field(
        default=100, description="Scratch ports = the host block's ports + this offset."
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra .env settings of the scratch stack (e.g. its ports, when the stack "
        "takes them from .env).",
    )
    web_timeout: float = Field(default=300, description="Seconds to wait for /_health/ ok.")


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
def pick_backup(listing, backup_id: str | None) -> str:
    complete = [b for b in listing if b.complete and b.when]
    if backup_id:
        match = [b for b in listing if b.backup_id == backup_id]
        if not match:
            raise DrillError(f"backup {backup_id} is not in the store")
        if not match[0].complete:
            raise DrillError(f"backup {backup_id} has no manifest: incomplete, never restored")
        return backup_id
    if not complete:
        raise DrillError("the store has no complete backup (none with a manifest)")
    return max(complete, key=lambda b: b.when).backup_id


def scratch_of(host: SentryHost, drill: DrillStack) -> SentryHost:
    """The scratch stack's host block: same SSH, own project dir/name, shifted ports."""
    external = [v for v in host.stack.volumes.values() if v.external]
    if external:
        raise DrillError(
            f"layout {host.layout!r} uses external volumes ({', '.join(v.name for v in external)})"
            " that a scratch stack on the same Docker host would share with production; run the "
            "drill on another host (drill_host=...)"
        )
    o = drill.port_offset
    scratch = host.model_copy(
        update={
            "project_dir": f"{host.project_dir}-{drill.suffix}",
            "project_name": f"{host.project}-{drill.suffix}",
            "web_port": host.web_port + o,
            "postgres_port": (host.postgres_port or 5432) + o,
            "redis_port": host.redis_port + o,
            "clickhouse_port": host.clickhouse_port + o,
        }
    )
    scratch._compose_context = None  # its own directory's env files, read when it exists
    return scratch


def drill_override(images: dict[str, str]) -> str:
    """A compose override pinning every service to the image the manifest recorded."""
    lines = ["# written by sentry-ops restore_drill: the images of the backup", "services:"]
    lines += [f"  {service}:\n    image: {image}" for service, image in sorted(images.items())]
    return "\n".join(lines) + "\n"


def postgres_source(store: BackupStore, obj: StoredObject) -> BinaryIO:
    """The dump as pg_restore reads it: compressed by pg_dump itself (sets since issue 9), or
    zstd around an uncompressed dump (earlier sets), undone here."""
    body = store.open(obj.key)
    if obj.compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(body, read_size=1 << 20)
    return body


# -- tasks --------------------------------------------------------------------------------------
@task(cache_policy=NO_CACHE)
def prepare_scratch(
    prod: SentryHost, scratch: SentryHost, store: BackupStore, manifest: BackupManifest, env: dict
) -> str:
    """Scratch project dir with the backup's config (or production's), pinned images, .env."""
    d = scratch.project_dir
    scratch.makedirs(d)
    if manifest.config_included:
        if store.config_encryption_key is None:
            raise DrillError("the backup's config is encrypted but the store has no key")
        sealed = store.open(manifest.object("config").key).read()
        plain = Fernet(store.config_encryption_key.get_secret_value().encode()).decrypt(sealed)
        scratch.extract_tar(d, plain)
        source = "the backup's (decrypted) config"
    else:
        for name in ("docker-compose.yml", ".env"):
            scratch.put(f"{d}/{name}", prod.get(f"{prod.project_dir}/{name}"), mode=0o600)
        source = "production's compose file and .env (the backup has no config)"
    names = set(scratch.listdir(d))
    files = ["docker-compose.yml"]
    if "docker-compose.override.yml" in names:
        files.append("docker-compose.override.yml")
    scratch.put(f"{d}/{DRILL_COMPOSE}", drill_override(manifest.images).encode(), mode=0o644)
    current = scratch.get(f"{d}/.env").decode()
    # absolute: compose resolves COMPOSE_FILE against its working dir, not the project dir
    wanted = {**env, "COMPOSE_FILE": ":".join(f"{d}/{f}" for f in [*files, DRILL_COMPOSE])}
    scratch.put(f"{d}/.env", render_env(current, wanted).encode(), mode=0o600)
    return source


@task(cache_policy=NO_CACHE, timeout_seconds=6 * 3600)
def restore_postgres(scratch: SentryHost, store: BackupStore, manifest: BackupManifest) -> float:
    """pg_restore next to the scratch database, fed from S3 (pg_dump's own compression)."""
    scratch.run(scratch.compose_argv("create"), timeout=600)
    service = scratch.stack.service(Role.POSTGRES)
    scratch.run(scratch.compose_argv("up", "-d", "--wait", service), timeout=600)
    source = postgres_source(store, manifest.object("postgres"))
    return postgres.restore(scratch, scratch.tool_image, source)


@task(cache_policy=NO_CACHE, timeout_seconds=6 * 3600)
def restore_volume(
    scratch: SentryHost, store: BackupStore, manifest: BackupManifest, name: str
) -> None:
    """The volume's tar.zst from S3, unpacked (and decompressed) on the host."""
    volume = DataVolume(name.removeprefix("volume:"))
    source = Prefixed(b"\n", store.open(manifest.object(name).key))
    scratch.run(scratch.volume_untar_argv(volume, scratch.tool_image), stdin=source, timeout=None)


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
        results.append(Result("newest event", Status.WARNING, "the backup recorded no event"))
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


@task(cache_policy=NO_CACHE, timeout_seconds=1800)
def check_data(scratch: SentryHost, manifest: BackupManifest) -> list[Result]:
    with postgres.psql(scratch) as db:
        counts = postgres.row_counts(db)
        app = postgres.app_counts(db)
        newest = manifest.newest_event
        payload = postgres.node_payload(db, newest.split()[0]) if newest else None
    return assess_data(manifest, counts, app, payload)


@task(cache_policy=NO_CACHE, timeout_seconds=1800)
def start_web(scratch: SentryHost, timeout: float) -> list[Result]:
    """Start web on the restored data, poll /_health/ until ok or `timeout`, then ?full."""
    scratch.run(scratch.compose_argv("up", "-d", scratch.stack.service(Role.WEB)), timeout=600)
    deadline = time.monotonic() + timeout
    while True:
        web = probe_web(scratch)
        if web.ok or time.monotonic() > deadline:
            break
        time.sleep(1)
    return [web, assess_full_health(*scratch.web_request("/_health/?full"))] if web.ok else [web]


@task(cache_policy=NO_CACHE)
def teardown(scratch: SentryHost, prod: SentryHost) -> str:
    """Remove the scratch stack's containers, volumes and directory; report any leftover."""
    d = scratch.project_dir
    if d == prod.project_dir or scratch.project == prod.project or d.count("/") < 2:
        raise DrillError(f"refusing to remove {d}: not a scratch stack")
    if scratch.exists(f"{d}/docker-compose.yml"):
        scratch.run(scratch.compose_argv("down", "-v", "--remove-orphans", "-t", "5"), timeout=600)
    scratch.remove_tree(d)
    left = scratch.leftovers()
    return f"leftovers: {left}" if left else "no containers or volumes left"


# -- flow ---------------------------------------------------------------------------------------
@flow(name="restore-drill", log_prints=True)
def restore_drill(
    host: str,
    store: str,
    backup_id: str | None = None,
    drill_host: str | None = None,
    keep_on_failure: bool = False,
    drill: DrillStack | None = None,
) -> dict:
    """Restore a backup of `host` into a scratch stack, check it, report RTO and RPO.

    host: SentryHost block of production. store: BackupStore block. backup_id: default the
    newest complete one. drill_host: SentryHost block to drill on (default: host).
    keep_on_failure: leave a failed scratch stack for inspection. drill: scratch stack settings.
    """
    logger = get_run_logger()
    drill = drill or DrillStack()
    started_at, t0 = dt.datetime.now(dt.UTC), time.monotonic()
    prod, backup_store = SentryHost.load(host), BackupStore.load(store)
    target = SentryHost.load(drill_host) if drill_host else prod
    out = Outcome([], [])

    t = time.monotonic()
    chosen = pick_backup(backup_store.list_backups(), backup_id)
    manifest = backup_store.read_manifest(chosen)
    out.stage("pick backup", t, chosen)
    t = time.monotonic()
    results = [verify_object(backup_store, o) for o in manifest.objects]
    bad = [f"{r['object']}: {r['detail']}" for r in results if not r["ok"]]
    out.check("verification", not bad, "; ".join(bad) or f"{len(results)} objects match")
    out.stage("verify objects", t)
    rto = rpo = None
    if not bad:
        scratch = scratch_of(target, drill)
        healthy = False
        try:
            t = time.monotonic()
            source = prepare_scratch(prod, scratch, backup_store, manifest, drill.env)
            out.stage("prepare scratch stack", t, source)
            t = time.monotonic()
            restore_postgres(scratch, backup_store, manifest)
            out.stage("restore postgres", t)
            for obj in manifest.objects:
                if obj.name.startswith("volume:"):
                    t = time.monotonic()
                    restore_volume(scratch, backup_store, manifest, obj.name)
                    out.stage(f"restore {obj.name}", t)
                elif obj.name not in ("postgres", "config"):
                    raise DrillError(f"this sentry-ops cannot restore object {obj.name!r}")
            t = time.monotonic()
            out.checks += check_data(scratch, manifest)
            out.stage("check data", t)
            t = time.monotonic()
            web = start_web(scratch, drill.web_timeout)
            out.checks += web
            healthy = all(r.ok for r in web)
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
                left = teardown(scratch, target)
                out.check("teardown", left.startswith("no "), left)
                out.stage("teardown", t, left)
        logger.info("scratch stack healthy: %s", healthy)
    rpo = round((started_at - manifest.finished_at).total_seconds(), 1)
    result = {
        "backup_id": chosen,
        "passed": not out.failed,
        "rto_seconds": rto,
        "rpo_seconds": rpo,
        "failed": out.failed,
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
        f"(backup age). Sentry {manifest.sentry_version}, Postgres {manifest.postgres_version}.",
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
