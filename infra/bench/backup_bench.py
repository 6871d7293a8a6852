"""Backup benchmark on the sandbox (a script, not a test; figures go in the issue note).

    .venv/bin/python -m infra.bench.backup_bench --layout guide               # sizes 0.001,1.0,3.5
    .venv/bin/python -m infra.bench.backup_bench --layout self-hosted --scales 0.001,1.0
    .venv/bin/python -m infra.bench.backup_bench --layout guide --encryption  # encrypted vs clear

The Sentry-like data of infra/bench/sentry_like_db.sql is loaded in schema `bench` (guide: a
"bench" stack of its own, slot 2; self-hosted: the sandbox's self-hosted stack, dropped after), at
each scale in turn (0.001: a near-empty database; 1.0: ~1.2 GB; 3.5: ~4 GB). Every other sandbox
stack is stopped meanwhile (and started again after): only the bench's stack runs, beside the
S3 endpoint and the Prefect server. The store is the default one: encrypted and sealed.
Per scale, with infra/bench/paired.py (A B A B, a warm-up pair, medians, per-pair ratios), whole
processes each time:
  A  = the backup flow end to end in a fresh Python process (manifest included);
  B1 = the limit: `pg_dump -Fc -Z0 > /dev/null` inside the postgres container;
  B2 = the guide's way: `ssh HOST "docker compose exec -T <postgres> pg_dump | gzip" > /dev/null`
       (OpenSSH).
Then: the fixed cost = A's median at the smallest scale (a near-empty database, the whole
process); the marginal throughput of a scale = its database bytes / (A's median - the fixed cost),
against the limit's (bytes / B1's median). It overstates where the fixed work runs beside the
dump rather than before or after it (self-hosted's nodestore copy): read it with A/B1.
Targets: fixed cost <= 3 s; throughput >= 0.8 x the limit's; A/B1 <= 2.0 at ~1.2 GB and <= 1.4
at ~4 GB; B2/A >= 2; A's peak RSS <= 250 MiB, flat in size.

With --encryption it pairs instead A = the backup flow to the encrypting store (AES-256-GCM,
sealed) with B3 = the same flow to a store with allow_unencrypted: target median A/B3 <= 1.10.
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
        # no parallel workers: their hash tables live in the container's /dev/shm, Docker's
        # 64 MB by default ("could not resize shared memory segment": the 4 GB load failed)
        options = "PGOPTIONS=-csearch_path=bench -cmax_parallel_workers_per_gather=0 "
        options += "-cmax_parallel_maintenance_workers=0"
        sb.compose(name, "exec", "-T", "-e", options, service,
                   "psql", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"nodes={nodes}",
                   "-v", f"groups={groups}", "-U", user, "-d", user, input=sql)  # fmt: skip
        print(f"loaded in {time.monotonic() - started:.0f}s")
    return int(psql(name, layout, "-Atc", "SELECT pg_database_size(current_database())").stdout)


def paired(a: str, b: str, n: int) -> dict:
    """A against B with infra/bench/paired.py: its report printed, its figures returned."""
    result = compare(a, b, n)
    print(result.report(), flush=True)
    return result.as_dict()


def other_stacks(name: str) -> list[str]:
    """The sandbox's other stacks with a running container (the drill engine's stay as they are:
    the bench does not use it)."""
    folder = sb.STATE / "stacks"
    names = sorted(d.name for d in folder.iterdir()) if folder.exists() else []
    prefix = f"{sb.project_name('x')[:-1]}"  # stack dirs are "<sandbox id>-<name>"
    others = [d.removeprefix(prefix) for d in names if d != sb.project_name(name)]
    return [o for o in others if sb.compose(o, "ps", "-q", check=False).stdout.strip()]


def bench_scale(name: str, layout: str, scale: float, commands: dict[str, str], n: int) -> dict:
    db_bytes = load(name, layout, scale)
    print(f"== scale {scale}: database {db_bytes / 1e9:.2f} GB", flush=True)
    return {
        "scale": scale,
        "database_bytes": db_bytes,
        "flow_vs_limit": paired(commands["flow"], commands["limit"], n),
        "flow_vs_guide": paired(commands["flow"], commands["guide"], n),
    }


def verdicts(runs: list[dict]) -> dict:
    """Fixed cost, throughput and the targets, from the runs by scale (smallest first)."""
    fixed = runs[0]["flow_vs_limit"]["a_median_s"]
    out: dict = {"fixed_cost_s": fixed, "fixed cost <= 3 s": fixed <= 3.0}
    for run in runs[1:]:
        fl, gd = run["flow_vs_limit"], run["flow_vs_guide"]
        size = run["database_bytes"]
        flow_tp = size / max(fl["a_median_s"] - fixed, 1e-3) / 1e6
        limit_tp = size / fl["b_median_s"] / 1e6
        gb = f"{size / 1e9:.1f} GB"
        bound = 2.0 if size < 2.5e9 else 1.4
        out[gb] = {
            "flow_marginal_MB_per_s_of_database": round(flow_tp, 1),
            "limit_MB_per_s": round(limit_tp, 1),
            "throughput_over_limit": round(flow_tp / limit_tp, 3),
            "throughput >= 0.8 x limit": flow_tp >= 0.8 * limit_tp,
            f"flow/limit <= {bound}": fl["a_over_b_median"] <= bound,
            "guide/flow >= 2.0": 1 / gd["a_over_b_median"] >= 2.0,
            "peak RSS MiB": max(fl["a_peak_rss_MiB"], gd["a_peak_rss_MiB"]),
        }
    rss = [max(r["flow_vs_limit"]["a_peak_rss_MiB"], r["flow_vs_guide"]["a_peak_rss_MiB"])
           for r in runs]  # fmt: skip
    out["peak RSS <= 250 MiB"] = max(rss) <= 250
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scales", default="0.001,1.0,3.5", help="smallest first: fixed cost")
    parser.add_argument("--layout", choices=["guide", "self-hosted"], default="guide")
    parser.add_argument("-n", type=int, default=3, help="pairs after the warm-up")
    parser.add_argument("--keep", action="store_true", help="keep the bench data afterwards")
    parser.add_argument(
        "--encryption", action="store_true", help="only: encrypted vs unencrypted store"
    )
    args = parser.parse_args()
    scales = sorted(float(x) for x in args.scales.split(","))

    info = sb.up(with_prefect=True)
    name, stack = bench_stack(args.layout)
    conn = {**info, "stack": stack, "stacks": {args.layout: stack}}
    env = {**os.environ, "PREFECT_API_URL": info["prefect_api_url"]}
    # two stores built apart: a copy of a saved block keeps its document id, and saving the copy
    # under another name once overwrote the first one's key (the encrypted store ran clear)
    setup = (
        "import json, sys; "
        "from infra.sandbox.prefect_blocks import save_blocks, store_from_connection; "
        f"c = json.load(sys.stdin); save_blocks(c, 'bench', {args.layout!r}); "
        "store_from_connection(c, prefix='bench').save('bench', overwrite=True); "
        "clear = store_from_connection(c, prefix='bench'); "
        "clear.backup_key, clear.allow_unencrypted = None, True; "
        "clear.save('bench-clear', overwrite=True); "
        "from blocks.backup_store import BackupStore; "
        "assert BackupStore.load('bench').backup_key is not None, 'bench store without its key'"
    )
    subprocess.run([sys.executable, "-c", setup], input=json.dumps(conn), text=True, check=True,
                   env=env, cwd=sb.REPO)  # fmt: skip
    service, user = pg(args.layout)

    def backup_command(store: str) -> str:
        return shlex.join([
            "env", f"PREFECT_API_URL={info['prefect_api_url']}", "PREFECT_LOGGING_LEVEL=WARNING",
            sys.executable, "-c", f"from flows.backup import backup; backup('bench', {store!r})",
        ])  # fmt: skip

    in_container = f"pg_dump -Fc -Z0 -U {user} {user} > /dev/null"
    ssh = info["ssh"]
    remote = shlex.join(sb.compose_argv(name, "exec", "-T", service, "pg_dump", "-U", user, user))
    commands = {
        "flow": backup_command("bench"),
        "limit": shlex.join(sb.compose_argv(name, "exec", "-T", service, "sh", "-c", in_container)),
        "guide": (
            f"set -o pipefail; ssh -p {ssh['port']} -i {ssh['private_key_path']} -o "
            f"UserKnownHostsFile={ssh['known_hosts_path']} -o BatchMode=yes "
            f"{ssh['user']}@{ssh['host']} {shlex.quote(remote + ' | gzip')} > /dev/null"
        ),
    }
    os.chdir(sb.REPO)
    stopped = other_stacks(name)
    for other in stopped:
        print(f"stopping the sandbox stack {other!r} for the bench", flush=True)
        sb.compose(other, "stop")
    results: dict = {"layout": args.layout, "only_running": sb.project_name(name)}
    try:
        if args.encryption:
            load(name, args.layout, scales[-1])
            enc = paired(commands["flow"], backup_command("bench-clear"), args.n)
            results["encrypted_vs_clear"] = enc
            results["verdict"] = {"encrypted/clear <= 1.10": enc["a_over_b_median"] <= 1.10}
            out_file = sb.STATE / f"bench-encryption-{args.layout}.json"
        else:
            results["runs"] = [bench_scale(name, args.layout, s, commands, args.n) for s in scales]
            results["verdict"] = verdicts(results["runs"])
            out_file = sb.STATE / f"bench-backup-{args.layout}.json"
    finally:
        for other in stopped:
            sb.compose(other, "start")
    print(json.dumps(results, indent=2))
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
