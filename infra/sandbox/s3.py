"""The S3 endpoint: SeaweedFS (`weed mini`, a real S3 server, the one self-hosted's nodestore
runs), with the backups' bucket. Its data lives in the state dir and goes with `down`, so every
`up` starts from an empty store."""

from __future__ import annotations

import json
import secrets
import shutil

from infra.sandbox.common import BUCKET, S3_PORT, STATE, log, pid_alive, port_open, spawn, wait_for
from infra.sandbox.images import weed_binary

# weed mini's other servers, each on 127.0.0.1 next to the S3 port (gRPC: port + 10000)
WEED_PORTS = ("master", "volume", "filer", "admin")


def weed_argv(data: str, config: str) -> list[str]:
    ports = {name: S3_PORT + 1 + i for i, name in enumerate(WEED_PORTS)}
    flags = [f"-{n}.{kind}={p + off}" for n, p in [("s3", S3_PORT), *ports.items()]
             for kind, off in (("port", 0), ("port.grpc", 10000))]  # fmt: skip
    return [str(weed_binary()), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-webdav=false", "-master.telemetry=false", "-filer.defaultReplicaPlacement=000",
            *flags, f"-metricsPort={S3_PORT + 5}", f"-s3.port.iceberg={S3_PORT + 6}",
            f"-s3.port.lance={S3_PORT + 7}", f"-s3.config={config}"]  # fmt: skip


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
    pidfile = STATE / "s3.pid"
    if not pid_alive(pidfile):
        if port_open(S3_PORT):
            raise RuntimeError(
                f"127.0.0.1:{S3_PORT} is taken by another program: set SANDBOX_S3_PORT"
            )
        log(f"starting the S3 endpoint (SeaweedFS weed mini) on 127.0.0.1:{S3_PORT}")
        data = STATE / "s3"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        identity = {"name": "sandbox", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    "credentials": [{"accessKey": creds["access_key"],
                                     "secretKey": creds["secret_key"]}]}  # fmt: skip
        config = STATE / "s3-identities.json"
        config.write_text(json.dumps({"identities": [identity]}))
        config.chmod(0o600)
        spawn(weed_argv(str(data), str(config)), STATE / "s3.log", pidfile)
        wait_for("the S3 endpoint", lambda: port_open(S3_PORT), 60)
    endpoint = f"http://127.0.0.1:{S3_PORT}"
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=creds["access_key"],
        aws_secret_access_key=creds["secret_key"],
        region_name="us-east-1",
    )

    def bucket_made() -> bool:  # the S3 port opens before the filer behind it answers
        try:
            if BUCKET not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
                s3.create_bucket(Bucket=BUCKET)
            return True
        except Exception:
            return False

    wait_for("the S3 endpoint's bucket", bucket_made, 60, 0.5)
    return {"endpoint_url": endpoint, "bucket": BUCKET, "region": "us-east-1", **creds}
