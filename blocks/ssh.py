"""The one way sentry-ops runs anything on a Docker host: paramiko, host key pinned.

Commands are argv lists, quoted here and nowhere else (`shlex.join`). Secrets travel on stdin or
through SFTP files written 0600, never in argv. One SSH connection per target is reused by every
task of a process (paramiko multiplexes channels over it) and re-opened when it has dropped.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import os
import posixpath
import select
import shlex
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import paramiko


class _ExpectedRefusal(logging.Filter):
    """A tunnel to a port where nothing listens yet (a web that is starting) is answered as
    "no answer" by the caller; paramiko would also log it as an ERROR in every run's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "open FAILED: Connection refused" not in record.getMessage()


logging.getLogger("paramiko.transport").addFilter(_ExpectedRefusal())

CHUNK = 1 << 20  # 1 MiB reads: the per-read overhead dominates below this
WINDOW = 8 << 20  # SSH channel window: enough in flight to keep ~150 MB/s moving
STDERR_TAIL = 8 << 10
PUMP = 1 << 20  # tunnel reads: fewer, larger hand-offs between the channel and the socket


class SSHError(Exception):
    """Anything that went wrong talking to a host; the message says what and how to fix it."""

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__(f"{host}: {message}")


class HostKeyError(SSHError):
    pass


class SSHAuthError(SSHError):
    pass


class SSHConnectError(SSHError):
    pass


class RemoteCommandError(SSHError):
    def __init__(
        self, host: str, command: str, exit_code: int | None, stderr_tail: str, why: str = ""
    ) -> None:
        self.command = command
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        what = why or f"exited with {exit_code}"
        tail = stderr_tail.strip()[-2000:]
        super().__init__(host, f"`{command}` {what}" + (f"; stderr: {tail}" if tail else ""))


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


def quote(argv: Sequence[str]) -> str:
    """The single place an argv becomes a remote shell command line."""
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"a remote command is a non-empty list of strings, got {argv!r}")
    return shlex.join(argv)


def summarize(argv: Sequence[str], limit: int = 160) -> str:
    line = quote(argv)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def parse_host_key(value: str) -> tuple[str, paramiko.PKey]:
    """'ssh-ed25519 AAAA...' or a known_hosts line '[h]:p ssh-ed25519 AAAA...' -> (type, key)."""
    parts = value.split()
    if len(parts) >= 3 and not parts[0].startswith(("ssh-", "ecdsa-")):
        parts = parts[1:]
    if len(parts) < 2:
        raise ValueError(
            "a pinned host key looks like 'ssh-ed25519 AAAAC3Nz...' "
            "(the key type and base64 of a known_hosts line)"
        )
    key_type, blob = parts[0], parts[1]
    try:
        key = paramiko.PKey.from_type_string(key_type, base64.b64decode(blob))
    except Exception as exc:
        raise ValueError(f"cannot read pinned host key of type {key_type!r}: {exc}") from None
    return key_type, key


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def load_private_key(text: str) -> paramiko.PKey:
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise ValueError("the private key is not an unencrypted OpenSSH/PEM ed25519, ECDSA or RSA key")


@dataclass(frozen=True)
class SSHTarget:
    host: str
    port: int
    user: str
    private_key: str = field(repr=False)
    host_key: str
    connect_timeout: float = 10.0

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


class _PinnedKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse any key that is not the pinned one, saying how to pin."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey):
        raise HostKeyError(
            hostname,
            f"host key {key.get_name()} {fingerprint(key)} is not the pinned one; refusing to "
            "connect. If this host is the one you mean, verify the fingerprint out of band "
            f"(`ssh-keygen -lf /etc/ssh/ssh_host_{key.get_name().removeprefix('ssh-')}_key.pub` "
            "on the host) and put its public key ('ssh-... AAAA...', from `ssh-keyscan`) in the "
            "block's ssh.host_key field",
        )


NO_CLIENT_REKEY = 2**62
_clients: dict[SSHTarget, paramiko.SSHClient] = {}
_clients_lock = threading.Lock()


