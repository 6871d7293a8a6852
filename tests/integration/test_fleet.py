"""A fleet backup over the sandbox's guide host and an unreachable one: the reachable host is
backed up (a complete, sealed set in the store), the run fails naming only the other, and its
summary artifact lists both. Then the store's metrics say when that backup finished."""

from __future__ import annotations

import json
import subprocess
import uuid

from prefect.client.orchestration import get_client
from prometheus_client.parser import text_string_to_metric_families

from blocks import backup_set
from blocks.backup_store import BackupStore
from blocks.sentry_host import SentryHost
from flows.fleet import fleet_backup
from flows.metrics import backup_metrics
from tests.helpers import SHARED, free_port, with_ssh

pytestmark = SHARED  # the sandbox's shared stacks (tests/helpers.py)


def test_one_unreachable_host_does_not_stop_the_others_and_metrics_show_the_backup(
    saved_host, store_name, sandbox, tmp_path
):
    port = free_port()
    gone = f"gone-{uuid.uuid4().hex[:6]}"
    with_ssh(SentryHost.load(saved_host), port=port).save(gone)
    state = fleet_backup([gone, saved_host], store_name, max_parallel=2, return_state=True)

    assert state.is_failed()
    assert f"failed on 1 of 2 hosts: {gone}: SSHConnectError" in state.message
    assert saved_host + ":" not in state.message
    store, host = BackupStore.load(store_name), SentryHost.load(saved_host)
    sets = backup_set.list_sets(store, host.identity)
    assert len(sets) == 1 and sets[0].complete and sets[0].trusted, sets
    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts(limit=50)
    summary = next(a for a in artifact if a.key == f"fleet-backup-{store_name}")
    data = json.loads(summary.data) if isinstance(summary.data, str) else summary.data
    rows = {r["name"]: r for r in data}
    assert rows[gone]["status"] == "failed" and "cannot reach sshd" in rows[gone]["detail"]
    assert rows[saved_host]["status"] == "done" and sets[0].backup_id in rows[saved_host]["detail"]

    # the store's metrics, as node_exporter's textfile collector would read them
    textfile = tmp_path / "sentry_ops.prom"
    backup_metrics(store_name, textfile=str(textfile))
    text = textfile.read_text()
    manifest = backup_set.load(store, host.identity, sets[0].backup_id)
    samples = {
        s.name: s
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("host_id") == host.identity
    }
    success = samples["sentry_ops_backup_last_success_timestamp_seconds"]
    assert success.value == manifest.finished_at.timestamp()
    assert success.labels["host"] == saved_host and success.labels["store"] == store_name
    assert samples["sentry_ops_backup_last_size_bytes"].value == sum(
        o.size for o in manifest.objects
    )
    assert "gone" not in text  # the failed host has no set: no sample says otherwise
    linted = subprocess.run(
        [sandbox["promtool"], "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
