"""Backup sets you can trust (real sandbox): per host, sealed, encrypted at rest, one host lock."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http.client
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import zstandard
from prefect import flow
from prefect.blocks.system import Secret
from pydantic import SecretStr

from blocks import backup_set
from blocks.backup_set import SetError
from blocks.backup_store import BackupStore
from blocks.layouts import DataVolume
from blocks.sentry_host import SentryHost
from flows.backup import BackupError, backup, list_backups, verify_backup
from flows.bootstrap import bootstrap
from flows.cleanup import CleanupError, retention_cleanup
from flows.restore_drill import DrillError, DrillStack, restore_drill
from flows.shared import LOCK_POLL_SECONDS, apply_retention
from infra import sandbox as sb
from infra.sandbox.prefect_blocks import (
    STACK_FIELDS,
    host_from_connection,
    save_blocks,
    ssh_fields,
    store_from_connection,
)
from tests.helpers import SHARED
from tests.integration.test_bootstrap import SMALL, run, run_texts

pytestmark = SHARED  # the sandbox's shared stacks (tests/helpers.py)

DRILL = DrillStack(port_offset=100, suffix="sets")


def manifest_of(store, result: dict) -> backup_set.BackupManifest:
    return backup_set.load(store, result["host_id"], result["backup_id"])


@flow
def retention_at(store_name: str, days_ahead: int) -> list[str]:
    """The store's retention as the clock will see it `days_ahead` from now."""
    store = BackupStore.load(store_name)
    now = dt.datetime.now(dt.UTC) + dt.timedelta(days=days_ahead)
    return [s.backup_id for s in apply_retention(store, now=now)[0].delete]


def test_two_hosts_in_one_store_keep_and_drill_their_own(sandbox, prefect_api, store_name):
    save_blocks(sandbox, "sets-guide", "guide")
    save_blocks(sandbox, "sets-self-hosted", "self-hosted")
    store = store_from_connection(sandbox, prefix=store_name).model_copy(update={"min_keep": 1})
    store.save(store_name, overwrite=True)
    guide = [backup("sets-guide", store_name) for _ in range(2)]
    other = backup("sets-self-hosted", store_name)  # the newest set in the store
    assert guide[0]["host_id"] != other["host_id"]
    guide_host = host_from_connection(sandbox, "guide")

    # each host sees only its own sets; another host's set is refused by id
    assert backup_set.pick(store, guide_host.identity, "", None).backup_id == guide[1]["backup_id"]
    with pytest.raises(SetError, match="not among this host's backups"):
        verify_backup("sets-guide", store_name, other["backup_id"])
    with pytest.raises(SetError, match="not among this host's backups"):
        restore_drill("sets-guide", store_name, backup_id=other["backup_id"], drill=DRILL)

    # 40 days on, min_keep=1 per host: the guide's older set goes, the self-hosted's only one
    # stays (with min_keep counted across the store, it would have gone)
    assert retention_at(store_name, 40) == [guide[0]["backup_id"]]
    left = {(s.host_id, s.backup_id) for s in backup_set.list_sets(store)}
    assert left == {
        (guide[1]["host_id"], guide[1]["backup_id"]),
        (other["host_id"], other["backup_id"]),
    }

    # the guide's drill picks the guide's newest set, not the store's newest
    result = restore_drill("sets-guide", store_name, drill=DRILL)
    assert result["passed"] and result["backup_id"] == guide[1]["backup_id"]
    listed = {b["backup_id"]: b["status"] for b in list_backups(store_name)}
    assert listed[guide[1]["backup_id"]] == "verified"  # the drill recorded its result
    assert listed[other["backup_id"]] == "complete, not verified"


def filed_as_before(store, manifest, host_id: str) -> backup_set.BackupManifest:
    """A copy of a set in the folder `host_id`, written as a release before the engine-based host
    id did (objects re-encrypted for that folder, manifest sealed naming it)."""
    writer = backup_set.begin(store, host_id)
    objects = [
        writer.put(o.kind, backup_set.open_object(store, manifest, o.name), o.compression,
                   o.name.partition(":")[2], raw_size=o.raw_size, consistency=o.consistency)
        for o in manifest.objects
    ]  # fmt: skip
    copy = manifest.model_copy(
        update={"host_id": host_id, "backup_id": writer.backup_id, "objects": objects}
    )
    writer.seal(copy)
    return copy