def _connect(target: SSHTarget) -> paramiko.SSHClient:
    key_type, pinned = parse_host_key(target.host_key)
    client = paramiko.SSHClient()
    client.get_host_keys().add(target.known_hosts_name, key_type, pinned)
    client.set_missing_host_key_policy(_PinnedKeyPolicy())
    try:
        client.connect(
            target.host,
            port=target.port,
            username=target.user,
            pkey=load_private_key(target.private_key),
            timeout=target.connect_timeout,
            banner_timeout=target.connect_timeout,
            auth_timeout=target.connect_timeout,
            allow_agent=False,
            look_for_keys=False,
        )
    except HostKeyError:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyError(
            target.known_hosts_name,
            f"host key changed: offered {exc.key.get_name()} {fingerprint(exc.key)}, pinned "
            f"{fingerprint(exc.expected_key)}. Refusing to connect. If the host was rebuilt, "
            "verify the new key out of band and update the block's ssh.host_key field",
        ) from None
    except paramiko.AuthenticationException:
        client.close()
        raise SSHAuthError(
            target.label,
            "authentication with the block's private key failed: check ssh.user and that the "
            "matching public key is in that user's authorized_keys on the host",
        ) from None
    except (TimeoutError, OSError, paramiko.SSHException) as exc:
        client.close()
        raise SSHConnectError(
            target.label,
            f"cannot reach sshd within {target.connect_timeout:g}s ({exc.__class__.__name__}: "
            f"{exc}): check ssh.host/ssh.port, that sshd runs there and that the path is open",
        ) from None
    transport = client.get_transport()
    assert transport is not None
    transport.set_keepalive(15)
    # paramiko's own rekey (every 512 MiB either way, and this connection is reused) races with
    # channel traffic: a window adjust sent meanwhile waits for a key exchange that never ends
    # ("Key-exchange timed out waiting for key negotiation", paramiko issue #822; seen here at
    # the end of a 256 MiB stream on a connection that had moved more before). Rekeying is left
    # to sshd (OpenSSH rekeys by its RekeyLimit, 1-4 GiB by cipher), which paramiko follows.
    transport.packetizer.REKEY_BYTES = transport.packetizer.REKEY_PACKETS = NO_CLIENT_REKEY
    return client


