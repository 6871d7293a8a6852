"""Set sentry-ops up in a Prefect server, from one config file; safe to run again.

    python -m deployments.setup --config hosts.toml     (sample: deployments/hosts.example.toml)

In this order, after the whole file is checked (nothing changes when any of it is wrong): the
block types are registered (the UI's Blocks page lists them), the work pool is created when
missing, one SentryHost block per `[hosts.*]` and `[drill_hosts.*]`, one BackupStore per
`[stores.*]`, Secret blocks for admin passwords, the host locks, one deployment per host (or store)
and per template in prefect.yaml (`backup/sentry-1`, `health-check/sentry-1`, `list-backups/main`,
with that host's parameters and the template's schedule), and the alert automations sent to a
webhook block. Secrets are read from files named in the config and stored only in SecretStr
block fields.

    python -m deployments.setup --connection .sandbox/connection.json --name sandbox

saves just the blocks of the local sandbox (what the sandbox writes to its connection file).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from prefect_aws import AwsClientParameters, AwsCredentials
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from blocks.backup_store import BackupStore
from blocks.sentry_host import SentryHost

ROOT = Path(__file__).resolve().parents[1]

STACK_FIELDS = (
    "project_dir",
    "project_name",
    "layout",
    "web_port",
    "postgres_port",
    "redis_port",
    "clickhouse_port",
    "clickhouse_http_port",
    "postgres_password",
    "probe_dsn",
    "api_token",
    "service_names",
    "volume_names",
    "tool_image",
    "pull_images",
)


# -- the sandbox's connection file -----------------------------------------------------------------
def ssh_fields(ssh: dict) -> dict:
    return {
        "ssh_host": ssh["host"],
        "ssh_port": ssh["port"],
        "ssh_user": ssh["user"],
        "ssh_private_key": Path(ssh["private_key_path"]).read_text(),
        "ssh_host_key": ssh["host_key"],
    }


def host_from_connection(info: dict, layout: str = "guide") -> SentryHost:
    """The host block of one of the connection file's stacks (`stacks.<layout>`)."""
    stack = info.get("stacks", {}).get(layout) or info["stack"]
    return SentryHost(
        **ssh_fields(info["ssh"]), **{k: stack[k] for k in STACK_FIELDS if k in stack}
    )


def drill_host_from_connection(info: dict) -> SentryHost:
    """The sandbox's drill host: another Docker engine behind its own sshd; scratch stacks go
    under its `drill_dir`."""
    stack = info["stack"]
    return SentryHost(
        **ssh_fields(info["drill_ssh"]),
        project_dir=info["drill_dir"],
        **{k: stack[k] for k in ("tool_image", "pull_images") if k in stack},
    )


def store_from_connection(info: dict, prefix: str = "sentry") -> BackupStore:
    s3 = info["s3"]
    return BackupStore(
        bucket=s3["bucket"],
        prefix=prefix,
        credentials=AwsCredentials(
            aws_access_key_id=s3["access_key"],
            aws_secret_access_key=s3["secret_key"],
            region_name=s3.get("region", "us-east-1"),
            aws_client_parameters=AwsClientParameters(endpoint_url=s3["endpoint_url"]),
        ),
        backup_key=s3["backup_key"],
    )


def save_blocks(info: dict, name: str, layout: str = "guide") -> list[str]:
    host_from_connection(info, layout).save(name, overwrite=True)
    if "drill_ssh" in info:
        drill_host_from_connection(info).save("drill-host", overwrite=True)
    store_from_connection(info).save(name, overwrite=True)
    return [f"sentry-host/{name}", f"sentry-backup-store/{name}"]


# -- the config file -------------------------------------------------------------------------------
class ConfigError(ValueError):
    """What is wrong in the config file, naming the table and key, and how to fix it."""


class PrefectSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    work_pool: str = "sentry-ops"
    work_pool_type: Literal["process", "docker"] = "process"
    image: str | None = None  # docker work pool: the flows' image (infra/flows-image)
    project_dir: str = str(ROOT)  # where a process worker finds flows/ (this checkout)
    metrics_dir: str | None = None  # node_exporter's textfile directory on the worker
    job_variables: dict[str, Any] = {}  # the work pool's job variables for every deployment


class AlertSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    webhook_url_file: Path  # the URL often carries a token: it is kept as a secret
    backup_max_age_hours: float = Field(26, gt=0)
    block_name: str = "sentry-ops-alerts"


class Config(BaseModel):
    """The parsed config: blocks to save (built and validated), deployments, alerts."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    prefect: PrefectSettings
    alerts: AlertSettings | None
    webhook_url: SecretStr | None
    stores: dict[str, BackupStore]
    hosts: dict[str, SentryHost]
    drill_hosts: dict[str, SentryHost]
    host_store: dict[str, str]  # host -> its store's block name
    admin_passwords: dict[str, SecretStr]  # host -> its admin password (bootstrap)
    overrides: dict[str, dict[str, dict[str, Any]]]  # host -> template -> parameters


def secret_file(where: str, path: Any, base: Path) -> str:
    file = (base / Path(str(path)).expanduser()).resolve()
    try:
        value = file.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {file} ({exc.strerror}): fix the path") from None
    if not value:
        raise ConfigError(f"{where}: {file} is empty")
    return value


def explain(where: str, exc: ValidationError) -> ConfigError:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(table)'}: {e['msg']}" for e in exc.errors()
    )
    return ConfigError(f"{where}: {problems}")


def build(where: str, factory: Callable[..., Any], fields: dict) -> Any:
    try:
        return factory(**fields)
    except ValidationError as exc:
        raise explain(where, exc) from None


def host_block(where: str, table: dict, base: Path) -> SentryHost:
    """A SentryHost from its table: its fields as named in the block; a secret field from a file
    as `<field>_file` (ssh_private_key_file, postgres_password_file, probe_dsn_file, ...)."""
    known = set(SentryHost.model_fields)
    secrets = {k for k, f in SentryHost.model_fields.items() if "SecretStr" in str(f.annotation)}
    fields: dict[str, Any] = {}
    for key, value in table.items():
        if key.endswith("_file") and key.removesuffix("_file") in secrets:
            fields[key.removesuffix("_file")] = secret_file(f"{where}.{key}", value, base)
        elif key in secrets:
            raise ConfigError(
                f"{where}.{key}: secrets are not written in the config; "
                f"put it in a file and name it as {key}_file"
            )
        elif key in known:
            fields[key] = value
        else:
            raise ConfigError(
                f"{where}: unknown key {key!r}; a host takes the SentryHost block's fields "
                f"({', '.join(sorted(known))}), secrets as <field>_file, and store, "
                "admin_password_file, deployments"
            )
    return build(where, SentryHost, fields)


def store_block(where: str, table: dict, base: Path) -> BackupStore:
    table = dict(table)
    try:
        access = secret_file(f"{where}.access_key_id_file", table.pop("access_key_id_file"), base)
        secret = secret_file(
            f"{where}.secret_access_key_file", table.pop("secret_access_key_file"), base
        )
    except KeyError as exc:
        raise ConfigError(f"{where}: {exc.args[0]} is required (a file with the S3 key)") from None
    endpoint, region = table.pop("endpoint_url", None), table.pop("region", "us-east-1")
    backup_key = table.pop("backup_key_file", None)
    unknown = set(table) - (set(BackupStore.model_fields) - {"credentials", "backup_key"})
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {sorted(unknown)}; a store takes bucket, "
            "prefix, region, endpoint_url, access_key_id_file, secret_access_key_file, "
            "backup_key_file and the BackupStore block's other fields"
        )
    credentials = AwsCredentials(
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        region_name=region,
        aws_client_parameters=AwsClientParameters(endpoint_url=endpoint),
    )
    if backup_key is not None:
        table["backup_key"] = secret_file(f"{where}.backup_key_file", backup_key, base)
    return build(where, BackupStore, {**table, "credentials": credentials})


def load_config(path: Path) -> Config:
    """Parse and check the whole file; raises ConfigError naming the first problem."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}: pass --config with an existing file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    base = path.resolve().parent
    unknown = set(data) - {"prefect", "alerts", "stores", "hosts", "drill_hosts"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown table(s) {sorted(unknown)}; "
            "the tables are prefect, alerts, stores, hosts, drill_hosts"
        )
    prefect = build("[prefect]", PrefectSettings, data.get("prefect", {}))
    if prefect.work_pool_type == "docker" and not prefect.image:
        raise ConfigError(
            "[prefect]: work_pool_type = 'docker' needs image = the flows' image "
            "(docker build -t sentry-ops/flows -f infra/flows-image/Dockerfile .)"
        )
    alerts = build("[alerts]", AlertSettings, data["alerts"]) if "alerts" in data else None
    webhook = (
        SecretStr(secret_file("[alerts].webhook_url_file", alerts.webhook_url_file, base))
        if alerts
        else None
    )
    if webhook and not webhook.get_secret_value().startswith(("http://", "https://")):
        raise ConfigError("[alerts].webhook_url_file: the file must hold an http(s) URL")
    stores = {n: store_block(f"[stores.{n}]", t, base) for n, t in data.get("stores", {}).items()}
    if not data.get("hosts"):
        raise ConfigError(f"{path}: no [hosts.<name>] table: add one per Sentry host")
    hosts, host_store, admin, overrides = {}, {}, {}, {}
    for name, table in data["hosts"].items():
        where = f"[hosts.{name}]"
        table = dict(table)
        store = table.pop("store", None)
        if store is None or store not in stores:
            raise ConfigError(
                f"{where}: store = {store!r} is not one of [stores.*] "
                f"({', '.join(stores) or 'none'}); name the store its backups go to"
            )
        host_store[name] = store
        if "admin_password_file" in table:
            admin[name] = SecretStr(
                secret_file(f"{where}.admin_password_file", table.pop("admin_password_file"), base)
            )
        overrides[name] = table.pop("deployments", {})
        hosts[name] = host_block(where, table, base)
    drill_hosts = {
        n: host_block(f"[drill_hosts.{n}]", t, base) for n, t in data.get("drill_hosts", {}).items()
    }
    for name, per_template in overrides.items():
        drill = per_template.get("restore-drill", {}).get("drill_host")
        if drill is not None and drill not in drill_hosts:
            raise ConfigError(
                f"[hosts.{name}].deployments.restore-drill: drill_host = {drill!r} is not one of "
                f"[drill_hosts.*] ({', '.join(drill_hosts) or 'none'})"
            )
    clash = set(hosts) & set(drill_hosts)  # both are SentryHost blocks
    if clash:
        raise ConfigError(
            f"{path}: {sorted(clash)} both a host and a drill host: SentryHost block names differ"
        )
    return Config(
        prefect=prefect,
        alerts=alerts,
        webhook_url=webhook,
        stores=stores,
        hosts=hosts,
        drill_hosts=drill_hosts,
        host_store=host_store,
        admin_passwords=admin,
        overrides=overrides,
    )


