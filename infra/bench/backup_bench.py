"""Backup benchmark on the sandbox (a script, not a test; figures go in the issue note).

    .venv/bin/python -m infra.bench.backup_bench --scale 1.0 --layout guide        # ~1.1 GiB
    .venv/bin/python -m infra.bench.backup_bench --scale 1.0 --layout self-hosted
    .venv/bin/python -m infra.bench.backup_bench --scale 0.1 --layout guide        # ~0.1 GiB

The Sentry-like data of infra/bench/sentry_like_db.sql is loaded in schema `bench` (guide: a
"bench" stack of its own, slot 2; self-hosted: the sandbox's self-hosted stack, dropped after).
Then, with infra/bench/paired.py (A B A B, a warm-up pair, medians, per-pair ratios), whole
processes each time:
  A  = the backup flow end to end in a fresh Python process (manifest included);
  B1 = the limit: `pg_dump -Fc -Z0 > /dev/null` inside the postgres container;
  B2 = the guide's way: `ssh HOST "docker compose exec -T <postgres> pg_dump | gzip" > /dev/null`
       (OpenSSH).
Targets: median A/B1 <= 2.0 (moonshot 1.33); median B2/A >= 2; A's peak RSS <= 250 MiB.

    .venv/bin/python -m infra.bench.backup_bench --scale 1.0 --layout guide --encryption

pairs instead A = the backup flow to the encrypting store (AES-256-GCM, sealed) with B3 = the same
flow to a store with allow_unencrypted: target median A/B3 <= 1.10 (throughput drops <= 10 %).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from infra import sandbox as sb
from infra.bench.paired import compare

SQL = Path(__file__).with_name("sentry_like_db.sql")
NODES, GROUPS = 260_000, 1_000_000


def bench_stack(layout: str) -> tuple[str, dict]:
    """(sandbox stack name, its info): the guide's bench stack, or the self-hosted stack."""
    if layout == "guide":
        return "bench", sb.ensure_stack("guide", "bench", 2)
    return sb.STACKS["self-hosted"][0], sb.ensure_stack("self-hosted")


def pg(layout: str) -> tuple[str, str]:
    """(postgres service, user = database) of the layout."""
    return ("sentry-postgres", "sentry") if layout == "guide" else ("postgres", "postgres")


def psql(name: str, layout: str, *args: str, **kw) -> subprocess.CompletedProcess:
    """psql in the stack's postgres container (local socket, trust auth)."""
    service, user = pg(layout)
    return sb.compose(name, "exec", "-T", service, "psql", "-U", user, "-d", user, *args, **kw)


def load(name: str, layout: str, scale: float) -> int:
    nodes, groups = int(NODES * scale), int(GROUPS * scale)
    check = psql(name, layout, "-Atc", "SELECT count(*) FROM bench.nodestore_node", check=False)
    if check.returncode == 0 and check.stdout.strip() == str(nodes):
        print(f"bench data already loaded ({nodes} nodes, {groups} groups)")
    else:
        print(f"loading {nodes} nodes + {groups} groups (scale {scale}) ...", flush=True)
        started = time.monotonic()
        psql(name, layout, "-q", "-c", "DROP SCHEMA IF EXISTS bench CASCADE; CREATE SCHEMA bench")
        service, user = pg(layout)
        sql = SQL.read_text()
        sb.compose(name, "exec", "-T", "-e", "PGOPTIONS=-csearch_path=bench", service,
                   "psql", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"nodes={nodes}",
                   "-v", f"groups={groups}", "-U", user, "-d", user, input=sql)  # fmt: skip
        print(f"loaded in {time.monotonic() - started:.0f}s")
    return int(psql(name, layout, "-Atc", "SELECT pg_database_size(current_database())").stdout)