class _StderrTail:
    """Drains a channel's stderr in a thread, keeping only the tail (stderr can be large)."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._thread = threading.Thread(target=self._drain, args=(channel,), daemon=True)
        self._thread.start()

    def _drain(self, channel: paramiko.Channel) -> None:
        with contextlib.suppress(Exception):
            while data := channel.recv_stderr(65536):
                self._chunks.append(data)
                self._size += len(data)
                while self._size - len(self._chunks[0]) > STDERR_TAIL:
                    self._size -= len(self._chunks.popleft())

    def text(self, wait: float = 5.0) -> str:
        self._thread.join(wait)
        return b"".join(self._chunks)[-STDERR_TAIL:].decode("utf-8", "replace")


class _ChannelReader(io.RawIOBase):
    """stdout of a remote command; at EOF, `on_eof` checks the exit status (and may raise), so a
    reader never sees a clean end of a stream whose command failed."""

    def __init__(self, channel: paramiko.Channel, on_eof) -> None:
        self._channel = channel
        self._on_eof = on_eof
        self.eof = False
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self.eof:
            return 0
        data = self._channel.recv(len(buffer))
        if not data:
            self.eof = True
            self._on_eof()
            return 0
        buffer[: len(data)] = data
        self.bytes_read += len(data)
        return len(data)


class SSHTransport:
    def __init__(self, target: SSHTarget) -> None:
        self.target = target

    # -- connection -------------------------------------------------------------------------
    def client(self) -> paramiko.SSHClient:
        with _clients_lock:
            client = _clients.get(self.target)
            transport = client.get_transport() if client else None
            if client is None or transport is None or not transport.is_active():
                if client is not None:
                    client.close()
                client = _connect(self.target)
                _clients[self.target] = client
            return client

    def close(self) -> None:
        with _clients_lock:
            client = _clients.pop(self.target, None)
        if client is not None:
            client.close()

    def _open(self, argv: Sequence[str], timeout: float | None) -> paramiko.Channel:
        line = quote(argv)
        transport = self.client().get_transport()
        assert transport is not None
        try:
            channel = transport.open_session(window_size=WINDOW, max_packet_size=32768)
            channel.settimeout(timeout)
            channel.exec_command(line)
        except paramiko.SSHException as exc:
            raise SSHConnectError(
                self.target.label, f"cannot start `{summarize(argv)}`: {exc}"
            ) from None
        return channel

    # -- commands ---------------------------------------------------------------------------
    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | BinaryIO | None = None,
        timeout: float | None = 600,
        check: bool = True,
    ) -> CommandResult:
        """Run argv, feeding `stdin` (bytes or a file object, streamed), and collect stdout.

        For large outputs use `stream`. `timeout` bounds the whole command; on expiry the
        channel is closed (sshd then hangs up on the remote process) and the error says so.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        channel = self._open(argv, timeout)
        stderr = _StderrTail(channel)
        feeder_error: list[BaseException] = []
        feeder = None
        if stdin is not None:
            source = io.BytesIO(stdin) if isinstance(stdin, bytes | bytearray) else stdin
            feeder = threading.Thread(
                target=_feed, args=(channel, source, feeder_error), daemon=True
            )
            feeder.start()
        out = bytearray()
        try:
            while True:
                if deadline is not None:
                    channel.settimeout(max(0.01, deadline - time.monotonic()))
                data = channel.recv(CHUNK)
                if not data:
                    break
                out += data
            if deadline is not None:
                channel.settimeout(max(0.01, deadline - time.monotonic()))
            code = _exit_status(channel, deadline)
        except TimeoutError:
            channel.close()
            raise RemoteCommandError(
                self.target.label,
                summarize(argv),
                None,
                stderr.text(0.5),
                why=f"did not finish within {timeout:g}s (raise the timeout or check the host)",
            ) from None
        finally:
            if feeder is not None:
                feeder.join(5)
        channel.close()
        if feeder_error:  # the source failed: the remote side saw its stdin cut, not an EOF
            raise feeder_error[0]
        result = CommandResult(code, bytes(out), stderr.text())
        if check and code != 0:
            raise RemoteCommandError(self.target.label, summarize(argv), code, result.stderr)
        return result

    @contextlib.contextmanager
    def stream(
        self, argv: Sequence[str], *, timeout: float | None = 300, stdin: bytes = b""
    ) -> Iterator[BinaryIO]:
        """Yield argv's stdout as a buffered file object, read in bounded memory.

        At the end of the stream the exit status is checked, and a non-zero one raises
        `RemoteCommandError` from the read itself (so an upload reading it aborts instead of
        completing). `timeout` is the longest silence tolerated. `stdin` (small: a secret line)
        is sent first, then the remote stdin is closed.
        """
        channel = self._open(argv, timeout)
        stderr = _StderrTail(channel)
        if stdin:
            channel.sendall(stdin)
        channel.shutdown_write()

        def check_exit() -> None:
            deadline = None if timeout is None else time.monotonic() + timeout
            code = _exit_status(channel, deadline)
            if code != 0:
                raise RemoteCommandError(self.target.label, summarize(argv), code, stderr.text())

        raw = _ChannelReader(channel, check_exit)
        reader = io.BufferedReader(raw, CHUNK)
        try:
            yield reader  # type: ignore[misc]
        except TimeoutError:
            raise RemoteCommandError(
                self.target.label,
                summarize(argv),
                None,
                stderr.text(0.5),
                why=f"sent nothing for {timeout:g}s",
            ) from None
        except BaseException:
            channel.close()
            raise
        channel.close()  # at EOF the exit status was checked; before it, the reader stopped early

    @contextlib.contextmanager
    def session(self, argv: Sequence[str], *, timeout: float | None = 3600) -> Iterator[Session]:
        """An interactive command: send lines to its stdin, read lines of its stdout (psql)."""
        channel = self._open(argv, timeout)
        session = Session(channel, _StderrTail(channel), self.target.label, summarize(argv))
        try:
            yield session
            session.finish(timeout)
        finally:
            channel.close()

    # -- files ------------------------------------------------------------------------------
    def put(self, path: str, data: bytes | BinaryIO, *, mode: int = 0o600) -> None:
        """Write a file atomically: into a fresh 0700 directory beside it (so no one else can
        open the file before it has its mode: SFTP creates it with the server's umask), made
        `mode` before any byte lands, then renamed into place."""
        tmp_dir = f"{posixpath.dirname(path) or '.'}/.sentry-ops-tmp-{uuid.uuid4().hex[:8]}"
        tmp = f"{tmp_dir}/{posixpath.basename(path)}"
        source = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
        with self.client().open_sftp() as sftp:
            sftp.mkdir(tmp_dir, mode=0o700)
            try:
                with sftp.open(tmp, "wb") as handle:
                    sftp.chmod(tmp, mode)
                    handle.set_pipelined(True)
                    while chunk := source.read(CHUNK):
                        handle.write(chunk)
                sftp.posix_rename(tmp, path)
            except BaseException:
                with contextlib.suppress(Exception):
                    sftp.remove(tmp)
                raise
            finally:
                with contextlib.suppress(Exception):
                    sftp.rmdir(tmp_dir)

    def get(self, path: str) -> bytes:
        with self.client().open_sftp() as sftp, sftp.open(path, "rb") as handle:
            handle.prefetch()
            return handle.read()

    def stat_mode(self, path: str) -> int:
        with self.client().open_sftp() as sftp:
            return sftp.stat(path).st_mode & 0o7777

    def exists(self, path: str) -> bool:
        with self.client().open_sftp() as sftp:
            try:
                sftp.stat(path)
                return True
            except FileNotFoundError:
                return False

    def listdir(self, path: str) -> list[str]:
        with self.client().open_sftp() as sftp:
            return sftp.listdir(path)

    def chmod(self, path: str, mode: int) -> None:
        with self.client().open_sftp() as sftp:
            sftp.chmod(path, mode)

    # -- tunnels ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def tunnel(self, remote_port: int, remote_host: str = "127.0.0.1") -> Iterator[int]:
        """Forward a local 127.0.0.1 port to remote_host:remote_port as seen from the host.

        Yields the local port, for clients that need a socket (clickhouse-connect, HTTP); only
        connections from this process are forwarded (`own_client`).
        """
        transport = self.client().get_transport()
        assert transport is not None
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        stop = threading.Event()
        open_pairs: list[tuple[socket.socket, paramiko.Channel]] = []

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, peer = server.accept()
                except OSError:
                    return
                if not own_client(conn):  # another local user or process: never forwarded
                    conn.close()
                    continue
                try:
                    chan = transport.open_channel(
                        "direct-tcpip", (remote_host, remote_port), peer, timeout=10
                    )
                except Exception:
                    conn.close()
                    continue
                open_pairs.append((conn, chan))
                threading.Thread(target=_pump, args=(conn, chan), daemon=True).start()

        acceptor = threading.Thread(target=accept, daemon=True)
        acceptor.start()
        try:
            yield server.getsockname()[1]
        finally:
            stop.set()
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() does not
            server.close()
            for conn, chan in open_pairs:
                conn.close()
                with contextlib.suppress(Exception):
                    chan.close()