def test_one_machine_reached_by_address_and_by_name_is_one_host(sandbox, prefect_api, store_name):
    """Issue 26, item 3: the host id (a store's folder, the lock) is the compose project and the
    Docker engine's own ID, not the SSH target: the same stack reached as 127.0.0.1 and as
    localhost is one host, one folder, one lock. Sets an older release filed under the SSH
    target stay readable and age out with the host's."""
    from blocks import metrics, retention
    from flows.shared import lock_name

    info = sandbox["stacks"]["guide"]
    by_address = host_from_connection(sandbox, "guide")
    by_name = SentryHost(
        **ssh_fields({**sandbox["ssh"], "host": "localhost"}),
        **{k: info[k] for k in STACK_FIELDS if k in info},
    )
    by_address.save("reach-address", overwrite=True)
    by_name.save("reach-name", overwrite=True)
    store = store_from_connection(sandbox, prefix=store_name).model_copy(update={"min_keep": 1})
    store.save(store_name, overwrite=True)
    assert by_address.legacy_identity != by_name.legacy_identity  # what the SSH string gave
    assert by_address.identity == by_name.identity
    assert lock_name(by_address) == lock_name(by_name)

    # a set an older release wrote under the SSH target's folder is this host's
    first = backup("reach-address", store_name)
    assert first["host_id"] == by_address.identity
    taken = backup_set.load(store, first["host_id"], first["backup_id"])
    legacy = filed_as_before(store, taken, by_address.legacy_identity)
    backup_set.delete_set(store, backup_set.list_sets(store, first["host_id"])[0])
    assert verify_backup("reach-address", store_name)["backup_id"] == legacy.backup_id

    # the backup by name goes to the one folder; the two folders' sets are one host's
    second = backup("reach-name", store_name)
    assert second["host_id"] == by_address.identity
    assert verify_backup("reach-name", store_name)["backup_id"] == second["backup_id"]
    facts = metrics.read_facts(store)
    assert [f.host_id for f in facts] == [by_address.identity], facts  # no stale "other host"
    assert sum(facts[0].sets.values()) == 2
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=40)
    for host_ids in (by_address.set_folders, None):  # the host's own, and the store-wide
        plan, _ = retention.apply(store, host_ids, later, True, print)
        assert [s.backup_id for s in plan.delete] == [legacy.backup_id]  # min_keep counts both
        assert [s.backup_id for s in plan.keep] == [second["backup_id"]]


def edited(body: bytes, edit: str) -> bytes:
    if edit == "one byte":
        return body.replace(b'"format": 2', b'"format": 3', 1)  # still valid JSON
    raw = json.loads(body)
    if edit == "another image":
        raw["images"][next(iter(raw["images"]))] = "attacker/sentry:latest"
    else:
        del raw["seal"]
    return json.dumps(raw, indent=2).encode()


def test_an_edited_manifest_is_refused_by_verify_list_and_drill(saved_host, store_name, sandbox):
    result = backup(saved_host, store_name)  # one set, its manifest edited three ways in turn
    store = store_from_connection(sandbox, prefix=store_name)
    key = result["manifest"]
    body = store.get_bytes(key)
    for edit in ("one byte", "another image", "seal removed"):
        changed = edited(body, edit)
        assert changed != body
        store.put_bytes(key, changed)
        why = "has no seal" if edit == "seal removed" else "has a wrong seal"
        with pytest.raises(SetError, match=why):
            verify_backup(saved_host, store_name, result["backup_id"])
        with pytest.raises(SetError, match=why):
            restore_drill(saved_host, store_name, backup_id=result["backup_id"], drill=DRILL)
        listed = list_backups(store_name)
        assert listed[0]["status"].startswith("UNTRUSTED") and not listed[0]["trusted"], edit
        with pytest.raises(SetError, match="no complete, sealed backup"):  # never the default
            restore_drill(saved_host, store_name, drill=DRILL)


def readable(blob: bytes) -> bytes:
    """What someone reading the bucket could read in a blob: the bytes, and every zstd frame in
    them decompressed (pg_dump's custom format holds one per table; tars are one frame)."""
    out, start = [blob], 0
    while (i := blob.find(b"\x28\xb5\x2f\xfd", start)) >= 0:
        with contextlib.suppress(zstandard.ZstdError):
            out.append(zstandard.ZstdDecompressor().decompressobj().decompress(blob[i:]))
        start = i + 1
    return b"".join(out)


