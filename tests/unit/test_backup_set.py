"""The backup set's codecs and seals (pure; no S3 needed)."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blocks import backup_set as bs
from blocks.backup_store import BackupStore

KEY = "k" * 40


def store(key: str | None = KEY, **kw) -> BackupStore:
    return BackupStore(bucket="bucket", backup_key=key, allow_unencrypted=key is None, **kw)


class Trickle:
    """A source that returns fewer bytes than asked, like a network stream."""

    def __init__(self, data: bytes, step: int) -> None:
        self.buf, self.step = io.BytesIO(data), step

    def read(self, n: int = -1) -> bytes:
        return self.buf.read(min(n, self.step) if n > 0 else self.step)


def encrypt(data: bytes, secret: bytes = KEY.encode(), aad: bytes = b"h/b/f", read: int = 5 << 20):
    enc = bs._Encrypting(Trickle(data, 300_000), secret, aad)
    out = []
    while chunk := enc.read(read):
        out.append(chunk)
    return b"".join(out)


def decrypt(blob: bytes, secret: bytes = KEY.encode(), aad: bytes = b"h/b/f") -> bytes:
    dec = bs._Decrypting(io.BytesIO(blob), secret, aad, "test object")
    out = []
    while chunk := dec.read(777_777):
        out.append(chunk)
    return b"".join(out)


@pytest.mark.parametrize(
    "size", [0, 1, bs.CHUNK - 1, bs.CHUNK, bs.CHUNK + 1, 3 * bs.CHUNK, 3 * bs.CHUNK + 5]
)
def test_encryption_round_trip_at_chunk_edges(size):
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    blob = encrypt(data)
    assert blob.startswith(bs.MAGIC)
    assert data[:64] not in blob or size < 64
    assert decrypt(blob) == data


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=5000), st.integers(1, 4096))
def test_any_bytes_in_any_read_sizes_round_trip(data, read):
    assert decrypt(encrypt(data, read=read)) == data


def test_wrong_key_truncation_moving_and_tampering_fail_clearly():
    data = b"secret row value " * 200_000  # > 3 chunks
    blob = encrypt(data)
    with pytest.raises(bs.SetError, match="backup_key is not the one"):
        decrypt(blob, secret=b"another key of at least thirty-two chars")
    cut = len(bs.MAGIC) + bs.SALT + (bs.CHUNK + bs.TAG) * 2  # at a chunk boundary
    with pytest.raises(bs.SetError, match="truncated"):
        decrypt(blob[:cut])
    with pytest.raises(bs.SetError, match="moved from another set"):
        decrypt(blob, aad=b"other/b/f")
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 1
    with pytest.raises(bs.SetError):
        decrypt(bytes(flipped))
    with pytest.raises(bs.SetError, match="bad header"):
        decrypt(b"plain text, not ours")


def manifest(**kw) -> bs.BackupManifest:
    now = dt.datetime(2026, 11, 29, 6, 0, tzinfo=dt.UTC)
    fields = dict(
        backup_id="20261129T060000Z-h-22-p",
        host_id="h-22-p",
        host="prod",
        layout="guide",
        project_name="p",
        started_at=now,
        finished_at=now,
        objects=[],
        postgres_version="17.2",
        sentry_version="24.1.0",
        images={"web": "getsentry/sentry:24.1.0"},
        row_counts={"auth_user": 1},
        config_included=False,
        encrypted=True,
        sentry_ops_version="0.1.0",
    )
    return bs.BackupManifest(**{**fields, **kw})


def test_a_sealed_manifest_round_trips_and_any_edit_is_refused():
    s = store()
    body = bs.sealed_json(s, manifest())
    assert bs.BackupManifest.model_validate(bs.unseal(s, body, "m")) == manifest()
    raw = json.loads(body)
    raw["images"]["web"] = "evil/sentry:latest"
    with pytest.raises(bs.SetError, match="wrong seal"):
        bs.unseal(s, json.dumps(raw).encode(), "m")
    raw = json.loads(body)
    del raw["seal"]
    with pytest.raises(bs.SetError, match="no seal"):
        bs.unseal(s, json.dumps(raw).encode(), "m")
    with pytest.raises(bs.SetError, match="wrong seal"):
        bs.unseal(store("another key, just as long as the first one"), body, "m")
    with pytest.raises(bs.SetError, match="no backup_key"):
        bs.unseal(store(None), body, "m")


def test_a_store_needs_a_key_or_explicit_consent():
    with pytest.raises(ValueError, match="set backup_key"):
        BackupStore(bucket="bucket")
    with pytest.raises(ValueError, match="at least 32"):
        BackupStore(bucket="bucket", backup_key="short")
    assert BackupStore(bucket="bucket", allow_unencrypted=True).backup_key is None


def test_ids_and_file_names():
    now = dt.datetime(2026, 11, 29, 6, 1, 2, tzinfo=dt.UTC)
    backup_id = bs.new_backup_id("127-0-0-1-22-sentry", now)
    assert bs.parse_backup_id(backup_id) == (now, "127-0-0-1-22-sentry")
    assert bs.parse_backup_id("manifest.json") is None
    assert bs.file_name(bs.Kind.VOLUME, "files", "zstd", True) == "volume-files.tar.zst.enc"
    assert bs.file_name(bs.Kind.POSTGRES, "", "pg_dump:zstd:1", False) == "postgres.dump"
    assert bs.object_name(bs.Kind.VOLUME, "files") == "volume:files"
    with pytest.raises(bs.SetError, match="not a host id"):
        bs.folder(store(), "../etc")


def test_host_ids_name_the_engine_and_the_project_not_the_way_ssh_reached_it():
    engine = "5ZQF:3KQT:...:XK7M@/var/lib/docker"
    a = bs.host_id_of("sentry_a", engine)
    assert bs.HOST_ID.match(a) and a.startswith("sentry_a-")
    assert a != bs.host_id_of("sentry-a", engine)  # two compose projects: two hosts
    assert a != bs.host_id_of("sentry_a", "5ZQF:3KQT:...:XK7M@/srv/docker")  # another daemon
    assert bs.host_id_of("Sentry.Prod", engine).startswith("sentry-prod-")
    assert bs.HOST_ID.match(bs.host_id_of("__", engine))
    bid = bs.new_backup_id(a, dt.datetime(2026, 12, 3, tzinfo=dt.UTC))
    assert bs.parse_backup_id(bid) == (dt.datetime(2026, 12, 3, tzinfo=dt.UTC), a)
    m = manifest(project_name="sentry_a", engine_id=engine, host_id="127-0-0-1-22-sentry-a")
    assert bs.current_host_id(m) == a  # a set an older release filed: whose it is now
    assert bs.current_host_id(m.model_copy(update={"engine_id": None})) == m.host_id


def test_choose_takes_the_newest_trusted_complete_and_never_an_incomplete_or_refused():
    t = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    h = "h-22-p"

    def s(name, days, complete=True, trusted=True):
        when = t + dt.timedelta(days=days)
        return bs.SetListing(h, name, when, complete, trusted, False, (), "wrong seal")

    sets = [s("a", 0), s("b", 1), s("c", 2, complete=False), s("d", 3, trusted=False)]
    assert bs.choose(sets, None) == "b"
    assert bs.choose(sets, "a") == "a"
    with pytest.raises(bs.SetError, match="no manifest"):
        bs.choose(sets, "c")
    with pytest.raises(bs.SetError, match="refused: wrong seal"):
        bs.choose(sets, "d")
    with pytest.raises(bs.SetError, match="not among this host's"):
        bs.choose(sets, "zzz")
    with pytest.raises(bs.SetError, match=r"no complete, sealed backup .*refused: d: wrong seal"):
        bs.choose(sets[2:], None)
