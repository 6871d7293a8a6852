"""The sandbox's connection file (`<state>/connection.json`) as blocks: a stack's SentryHost, the
drill host's, the S3 endpoint's BackupStore.

    python -m infra.sandbox.prefect_blocks --connection .sandbox/connection.json --name sandbox

saves them (the host and the store under `--name`, the drill host as `drill-host`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefect_aws import AwsClientParameters, AwsCredentials

from blocks.backup_store import BackupStore
from blocks.sentry_host import SentryHost
from blocks.ssh_connection import SSHConnection

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


# the one place that turns the connection file's ssh dicts into SentryHost's SSH connection
def ssh_fields(ssh: dict) -> dict:
    return {
        "ssh": SSHConnection(
            host=ssh["host"],
            port=ssh["port"],
            user=ssh["user"],
            private_key=Path(ssh["private_key_path"]).read_text(),
            host_key=ssh["host_key"],
        )
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
    stack, ssh = info["stack"], info["drill_ssh"]
    return SentryHost(
        **ssh_fields(ssh),
        project_dir=info["drill_dir"],
        **({"docker_socket": ssh["docker_socket"]} if "docker_socket" in ssh else {}),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.sandbox.prefect_blocks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--connection", type=Path, help="the sandbox's connection.json")
    parser.add_argument("--name", default="sandbox", help="block name to save under")
    parser.add_argument("--layout", default="guide", help="which of its stacks")
    args = parser.parse_args(argv)
    connection = args.connection or Path(".sandbox/connection.json")
    saved = save_blocks(json.loads(connection.read_text()), args.name, args.layout)
    print("saved blocks: " + ", ".join(saved))
    return 0


if __name__ == "__main__":
    sys.exit(main())
