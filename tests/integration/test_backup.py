"""The backup flow on the sandbox: pg_dump over real SSH, a real S3 endpoint, a real Prefect API."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Callable

import pytest
import zstandard

from blocks import backup_set, postgres
from blocks.backup_set import MANIFEST
from blocks.backup_store import StoreError
from blocks.layouts import Role
from flows.backup import BackupError, backup, list_backups, verify_backup
from flows.retention import backup_retention
from infra.sandbox.prefect_blocks import store_from_connection
from tests.helpers import SHARED

pytestmark = SHARED  # the sandbox's shared stacks (tests/helpers.py)


def manifest_of(store, result: dict) -> backup_set.BackupManifest:
    return backup_set.load(store, result["host_id"], result["backup_id"])


def tar_names(tar_zst: bytes) -> set[str]:
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(tar_zst))
    with tarfile.open(fileobj=raw, mode="r|") as tar:
        return {member.name for member in tar}


@pytest.fixture()
def fresh_postgres():
    """A throwaway empty Postgres (the stack's image, trust auth) on 127.0.0.1:15990."""
    name, port = f"sentry-ops-test-restore-{uuid.uuid4().hex[:6]}", 15990
    subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", name, "--network", "host",
         "-e", "POSTGRES_USER=postgres", "-e", "POSTGRES_DB=postgres",
         "-e", "POSTGRES_HOST_AUTH_METHOD=trust", "-e", f"PGPORT={port}",
         "sentry-ops-sandbox/services:latest", "postgres"],
        check=True, capture_output=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        probe = ["docker", "exec", name, "pg_isready", "-h", "127.0.0.1", "-p", str(port)]
        if subprocess.run(probe, capture_output=True).returncode == 0:
            break
        assert time.monotonic() < deadline, "the throwaway postgres did not start"
        time.sleep(0.3)
    yield postgres.Target(name, port, "postgres", "postgres")
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)


AWKWARD = [  # what a dump must carry exactly: bytea, JSON, unicode, a quoted name, a large
    # object, sequence values
    'CREATE TABLE IF NOT EXISTS "Odd ""Table"" ✓" (id serial PRIMARY KEY, b bytea, j jsonb, '
    "t text)",
    """INSERT INTO "Odd ""Table"" ✓" (id, b, j, t) VALUES (1, '\\x00ff10'::bytea, """
    """'{"k": [1, "ü", null]}', 'Ωmega ✓ 漢字'), (2, NULL, '[]', E'tab\\tnew\\nline') """
    "ON CONFLICT DO NOTHING",
    'SELECT setval(pg_get_serial_sequence(\'"Odd ""Table"" ✓"\', \'id\'), 4242)',
    "SELECT lo_from_bytea(4242, '\\xdeadbeef'::bytea) WHERE NOT EXISTS "
    "(SELECT 1 FROM pg_largeobject_metadata WHERE oid = 4242)",
]


def fingerprint(host, where=None) -> dict:
    """Per-table checksums, row counts, large objects and sequence values of a database."""
    with postgres.psql(host, where) as db:
        return {
            "tables": postgres.table_checksums(db),
            "counts": postgres.row_counts(db),
            "large objects": db.rows(
                "SELECT md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY 1"
            ),
            "sequences": db.rows("SELECT sequencename, last_value FROM pg_sequences ORDER BY 1"),
        }