# -- deployments -----------------------------------------------------------------------------------
def templates() -> list[dict]:
    """prefect.yaml's deployments: the one list of operations, schedules and descriptions."""
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def admin_secret_name(host: str) -> str:
    return f"{host}-admin-password"


def plan_deployments(config: Config) -> list[dict]:
    """Every deployment setup makes: per host for a template whose flow needs `host`, per store
    for one that takes `store` (list-backups, retention) or `hosts` (fleet runs over the store's
    hosts). Pure: what exists in Prefect is not read."""
    from prefect.flows import load_flow_from_entrypoint

    planned = []
    per_host = set()
    for template in templates():
        flow = load_flow_from_entrypoint(str(ROOT / template["entrypoint"]))
        takes = set(flow.parameters.properties)
        base = dict(template.get("parameters", {}))
        targets: list[tuple[str, dict]] = []
        if "host" in (flow.parameters.required or []):
            per_host.add(flow.name)
            for host, store in config.host_store.items():
                params = {**base, "host": host}
                if "store" in takes:
                    params["store"] = store
                if "admin_password_secret" in takes:
                    if host not in config.admin_passwords:
                        continue  # no admin password in the config: no bootstrap deployment
                    params["admin_password_secret"] = admin_secret_name(host)
                custom = dict(config.overrides.get(host, {}).get(flow.name, {}))
                if not custom.pop("enabled", True):
                    continue
                targets.append((host, {**params, **custom}))
        elif "store" in takes:
            for store in config.stores:
                params = {**base, "store": store}
                if "hosts" in takes:
                    params["hosts"] = [h for h, s in config.host_store.items() if s == store]
                if "textfile" in takes and config.prefect.metrics_dir:
                    params["textfile"] = f"{config.prefect.metrics_dir}/sentry_ops_{store}.prom"
                targets.append((store, params))
        for name, params in targets:
            unknown = set(params) - takes
            if unknown:
                raise ConfigError(
                    f"deployment {flow.name}/{name}: {sorted(unknown)} are not parameters of "
                    f"{template['entrypoint']} ({', '.join(sorted(takes))})"
                )
            planned.append(
                {
                    "flow": flow,
                    "flow_name": flow.name,
                    "name": name,
                    "template": template,
                    "parameters": params,
                    "tags": ["sentry-ops", f"op:{template['name']}", f"target:{name}"],
                }
            )
    for host, per_flow in config.overrides.items():
        unknown = set(per_flow) - per_host
        if unknown:
            raise ConfigError(
                f"[hosts.{host}.deployments]: {sorted(unknown)} are not operations of a host; "
                f"they are {', '.join(sorted(per_host))}"
            )
    return planned


