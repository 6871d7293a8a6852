"""The backup flow on the sandbox: pg_dump over real SSH, a real S3 endpoint, a real Prefect API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid

import psycopg
import pytest
from pydantic import SecretStr

from blocks import postgres
from blocks.backup_store import MANIFEST, StoreError
from deployments.setup import store_from_connection
from flows.backup import BackupError, backup, list_backups, verify_backup
from flows.restore_drill import decompressed
from flows.retention import backup_retention
from tests.conftest import expect_failure_until


def fresh_postgres(name: str, port: int) -> None:
    """A throwaway empty Postgres (same image as the stack's), on 127.0.0.1:port."""
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", name, "--network", "host",
         "-e", "POSTGRES_USER=sentry", "-e", "POSTGRES_DB=sentry",
         "-e", "POSTGRES_PASSWORD=restore", "-e", f"PGPORT={port}",
         "sentry-ops-sandbox/services:latest", "postgres"],
        check=True, capture_output=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        probe = ["docker", "exec", name, "pg_isready", "-h", "127.0.0.1", "-p", str(port)]
        if subprocess.run(probe, capture_output=True).returncode == 0:
            return
        time.sleep(0.3)
    raise AssertionError("scratch postgres did not start")


def test_round_trip_restores_equal_rows_and_content(
    sentry_host, saved_host, store_name, seeded, sandbox
):
    sentry_host.compose("stop", "sentry-cron", "sentry-worker")  # nothing writes meanwhile
    try:
        with (
            sentry_host.tunnel(sentry_host.postgres_port) as port,
            postgres.connect(sentry_host, port) as conn,
        ):
            source_counts = postgres.row_counts(conn)
            source_sums = postgres.table_checksums(conn)
        result = backup(saved_host, store_name)
    finally:
        sentry_host.compose("start", "sentry-cron", "sentry-worker")

    store = store_from_connection(sandbox, prefix=store_name)  # fmt: skip
    manifest = store.read_manifest(result["backup_id"])
    assert manifest.row_counts == source_counts
    assert manifest.row_counts["nodestore_node"] >= seeded
    assert manifest.sentry_version == "24.1.0" and manifest.postgres_version.startswith("15")
    assert {o.name for o in manifest.objects} == {"postgres", "volume:files", "config"}
    assert manifest.config_included  # encrypted with the store's key
    config = store.open(manifest.object("config").key).read()
    assert b"SENTRY_SECRET_KEY" not in config and b"SENTRY_DB_PASSWORD" not in config

    name, port = f"sentry-ops-test-restore-{uuid.uuid4().hex[:6]}", 15990
    fresh_postgres(name, port)
    try:
        # the same streaming restore the drill uses: S3 -> zstd -> pg_restore
        target = sentry_host.model_copy(update={"postgres_password": SecretStr("restore")})
        postgres.restore_from(target, port, decompressed(store, manifest.object("postgres").key))
        with psycopg.connect(host="127.0.0.1", port=port, user="sentry", dbname="sentry",
                             password="restore") as conn:  # fmt: skip
            assert postgres.row_counts(conn) == source_counts
            assert postgres.table_checksums(conn) == source_sums
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)

    assert verify_backup(store_name, result["backup_id"])["verified"] == 3
    listed = list_backups(store_name)
    assert [b["backup_id"] for b in listed] == [result["backup_id"]] and listed[0]["complete"]


def test_backup_verify_list_and_retention_on_each_layout(
    request, layout, saved_layout_host, store_name, sandbox
):
    expect_failure_until(
        request,
        layout,
        {"self-hosted": "issue 9: its Postgres is unpublished (trust auth): dump next to it"},
    )
    result = backup(saved_layout_host, store_name)
    assert verify_backup(store_name, result["backup_id"])["verified"] == result["objects"]
    listed = list_backups(store_name)
    assert [b["backup_id"] for b in listed] == [result["backup_id"]] and listed[0]["complete"]
    assert backup_retention(store_name)["kept"] == [result["backup_id"]]


def test_a_flipped_byte_fails_verification(saved_host, store_name, sandbox):
    result = backup(saved_host, store_name)
    store = store_from_connection(sandbox, prefix=store_name)
    key = store.read_manifest(result["backup_id"]).object("volume:files").key
    data = bytearray(store.open(key).read())
    data[len(data) // 2] ^= 0x01
    store.put_bytes(key, bytes(data))
    with pytest.raises(BackupError, match=r"volume:files: size .* sha256 .* differs"):
        verify_backup(store_name, result["backup_id"])


def kill_ssh_sessions() -> int:
    """Cut every SSH connection: kill the sandbox sshd's per-connection children."""
    from infra.sandbox import sandbox as sb

    master = int((sb.STATE / "ssh" / "sshd.pid").read_text())
    children = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True)
    pids = [int(p) for p in children.stdout.split()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return len(pids)


def test_ssh_cut_mid_stream_leaves_no_manifest_and_no_open_upload(
    saved_host, store_name, sandbox, seeded
):
    store = store_from_connection(sandbox, prefix=store_name)
    cut = threading.Event()

    def cut_when_uploading() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not cut.is_set():
            if store.open_uploads():
                if kill_ssh_sessions():
                    cut.set()
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=cut_when_uploading)
    watcher.start()
    with pytest.raises(Exception):  # noqa: B017  (whatever surfaces first: pg_dump, SSH, psycopg)
        backup(saved_host, store_name, retries=0)
    watcher.join()
    assert cut.is_set(), "the connection was never cut: the test did not test anything"
    backups = store.list_backups()
    assert not any(b.complete for b in backups)  # nothing restorable, nothing looks complete
    assert all(not k.endswith(MANIFEST) for b in backups for k in b.keys)
    assert store.open_uploads() == []
    assert not any(k.endswith("postgres.dump.zst") for b in backups for k in b.keys)

    result = backup(saved_host, store_name)  # the next run succeeds
    assert verify_backup(store_name, result["backup_id"])["verified"] == 3


def test_missing_bucket_fails_before_any_dump(sandbox, saved_host, prefect_api):
    info = json.loads(json.dumps(sandbox))
    info["s3"]["bucket"] = "no-such-bucket-here"
    store_from_connection(info, prefix="x").save("test-missing-bucket", overwrite=True)
    started = time.monotonic()
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-here' does not exist"):
        backup(saved_host, "test-missing-bucket")
    assert time.monotonic() - started < 30


def test_unreachable_store_fails_before_any_dump(sandbox, saved_host, prefect_api):
    info = json.loads(json.dumps(sandbox))
    info["s3"]["endpoint_url"] = "http://127.0.0.1:9"  # discard port: nothing listens
    store_from_connection(info, prefix="x").save("test-unreachable", overwrite=True)
    with pytest.raises(StoreError, match="cannot reach S3"):
        backup(saved_host, "test-unreachable")


def test_two_backups_of_one_host_never_overlap(saved_host, store_name, sandbox):
    results: list[dict] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(backup(saved_host, store_name))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    store = store_from_connection(sandbox, prefix=store_name)
    first, second = sorted(
        (store.read_manifest(r["backup_id"]) for r in results), key=lambda m: m.started_at
    )
    assert first.finished_at <= second.started_at, "two backups of one host interleaved"


def test_backup_refuses_to_run_without_its_host_lock(sentry_host, store_name, prefect_api):
    name = f"unlocked-{uuid.uuid4().hex[:6]}"
    sentry_host.save(name, overwrite=True)  # a host whose lock was never created
    with pytest.raises(Exception, match=f"sentry-backup-{name}"):
        backup(name, store_name)
