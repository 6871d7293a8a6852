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
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect_aws import AwsCredentials

from blocks import host_lease
from blocks.backup_store import BackupStore
from blocks.sentry_host import SentryHost
from blocks.ssh_connection import SSHConnection
from deployments.alerts import apply_automations, plan_automations, webhook_block
from deployments.config import Config, ConfigError, load_config
from deployments.deploy import (
    admin_secret_name,
    apply_deployments,
    ensure_work_pool,
    plan_deployments,
)


def setup(config: Config, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Apply the config to the Prefect server of PREFECT_API_URL; returns what was made."""
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client

    from flows.shared import ensure_lock, lock_name

    planned = plan_deployments(config)  # before any change: a template error stops here
    with get_client(sync_client=True) as client:
        say(f"host lock leases: {lease_storage(client)}")
    for block_type in (SSHConnection, SentryHost, BackupStore, Secret, AwsCredentials):
        block_type.register_type_and_schema()
    say(
        "block types registered: ssh-connection, sentry-host, sentry-backup-store, secret, "
        "aws-credentials"
    )
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


def lease_storage(client) -> str:
    """The server's lease storage, refused when it keeps leases in memory (a restart would
    leave a held host lock taken for good); a server that does not show its settings (Prefect
    Cloud) is trusted."""
    try:
        settings = client.request("GET", "/admin/settings").json()
    except Exception as exc:
        return f"not readable from this server ({exc.__class__.__name__}): assumed durable"
    if problem := host_lease.lease_storage_problem(settings):
        raise ConfigError(f"[prefect]: {problem}; nothing was changed")
    return settings["server"]["concurrency"]["lease_storage"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.setup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", type=Path, required=True, help="the TOML config (hosts, stores, alerts)"
    )
    args = parser.parse_args(argv)
    try:
        setup(load_config(args.config))
    except ConfigError as exc:
        print(f"setup: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
