"""The deployments setup makes from prefect.yaml's templates (one per host, or per store), their
event triggers, and the work pool they run on."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import yaml

from deployments.config import ROOT, Config, ConfigError, PrefectSettings


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
