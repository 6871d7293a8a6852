"""ClickHouse snapshot benchmark on the sandbox (a script, not a test; figures go in the note).

    .venv/bin/python -m infra.bench.clickhouse_bench --rows 5000000

A guide "bench" stack of its own (slot 2) gets a Snuba-like MergeTree table of `--rows` events.
Then, with infra/bench/paired.py (A B A B, a warm-up pair, medians), whole processes:
  A = `clickhouse_snapshot` (FREEZE with merges stopped, frozen rows counted and checksummed,
      tar | zstd on the host, SSH, encrypted, S3, unfreeze) in a fresh Python process; ClickHouse
      keeps serving;
  B = the guide's "volume snapshot" alternative, cold: stop ClickHouse, `tar | zstd -1` of its
      volume to /dev/null, start it again and wait until healthy (ClickHouse is down meanwhile).
Also the bytes each produces (A: the stored object; B: the tar.zst of the whole volume).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

from infra import sandbox as sb
from infra.bench.backup_bench import bench_stack, paired

TABLE = "sentry.bench_events"


def clickhouse(name: str, query: str) -> str:
    argv = ["exec", "-T", "sentry-clickhouse", "clickhouse-client", "--port"]
    port = sb.StackPorts.slot(2).clickhouse
    return sb.compose(name, *argv, str(port), "--query", query).stdout.strip()


def load(name: str, rows: int) -> int:
    have = clickhouse(name, f"EXISTS TABLE {TABLE}")
    if have == "1" and clickhouse(name, f"SELECT count() FROM {TABLE}") == str(rows):
        print(f"bench data already loaded ({rows} rows)")
    else:
        print(f"loading {rows} events ...", flush=True)
        clickhouse(name, f"DROP TABLE IF EXISTS {TABLE}")
        clickhouse(name, f"CREATE TABLE {TABLE} (project_id UInt64, timestamp DateTime, "
                         "event_id String, group_id UInt64, message String, level String) "
                         "ENGINE = MergeTree() PARTITION BY toMonday(timestamp) "
                         "ORDER BY (project_id, toStartOfDay(timestamp), event_id)")  # fmt: skip
        clickhouse(name, f"INSERT INTO {TABLE} SELECT number % 50, now() - number % 2592000, "
                         "hex(MD5(toString(number))), number % 100000, concat('TypeError: "
                         "cannot read property ', toString(number % 5000), ' of undefined in "
                         "app/module_', toString(number % 300), '.js'), ['error', 'warning', "
                         f"'info'][number % 3 + 1] FROM numbers({rows})")  # fmt: skip
        clickhouse(name, f"OPTIMIZE TABLE {TABLE} FINAL")
    return int(clickhouse(name, "SELECT sum(bytes) FROM system.parts WHERE active AND "
                                "table = 'bench_events'"))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("-n", type=int, default=3, help="pairs after the warm-up")
    parser.add_argument("--keep", action="store_true", help="keep the bench stack afterwards")
    args = parser.parse_args()

    info = sb.up(with_prefect=True)
    name, stack = bench_stack("guide")
    conn = {**info, "stack": stack, "stacks": {"guide": stack}}
    env = {**os.environ, "PREFECT_API_URL": info["prefect_api_url"]}
    setup = (
        "import json, sys; "
        "from infra.sandbox.prefect_blocks import save_blocks, store_from_connection; "
        "c = json.load(sys.stdin); save_blocks(c, 'bench', 'guide'); "
        "store_from_connection(c, prefix='bench-ch').save('bench-ch', overwrite=True)"
    )
    subprocess.run([sys.executable, "-c", setup], input=json.dumps(conn), text=True, check=True,
                   env=env, cwd=sb.REPO)  # fmt: skip
    on_disk = load(name, args.rows)
    snapshot = shlex.join([
        "env", f"PREFECT_API_URL={info['prefect_api_url']}", "PREFECT_LOGGING_LEVEL=WARNING",
        sys.executable, "-c",
        "import json; from flows.backup import clickhouse_snapshot; "
        "print(json.dumps(clickhouse_snapshot('bench', 'bench-ch')))",
    ])  # fmt: skip
    volume = f"{sb.project_name(name)}_sentry_clickhouse_data"
    tar = shlex.join(["docker", "run", "--rm", "--network", "none", "-v", f"{volume}:/volume:ro",
                      "--entrypoint", "tar", sb.TOOL_IMAGE, "--use-compress-program=zstd -1 -T0",
                      "-C", "/volume", "-cf", "-", "."])  # fmt: skip
    stop = shlex.join(sb.compose_argv(name, "stop", "sentry-clickhouse"))
    start = shlex.join([sys.executable, "-c", "import sys; from infra.sandbox.stacks import "
                        "up_ready; up_ready(sys.argv[1], 'sentry-clickhouse')", name])  # fmt: skip
    cold = f"set -e; {stop}; {tar} > /dev/null; {start}"
    os.chdir(sb.REPO)
    results: dict = {"rows": args.rows, "table_bytes_on_disk": on_disk}
    results["snapshot_vs_cold_tar"] = paired(snapshot, cold, args.n)
    one = subprocess.run(["bash", "-c", snapshot], capture_output=True, text=True, check=True)
    results["snapshot_stored_bytes"] = json.loads(one.stdout.strip().splitlines()[-1])["bytes"]
    sized = subprocess.run(["bash", "-c", f"set -e; {stop}; {tar} | wc -c; {start}"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    results["cold_tar_bytes"] = int(sized.stdout.split()[0])
    print(json.dumps(results, indent=2))
    out_file = sb.STATE / f"bench-clickhouse-{args.rows}.json"
    out_file.write_text(json.dumps(results, indent=2))
    print(f"written to {out_file}")
    if not args.keep:
        sb.remove_stack("bench")
    return 0


if __name__ == "__main__":
    sys.exit(main())
