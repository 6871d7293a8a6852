"""The S3 endpoint (moto server) with the backups' bucket."""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path

from infra.sandbox.common import BUCKET, S3_PORT, STATE, log, pid_alive, port_open, spawn, wait_for


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
