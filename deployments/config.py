"""The setup config file (sample: deployments/hosts.example.toml), parsed and checked whole into
the blocks to save, the deployments' overrides and the alerts' settings; a ConfigError names the
table and key of the first problem and how to fix it."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from prefect.blocks.core import Block
from prefect_aws import AwsClientParameters, AwsCredentials
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from blocks.backup_store import BackupStore
from blocks.sentry_host import SentryHost

ROOT = Path(__file__).resolve().parents[1]


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


def block_from_table(where: str, block_type: type[Block], table: dict, base: Path) -> Any:
    """A block from its config table: its fields as named in the block; a secret field from a
    file as `<field>_file` (postgres_password_file, probe_dsn_file, ssh.private_key_file, ...);
    a nested block (a host's `ssh`) from a sub-table, the same way."""
    fields_ = block_type.model_fields
    known = set(fields_)
    secrets = {k for k, f in fields_.items() if "SecretStr" in str(f.annotation)}
    nested = {
        k: f.annotation
        for k, f in fields_.items()
        if isinstance(f.annotation, type) and issubclass(f.annotation, Block)
    }
    fields: dict[str, Any] = {}
    for key, value in table.items():
        if key.endswith("_file") and key.removesuffix("_file") in secrets:
            fields[key.removesuffix("_file")] = secret_file(f"{where}.{key}", value, base)
        elif key in secrets:
            raise ConfigError(
                f"{where}.{key}: secrets are not written in the config; "
                f"put it in a file and name it as {key}_file"
            )
        elif key in nested:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: a table of its fields ([...{key}])")
            fields[key] = block_from_table(f"{where}.{key}", nested[key], value, base)
        elif key in known:
            fields[key] = value
        else:
            raise ConfigError(
                f"{where}: unknown key {key!r}; it takes the {block_type.__name__} block's fields "
                f"({', '.join(sorted(known))}), secrets as <field>_file"
                + (", and store, admin_password_file, deployments" if block_type is SentryHost
                   else "")
            )  # fmt: skip
    return build(where, block_type, fields)


def host_block(where: str, table: dict, base: Path) -> SentryHost:
    """A SentryHost from its table (`ssh` a sub-table: an SSH Connection block)."""
    return block_from_table(where, SentryHost, table, base)


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
        for template in ("restore-drill", "pitr-drill"):
            drill = per_template.get(template, {}).get("drill_host")
            if drill is not None and drill not in drill_hosts:
                raise ConfigError(
                    f"[hosts.{name}].deployments.{template}: drill_host = {drill!r} is not one "
                    f"of [drill_hosts.*] ({', '.join(drill_hosts) or 'none'})"
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