def tcp_sockets(table: str) -> list[tuple[tuple[str, int], tuple[str, int], int, str]]:
    """(local, remote, uid, inode) of each IPv4 socket in a /proc/net/tcp text (the format of
    the Linux kernel's Documentation/networking/proc_net_tcp.rst: addresses as little-endian hex
    `0100007F:1F90`, uid the 8th field, inode the 10th)."""

    def address(text: str) -> tuple[str, int]:
        ip, port = text.split(":")
        return socket.inet_ntoa(int(ip, 16).to_bytes(4, "little")), int(port, 16)

    rows = []
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 10:
            rows.append((address(fields[1]), address(fields[2]), int(fields[7]), fields[9]))
    return rows


def own_client(conn: socket.socket) -> bool:
    """Whether the peer of an accepted loopback connection is a socket of this very process: the
    kernel's socket whose local address is the peer's and whose remote address is this listener's
    (both address and port: a process binding 127.0.0.2 with the same port is another socket)
    belongs to this process's user and its inode is among /proc/self/fd. A tunnel's local port is
    then of use to the flow's own client only, not to other users or processes of the worker."""
    peer, here = conn.getpeername()[:2], conn.getsockname()[:2]
    try:
        with open("/proc/net/tcp") as f:
            table = f.read()
    except OSError:
        return False
    inodes = {
        inode
        for local, remote, uid, inode in tcp_sockets(table)
        if local == peer and remote == here and uid == os.getuid()
    }
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                mine.add(link[8:-1])
    return bool(inodes & mine)