def test_no_stored_byte_reveals_a_row_or_a_file_and_a_wrong_key_is_refused(
    sandbox, prefect_api, store_name
):
    """The self-hosted stack (small): a row value and a file's content are in the plaintext
    (found by the same search, so the search works) and in none of the stored bytes."""
    host = host_from_connection(sandbox, "self-hosted")
    save_blocks(sandbox, "sets-self-hosted", "self-hosted")
    row, content = f"row-canary-{secrets.token_hex(16)}", f"file-canary-{secrets.token_hex(16)}"
    from blocks import postgres

    with postgres.psql(host) as db:
        db.rows("CREATE TABLE IF NOT EXISTS sentry_ops_canary (v text)")
        db.rows(f"INSERT INTO sentry_ops_canary VALUES ('{row}')")
    volume = host.volume_name(DataVolume.FILES)
    subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-v", f"{volume}:/v", "--entrypoint", "sh",
         sb.TOOL_IMAGE, "-c",
         f"echo {content} > /v/canary.txt"],
        check=True, capture_output=True,
    )  # fmt: skip
    result = backup("sets-self-hosted", store_name)
    store = store_from_connection(sandbox, prefix=store_name)
    manifest = manifest_of(store, result)
    assert manifest.encrypted and {o.encryption for o in manifest.objects} == {"aes-256-gcm"}
    stored, plain = b"", b""
    for obj in manifest.objects:
        stored += readable(store.open(obj.key).read())
        plain += readable(backup_set.read_object(store, manifest, obj.name))
    assert row.encode() in plain and content.encode() in plain  # the search finds them
    assert row.encode() not in stored and content.encode() not in stored
    assert row.encode() not in store.get_bytes(result["manifest"])

    # a store block with another key: the seal is refused first, and decryption fails too
    wrong = store.model_copy(update={"backup_key": SecretStr(secrets.token_urlsafe(32))})
    wrong.save(f"{store_name}-wrong", overwrite=True)
    with pytest.raises(SetError, match=r"wrong seal.*another backup_key"):
        verify_backup("sets-self-hosted", f"{store_name}-wrong", result["backup_id"])
    with pytest.raises(SetError, match="backup_key is not the one it was written with"):
        backup_set.read_object(wrong, manifest, "postgres")


def test_a_store_without_key_must_say_so_and_then_warns(sandbox, prefect_api, saved_host):
    with pytest.raises(ValueError, match=r"set backup_key .* or set allow_unencrypted=True"):
        BackupStore(bucket=sb.BUCKET)
    clear = store_from_connection(sandbox, prefix="clear").model_copy(
        update={"backup_key": None, "allow_unencrypted": True}
    )
    clear.save("test-clear", overwrite=True)
    state = backup(saved_host, "test-clear", return_state=True)
    result = state.result()
    assert not result["encrypted"]
    manifest = manifest_of(clear, result)
    assert not manifest.config_included  # secrets are never stored in clear
    text = asyncio.run(run_texts(state.state_details.flow_run_id))
    assert "objects are stored in clear, manifests are unsealed" in text


def backup_jobs() -> list[str]:
    out = subprocess.run(["docker", "ps", "-q", "--filter", "label=sentry-ops.job=backup"],
                         capture_output=True, text=True).stdout  # fmt: skip
    return out.split()


