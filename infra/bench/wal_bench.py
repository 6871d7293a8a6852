"""WAL shipping's cost on the host (a script, not a test; figures go in the issue note).

    .venv/bin/python -m infra.bench.wal_bench --pairs 3 --rounds 5 --rows 200000

On the guide "bench" stack of its own (slot 2), the same write load (`rounds` INSERTs of `rows`
rows each, ~30 MB of WAL per 200k rows) runs in alternation (A B A B after one uncounted warm-up
pair, medians and per-pair ratios, as infra/bench/paired.py does):
  A = WAL archiving armed (slot, pg_receivewal beside Postgres), the load, then one shipping
      (mark, switch, every finished segment compressed on the host, encrypted here, to S3);
  B = not armed (slot dropped, no shipper), the same load.
Measured per run: wall seconds (load, and shipping); CPU seconds of the whole machine
(/proc/stat: every process, the throwaway zstd containers, sshd, dockerd, the S3 endpoint);
CPU of the postgres and shipper containers (cgroup v1 cpuacct); CPU of this process (the worker's
share: encryption, upload); WAL generated (pg_wal_lsn_diff), bytes stored in S3.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

from blocks import postgres, wal
from infra import sandbox as sb
from infra.sandbox.prefect_blocks import host_from_connection, store_from_connection

TABLE = "bench_wal"


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def container_cpu_s(names: list[str]) -> float:
    """CPU seconds of these running containers (cgroup v1, cgroupfs driver, as the sandbox's)."""
    total = 0.0
    for name in names:
        cid = sb.sh("docker", "inspect", "-f", "{{.Id}}", name, check=False).stdout.strip()
        path = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
        if cid and path.exists():
            total += int(path.read_text()) / 1e9
    return total


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(host, store, armed: bool, rounds: int, rows: int) -> dict:
    if armed:
        wal.arm(host)
    else:
        wal.disarm(host)
    pg_container = postgres.target(host).container
    containers = [pg_container] + ([wal.shipper(host)] if armed else [])
    with postgres.psql(host) as db:
        db.rows(f"TRUNCATE {TABLE}")
        lsn0 = db.value("SELECT pg_current_wal_lsn()")
    busy0, cont0, me0 = machine_busy_s(), container_cpu_s(containers), self_cpu_s()
    t0 = time.monotonic()
    with postgres.psql(host) as db:
        for _ in range(rounds):
            db.rows(f"INSERT INTO {TABLE} SELECT g, md5(g::text) FROM generate_series(1, {rows}) g")
        wal_bytes = int(db.value(f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{lsn0}')") or 0)
    load_s = time.monotonic() - t0
    stored, ship_s = 0, 0.0
    if armed:
        t1 = time.monotonic()
        shipped = wal.ship(host, store, host.identity)
        ship_s, stored = time.monotonic() - t1, shipped.stored_bytes
    return {
        "armed": armed,
        "load_s": round(load_s, 2),
        "ship_s": round(ship_s, 2),
        "machine_cpu_s": round(machine_busy_s() - busy0, 2),
        "containers_cpu_s": round(container_cpu_s(containers) - cont0, 2),
        "worker_cpu_s": round(self_cpu_s() - me0, 2),
        "wal_mb": round(wal_bytes / 1e6, 1),
        "stored_mb": round(stored / 1e6, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    info = sb.connection()
    stack = sb.ensure_stack("guide", "bench", 2)
    host = host_from_connection({**info, "stacks": {"guide": stack}})
    store = store_from_connection(info, prefix=f"walbench{int(time.time())}")
    with postgres.psql(host) as db:
        db.rows(f"CREATE TABLE IF NOT EXISTS {TABLE} (id int, h text)")
    pairs = []
    try:
        for i in range(args.pairs + 1):  # the first pair is a warm-up, not counted
            a = run(host, store, True, args.rounds, args.rows)
            b = run(host, store, False, args.rounds, args.rows)
            print(json.dumps({"pair": i, "A": a, "B": b}), flush=True)
            if i:
                pairs.append((a, b))
    finally:
        wal.disarm(host)
        with postgres.psql(host) as db:
            db.rows(f"DROP TABLE IF EXISTS {TABLE}")

    def med(side: int, key: str) -> float:
        return statistics.median(p[side][key] for p in pairs)

    ratios = [p[0]["machine_cpu_s"] / p[1]["machine_cpu_s"] for p in pairs]
    extra = [p[0]["machine_cpu_s"] - p[1]["machine_cpu_s"] for p in pairs]
    walls = [(p[0]["load_s"]) / p[1]["load_s"] for p in pairs]
    print(f"\n{len(pairs)} pairs (A armed + one shipping, B not armed), medians:")
    for key in ("load_s", "ship_s", "machine_cpu_s", "containers_cpu_s", "worker_cpu_s",
                "wal_mb", "stored_mb"):  # fmt: skip
        print(f"  {key:<17} A {med(0, key):8.2f}   B {med(1, key):8.2f}")
    print(f"  machine CPU A/B   median {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f}); extra {statistics.median(extra):.2f} s "
          f"per {med(0, 'wal_mb'):.0f} MB of WAL")  # fmt: skip
    print(f"  load wall A/B     median {statistics.median(walls):.3f} "
          f"(range {min(walls):.3f}-{max(walls):.3f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