def schedule_of(spec: dict) -> Any:
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    if "cron" in spec:
        schedule = CronSchedule(cron=spec["cron"], timezone=spec.get("timezone", "UTC"))
    else:
        schedule = IntervalSchedule(interval=timedelta(seconds=spec["interval"]))
    return DeploymentScheduleCreate(schedule=schedule, active=spec.get("active", True))


def as_refs(parameters: dict, block_ids: dict[tuple[str, str], Any]) -> dict:
    """Block parameters as references to the saved blocks: the run form shows the block picked
    (and a worker loads it by id); other values as they are."""
    kinds = {
        "host": "host",
        "drill_host": "host",
        "store": "store",
        "admin_password_secret": "secret",
    }
    return {
        key: {"$ref": {"block_document_id": str(block_ids[kinds[key], value])}}
        if key in kinds and (kinds[key], value) in block_ids
        else value
        for key, value in parameters.items()
    }


def apply_deployments(
    client: Any, config: Config, planned: list[dict], block_ids: dict[tuple[str, str], Any]
) -> list[str]:
    """Create or update each planned deployment (the server upserts by flow and name; its
    schedules are replaced, not added)."""
    pull = [
        {
            "prefect.deployments.steps.set_working_directory": {
                "directory": config.prefect.project_dir
            }
        }
    ]
    job_variables = dict(config.prefect.job_variables)
    if config.prefect.work_pool_type == "docker":
        job_variables["image"] = config.prefect.image
    made = []
    wanted = {(d["flow_name"], d["name"]) for d in planned}
    flows = {f.id: f.name for f in client.read_flows()}
    for old in client.read_deployments():  # a host or store taken out of the config
        if "sentry-ops" in old.tags and (flows.get(old.flow_id), old.name) not in wanted:
            client.delete_resource_owned_automations(f"prefect.deployment.{old.id}")
            client.delete_deployment(old.id)
    for d in planned:
        template = d["template"]
        flow_id = client.create_flow_from_name(d["flow_name"])
        deployment_id = client.create_deployment(
            flow_id=flow_id,
            name=d["name"],
            description=template.get("description"),
            entrypoint=template["entrypoint"],
            path=config.prefect.project_dir,
            pull_steps=pull,
            parameters=as_refs(d["parameters"], block_ids),
            parameter_openapi_schema=d["flow"].parameters.model_dump_for_openapi(),
            work_pool_name=config.prefect.work_pool,
            work_queue_name="default",
            job_variables=job_variables,
            tags=d["tags"],
            schedules=[schedule_of(s) for s in template.get("schedules", [])],
            concurrency_limit=template.get("concurrency_limit"),
            enforce_parameter_schema=True,
        )
        apply_triggers(client, deployment_id, d)
        made.append(f"{d['flow_name']}/{d['name']}")
    return made