class Prefixed:
    """`head` then the bytes of `rest`: e.g. a secret line, then the data, on one stdin."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head, self._rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            return head
        return self._rest.read(n)


class Session:
    def __init__(self, channel: paramiko.Channel, stderr: _StderrTail, host: str, what: str):
        self._channel, self._stderr, self._host, self._what = channel, stderr, host, what
        self._out = channel.makefile("rb")

    def send(self, data: bytes) -> None:
        self._channel.sendall(data)

    def readline(self) -> str | None:
        """One line of output without its newline; None at the end of output."""
        line = self._out.readline()
        return line.decode("utf-8", "replace").rstrip("\n") if line else None

    def stderr_tail(self) -> str:
        return self._stderr.text(0.5)

    def finish(self, timeout: float | None) -> None:
        """Close stdin and check the exit status."""
        self._channel.shutdown_write()
        while self._out.readline():
            pass
        deadline = None if timeout is None else time.monotonic() + timeout
        code = _exit_status(self._channel, deadline)
        if code != 0:
            raise RemoteCommandError(self._host, self._what, code, self._stderr.text())


def _feed(channel: paramiko.Channel, source: BinaryIO, errors: list[BaseException]) -> None:
    """Copy `source` to the channel's stdin. A failing source hangs up the channel (a clean EOF
    would let the remote side take half the input for all of it); a remote side that stopped
    reading just ends the copy: its exit status says why."""
    try:
        while True:
            try:
                chunk = source.read(CHUNK)
            except BaseException as exc:  # surfaced by run() after the command ends
                errors.append(exc)
                with contextlib.suppress(Exception):
                    channel.close()
                return
            if not chunk:
                break
            channel.sendall(chunk)
    except OSError:
        pass  # the remote command stopped reading
    finally:
        with contextlib.suppress(Exception):
            channel.shutdown_write()


def _exit_status(channel: paramiko.Channel, deadline: float | None) -> int:
    while not channel.exit_status_ready():
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.005)
    return channel.recv_exit_status()


def _pump(conn: socket.socket, chan: paramiko.Channel) -> None:
    """Copy both ways until either side ends. Whatever happens, the local socket is closed, so a
    client on it (pg_dump, psycopg) sees the end instead of waiting forever."""
    transport = chan.get_transport()
    try:
        while True:
            readable, _, _ = select.select([conn, chan], [], [], 1.0)
            if not readable and (chan.closed or transport is None or not transport.is_active()):
                break
            if conn in readable:
                data = conn.recv(PUMP)
                if not data:
                    break
                chan.sendall(data)
            if chan in readable:
                data = chan.recv(PUMP)
                if not data:
                    break
                conn.sendall(data)
    except Exception:  # the SSH connection or the tunnel ended under us: close both ends
        pass
    finally:
        conn.close()
        with contextlib.suppress(Exception):  # closing a channel of a dead transport can raise
            chan.close()
