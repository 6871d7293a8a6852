"""Restore-drill and restore benchmark on the sandbox (a script, not a test; figures go in the
issue note).

    .venv/bin/python -m infra.bench.drill_bench --scale 1.0 --pairs 2 --layout guide
    .venv/bin/python -m infra.bench.drill_bench --scale 1.0 --pairs 2 --layout self-hosted

On the layout's bench stack (backup_bench.bench_stack; the other stacks stopped meanwhile) with
the Sentry-like data of infra/bench/sentry_like_db.sql (~1.2 GB at scale 1.0), in one run: a
backup; the raw baseline, `pg_restore` (the tool image's, as the drill and the restore use) of
that same dump from a local file into an empty Postgres; the restore drill's RTO (guide: a
scratch stack beside production; self-hosted: on the drill host, as its deployment runs it,
since its volumes are external); then, paired (raw, restore, raw, restore, ...), the raw
baseline against the `restore` flow onto the bench host itself after its stack was cleared as a
lost host's (containers removed, data volumes emptied). Medians; target for both RTOs:
<= 1.3 x raw + 30 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infra import sandbox as sb
from infra.bench.backup_bench import bench_stack, load, other_stacks, psql

RAW_PORT = 15995


def raw_restore(store, manifest) -> float:
    """Seconds of the raw baseline: the set's dump, from a local file, into an empty Postgres
    (the download not counted)."""
    from blocks import backup_set

    raw_name = "sentry-ops-bench-raw-restore"
    subprocess.run(["docker", "rm", "-f", raw_name], capture_output=True)
    subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", raw_name, "--network", "host",
         "-e", "POSTGRES_USER=sentry", "-e", "POSTGRES_DB=sentry",
         "-e", "POSTGRES_HOST_AUTH_METHOD=trust", "-e", f"PGPORT={RAW_PORT}",
         "sentry-ops-sandbox/services:latest", "postgres"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        sb.wait_for("raw postgres", lambda: sb.port_open(RAW_PORT), 60)
        time.sleep(2)
        with tempfile.TemporaryDirectory() as tmp:
            dump = Path(tmp, "postgres.dump")
            with dump.open("wb") as f:
                body = backup_set.open_object(store, manifest, "postgres")
                while chunk := body.read(8 << 20):
                    f.write(chunk)
            started = time.monotonic()
            proc = subprocess.run(
                ["docker", "run", "--rm", "--network", "host", "-v", f"{tmp}:/d:ro",
                 "--entrypoint", "pg_restore", sb.TOOL_IMAGE, "-h", "127.0.0.1",
                 "-p", str(RAW_PORT), "-U", "sentry", "-d", "sentry", "--no-owner",
                 "/d/postgres.dump"],
                capture_output=True, text=True,
            )  # fmt: skip
            raw = time.monotonic() - started
            # 1: "errors ignored on restore" (pg_restore 17's SET transaction_timeout on PG 15)
            if proc.returncode not in (0, 1):
                raise SystemExit(f"raw pg_restore failed: {proc.stderr[-2000:]}")
    finally:
        subprocess.run(["docker", "rm", "-f", raw_name], capture_output=True)
    return raw


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--pairs", type=int, default=2, help="raw/restore pairs (0: none)")
    parser.add_argument("--keep", action="store_true", help="keep the bench stack afterwards")
    parser.add_argument("--layout", choices=["guide", "self-hosted"], default="guide")
    args = parser.parse_args()
    info = sb.up(with_prefect=True)
    os.environ["PREFECT_API_URL"] = info["prefect_api_url"]
    name, stack = bench_stack(args.layout)
    stopped = other_stacks(name)
    for other in stopped:
        sb.compose(other, "stop")
    try:
        return bench(info, name, stack, args)
    finally:
        for other in stopped:
            sb.compose(other, "start")


def bench(info: dict, name: str, stack: dict, args: argparse.Namespace) -> int:
    db_bytes = load(name, args.layout, args.scale)

    from blocks import backup_set
    from flows.backup import backup
    from flows.restore_drill import DrillStack, restore_drill
    from infra.sandbox.prefect_blocks import save_blocks, store_from_connection

    save_blocks({**info, "stacks": {args.layout: stack}}, "bench", args.layout)
    store = store_from_connection(info, prefix="bench")
    store.save("bench", overwrite=True)
    taken = backup("bench", "bench")
    manifest = backup_set.load(store, taken["host_id"], taken["backup_id"])
    results: dict = {
        "layout": args.layout,
        "scale": args.scale,
        "database_bytes": db_bytes,
        "stored_MB": round(manifest.object("postgres").size / 1e6, 1),
    }

    raw = raw_restore(store, manifest)
    results["raw_pg_restore_seconds"] = round(raw, 1)

    if args.layout == "guide":
        drill = restore_drill(
            "bench", "bench", taken["backup_id"], drill=DrillStack(env=sb.stack_settings(3))
        )
    else:
        drill = restore_drill("bench", "bench", taken["backup_id"], drill_host="drill-host")
    results["drill_rto_seconds"] = drill["rto_seconds"]
    results["target_seconds"] = round(1.3 * raw + 30, 1)
    results["meets_target"] = drill["rto_seconds"] <= 1.3 * raw + 30

    # the restore flow onto the bench host, its stack cleared as a lost host's, paired with raw
    from blocks import restore as restoring
    from blocks.sentry_host import SentryHost
    from flows.restore import restore

    host = SentryHost.load("bench")
    raws, rtos = [], []
    for _ in range(args.pairs):
        raws.append(raw_restore(store, manifest))
        restoring.clear_stack(host)
        rtos.append(restore("bench", "bench", taken["backup_id"])["rto_seconds"])
    if args.pairs:
        raw_median, rto_median = statistics.median(raws), statistics.median(rtos)
        results["restore_pairs"] = [
            {"raw_seconds": round(r, 1), "restore_rto_seconds": t}
            for r, t in zip(raws, rtos, strict=True)
        ]
        results["restore_rto_median_seconds"] = rto_median
        results["restore_raw_median_seconds"] = round(raw_median, 1)
        results["restore_rto_over_raw"] = round(rto_median / raw_median, 2)
        results["restore_target_seconds"] = round(1.3 * raw_median + 30, 1)
        results["restore_meets_target"] = rto_median <= 1.3 * raw_median + 30
    print(json.dumps(results, indent=2))
    (sb.STATE / f"bench-drill-{args.layout}-{args.scale}.json").write_text(
        json.dumps(results, indent=2)
    )
    if not args.keep:
        if args.layout == "guide":
            sb.remove_stack("bench")
        else:
            psql(name, args.layout, "-q", "-c", "DROP SCHEMA IF EXISTS bench CASCADE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
