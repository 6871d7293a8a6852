"""The one transport, for real: sshd on 127.0.0.1, the sandbox's pinned host key."""

from __future__ import annotations

import contextlib
import hashlib
import io
import socket
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from blocks.ssh import HostKeyError, RemoteCommandError, SSHAuthError, SSHConnectError
from tests.helpers import SHARED, with_ssh
from tests.unit.test_sentry_host_block import keypair

pytestmark = SHARED  # the sandbox's shared stacks (tests/helpers.py)

MiB = 1 << 20


def test_run_with_pinned_key(sentry_host):
    result = sentry_host.run(["sh", "-c", "echo out; echo err >&2; exit 0"])
    assert result.exit_code == 0 and result.text == "out\n" and "err" in result.stderr
    assert sentry_host.run(["echo", "a b", "$HOME"]).text == "a b $HOME\n"  # quoted once


def test_nonzero_exit_raises_typed_error_with_host_and_stderr(sentry_host):
    with pytest.raises(RemoteCommandError) as info:
        sentry_host.run(["sh", "-c", "echo boom >&2; exit 7"])
    err = info.value
    assert err.exit_code == 7 and "boom" in err.stderr_tail
    assert "127.0.0.1:22022" in str(err) and "exited with 7" in str(err)
    assert sentry_host.run(["false"], check=False).exit_code == 1


def test_command_timeout(sentry_host):
    started = time.monotonic()
    with pytest.raises(RemoteCommandError, match="did not finish within 1s"):
        sentry_host.run(["sleep", "30"], timeout=1)
    assert time.monotonic() - started < 5


def test_unknown_host_key_is_refused_naming_host_and_how_to_pin(sentry_host):
    _, other_public = keypair()
    stranger = with_ssh(sentry_host, host_key=other_public)
    with pytest.raises(HostKeyError) as info:
        stranger.run(["true"])
    message = str(info.value)
    assert "[127.0.0.1]:22022" in message
    assert "ssh.host_key" in message and "SHA256:" in message


def test_wrong_client_key_gives_auth_error(sentry_host):
    other_private, _ = keypair()
    wrong = with_ssh(sentry_host, private_key=SecretStr(other_private))
    with pytest.raises(SSHAuthError, match="authentication with the block's private key failed"):
        wrong.run(["true"])


def test_closed_port_fails_clearly_within_timeout(sentry_host):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = with_ssh(sentry_host, port=port, connect_timeout=3)
    started = time.monotonic()
    with pytest.raises(SSHConnectError, match="cannot reach sshd within 3s"):
        closed.run(["true"])
    assert time.monotonic() - started < 4


def test_stream_large_output_in_bounded_memory(sentry_host):
    """More than paramiko's own rekey threshold (512 MiB) on one connection: it leaves rekeying
    to sshd (its own rekey raced with the stream's window adjusts: paramiko issue #822)."""
    size = 640 * MiB
    argv = ["sh", "-c", f"head -c {size} /dev/zero"]
    digest = hashlib.sha256()
    total = 0
    tracemalloc.start()
    with sentry_host.stream(argv) as out:
        while chunk := out.read(MiB):
            digest.update(chunk)
            total += len(chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total == size
    assert digest.hexdigest() == hashlib.sha256(bytes(size)).hexdigest()
    assert peak < 48 * MiB, f"streaming {size / MiB:.0f} MiB peaked at {peak / MiB:.1f} MiB"
    packetizer = sentry_host.transport.client().get_transport().packetizer
    assert packetizer.REKEY_BYTES >= 2**62 and packetizer.REKEY_PACKETS >= 2**62


def test_stream_raises_on_failed_command(sentry_host):
    with pytest.raises(RemoteCommandError, match="exited with 3"):  # noqa: SIM117
        with sentry_host.stream(["sh", "-c", "echo partial; exit 3"]) as out:
            assert out.read() == b"partial\n"


def test_stdin_streams_into_a_command(sentry_host):
    payload = bytes(range(256)) * (64 * 1024)  # 16 MiB
    result = sentry_host.run(["sha256sum"], stdin=payload)
    assert result.text.split()[0] == hashlib.sha256(payload).hexdigest()


def test_sftp_put_get_with_mode(sentry_host, tmp_path):
    path = f"{tmp_path}/secret.env"
    sentry_host.put(path, b"KEY=value\n", mode=0o600)
    assert sentry_host.get(path) == b"KEY=value\n"
    assert sentry_host.transport.stat_mode(path) == 0o600
    sentry_host.put(path, b"KEY=other\n", mode=0o640)  # atomic replace
    assert sentry_host.get(path) == b"KEY=other\n"
    assert sentry_host.transport.stat_mode(path) == 0o640
    # while a file is written, it sits in a 0700 directory: nobody else opens it before its mode
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for d in Path(tmp_path).glob(".sentry-ops-tmp-*"):
                with contextlib.suppress(FileNotFoundError):
                    seen.add(d.stat().st_mode & 0o777)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    sentry_host.put(path, io.BytesIO(b"x" * (64 << 20)), mode=0o600)
    done.set()
    watcher.join()
    assert seen == {0o700}, seen
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["secret.env"]


def test_tunnel_to_postgres_and_web(sentry_host, sandbox):
    stack_dir = sandbox["stack"]["project_dir"]
    env_text = Path(stack_dir, ".env").read_text()
    password = dict(line.split("=", 1) for line in env_text.splitlines())["SENTRY_DB_PASSWORD"]
    with (
        sentry_host.tunnel(sentry_host.postgres_port) as port,
        psycopg.connect(
            host="127.0.0.1", port=port, user="sentry", dbname="sentry", password=password
        ) as conn,
    ):
        assert conn.execute("SELECT version FROM sentry_migrations").fetchone()
    with sentry_host.tunnel(sentry_host.web_port) as port:  # noqa: SIM117
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_health/", timeout=5) as resp:
            assert resp.read() == b"ok"


def test_one_connection_is_reused(sentry_host):
    sentry_host.run(["true"])
    first = sentry_host.transport.client()
    sentry_host.run(["true"])
    assert sentry_host.transport.client() is first


def test_a_tunnel_client_sees_the_end_when_the_ssh_connection_dies(sentry_host):
    from tests.integration.test_backup import kill_ssh_sessions

    with sentry_host.tunnel(sentry_host.postgres_port) as port:
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        client.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # SSLRequest: postgres answers 'N'
        assert client.recv(1) == b"N"
        assert kill_ssh_sessions() > 0
        client.settimeout(10)
        started = time.monotonic()
        assert client.recv(1) == b""  # EOF, not a hang
        assert time.monotonic() - started < 5
        client.close()
    sentry_host.run(["true"])  # and the transport reconnects
