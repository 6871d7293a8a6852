"""The demo: sentry-ops against the local sandbox, through the sandbox's Prefect server.

    bash infra/run.sh demo     (brings the sandbox up first, then runs this)

Writes a setup config for the sandbox's two stacks (as an operator writes deployments/
hosts.example.toml) and runs `deployments.setup` with it (blocks, work pool, one deployment per
host, alerts), starts a real process worker, runs the operations through their deployments, and
prints a report and the Prefect UI address where the runs, their logs and artifacts are.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path

from infra import sandbox


def send_events(host, count: int, within: float = 60) -> list:
    """Events into the project's store endpoint (its DSN), as SDKs send them, until processed."""
    ids = [
        host.send_event({"message": f"ZeroDivisionError: demo {i} ✓", "platform": "python"})
        for i in range(count)
    ]
    deadline = time.monotonic() + within
    for event_id in ids:
        while host.lookup_event(event_id) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"event {event_id} not processed within {within:g}s")
            time.sleep(0.2)
    return ids


def drill_report() -> str:
    """The drill's markdown report artifact, as the UI shows it."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        latest = client.read_latest_artifacts(limit=50)
    reports = [a for a in latest if a.key == "restore-drill"]
    return str(reports[0].data) if reports else "(no drill report)"


def summarize(result: object) -> str:
    if isinstance(result, str) and result.startswith("# HELP"):
        return (
            f"passed ({sum(1 for line in result.splitlines() if not line.startswith('#'))} samples)"
        )
    if isinstance(result, dict) and "reclaimed" in result:
        verb = "would reclaim" if result["dry_run"] else "reclaimed"
        return f"passed ({len(result['items'])} items, {verb} {result['reclaimed'] / 1e6:.1f} MB)"
    if isinstance(result, dict) and "rto_seconds" in result:
        how = f", Postgres replayed to {result['point'][11:19]}Z" if result.get("point") else ""
        return f"passed (RTO {result['rto_seconds']} s, RPO {result['rpo_seconds']:.0f} s{how})"
    if isinstance(result, dict) and result.get("name") == "wal archiving":
        return f"passed ({result['detail']})"
    if isinstance(result, dict) and "switched" in result:
        return (
            f"passed ({len(result['shipped'])} WAL segments shipped, {result['segments']} in the "
            f"archive, newest point {result['mark'][11:19]}Z)"
        )
    if isinstance(result, dict) and "causes" in result:
        causes = ", ".join(c["name"] for c in result["causes"]) or "no known cause"
        stored = "a support bundle stored" if result["bundle"] else "no bundle"
        return f"passed ({causes}; report {result['report']}, {stored})"
    if isinstance(result, dict) and "backup_id" in result:
        return f"passed ({result['backup_id']}, {result['bytes'] / 1e6:.1f} MB stored)"
    if isinstance(result, list) and result and isinstance(result[0], str):
        return f"passed ({len(result)} sent)"
    if isinstance(result, list):
        statuses = Counter(r.get("status") for r in result if isinstance(r, dict))
        return "passed (" + ", ".join(f"{n} {s}" for s, n in statuses.items() if s) + ")"
    return "passed"


def start_worker(api: str) -> Path:
    """A real process worker on the sentry-ops pool, its PID in the state dir; polls every 2 s."""
    pidfile = sandbox.STATE / "worker.pid"
    sandbox.stop_pid(pidfile, "an earlier demo's worker")
    prefect = Path(sys.executable).with_name("prefect")
    sandbox.spawn(
        [str(prefect), "worker", "start", "--pool", "sentry-ops", "--type", "process"],
        sandbox.STATE / "worker.log",
        pidfile,
        env={"PREFECT_API_URL": api, "PREFECT_WORKER_QUERY_SECONDS": "2"},
    )
    return pidfile


def deployed(name: str, timeout: float = 900, **parameters) -> object:
    """Run a deployment (the worker picks it up in its own process) and return its result."""
    from prefect.deployments import run_deployment

    run = run_deployment(
        name, parameters=parameters, timeout=timeout, poll_interval=1, tags=["demo"]
    )
    if not run.state.is_completed():
        raise RuntimeError(f"{name} run {run.name}: {run.state.name}: {run.state.message}")
    return run.state.result()


def main() -> int:
    info = sandbox.connection()
    api = info.get("prefect_api_url")
    if not api:
        print("no Prefect server in the sandbox: run `python -m infra.sandbox up --prefect`")
        return 2
    os.environ["PREFECT_API_URL"] = api  # before prefect is imported

    from blocks import backup_set
    from blocks.backup_store import BackupStore
    from deployments.config import load_config
    from deployments.setup import setup
    from infra.sandbox.prefect_blocks import host_from_connection

    hosts = {"sandbox": "guide", "sandbox-self-hosted": "self-hosted"}

    def configure() -> None:
        """What an operator does once per change of hosts: the config file, then setup."""
        config = sandbox.setup_config(
            info, sandbox.STATE / "setup", hosts, store="sandbox", drill_host="drill-host"
        )
        print(f"\n$ python -m deployments.setup --config {config}")
        setup(load_config(config))

    configure()
    worker = start_worker(api)
    print(f"process worker on pool sentry-ops started (log {sandbox.STATE / 'worker.log'})\n")
    stack = info["stack"]
    report: list[tuple[str, str, float]] = []

    def step(name: str, fn) -> object:
        started = time.monotonic()
        try:
            result = fn()
            report.append((name, summarize(result), time.monotonic() - started))
            return result
        except Exception as exc:
            report.append((name, f"FAILED: {exc}"[:400], time.monotonic() - started))
            return None

    try:
        step(
            "bootstrap (deployment bootstrap/sandbox)",
            lambda: deployed(
                "bootstrap/sandbox",
                stack_files=str(sandbox.HERE / "stacks" / "guide"),
                settings=stack["settings"],
                # the sandbox machine is smaller than the guide's minimum (4 cores, 8 GB)
                requirements={"min_cpus": 1, "min_memory_gb": 1, "min_disk_gb": 5},
                extra_ports=[stack["postgres_port"], stack["redis_port"], stack["clickhouse_port"]],
            ),
        )
        # what an operator does once in Sentry's UI: a DSN and an API token for the ingestion
        # probe; then the config names them and setup runs again (idempotent)
        name, slot = sandbox.STACKS["guide"]
        sandbox.create_probe_credentials("guide", name, slot)
        info["stack"] = info["stacks"]["guide"] = sandbox.stack_info("guide")
        configure()
        step("health-check/sandbox", lambda: deployed("health-check/sandbox"))
        step(
            "health-check/sandbox-self-hosted", lambda: deployed("health-check/sandbox-self-hosted")
        )
        # what runs by itself when a health check fails (setup's trigger), here on demand
        step("diagnose/sandbox-self-hosted", lambda: deployed("diagnose/sandbox-self-hosted"))
        # continuous WAL archiving (its schedule runs it every 4 min): armed by its first run;
        # the nightly set then takes a base backup, and the drill replays the archive onto it
        step("ship-wal/sandbox", lambda: deployed("ship-wal/sandbox"))
        step("send events", lambda: send_events(host_from_connection(info, "guide"), 25))
        taken = step("backup/sandbox", lambda: deployed("backup/sandbox"))
        step(
            "send events after the backup",
            lambda: send_events(host_from_connection(info, "guide"), 5),
        )
        step("ship-wal/sandbox (again)", lambda: deployed("ship-wal/sandbox"))
        if taken:
            store = BackupStore.load("sandbox")
            manifest = backup_set.load(store, taken["host_id"], taken["backup_id"])
            print(
                f"\nbackup {manifest.backup_id} in s3://{store.bucket}/"
                f"{backup_set.folder(store, manifest.host_id, manifest.backup_id)} "
                f"({info['s3']['endpoint_url']}; AES-256-GCM, sealed manifest)"
            )
            for obj in manifest.objects:
                print(f"  {obj.name:<14} {obj.size / 1e6:8.2f} MB  sha256 {obj.sha256[:16]}...")
            print(
                f"  Sentry {manifest.sentry_version}, Postgres {manifest.postgres_version}, "
                f"{sum(manifest.row_counts.values())} rows in {len(manifest.row_counts)} tables"
            )
            # the drill computes the scratch stack's own ports (production's + 100)
            step(
                "restore-drill/sandbox",
                lambda: deployed("restore-drill/sandbox", backup_id=taken["backup_id"]),
            )
            print("\n" + drill_report())
        # self-hosted keeps its data in external volumes: its drill runs on the drill host (the
        # deployment's drill_host parameter, from the config)
        other = step("backup/sandbox-self-hosted", lambda: deployed("backup/sandbox-self-hosted"))
        if other:
            step(
                "restore-drill/sandbox-self-hosted (on drill-host)",
                lambda: deployed("restore-drill/sandbox-self-hosted", backup_id=other["backup_id"]),
            )
            print("\n" + drill_report())
        # what tonight's 03:30 cleanup would remove, changing nothing
        step(
            "retention-cleanup/sandbox (dry run)",
            lambda: deployed("retention-cleanup/sandbox", dry_run=True),
        )
        step("backup-metrics/sandbox", lambda: deployed("backup-metrics/sandbox"))
        # the worker stops with the demo, so nothing would ship: WAL archiving ended in its one
        # step (shipper removed, slot dropped: Postgres keeps no WAL for it)
        step("stop-wal-archiving/sandbox", lambda: deployed("stop-wal-archiving/sandbox"))
    finally:
        sandbox.stop_pid(worker, "the demo's worker")

    ui = api.removesuffix("/api")
    print("\n=== sentry-ops demo report (every flow run by a process worker, from deployments) ===")
    for name, result, seconds in report:
        print(f"{name:<50} {seconds:6.1f}s  {result}")
    print(f"\nPrefect UI: {ui}  (deployments, flow runs, logs and artifacts)")
    print(
        "The worker was stopped with the demo; to let the schedules run: "
        f"PREFECT_API_URL={api} prefect worker start --pool sentry-ops"
    )
    print(f"Sentry (stand-in) web: http://127.0.0.1:{info['stack']['web_port']}/_health/")
    return 0 if all("FAILED" not in r for _, r, _ in report) else 1


if __name__ == "__main__":
    sys.exit(main())
