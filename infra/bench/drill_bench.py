"""Restore-drill benchmark on the sandbox (a script, not a test; figures go in the issue note).

    .venv/bin/python -m infra.bench.drill_bench --scale 1.0

On the bench stack with the Sentry-like data of shared/bench/sentry_like_db.sql (~1.1 GiB at
scale 1.0), in one run: a backup; the raw baseline, `pg_restore` of that same dump (decompressed
to a local file first, not timed) into an empty Postgres; and the restore drill's RTO.
Target: RTO <= 1.3 x raw + 30 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from infra.bench.backup_bench import prepare
from infra.sandbox import sandbox as sb

RAW_PORT = 15995


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--keep", action="store_true", help="keep the bench stack afterwards")
    args = parser.parse_args()
    info, _, _, db_bytes = prepare(args.scale)
    os.environ["PREFECT_API_URL"] = info["prefect_api_url"]

    import zstandard

    from blocks.backup_store import BackupStore
    from flows.backup import backup
    from flows.restore_drill import DrillStack, restore_drill

    taken = backup("bench", "bench")
    store = BackupStore.load("bench")
    manifest = store.read_manifest(taken["backup_id"])
    results: dict = {
        "scale": args.scale,
        "database_bytes": db_bytes,
        "dump_MB": round(manifest.object("postgres").raw_size / 1e6, 1),
    }

    # raw baseline: the same dump, from a local file, into an empty Postgres
    name = "sentry-ops-bench-raw-restore"
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--rm",
            "--name",
            name,
            "--network",
            "host",
            "-e",
            "POSTGRES_USER=sentry",
            "-e",
            "POSTGRES_DB=sentry",
            "-e",
            "POSTGRES_PASSWORD=bench",
            "-e",
            f"PGPORT={RAW_PORT}",
            "sentry-ops-sandbox/services:latest",
            "postgres",
        ],
        check=True,
        capture_output=True,
    )
    try:
        sb.wait_for("raw postgres", lambda: sb.port_open(RAW_PORT), 60)
        time.sleep(2)
        with tempfile.NamedTemporaryFile(suffix=".dump") as dump:
            reader = zstandard.ZstdDecompressor().stream_reader(
                store.open(manifest.object("postgres").key)
            )
            while chunk := reader.read(8 << 20):
                dump.write(chunk)
            dump.flush()
            started = time.monotonic()
            subprocess.run(
                [
                    "pg_restore",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(RAW_PORT),
                    "-U",
                    "sentry",
                    "-d",
                    "sentry",
                    "--no-owner",
                    dump.name,
                ],
                check=True,
                env={**os.environ, "PGPASSWORD": "bench"},
            )
            raw = time.monotonic() - started
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    results["raw_pg_restore_seconds"] = round(raw, 1)

    drill = restore_drill(
        "bench", "bench", taken["backup_id"], drill=DrillStack(env=sb.stack_settings(3))
    )
    results["drill_rto_seconds"] = drill["rto_seconds"]
    results["target_seconds"] = round(1.3 * raw + 30, 1)
    results["meets_target"] = drill["rto_seconds"] <= 1.3 * raw + 30
    print(json.dumps(results, indent=2))
    (sb.STATE / f"bench-drill-{args.scale}.json").write_text(json.dumps(results, indent=2))
    if not args.keep:
        sb.remove_stack("bench")
    return 0


if __name__ == "__main__":
    sys.exit(main())