def dump_jobs(stack: str = sb.STACKS["guide"][0]) -> list[str]:
    """The running pg_dump container of a backup of one sandbox stack (default: the shared guide
    stack), in its postgres container's netns: never one of another stack (the other pytest
    process backs up stacks of its own meanwhile; taking theirs once made a test kill a backup
    that had already ended)."""
    jobs = backup_jobs()
    if not jobs:
        return []
    project = sb.project_name(stack)
    postgres_ids = subprocess.run(
        ["docker", "ps", "-q", "--no-trunc", "--filter",
         f"label=com.docker.compose.project={project}", "--filter",
         "label=com.docker.compose.service=sentry-postgres"],
        capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    out = subprocess.run(["docker", "inspect", "-f", "{{.Id}} {{.HostConfig.NetworkMode}}", *jobs],
                         capture_output=True, text=True).stdout  # fmt: skip
    return [
        cid
        for cid, mode in (line.split() for line in out.splitlines() if line.strip())
        if mode.startswith("container:")
        and any(p.startswith(mode[10:]) or mode[10:].startswith(p) for p in postgres_ids)
    ]


def test_a_killed_backup_makes_the_next_one_wait_for_the_lock_then_succeed(
    saved_host, store_name, sandbox, seeded
):
    from prefect.settings import PREFECT_API_URL

    code = f"from flows.backup import backup; backup({saved_host!r}, {store_name!r})"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    first = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=sb.REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    store = store_from_connection(sandbox, prefix=store_name)
    sb.wait_for("the first backup's dump, with an object stored",
                lambda: dump_jobs() and store.list_keys(f"{store.prefix}/"), 120, 0.1)  # fmt: skip
    first.kill()  # SIGKILL: no cleanup, its lock lease stays until it expires
    first.wait()
    started = time.monotonic()
    state = backup(saved_host, store_name, return_state=True)
    assert state.is_completed()
    text = asyncio.run(run_texts(state.state_details.flow_run_id))
    assert "waits for the host lock" in text and "held by backup run" in text
    assert time.monotonic() - started < 300
    sets = backup_set.list_sets(store)
    assert [s.complete for s in sets] == [False, True]  # the killed one never looks complete


def run_in_thread(out: dict[str, object], name: str, fn) -> threading.Thread:
    """`fn` in a started thread: its result (or exception) in out[name], the time it ended in
    out[f"{name} at"]."""

    def go() -> None:
        try:
            out[name] = fn()
        except BaseException as exc:
            out[name] = exc
        out[f"{name} at"] = time.monotonic()

    thread = threading.Thread(target=go)
    thread.start()
    return thread


def logged(*fragments: str, until: float) -> bool:
    """Whether a log line with every fragment reached the Prefect API before `until`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import LogSort

    async def newest() -> list[str]:
        async with get_client() as client:
            return [
                g.message for g in await client.read_logs(limit=200, sort=LogSort.TIMESTAMP_DESC)
            ]

    while time.monotonic() < until:
        if any(all(f in m for f in fragments) for m in asyncio.run(newest())):
            return True
        time.sleep(1)
    return False


def test_a_backup_holding_the_lock_blocks_a_bootstrap_of_its_host_not_of_another(
    bare_host, saved_host, store_name, sandbox, seeded
):
    stack = sandbox["stacks"]["guide"]
    admin = f"{saved_host}-admin"
    Secret(value=Path(stack["admin_password_path"]).read_text()).save(admin, overwrite=True)
    done: dict[str, object] = {}

    def in_thread(name: str, fn) -> threading.Thread:
        return run_in_thread(done, name, fn)

    held = in_thread("backup", lambda: backup(saved_host, store_name))
    sb.wait_for(f"the backup's dump {done}", lambda: dump_jobs() or "backup" in done, 120, 0.1)
    assert "backup" not in done, done
    jobs = dump_jobs()
    subprocess.run(["docker", "pause", *jobs], check=True, capture_output=True)
    try:  # the backup holds the host lock and makes no progress
        asked = time.monotonic()
        same = in_thread(
            "same host",
            lambda: bootstrap(
                host=saved_host, admin_email=stack["admin_email"], admin_password_secret=admin,
                settings=stack["settings"], requirements=SMALL, return_state=True,
            ),
        )  # fmt: skip
        other = run(bare_host)  # another host: not held up by this host's backup
        assert other.is_completed(), other
        # it says it waits (every LOCK_POLL_SECONDS of waiting), however long its own steps
        # before the lock took on this machine
        assert logged(
            "bootstrap of", "waits for the host lock", until=asked + LOCK_POLL_SECONDS + 90
        )
        assert same.is_alive(), "the bootstrap of the backed-up host did not wait for the lock"
        assert held.is_alive()
        # a retention cleanup does not queue behind a backup: it is refused, nothing run
        with pytest.raises(CleanupError, match=r"refused while backup run .* holds the host lock"):
            retention_cleanup(saved_host, store_name)
    finally:
        subprocess.run(["docker", "unpause", *jobs], capture_output=True)
    held.join()
    same.join()
    assert isinstance(done["backup"], dict), done["backup"]
    state = done["same host"]
    assert not isinstance(state, BaseException), state
    assert state.is_completed(), state
    assert done["same host at"] >= done["backup at"]
    text = asyncio.run(run_texts(state.state_details.flow_run_id))
    assert "waits for the host lock" in text and "held by backup run" in text
    other_text = asyncio.run(run_texts(other.state_details.flow_run_id))
    assert "waits for the host lock" not in other_text


class OutageProxy(ThreadingHTTPServer):
    """An HTTP proxy to the S3 endpoint that answers 503 SlowDown to every request once `writes`
    write requests have passed, until `recover()`: an S3 outage in the middle of a backup."""

    daemon_threads = True

    def __init__(self, upstream: int, writes: int) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream, self.writes, self.passed, self.down = upstream, writes, 0, False
        self.failed = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def recover(self) -> None:
        with self.lock:
            self.down, self.writes = False, 10**9


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _any(self) -> None:
        body, server = self._body(), self.server
        assert isinstance(server, OutageProxy)
        with server.lock:
            if self.command in ("PUT", "POST") and server.passed >= server.writes:
                server.down = True
            down = server.down
            if not down and self.command in ("PUT", "POST"):
                server.passed += 1
            server.failed += down
        if down:
            error = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"  # noqa: E501
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding",)}
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection("127.0.0.1", server.upstream, timeout=120)
        conn.request(self.command, self.path, body, headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any


def test_an_s3_outage_mid_backup_fails_with_a_sentence_and_the_next_run_succeeds(
    saved_host, store_name, sandbox, seeded
):
    upstream = int(sandbox["s3"]["endpoint_url"].rsplit(":", 1)[1])
    proxy = OutageProxy(upstream, writes=4)
    info = json.loads(json.dumps(sandbox))
    info["s3"]["endpoint_url"] = f"http://127.0.0.1:{proxy.port}"
    store = store_from_connection(info, prefix=store_name)
    store.save(f"{store_name}-flaky", overwrite=True)
    try:
        with pytest.raises(BackupError) as failure:
            backup(saved_host, f"{store_name}-flaky", retries=0)
        message = str(failure.value)
        assert proxy.failed > 0, "the outage never happened: the test tested nothing"
        assert f"s3://{sb.BUCKET}/{store_name}" in message  # the store
        assert "backup 2" in message and "failed" in message  # the backup id (its year)
        assert "503" in message or "SlowDown" in message  # what S3 said
        assert "Left behind: the incomplete set" in message and "retention removes" in message
        proxy.recover()
        result = backup(saved_host, f"{store_name}-flaky")  # the next run after the outage
        assert verify_backup(saved_host, f"{store_name}-flaky")["verified"] == result["objects"]
    finally:
        proxy.shutdown()
    sets = backup_set.list_sets(store_from_connection(sandbox, prefix=store_name))
    assert [s.complete for s in sets] == [False, True]


def test_a_drill_refuses_a_store_without_its_host(sandbox, prefect_api, store_name, saved_host):
    with pytest.raises(SetError, match="no complete, sealed backup"):
        restore_drill(saved_host, store_name, drill=DRILL)
    with pytest.raises((SetError, DrillError)):
        restore_drill(saved_host, store_name, backup_id="20260101T000000Z-x", drill=DRILL)


@flow(name="hold-engine-lock")
def hold_engine_lock(host_name: str, release: str) -> None:
    """Holds the engine lock of a host until the file `release` exists (the test's hand on it),
    as a drill does: the engine's, and the host lock of a scratch stack, not production's."""
    from blocks.scratch import scratch_of
    from flows.shared import host_lock

    scratch = scratch_of(SentryHost.load(host_name), None, DrillStack(suffix="hold"))
    with host_lock(scratch, "a test's hold", engine=True):
        Path(f"{release}.held").touch()
        while not Path(release).exists():
            time.sleep(0.2)


def test_drills_and_cleanups_on_one_engine_wait_for_its_lock_backups_do_not(
    saved_host, store_name, sandbox, seeded, tmp_path
):
    """The engine lock (by docker info's ID): while a run holds it, a same-host drill and a
    retention cleanup of that engine wait for it; a backup of its stack goes on."""
    from flows.shared import engine_lock_name

    host = SentryHost.load(saved_host)
    backup(saved_host, store_name)
    release = tmp_path / "release"
    holder = threading.Thread(target=hold_engine_lock, args=(saved_host, str(release)))
    holder.start()
    sb.wait_for("the test's hold on the engine lock", Path(f"{release}.held").exists, 120, 0.2)
    results: dict[str, object] = {}

    try:
        asked = time.monotonic()
        quick = DrillStack(web_timeout=20)
        drill = run_in_thread(
            results, "drill", lambda: restore_drill(saved_host, store_name, drill=quick)
        )
        cleanup = run_in_thread(
            results, "cleanup", lambda: retention_cleanup(saved_host, store_name, dry_run=True)
        )
        until = asked + LOCK_POLL_SECONDS + 240  # the drill verifies the set before the lock
        lock = engine_lock_name(host)
        waits = logged("restore drill of", f"waits for the engine lock {lock}", until=until)
        assert waits, results.get("drill")
        waits = logged("retention cleanup of", f"waits for the engine lock {lock}", until=until)
        assert waits, results.get("cleanup")
        assert drill.is_alive() and cleanup.is_alive()
        taken = backup(saved_host, store_name)  # not an engine-wide step: not held up
        assert taken["backup_id"]
    finally:
        release.touch()
    holder.join()
    drill.join()
    cleanup.join()
    assert isinstance(results["drill"], dict) and results["drill"]["passed"], results["drill"]
    assert isinstance(results["cleanup"], dict), results["cleanup"]
