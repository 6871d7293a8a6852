"""Helpers and constants the tests import (fixtures stay in tests/conftest.py)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from blocks.sentry_host import SentryHost

LAYOUTS = ["guide", "self-hosted"]

# `bash infra/run.sh test` runs two pytest processes side by side: `-m shared_sandbox` (the
# integration tests that share the sandbox's stacks, ports and slots: one process, file order) and
# `-m "not shared_sandbox"` (unit tests, and the guide upgrade tests on a stack of their own).
SHARED = pytest.mark.shared_sandbox

# the tests' Prefect server (tests/conftest.py prefect_api): home, port, pidfile, for a restart
PREFECT_SERVER: dict[str, Any] = {}

EVENTS = 120_000  # event payloads the `seeded` fixture keeps in the guide stack's nodestore


def restart_prefect_server() -> float:
    """Stop the tests' Prefect server by its PID and start it again on the same home and port (its
    database and lease files kept); returns the seconds it was down."""
    import time

    from infra import sandbox as sb

    server = PREFECT_SERVER
    started = time.monotonic()
    sb.stop_pid(server["pidfile"], "the tests' Prefect server (a restart)")
    sb.start_prefect_server(
        server["home"], server["port"], server["pidfile"], server["log"], server["database"]
    )
    return time.monotonic() - started


def free_port() -> int:
    """A 127.0.0.1 port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_worker_once(pool: str, kind: str, api: str, timeout: float) -> str:
    """A real Prefect worker of `kind` on `pool`: one poll, its runs to their end; its output."""
    worker = subprocess.run(
        [str(Path(sys.executable).with_name("prefect")), "worker", "start",
         "--pool", pool, "--type", kind, "--run-once"],
        env={**os.environ, "PREFECT_API_URL": api}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    return worker.stdout[-3000:] + worker.stderr[-3000:]


def expect_failure_until(
    request: pytest.FixtureRequest, layout: str, cases: dict[str, str]
) -> None:
    """Mark this layout's case as an expected failure naming the issue that makes it pass. Strict:
    the case still runs, and once it passes the run fails until the mark is removed."""
    if layout in cases:
        request.applymarker(pytest.mark.xfail(reason=cases[layout], strict=True))


def with_ssh(host: SentryHost, **changes: Any) -> SentryHost:
    """A copy of a host block whose SSH Connection has `changes` (another port, key, ...). The
    copy is a new SSH Connection: saving the host saves it, instead of referring to the one the
    loaded host was saved with (Prefect saves a nested block that has a document as a reference)."""
    ssh = host.ssh.model_copy(update=changes)
    ssh._block_document_id = None
    ssh._block_document_name = None
    return host.model_copy(update={"ssh": ssh})


class Partition:
    """A TCP forwarder 127.0.0.1:`port` -> 127.0.0.1:`upstream` that can be cut (listener and
    every open connection closed: the far side unreachable) and healed on the same port: a
    network partition between one client and a server."""

    def __init__(self, upstream: int) -> None:
        import threading

        self.upstream, self.port = upstream, free_port()
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.heal()

    def heal(self) -> None:
        import threading

        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self.lock:
            doomed, self.conns = [self.listener, *self.conns], []
            self.listener = None
        for sock in doomed:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def insert_nodes(db, rows) -> None:
    """(node id, payload, hours old) rows into nodestore_node, encoded as Sentry's
    DjangoNodeStorage writes them (compact sorted JSON, zlib, base64), 2000 per statement."""
    batch: list[str] = []

    def flush() -> None:
        if batch:
            db.rows("INSERT INTO nodestore_node (id, data, timestamp) VALUES " + ", ".join(batch)
                    + " ON CONFLICT DO NOTHING")  # fmt: skip
            batch.clear()

    for node_id, payload, hours in rows:
        raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        data = base64.b64encode(zlib.compress(raw)).decode()
        batch.append(f"('{node_id}', '{data}', now() - interval '{int(hours)} hours')")
        if len(batch) == 2000:
            flush()
    flush()
