"""Create the blocks a deployment needs, from a connection file.

    python -m deployments.setup --connection .sandbox/connection.json --name sandbox

The connection file is what `python -m infra.sandbox up` writes; for a real host write the same
shape by hand (ssh.host/port/user/private_key_path/host_key, stack.project_dir/project_name/
layout/ports). Secrets are read from files and stored only in SecretStr block fields.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from blocks.sentry_host import SentryHost

STACK_FIELDS = ("project_dir", "project_name", "layout", "web_port", "postgres_port",
                "redis_port", "clickhouse_port")  # fmt: skip


def host_from_connection(info: dict) -> SentryHost:
    ssh, stack = info["ssh"], info["stack"]
    return SentryHost(
        ssh_host=ssh["host"],
        ssh_port=ssh["port"],
        ssh_user=ssh["user"],
        ssh_private_key=Path(ssh["private_key_path"]).read_text(),
        ssh_host_key=ssh["host_key"],
        **{k: stack[k] for k in STACK_FIELDS if k in stack},
    )


def save_blocks(info: dict, name: str) -> list[str]:
    host_from_connection(info).save(name, overwrite=True)
    return [f"sentry-host/{name}"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.setup", description=__doc__)
    parser.add_argument("--connection", type=Path, default=Path(".sandbox/connection.json"))
    parser.add_argument("--name", default="sandbox", help="block name to save under")
    args = parser.parse_args()
    saved = save_blocks(json.loads(args.connection.read_text()), args.name)
    print("saved blocks: " + ", ".join(saved))
    return 0


if __name__ == "__main__":
    sys.exit(main())