def apply_triggers(client: Any, deployment_id: Any, planned: dict) -> None:
    """The template's event triggers for this deployment (replaced on every setup), narrowed to
    the deployment's own host: the drill that may follow each backup follows its host's."""
    from prefect.events import DeploymentEventTrigger

    client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
    for spec in planned["template"].get("triggers", []):
        trigger = DeploymentEventTrigger(**{k: v for k, v in spec.items() if k != "type"})
        if "host" in planned["parameters"]:
            trigger.match = trigger.match.model_copy(
                update={"root": {**trigger.match.root, "sentry-ops.host": planned["name"]}}
            )
        trigger.set_deployment_id(deployment_id)
        automation = trigger.as_automation()
        automation.name = (
            f"{planned['flow_name']}/{planned['name']} on {', '.join(sorted(trigger.expect))}"
        )
        client.create_automation(automation)


def ensure_work_pool(client: Any, settings: PrefectSettings) -> str:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    try:
        pool = client.read_work_pool(settings.work_pool)
    except ObjectNotFound:
        if settings.work_pool_type == "docker":
            from prefect_docker.worker import DockerWorker as Worker
        else:
            from prefect.workers.process import ProcessWorker as Worker
        client.create_work_pool(
            WorkPoolCreate(
                name=settings.work_pool,
                type=settings.work_pool_type,
                base_job_template=Worker.get_default_base_job_template(),
                description="sentry-ops flows (python -m deployments.setup)",
            )
        )
        return f"created ({settings.work_pool_type})"
    if pool.type != settings.work_pool_type:
        raise ConfigError(
            f"[prefect].work_pool: {settings.work_pool!r} exists with type {pool.type!r}, not "
            f"{settings.work_pool_type!r}: name another pool or set work_pool_type = {pool.type!r}"
        )
    return "exists"


# -- alerts ----------------------------------------------------------------------------------------
AUTOMATION_PREFIX = "sentry-ops: "
ALERTED_FLOWS = (
    "backup",
    "clickhouse-snapshot",
    "verify-backup",
    "restore-drill",
    "upgrade",
    "health-check",
    "retention-cleanup",
    "fleet-backup",
    "fleet-health-check",
)
FAILED_SUBJECT = "sentry-ops: {{ flow.name }} {{ flow_run.name }} {{ flow_run.state.name }}"
FAILED_BODY = (
    "{{ flow.name }} run {{ flow_run.name }} ended {{ flow_run.state.name }}: "
    "{{ flow_run.state.message }}\n{{ flow_run|ui_url }}"
)


