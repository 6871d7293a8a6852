"""Backup benchmark on the sandbox (a script, not a test; figures go in the issue note).

    .venv/bin/python -m infra.bench.backup_bench --scale 1.0   # ~1.1 GiB (shared/bench SQL)
    .venv/bin/python -m infra.bench.backup_bench --scale 0.1   # ~0.1 GiB

On a "bench" stack of its own (slot 2), with the Sentry-like data of
shared/bench/sentry_like_db.sql loaded in schema `bench` beside the stand-in's tables, it measures:
  (a) the limit: `pg_dump -Fc -Z0 > /dev/null` inside the postgres container;
  (b) the guide's way: `ssh HOST "docker compose exec -T sentry-postgres pg_dump -U sentry sentry
      | gzip" > /dev/null` (OpenSSH client);
  (c) the backup flow end to end into the sandbox S3, manifest included, in its own process
      (wall time and peak RSS of that process).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from infra.sandbox import sandbox as sb

SQL = sb.REPO.parent / "shared" / "bench" / "sentry_like_db.sql"
NODES, GROUPS = 260_000, 1_000_000


def timed(argv: list[str], **kw) -> tuple[float, str]:
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=True, **kw)
    return time.monotonic() - started, proc.stdout


def psql(*args: str, **kw) -> subprocess.CompletedProcess:
    """psql in the bench stack's postgres container (local socket, trust auth)."""
    return sb.compose(
        "bench",
        "exec",
        "-T",
        "sentry-postgres",
        "psql",
        "-U",
        "sentry",
        "-d",
        "sentry",
        *args,
        **kw,
    )


def load(scale: float) -> int:
    nodes, groups = int(NODES * scale), int(GROUPS * scale)
    check = psql("-Atc", "SELECT count(*) FROM bench.nodestore_node", check=False)
    if check.returncode == 0 and check.stdout.strip() == str(nodes):
        print(f"bench data already loaded ({nodes} nodes, {groups} groups)")
    else:
        print(f"loading {nodes} nodes + {groups} groups (scale {scale}) ...", flush=True)
        started = time.monotonic()
        psql("-q", "-c", "DROP SCHEMA IF EXISTS bench CASCADE; CREATE SCHEMA bench")
        with SQL.open() as sql:
            sb.compose(
                "bench",
                "exec",
                "-T",
                "-e",
                "PGOPTIONS=-csearch_path=bench",
                "sentry-postgres",
                "psql",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                f"nodes={nodes}",
                "-v",
                f"groups={groups}",
                "-U",
                "sentry",
                "-d",
                "sentry",
                stdin=sql,
            )
        print(f"loaded in {time.monotonic() - started:.0f}s")
    return int(psql("-Atc", "SELECT pg_database_size('sentry')").stdout.strip())


def prepare(scale: float) -> tuple[dict, dict, dict, int]:
    """The sandbox, a Prefect server, the bench stack (slot 2) with its data, its blocks."""
    info = sb.up(with_prefect=True)
    stack = sb.ensure_stack("guide", "bench", 2)
    bench = {**info, "stack": stack, "stacks": {"guide": stack}}
    env = {**os.environ, "PREFECT_API_URL": info["prefect_api_url"]}
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys; from deployments.setup import save_blocks; "
            "save_blocks(json.load(sys.stdin), 'bench')",
        ],
        input=json.dumps(bench),
        text=True,
        check=True,
        env=env,
        cwd=sb.REPO,
    )
    return info, bench, env, load(scale)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--keep", action="store_true", help="keep the bench stack afterwards")
    args = parser.parse_args()

    info, bench, env, db_bytes = prepare(args.scale)
    stack = bench["stack"]
    port = stack["postgres_port"]
    results: dict = {"scale": args.scale, "database_bytes": db_bytes}

    # (a) the limit, inside the container
    t, out = timed(
        sb.compose_argv(
            "bench",
            "exec",
            "-T",
            "sentry-postgres",
            "sh",
            "-c",
            f"pg_dump -Fc -Z0 -U sentry -p {port} sentry | wc -c",
        )
    )
    dump_bytes = int(out.split()[-1])
    results["a_limit"] = {"seconds": round(t, 2), "MBps": round(dump_bytes / 1e6 / t, 1)}

    # (b) the guide's way, through OpenSSH
    ssh = info["ssh"]
    remote = " ".join(
        sb.compose_argv(
            "bench",
            "exec",
            "-T",
            "sentry-postgres",
            "pg_dump",
            "-U",
            "sentry",
            "-p",
            str(port),
            "sentry",
        )
    )
    t, _ = timed(
        [
            "bash",
            "-c",
            f"set -o pipefail; ssh -p {ssh['port']} -i "
            f"{ssh['private_key_path']} -o UserKnownHostsFile={ssh['known_hosts_path']} "
            f"-o BatchMode=yes {ssh['user']}@{ssh['host']} '{remote} | gzip' > /dev/null",
        ]
    )
    results["b_guide_ssh_gzip"] = {"seconds": round(t, 2), "MBps": round(dump_bytes / 1e6 / t, 1)}

    # (c) the backup flow, end to end, in its own process (peak RSS of that process)
    code = (
        "from flows.backup import backup; import json; print(json.dumps(backup('bench', 'bench')))"
    )
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=sb.REPO,
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    if status != 0:
        raise SystemExit("the backup flow failed")
    flow_result = json.loads(out.decode().strip().splitlines()[-1])
    sys.path.insert(0, str(sb.REPO))
    os.environ["PREFECT_API_URL"] = info["prefect_api_url"]
    from blocks.backup_store import BackupStore

    manifest = BackupStore.load("bench").read_manifest(flow_result["backup_id"])
    pg = manifest.object("postgres")
    in_flow = (manifest.finished_at - manifest.started_at).total_seconds()
    results["c_backup_flow"] = {
        "process_seconds": round(wall, 2),
        "backup_seconds": round(in_flow, 2),
        "postgres_object_seconds": pg.seconds,
        "MBps_postgres_object": round(pg.raw_size / 1e6 / pg.seconds, 1),
        "dump_MB": round(pg.raw_size / 1e6, 1),
        "stored_MB": round(pg.size / 1e6, 1),
        "ratio": round(pg.raw_size / pg.size, 2),
        "peak_rss_MiB": round(usage.ru_maxrss / 1024, 1),
    }
    # (c) is the whole backup as the manifest times it: dump, volumes, config, manifest.
    a, b, c = results["a_limit"]["seconds"], results["b_guide_ssh_gzip"]["seconds"], in_flow
    results["c_vs_b_speedup"] = round(b / c, 2)
    results["c_vs_a_throughput"] = round(a / c, 2)
    print(json.dumps(results, indent=2))
    out_file = sb.STATE / f"bench-backup-{args.scale}.json"
    out_file.write_text(json.dumps(results, indent=2))
    print(f"written to {out_file}")
    if not args.keep:
        sb.remove_stack("bench")
    return 0


if __name__ == "__main__":
    sys.exit(main())