def test_round_trip_restores_equal_content(
    request, layout, layout_host, saved_layout_host, store_name, sandbox, fresh_postgres
):
    if layout == "guide":
        request.getfixturevalue("seeded")  # >= 100k event payloads
    with postgres.psql(layout_host) as db:
        for statement in AWKWARD:
            db.rows(statement)
    writers = [layout_host.stack.service(r) for r in (Role.WORKER, Role.CRON)]
    layout_host.compose("stop", *writers)  # nothing writes meanwhile
    try:
        source = fingerprint(layout_host)
        result = backup(saved_layout_host, store_name)
    finally:
        layout_host.compose("start", *writers)

    store = store_from_connection(sandbox, prefix=store_name)
    manifest = manifest_of(store, result)
    assert manifest.row_counts == source["counts"]
    assert manifest.row_counts['Odd "Table" ✓'] == 2
    assert manifest.object("postgres").compression == "pg_dump:zstd:1"
    volumes = {f"volume:{v}" for v in layout_host.stack.backup_volumes}
    assert manifest.clickhouse is not None  # both layouts have ClickHouse
    frozen = {"clickhouse"} if any(t.parts for t in manifest.clickhouse.tables) else set()
    assert {o.name for o in manifest.objects} == {"postgres", "config", *volumes, *frozen}
    assert all(o.consistency for o in manifest.objects)  # each says how it was made consistent
    if layout_host.layout == "self-hosted":
        nodestore = manifest.object("volume:nodestore")
        assert "seaweedfs paused" in nodestore.consistency
        assert "./.mini_sse_kek" in tar_names(
            backup_set.read_object(store, manifest, nodestore.name)
        )
        seaweedfs = layout_host.service_containers(layout_host.stack.service(Role.NODESTORE))
        assert [r["State"] for r in seaweedfs] == ["running"]  # unpaused after the copy
        taskbroker = backup_set.read_object(store, manifest, "volume:taskbroker")
        assert "SQLite online backup" in manifest.object("volume:taskbroker").consistency
        assert tar_names(taskbroker) == {".", "./taskbroker-activations.sqlite"}
    config = store.open(manifest.object("config").key).read()
    assert b"SENTRY_SECRET_KEY" not in config and b"secret-key" not in config  # encrypted
    plain = backup_set.read_object(store, manifest, "config")
    assert b"SENTRY_SECRET_KEY" in plain or b"secret-key" in plain

    # the drill's own streaming restore: S3 -> decrypt -> SSH -> pg_restore next to an empty db
    reader = backup_set.open_object(store, manifest, "postgres")
    postgres.restore(layout_host, layout_host.tool_image, reader, fresh_postgres)
    reader.verify()
    restored = fingerprint(layout_host, fresh_postgres)
    assert restored == source
    assert restored["large objects"] and restored["sequences"]
    with pytest.raises(postgres.PostgresError, match="it already has tables"):
        postgres.restore(layout_host, layout_host.tool_image, io.BytesIO(b""), fresh_postgres)

    verified = verify_backup(saved_layout_host, store_name, result["backup_id"])
    assert verified["verified"] == len(manifest.objects)
    listed = list_backups(store_name)
    assert [b["backup_id"] for b in listed] == [result["backup_id"]]
    assert listed[0]["status"] == "verified"


def test_backup_verify_list_and_retention_on_each_layout(
    request, layout, saved_layout_host, store_name, sandbox
):
    result = backup(saved_layout_host, store_name)
    assert result["encrypted"]
    listed = list_backups(store_name, saved_layout_host)
    assert [(b["backup_id"], b["status"]) for b in listed] == [
        (result["backup_id"], "complete, not verified")
    ]
    assert verify_backup(saved_layout_host, store_name)["verified"] == result["objects"]
    assert list_backups(store_name)[0]["verified"]
    assert backup_retention(store_name)["kept"] == [result["backup_id"]]
    # the machine it came from, by the engine's own ID, whatever SSH address reached it
    info = ["docker", "info", "--format", "{{.ID}}@{{.DockerRootDir}}"]
    engine = subprocess.run(info, capture_output=True, text=True, check=True).stdout.strip()
    store = store_from_connection(sandbox, prefix=store_name)
    assert backup_set.load(store, result["host_id"], result["backup_id"]).engine_id == engine


