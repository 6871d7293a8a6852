"""Nodestore (SeaweedFS) copy benchmark on the sandbox's self-hosted stack (a script, not a test).

    .venv/bin/python -m infra.bench.nodestore_bench --objects 20000

The stack's SeaweedFS gets `--objects` event payloads (~4 KB of JSON each) in the stand-in's
nodestore bucket, through its S3 API. Then, with infra/bench/paired.py (A B A B, medians):
  A = the backup's way: `docker pause` SeaweedFS, `tar | zstd -1` of its whole volume (objects,
      indexes, filer metadata, `.mini_sse_kek`) to /dev/null, `docker unpause`. A's time is the
      ingestion stall: writes to the nodestore wait while it is paused;
  B = object by object through the S3 API (list, then GET each, 16 threads) to /dev/null, no
      pause. It copies the objects only (a restore re-encrypts them with the new host's key).
Also the bytes each moves.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from infra import sandbox as sb
from infra.bench.backup_bench import bench_stack, paired

BUCKET, PREFIX = "nodestore", "nodestore/bench-"


def s3(port: int):
    import boto3

    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id="sentry", aws_secret_access_key="sentry")  # fmt: skip


def load(port: int, objects: int) -> int:
    client = s3(port)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX)
    have = sum(len(p.get("Contents", [])) for p in pages)
    if have < objects:
        print(f"loading {objects - have} payloads ...", flush=True)

        def put(i: int) -> None:
            frames = [f"app/module_{i % 300}.js:{k}" for k in range(120)]
            body = json.dumps({"event_id": f"{i:032x}", "message": f"TypeError {i}", "f": frames})
            client.put_object(Bucket=BUCKET, Key=f"{PREFIX}{i:08d}", Body=body.encode(),
                              Metadata={"timestamp": "2026-11-01T00:00:00+00:00"})  # fmt: skip

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, range(have, objects)))
    return objects


def copy_objects(port: int) -> None:
    """B: every object of the bucket, listed and read through the S3 API."""
    client = s3(port)
    keys = [o["Key"] for p in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in p.get("Contents", [])]  # fmt: skip

    def get(key: str) -> int:
        return len(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    with ThreadPoolExecutor(16) as pool:
        total = sum(pool.map(get, keys))
    print(json.dumps({"objects": len(keys), "bytes": total}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("-n", type=int, default=3, help="pairs after the warm-up")
    parser.add_argument("--copy-objects", type=int, help=argparse.SUPPRESS)  # B, in its process
    args = parser.parse_args()
    if args.copy_objects:
        copy_objects(args.copy_objects)
        return 0
    sb.up()
    name, _ = bench_stack("self-hosted")
    port = sb.StackPorts.slot(sb.STACKS["self-hosted"][1]).seaweedfs + 3  # its S3 API
    load(port, args.objects)
    ids = sb.compose(name, "ps", "-q", "seaweedfs").stdout.split()
    tar = shlex.join(["docker", "run", "--rm", "--network", "none", "-v",
                      "sentry-seaweedfs:/volume:ro", "--entrypoint", "tar", sb.TOOL_IMAGE,
                      "--use-compress-program=zstd -1 -T0", "-C", "/volume", "-cf", "-",
                      "."])  # fmt: skip
    pause = shlex.join(["docker", "pause", *ids]) + " > /dev/null"
    unpause = shlex.join(["docker", "unpause", *ids]) + " > /dev/null"
    paused = f"set -e; {pause}; trap '{unpause}' EXIT; {tar} > /dev/null"
    objects = shlex.join([sys.executable, "-m", "infra.bench.nodestore_bench", "--copy-objects",
                          str(port)])  # fmt: skip
    os.chdir(sb.REPO)
    results: dict = {"objects": args.objects}
    results["paused_tar_vs_objects"] = paired(paused, objects, args.n)
    sized = subprocess.run(["bash", "-c", f"set -e; {pause}; trap '{unpause}' EXIT; {tar} | wc -c"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    results["paused_tar_bytes"] = int(sized.stdout.split()[-1])
    one = subprocess.run(["bash", "-c", objects], capture_output=True, text=True, check=True)
    results["objects_read"] = json.loads(one.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=2))
    out_file = sb.STATE / f"bench-nodestore-{args.objects}.json"
    out_file.write_text(json.dumps(results, indent=2))
    print(f"written to {out_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
