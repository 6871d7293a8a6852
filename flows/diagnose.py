"""Diagnose a Sentry host: why is health red? Read-only on the host, both layouts.

Runbook, as the guide's troubleshooting does it by hand, every read side by side:
1. containers of the stack (`docker inspect`): state, restart count, OOM-killed flag, exit code,
   health; `docker stats --no-stream` (CPU, memory against the limit); OOM kills of the last hour
   (`docker events`);
2. disk: free space where Docker keeps its data and on each data volume; `docker system df -v`
   (volumes, images);
3. Postgres connections against max_connections, and the longest-running statements; ClickHouse
   memory against its limit, and active parts per table; Redis memory; the worker backlog;
4. the secret key set or not (the config itself), the ports something listens on;
5. the last log lines of each service that is not well, and of the web and Postgres, with every
   secret masked: the host block's secret fields, the secret values of `.env`/`.env.custom` and
   `sentry/config.yml`, DSN keys;
6. the known causes matched (blocks/diagnosis.py), each with its fix in one sentence;
7. a report artifact (`diagnose-<host>`: likely causes first, then the tables) and, with a store,
   a support bundle (JSON, masked) stored encrypted under the host's folder, named in the report.

Nothing is changed on the host (the throwaway containers that read volume sizes and the
backlog aside). Setup's automation runs it for a host whose health check failed; the health
check's failure names this report.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from blocks import backup_set, diagnosis, sentry_config
from blocks.backup_store import BackupStore
from blocks.layouts import Role
from blocks.sentry_host import SentryHost
from blocks.ssh import RemoteCommandError
from flows.shared import diagnosis_key, load_block

OOM_WINDOW = "1h"  # OOM kills looked back for (docker events --since)


@task(cache_policy=NO_CACHE, timeout_seconds=300)
def read_containers(host: SentryHost) -> list[diagnosis.Container]:
    return diagnosis.containers(host, OOM_WINDOW)


@task(cache_policy=NO_CACHE, timeout_seconds=600)
def read_disk(host: SentryHost) -> tuple[list[dict], diagnosis.DockerDisk | None, list[str]]:
    return diagnosis.disk(host)


@task(cache_policy=NO_CACHE, timeout_seconds=300)
def read_services(host: SentryHost) -> dict:
    """Postgres, ClickHouse, Redis and the backlog, each read side by side; a service that does
    not answer is a fact (its error), not a failure of the diagnosis."""
    services = host.stack.services
    jobs = {"postgres": lambda: diagnosis.postgres_facts(host)}
    if Role.CLICKHOUSE in services:
        jobs["clickhouse"] = lambda: diagnosis.clickhouse_facts(host)
    if Role.REDIS in services:
        jobs["redis"] = lambda: diagnosis.redis_facts(host)

    def backlog() -> dict:
        try:
            found = host.queue_backlog()
        except Exception as exc:
            return {"count": None, "cap": None, "error": f"{exc}"[-300:]}
        return {"count": found.count, "cap": found.cap, "error": ""}

    jobs["backlog"] = backlog
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


@task(cache_policy=NO_CACHE, timeout_seconds=120)
def read_config(host: SentryHost) -> tuple[bool | None, list[str], list[int], list[str], str]:
    """(secret key set, the secrets to mask, listening ports, defined services, compose's error
    where it cannot read the project: a variable the compose file requires, unset)."""
    secrets = diagnosis.block_secrets(host)
    for name in (".env", ".env.custom"):
        secrets += diagnosis.env_secrets(host.read_env(name))
    config_yml = host.read_env("sentry/config.yml")  # "" when it does not exist
    key = sentry_config.secret_key(config_yml) if config_yml else None
    if key:
        secrets.append(key)
    if host.stack.secret_key_env:
        found = host.env_setting(host.stack.secret_key_env)
        key_set = bool(found and found[0])
    else:
        key_set = key is not None
    try:
        defined, compose_error = sorted(host.defined_services()), ""
    except RemoteCommandError as exc:
        defined, compose_error = [], exc.stderr_tail.strip()[-400:] or str(exc)[-400:]
    return key_set, secrets, sorted(host.listening()), defined, compose_error


@task(cache_policy=NO_CACHE, timeout_seconds=120)
def read_logs(host: SentryHost, containers: dict[str, str], lines: int) -> dict[str, list[str]]:
    """service -> the last lines of its newest container's log (`docker logs`: it answers even
    where compose cannot read the project)."""
    return {s: host.container_log_tail(cid, lines)[-lines:] for s, cid in containers.items()}


@flow(
    name="diagnose",
    flow_run_name="diagnose-{host}",
    log_prints=True,
    persist_result=True,
    timeout_seconds=1800,
)
def diagnose(
    host: SentryHost | str,
    store: BackupStore | str | None = None,
    log_lines: int = 50,
    min_free_gb: float = 5.0,
    connections_ratio: float = 0.9,
    clickhouse_memory_ratio: float = 0.9,
    backlog_max: int = 10_000,
    kafka_volume_gb: float = 20.0,
) -> dict:
    """Why is this host unwell? Reads (never changes) the stack's containers, resources, disk,
    databases, backlog and logs, matches the known causes, and reports them with their fixes.

    Args:
        host: The Sentry host: a SentryHost block, or its name.
        store: Where the support bundle goes (encrypted like a backup); empty: not stored.
        log_lines: Log lines kept per service that is not well (and of web and Postgres).
        min_free_gb: Less free space than this (GB) is "disk full".
        connections_ratio: Postgres connections at this share of max_connections (less the
            superusers' reserved slots) or more are "too many connections".
        clickhouse_memory_ratio: ClickHouse's memory at this share of its limit or more is
            "high ClickHouse memory".
        backlog_max: This many tasks waiting for a worker or more is "worker backlog".
        kafka_volume_gb: Kafka's volumes holding this many GB or more is "Kafka volume growing".
    """
    logger = get_run_logger()
    if log_lines < 1 or log_lines > 10_000:
        raise ValueError(f"log_lines={log_lines}: give 1 to 10000 lines per service")
    host_name, sentry_host = load_block(host, SentryHost)
    backup_store = load_block(store, BackupStore)[1] if store else None
    limits = diagnosis.Thresholds(
        connections_ratio=connections_ratio, clickhouse_memory_ratio=clickhouse_memory_ratio,
        backlog_max=backlog_max, kafka_volume_gb=kafka_volume_gb, min_free_gb=min_free_gb,
    )  # fmt: skip
    taken_at = diagnosis.now_utc()
    containers_f = read_containers.submit(sentry_host)
    disk_f = read_disk.submit(sentry_host)
    services_f = read_services.submit(sentry_host)
    key_set, secrets, listening, defined, compose_error = read_config(sentry_host)
    services = services_f.result()
    # the store's own secrets too: nothing sentry-ops holds may leave in a report
    store_secrets = diagnosis.block_secrets(backup_store) if backup_store else []
    mask = diagnosis.Masker([*secrets, *services["postgres"].dsn_keys, *store_secrets])
    containers = containers_f.result()
    defined = defined or sorted({c.service for c in containers})  # compose could not say
    stack = sentry_host.stack
    front = [stack.services[r] for r in (Role.NGINX, Role.WEB) if stack.services.get(r) in defined]
    postgres_service = stack.service(Role.POSTGRES)
    wanted_logs = [*diagnosis.unwell_services(containers, defined), *front, postgres_service]
    newest = {c.service: c.id for c in sorted(containers, key=lambda c: c.started_at)}
    logs = read_logs(sentry_host, {s: newest[s] for s in dict.fromkeys(wanted_logs)
                                   if s in newest}, log_lines)  # fmt: skip
    missing = diagnosis.still_missing(
        sentry_host, diagnosis.logged_relations(logs.get(postgres_service, []))
    )
    disk, docker_disk, errors = disk_f.result()
    if compose_error:
        errors.insert(0, f"compose cannot read the project: {compose_error}")
    facts = diagnosis.Facts(
        host=host_name,
        layout=sentry_host.layout,
        taken_at=taken_at,
        containers=containers,
        defined=defined,
        disk=disk,
        docker_disk=docker_disk,
        postgres=services["postgres"],
        clickhouse=services.get("clickhouse"),
        redis=services.get("redis"),
        backlog=services["backlog"],
        secret_key_set=key_set,
        web_port=sentry_host.web_port,
        listening=listening,
        logs={s: [mask(line) for line in lines] for s, lines in logs.items()},
        kafka_service=stack.services.get(Role.KAFKA),
        front_services=front,
        postgres_service=postgres_service,
        clickhouse_service=stack.services.get(Role.CLICKHOUSE),
        compose_error=compose_error,
        missing_relations=missing,
        errors=errors,
    )
    found = diagnosis.causes(facts, limits)
    bundle = None
    if backup_store is not None:
        name = f"{taken_at.replace(':', '').replace('-', '')}-diagnose.json"
        data = diagnosis.bundle_json(facts, found, mask.deep)
        bundle = backup_set.put_support_bundle(backup_store, sentry_host.identity, name, data)
    markdown = mask(diagnosis.report_markdown(facts, found, bundle))
    create_markdown_artifact(
        markdown,
        key=diagnosis_key(host_name),
        description=f"Diagnosis of {sentry_host.label}: "
        + (", ".join(c.name for c in found) if found else "no known cause"),
    )
    for cause in found:
        logger.warning("likely cause: %s: %s. Fix: %s", cause.name, mask(cause.evidence), cause.fix)
    if not found:
        logger.info("no known cause found")
    return {
        "causes": [{"name": c.name, "evidence": mask(c.evidence), "fix": c.fix} for c in found],
        "bundle": bundle,
        "report": diagnosis_key(host_name),
        "unwell": diagnosis.unwell_services(containers, defined),
    }


def show_bundle(store: str, key: str) -> str:
    """A stored support bundle's JSON (decrypted with the store's key), to attach to an issue."""
    return backup_set.read_support_bundle(BackupStore.load(store), key).decode()


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["bundle"]:  # python -m flows.diagnose bundle <store> <key> > bundle.json
        print(show_bundle(sys.argv[2], sys.argv[3]))
    else:
        diagnose(sys.argv[1] if len(sys.argv) > 1 else "sandbox")
