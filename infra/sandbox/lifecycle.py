"""The whole sandbox up and down, its connection file, and a `python -m deployments.setup` config
for its stacks."""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from pathlib import Path

from infra.sandbox.common import DRILL_SSH_PORT, OWN_SSH_PORT, REPO, STATE, log, sh, stop_pid
from infra.sandbox.docker import ensure_docker
from infra.sandbox.drill_host import ensure_drill_engine, stop_drill_engine
from infra.sandbox.images import ensure_images
from infra.sandbox.prefect_server import ensure_prefect_db, ensure_prefect_server, stop_prefect_db
from infra.sandbox.s3 import ensure_s3
from infra.sandbox.sshd import ensure_sshd
from infra.sandbox.stacks import (
    ensure_stack,
    project_name,
    reap_orphan_stacks,
    remove_external_volumes,
    remove_stack,
    stack_info,
    write_private,
)
from infra.sandbox.tools import ensure_chromium, ensure_promtool


def up(with_prefect: bool = False, bare: bool = False) -> dict:
    """Everything the sandbox has, started where missing; one caller at a time (the test
    suite's parallel workers each call it: the second finds it all up)."""
    STATE.mkdir(parents=True, exist_ok=True)
    STATE.chmod(0o700)
    with open(STATE / "up.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _up(with_prefect, bare)


def _up(with_prefect: bool, bare: bool) -> dict:
    started = time.monotonic()
    ensure_docker()
    ensure_images()
    reap_orphan_stacks()
    stacks = {
        "guide": stack_info("guide") if bare else ensure_stack("guide"),
        "self-hosted": ensure_stack("self-hosted"),
    }
    info = {
        "ssh": ensure_sshd(),
        "drill_ssh": ensure_sshd("drill-ssh", DRILL_SSH_PORT, ensure_drill_engine()),
        "own_ssh": ensure_sshd("own-ssh", OWN_SSH_PORT),
        "drill_dir": str(STATE / "drills"),
        "s3": ensure_s3(),
        "promtool": ensure_promtool(),
        "chromium": ensure_chromium(),
        "stack": stacks["guide"],
        "stacks": stacks,
    }
    ensure_prefect_db()  # the demo's and the tests' Prefect servers keep their data there
    if with_prefect:
        info["prefect_api_url"] = ensure_prefect_server()
    path = STATE / "connection.json"
    path.write_text(json.dumps(info, indent=2))
    path.chmod(0o600)
    ssh, s3 = info["ssh"], info["s3"]
    log(f"up in {time.monotonic() - started:.1f}s; everything to connect is in {path}:")
    log(
        f"  ssh       {ssh['user']}@{ssh['host']} -p {ssh['port']} -i {ssh['private_key_path']}"
        f" -o UserKnownHostsFile={ssh['known_hosts_path']}"
    )
    log(f"  host key  {ssh['host_key']}")
    drill = info["drill_ssh"]
    log(f"  drill host (a second Docker engine) ssh -p {drill['port']}, key {drill['host_key']}")
    for layout, stack in stacks.items():
        state = "bare: bootstrap it" if layout == "guide" and bare else "running"
        log(f"  {layout:<11} {stack['project_dir']} ({state})")
        log(f"              web http://127.0.0.1:{stack['web_port']}/_health/")
    log(
        f"  s3        {s3['endpoint_url']} bucket {s3['bucket']} key id {s3['access_key']}"
        " (secret in the file)"
    )
    if with_prefect:
        log(f"  prefect   {info['prefect_api_url']}")
    return info


def down() -> None:
    stacks = STATE / "stacks"
    if shutil.which("docker"):
        # WAL shippers of this sandbox's stacks (sentry-ops-walship-<project>, outside compose):
        # the demo's worker runs ship-wal's schedule, so one may have started after the demo's
        # own stop-wal-archiving
        shippers = sh("docker", "ps", "-aq", "--filter", "label=sentry-ops.job=walship",
                      "--filter", f"name=^sentry-ops-walship-{project_name('')}",
                      check=False).stdout.split()  # fmt: skip
        if shippers:
            sh("docker", "rm", "-f", *shippers, check=False)
            log(f"removed {len(shippers)} WAL shipper(s) of this sandbox's stacks")
    if stacks.exists() and shutil.which("docker"):
        for d in sorted(stacks.iterdir()):
            remove_stack(d)
        remove_external_volumes()
    stop_pid(STATE / "prefect.pid", "the Prefect server")  # before its database goes
    if shutil.which("docker"):
        stop_prefect_db()
    shutil.rmtree(STATE / "secrets", ignore_errors=True)
    stop_pid(STATE / "ssh" / "sshd.pid", "sshd")
    stop_pid(STATE / "drill-ssh" / "sshd.pid", "sshd (drill host)")
    stop_pid(STATE / "own-ssh" / "sshd.pid", "sshd (own-stack tests)")
    stop_drill_engine()
    stop_pid(STATE / "s3.pid", "the S3 endpoint")
    shutil.rmtree(STATE / "s3", ignore_errors=True)
    stop_pid(STATE / "worker.pid", "the demo's worker")
    stop_pid(STATE / "prefect.pid", "the Prefect server")
    (STATE / "connection.json").unlink(missing_ok=True)
    log("down (dockerd and the built images are kept, so the next up is warm)")


def connection() -> dict:
    path = STATE / "connection.json"
    if not path.exists():
        raise RuntimeError(f"no sandbox: {path} is missing; run `python -m infra.sandbox up`")
    return json.loads(path.read_text())


def ssh_table(ssh: dict) -> str:
    """A host's `ssh` (its SSH Connection block) as an inline TOML table; the key as a file."""
    q = json.dumps  # a JSON string is a TOML basic string
    return (
        f"ssh = {{ host = {q(ssh['host'])}, port = {ssh['port']}, user = {q(ssh['user'])}, "
        f"private_key_file = {q(ssh['private_key_path'])}, host_key = {q(ssh['host_key'])} }}"
    )


def setup_config(
    info: dict,
    folder: Path,
    hosts: dict[str, str],
    store: str = "sandbox",
    work_pool: str = "sentry-ops",
    webhook_url: str | None = None,
    drill_host: str | None = None,
    docker_image: str | None = None,
    extra: str = "",
) -> Path:
    """A `python -m deployments.setup` config for sandbox stacks, written as an operator would
    (deployments/hosts.example.toml): `hosts` maps block names to layouts; secrets in 0600 files
    beside it. With `drill_host`, the drill host is a block of that name and self-hosted hosts
    drill there. `extra` is appended (more hosts, per-deployment parameters)."""
    q = json.dumps  # a JSON string is a TOML basic string
    s3, ssh = info["s3"], info["ssh"]
    files = {
        "s3-id": s3["access_key"],
        "s3-secret": s3["secret_key"],
        "backup-key": s3["backup_key"],
    }
    for name, value in files.items():
        write_private(folder / "secrets" / name, value)
    lines = [
        f"[prefect]\nwork_pool = {q(work_pool)}\nproject_dir = {q(str(REPO))}\n"
        if not docker_image  # else a Docker work pool running the flows' image, host networking
        else f'[prefect]\nwork_pool = {q(work_pool)}\nwork_pool_type = "docker"\n'
        f'image = {q(docker_image)}\nproject_dir = "/opt/sentry-ops"\n'
        '[prefect.job_variables]\nnetwork_mode = "host"\nimage_pull_policy = "Never"\n',
        f"[stores.{store}]\nbucket = {q(s3['bucket'])}\nendpoint_url = {q(s3['endpoint_url'])}",
        'access_key_id_file = "secrets/s3-id"\nsecret_access_key_file = "secrets/s3-secret"',
        'backup_key_file = "secrets/backup-key"\n',
    ]
    if webhook_url:
        write_private(folder / "secrets" / "webhook-url", webhook_url)
        lines.insert(1, '[alerts]\nwebhook_url_file = "secrets/webhook-url"\n')
    for name, layout in hosts.items():
        stack = info["stacks"][layout]
        lines += [
            f"[hosts.{name}]\nstore = {q(store)}\nlayout = {q(layout)}",
            ssh_table(ssh),
            f"project_dir = {q(stack['project_dir'])}",
            f"tool_image = {q(stack['tool_image'])}\npull_images = false",
            f"web_port = {stack['web_port']}\nredis_port = {stack['redis_port']}",
            f"clickhouse_port = {stack['clickhouse_port']}",
            f"clickhouse_http_port = {stack['clickhouse_http_port']}",
            f"admin_password_file = {q(stack['admin_password_path'])}",
        ]
        if "postgres_port" in stack:
            write_private(folder / "secrets" / f"{name}-postgres", stack["postgres_password"])
            lines.append(f"postgres_port = {stack['postgres_port']}")
            lines.append(f'postgres_password_file = "secrets/{name}-postgres"')
        for key in ("probe_dsn", "api_token"):
            if stack.get(key):
                write_private(folder / "secrets" / f"{name}-{key}", stack[key])
                lines.append(f'{key}_file = "secrets/{name}-{key}"')
        lines.append(
            f"\n[hosts.{name}.deployments.bootstrap]\nadmin_email = {q(stack['admin_email'])}\n"
        )
        if drill_host and layout == "self-hosted":  # its external volumes: drills go elsewhere
            lines += [
                f"[hosts.{name}.deployments.{drill}]\ndrill_host = {q(drill_host)}\n"
                for drill in ("restore-drill", "pitr-drill")
            ]
    if drill_host:
        drill = info["drill_ssh"]
        lines += [
            f"[drill_hosts.{drill_host}]",
            ssh_table(drill),
            f"project_dir = {q(info['drill_dir'])}",
            f"tool_image = {q(info['stack']['tool_image'])}\npull_images = false\n",
        ]
    path = folder / "hosts.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path