def test_a_flipped_byte_fails_verification(saved_host, store_name, sandbox):
    result = backup(saved_host, store_name)
    store = store_from_connection(sandbox, prefix=store_name)
    key = manifest_of(store, result).object("volume:files").key
    data = bytearray(store.open(key).read())
    data[len(data) // 2] ^= 0x01
    store.put_bytes(key, bytes(data))
    with pytest.raises(BackupError, match=r"volume:files: size .* sha256 .* differs"):
        verify_backup(saved_host, store_name, result["backup_id"])
    assert list_backups(store_name)[0]["status"] == "complete, not verified"  # failed: recorded


def kill_ssh_sessions() -> int:
    """Cut every SSH connection: kill the sandbox sshd's per-connection children."""
    from infra import sandbox as sb

    master = int((sb.STATE / "ssh" / "sshd.pid").read_text())
    children = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True)
    pids = [int(p) for p in children.stdout.split()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return len(pids)


def cut_ssh_when(ready: Callable[[], bool]) -> tuple[threading.Thread, threading.Event]:
    """A started watcher that cuts every SSH connection as soon as `ready()` (within 60 s); the
    event says whether it did."""
    cut = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if ready():
                if kill_ssh_sessions():
                    cut.set()
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    return watcher, cut


def test_ssh_cut_mid_stream_leaves_no_manifest_and_no_open_upload(
    saved_host, store_name, sandbox, seeded
):
    store = store_from_connection(sandbox, prefix=store_name)
    watcher, cut = cut_ssh_when(lambda: bool(store.open_uploads()))
    # whatever fails first (pg_dump, SSH, psycopg), the flow's write_set reports it as a
    # BackupError naming the incomplete set it left
    with pytest.raises(BackupError):
        backup(saved_host, store_name, retries=0)
    watcher.join()
    assert cut.is_set(), "the connection was never cut: the test did not test anything"
    backups = backup_set.list_sets(store)
    assert not any(b.complete for b in backups)  # nothing restorable, nothing looks complete
    assert all(not k.endswith(MANIFEST) for b in backups for k in b.keys)
    assert store.open_uploads() == []
    assert not any(k.endswith("postgres.dump") for b in backups for k in b.keys)
    jobs = subprocess.run(["docker", "ps", "-aq", "--filter", "label=sentry-ops.job=backup"],
                          capture_output=True, text=True).stdout.split()  # fmt: skip
    assert jobs == []  # the dump's tool container went with the connection

    result = backup(saved_host, store_name)  # the next run succeeds
    verified = verify_backup(saved_host, store_name, result["backup_id"])["verified"]
    assert verified == result["objects"]  # every object of the set, ClickHouse included


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


def test_two_backups_of_one_host_never_overlap_whatever_its_blocks_are_called(
    sentry_host, saved_host, store_name, sandbox
):
    other_name = f"{saved_host}-alias"
    sentry_host.save(other_name, overwrite=True)  # a second block for the same stack
    results: list[dict] = []
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            results.append(backup(name, store_name))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in (saved_host, other_name)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    store = store_from_connection(sandbox, prefix=store_name)
    first, second = sorted((manifest_of(store, r) for r in results), key=lambda m: m.started_at)
    assert first.host_id == second.host_id  # one folder for the stack, whatever the block name
    assert first.finished_at <= second.started_at, "two backups of one host interleaved"


def upload_started(store, within: float = 60) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if store.open_uploads():
            return True
        time.sleep(0.02)
    return False


def test_postgres_stopped_mid_dump_fails_clearly_and_the_next_run_succeeds(
    sentry_host, saved_host, store_name, sandbox, seeded
):
    store = store_from_connection(sandbox, prefix=store_name)
    slow = store.model_copy(update={"bandwidth_limit": 4_000_000})  # the dump lasts seconds
    slow.save(f"{store_name}-slow", overwrite=True)
    stopped = threading.Event()

    def stop_postgres_when_uploading() -> None:
        if upload_started(store):
            subprocess.run(["docker", "kill", postgres.target(sentry_host).container],
                           capture_output=True)  # fmt: skip
            stopped.set()

    watcher = threading.Thread(target=stop_postgres_when_uploading)
    watcher.start()
    try:
        with pytest.raises(BackupError, match=r"backup container .* exited with|psql session"):
            backup(saved_host, f"{store_name}-slow", retries=0)
    finally:
        watcher.join()
        sentry_host.compose_up(wait=True, timeout=300)
    assert stopped.is_set(), "postgres was never stopped: the test did not test anything"
    backups = backup_set.list_sets(store)
    assert not any(b.complete for b in backups) and store.open_uploads() == []
    result = backup(saved_host, store_name)  # the next run succeeds
    verified = verify_backup(saved_host, store_name, result["backup_id"])
    assert verified["verified"] == result["objects"]


def test_a_missing_tool_image_fails_before_anything_is_written(
    sandbox, sentry_host, store_name, prefect_api
):
    name = f"notool-{uuid.uuid4().hex[:6]}"
    broken = sentry_host.model_copy(update={"tool_image": "sentry-ops-sandbox/no-such-tool:1"})
    broken.save(name, overwrite=True)
    with pytest.raises(
        postgres.PostgresError, match=r"(?s)no-such-tool:1.*set the block's tool_image"
    ):
        backup(name, store_name)
    assert backup_set.list_sets(store_from_connection(sandbox, prefix=store_name)) == []


def test_nothing_on_the_worker_serves_another_process_during_a_backup(
    saved_host, store_name, seeded
):
    """Postgres: no tunnel, no local port (the dump runs next to the database). ClickHouse's
    tunnel listens on 127.0.0.1 but forwards only this process's own connections: another
    process that connects during the backup gets no answer from ClickHouse."""
    me, seen, answers = str(os.getpid()), set(), []
    done = threading.Event()
    probe = (
        "import socket, sys\n"
        "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5)\n"
        "s.sendall(b'GET /?query=SELECT%201 HTTP/1.0\\r\\n\\r\\n')\n"
        "print(s.recv(100))\n"
    )

    def watch() -> None:
        while not done.is_set():
            out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
            for line in out.splitlines():
                if f"pid={me}," in line:
                    port = line.split()[3].rsplit(":", 1)[1]
                    if port not in seen:
                        seen.add(port)
                        argv = [sys.executable, "-c", probe, port]
                        other = subprocess.run(argv, capture_output=True, text=True, timeout=30)
                        answers.append(other.stdout + other.stderr)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        backup(saved_host, store_name)
    finally:
        done.set()
        watcher.join()
    assert answers, "no tunnel was seen: the ClickHouse step did not run"
    assert not any("200 OK" in a or "HTTP/1" in a for a in answers), answers