def paired(a: str, b: str, n: int) -> dict:
    """A against B with infra/bench/paired.py: its report printed, its figures returned."""
    result = compare(a, b, n)
    print(result.report(), flush=True)
    return result.as_dict()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--layout", choices=["guide", "self-hosted"], default="guide")
    parser.add_argument("-n", type=int, default=3, help="pairs after the warm-up")
    parser.add_argument("--keep", action="store_true", help="keep the bench data afterwards")
    parser.add_argument(
        "--encryption", action="store_true", help="only: encrypted vs unencrypted store"
    )
    args = parser.parse_args()

    info = sb.up(with_prefect=True)
    name, stack = bench_stack(args.layout)
    conn = {**info, "stack": stack, "stacks": {args.layout: stack}}
    env = {**os.environ, "PREFECT_API_URL": info["prefect_api_url"]}
    setup = (
        "import json, sys; "
        "from infra.sandbox.prefect_blocks import save_blocks, store_from_connection; "
        f"c = json.load(sys.stdin); save_blocks(c, 'bench', {args.layout!r}); "
        "store = store_from_connection(c, prefix='bench'); store.save('bench', overwrite=True); "
        "store.model_copy(update={'backup_key': None, 'allow_unencrypted': True})"
        ".save('bench-clear', overwrite=True)"
    )
    subprocess.run([sys.executable, "-c", setup], input=json.dumps(conn), text=True, check=True,
                   env=env, cwd=sb.REPO)  # fmt: skip
    db_bytes = load(name, args.layout, args.scale)
    service, user = pg(args.layout)

    def backup_command(store: str) -> str:
        return shlex.join([
            "env", f"PREFECT_API_URL={info['prefect_api_url']}", "PREFECT_LOGGING_LEVEL=WARNING",
            sys.executable, "-c", f"from flows.backup import backup; backup('bench', {store!r})",
        ])  # fmt: skip

    flow = backup_command("bench")
    in_container = f"pg_dump -Fc -Z0 -U {user} {user} > /dev/null"
    limit = shlex.join(sb.compose_argv(name, "exec", "-T", service, "sh", "-c", in_container))
    ssh = info["ssh"]
    remote = shlex.join(sb.compose_argv(name, "exec", "-T", service, "pg_dump", "-U", user, user))
    guide = (
        f"set -o pipefail; ssh -p {ssh['port']} -i {ssh['private_key_path']} -o "
        f"UserKnownHostsFile={ssh['known_hosts_path']} -o BatchMode=yes "
        f"{ssh['user']}@{ssh['host']} {shlex.quote(remote + ' | gzip')} > /dev/null"
    )
    os.chdir(sb.REPO)
    results: dict = {"layout": args.layout, "scale": args.scale, "database_bytes": db_bytes}
    if args.encryption:
        results["encrypted_vs_clear"] = enc = paired(flow, backup_command("bench-clear"), args.n)
        results["verdict"] = {"encrypted/clear <= 1.10": enc["a_over_b_median"] <= 1.10}
        print(json.dumps(results, indent=2))
        out_file = sb.STATE / f"bench-encryption-{args.layout}-{args.scale}.json"
        out_file.write_text(json.dumps(results, indent=2))
        print(f"written to {out_file}")
        if not args.keep and args.layout == "guide":
            sb.remove_stack("bench")
        return 0
    results["flow_vs_limit"] = paired(flow, limit, args.n)
    results["flow_vs_guide"] = paired(flow, guide, args.n)
    fl, gd = results["flow_vs_limit"], results["flow_vs_guide"]
    results["verdict"] = {
        "flow/limit <= 2.0": fl["a_over_b_median"] <= 2.0,
        "guide/flow >= 2.0": 1 / gd["a_over_b_median"] >= 2.0,
        "peak RSS <= 250 MiB": max(fl["a_peak_rss_MiB"], gd["a_peak_rss_MiB"]) <= 250,
    }
    print(json.dumps(results, indent=2))
    out_file = sb.STATE / f"bench-backup-{args.layout}-{args.scale}.json"
    out_file.write_text(json.dumps(results, indent=2))
    print(f"written to {out_file}")
    if not args.keep:
        if args.layout == "guide":
            sb.remove_stack("bench")
        else:
            psql(name, args.layout, "-q", "-c", "DROP SCHEMA IF EXISTS bench CASCADE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
