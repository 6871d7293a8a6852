"""The local sandbox: a real "remote Sentry host" on this machine, for the demo and the tests.

    python -m infra.sandbox up      # idempotent; a warm up takes seconds
    python -m infra.sandbox down    # stacks, sshd, S3 endpoint and Prefect server we started

What it brings up, all on 127.0.0.1:
- a Docker engine (the one that answers; else dockerd is started; else docker.io is installed),
  with Docker Compose v2 as a CLI plugin;
- locally built images: a Debian base (mmdebstrap), Postgres/Redis/ClickHouse, and the SENTRY
  STAND-IN in versions 24.1.0, 24.2.0 and 24.3.0-broken (reused while their inputs are unchanged);
- an sshd with its own host key and client key: the Docker host is operated through it;
- an S3 endpoint (SeaweedFS's `weed mini`, a real S3 server) with a bucket;
- a PostgreSQL for the Prefect servers (the demo's and each test session's database);
- the "production" stack in the guide's layout, migrated, with an admin user.
Everything needed to connect is written to `<state>/connection.json` (0600).

One module per part: common (paths, ports, versions, process helpers), docker, images, sshd,
drill_host, s3, prefect_server, stacks, tools (promtool, Chromium, the flows' image), lifecycle
(up, down, the connection file, a setup config); prefect_blocks turns the connection file into
blocks. What callers use is exported here: `from infra import sandbox as sb; sb.up()`.
"""

from infra.sandbox.common import (
    BUCKET,
    CLICKHOUSE_IMAGE,
    HERE,
    REPO,
    SNUBA_IMAGE,
    STATE,
    TOOL_IMAGE,
    port_open,
    sh,
    spawn,
    stop_pid,
    wait_for,
)
from infra.sandbox.drill_host import copy_images_to_drill, drill_docker
from infra.sandbox.lifecycle import connection, down, setup_config, up
from infra.sandbox.prefect_server import prefect_database, start_prefect_server
from infra.sandbox.stacks import (
    STACKS,
    StackPorts,
    compose,
    compose_argv,
    create_probe_credentials,
    ensure_stack,
    project_name,
    remove_external_volumes,
    remove_stack,
    self_hosted_checkout,
    stack_info,
    stack_settings,
    up_ready,
)
from infra.sandbox.tools import ensure_flows_image

__all__ = [
    "BUCKET",
    "CLICKHOUSE_IMAGE",
    "HERE",
    "REPO",
    "SNUBA_IMAGE",
    "STACKS",
    "STATE",
    "TOOL_IMAGE",
    "StackPorts",
    "compose",
    "compose_argv",
    "connection",
    "copy_images_to_drill",
    "create_probe_credentials",
    "down",
    "drill_docker",
    "ensure_flows_image",
    "ensure_stack",
    "port_open",
    "prefect_database",
    "project_name",
    "remove_external_volumes",
    "remove_stack",
    "self_hosted_checkout",
    "setup_config",
    "sh",
    "spawn",
    "stack_info",
    "stack_settings",
    "start_prefect_server",
    "stop_pid",
    "up",
    "up_ready",
    "wait_for",
]