def plan_automations(config: Config, block_id: Any) -> list[Any]:
    """The alerts: any failed or crashed run of an operation that guards data or health; per host,
    no completed backup within backup_max_age_hours (a proactive trigger: it fires on silence)."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    assert config.alerts is not None
    automations = [
        AutomationCore(
            name=f"{AUTOMATION_PREFIX}a run failed",
            description="A sentry-ops run that guards data or health failed or crashed.",
            trigger=EventTrigger(
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": list(ALERTED_FLOWS),
                },
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=[
                SendNotification(
                    block_document_id=block_id, subject=FAILED_SUBJECT, body=FAILED_BODY
                )
            ],
        )
    ]
    hours = config.alerts.backup_max_age_hours
    for host in config.hosts:
        automations.append(
            AutomationCore(
                name=f"{AUTOMATION_PREFIX}no backup of {host} in {hours:g} h",
                description=f"No sentry.backup.completed of host block {host} in {hours:g} h.",
                trigger=EventTrigger(
                    match={"prefect.resource.id": "sentry-ops.backup.*", "sentry-ops.host": host},
                    expect={"sentry.backup.completed"},
                    posture=Posture.Proactive,
                    threshold=1,
                    within=timedelta(hours=hours),
                ),
                actions=[
                    SendNotification(
                        block_document_id=block_id,
                        subject=f"sentry-ops: no backup of {host} in {hours:g} h",
                        body=(
                            f"No backup of {host} completed in the last {hours:g} hours: "
                            f"look at the runs of backup/{host} in the Prefect UI."
                        ),
                    )
                ],
            )
        )
    return automations


def apply_automations(client: Any, wanted: list[Any]) -> list[str]:
    """Create or update each wanted automation by name; remove sentry-ops automations no longer
    wanted (a host taken out of the config, or no [alerts] table)."""
    existing = {
        a.name: a for a in client.read_automations() if a.name.startswith(AUTOMATION_PREFIX)
    }
    for automation in wanted:
        if automation.name in existing:
            client.update_automation(existing.pop(automation.name).id, automation)
        else:
            client.create_automation(automation)
    for stale in existing.values():
        client.delete_automation(stale.id)
    return [a.name for a in wanted]


def webhook_block(url: SecretStr) -> Any:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    return CustomWebhookNotificationBlock(
        name="sentry-ops",
        url="{{url}}",
        method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
        secrets={"url": url.get_secret_value()},
    )


# -- setup -----------------------------------------------------------------------------------------
def setup(config: Config, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Apply the config to the Prefect server of PREFECT_API_URL; returns what was made."""
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client

    from flows.shared import ensure_lock, lock_name

    planned = plan_deployments(config)  # before any change: a template error stops here
    for block_type in (SentryHost, BackupStore, Secret, AwsCredentials):
        block_type.register_type_and_schema()
    say("block types registered: sentry-host, sentry-backup-store, secret, aws-credentials")
    with get_client(sync_client=True) as client:
        say(f"work pool {config.prefect.work_pool}: {ensure_work_pool(client, config.prefect)}")
        block_ids: dict[tuple[str, str], Any] = {}
        for name, store in config.stores.items():
            block_ids["store", name] = store.save(name, overwrite=True)
        for name, host in {**config.hosts, **config.drill_hosts}.items():
            block_ids["host", name] = host.save(name, overwrite=True)
        for name, password in config.admin_passwords.items():
            secret_name = admin_secret_name(name)
            block_ids["secret", secret_name] = Secret(value=password).save(
                secret_name, overwrite=True
            )
        say(
            f"blocks saved: stores {', '.join(config.stores)}; hosts "
            f"{', '.join([*config.hosts, *config.drill_hosts])}"
        )
        for host in config.hosts.values():
            ensure_lock(lock_name(host))
        deployments = apply_deployments(client, config, planned, block_ids)
        say(f"deployments ({len(deployments)}): {', '.join(deployments)}")
        automations: list[str] = []
        if config.alerts and config.webhook_url:
            block = webhook_block(config.webhook_url)
            block_id = block.save(config.alerts.block_name, overwrite=True)
            automations = apply_automations(client, plan_automations(config, block_id))
            say(f"alerts to webhook block {config.alerts.block_name}: {'; '.join(automations)}")
        else:
            apply_automations(client, [])  # the config is the whole set: none wanted
            say("no [alerts] table: no alert automations (see deployments/hosts.example.toml)")
    say(f"start a worker: prefect worker start --pool {config.prefect.work_pool}")
    return {"deployments": deployments, "automations": automations}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.setup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="the TOML config (hosts, stores, alerts)")
    parser.add_argument("--connection", type=Path, help="the sandbox's connection.json")
    parser.add_argument("--name", default="sandbox", help="--connection: block name to save under")
    parser.add_argument("--layout", default="guide", help="--connection: which of its stacks")
    args = parser.parse_args(argv)
    if args.config:
        try:
            setup(load_config(args.config))
        except ConfigError as exc:
            print(f"setup: {exc}", file=sys.stderr)
            return 2
        return 0
    connection = args.connection or Path(".sandbox/connection.json")
    saved = save_blocks(json.loads(connection.read_text()), args.name, args.layout)
    print("saved blocks: " + ", ".join(saved))
    return 0


if __name__ == "__main__":
    sys.exit(main())
