"""What the tests need beside the sandbox: promtool, headless Chromium, the flows' image."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from infra.sandbox.common import REPO, STATE, apt_install, log, sh
from infra.sandbox.images import digest, ensure_base_image


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
