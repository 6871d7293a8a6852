"""The WAL archive of a host in the store: the one owner of its format (keys, codec, head).

Beside the host's backup sets (`<store prefix>/<host id>/`), under `wal/<system identifier>/`
(one folder per Postgres cluster: a cluster made anew by a logical restore numbers its segments
from the start again, and must never be taken for the old one's):
- one object per finished WAL segment or timeline history file, named as Postgres names it,
  zstd-compressed, `.zst`, then encrypted like a set's objects when the store has a backup_key
  (chunked AES-256-GCM; associated data `<host id>/wal/<system id>/<file>`: a segment moved to
  another host, cluster or name fails to decrypt; the GCM tags seal each segment);
- `head.json`, sealed like a manifest (HMAC-SHA256 over its canonical JSON): the newest segment
  shipped and the newest *mark* it holds (a row sentry-ops writes just before it switches WAL
  segments, `blocks/wal.py`): every commit up to that mark is in the archive. Lag, RPO and the
  newest point a restore can reach are read from it.
A segment already in the archive is never written again (a shipper restarted after a crash may
receive a segment twice: its bytes are the same WAL).
"""

from __future__ import annotations

import datetime as dt
import io
import re
import tarfile
import tempfile
from collections.abc import Iterable
from typing import BinaryIO

import zstandard
from pydantic import BaseModel, Field, ValidationError

from blocks import backup_set
from blocks.backup_set import SetError
from blocks.backup_store import BackupStore

SEGMENT = re.compile(r"^(?P<tli>[0-9A-F]{8})(?P<pos>[0-9A-F]{16})$")
HISTORY = re.compile(r"^[0-9A-F]{8}\.history$")
HEAD = "head.json"
STAGING = "sentry_ops_wal"  # the folder of the data directory a restore stages segments in
SEGMENTS_PER_LOG = 0x100  # 16 MiB segments: 256 of them per 4 GiB "log" of a segment name


class Head(BaseModel):
    """What the archive of one cluster holds: written after every shipping run."""

    host_id: str
    system_identifier: str = Field(pattern=r"^[0-9]{1,20}$")
    timeline: int
    newest_segment: str = Field(pattern=SEGMENT.pattern)
    newest_mark: dt.datetime | None = Field(
        default=None, description="every commit up to this time is in the archive"
    )
    shipped_at: dt.datetime
    segments: int = Field(description="segments in the archive of this cluster")
    slot_retained_bytes: int | None = Field(
        default=None, description="WAL the host's slot kept when this was shipped"
    )


def folder(store: BackupStore, host_id: str, system_id: str) -> str:
    if not re.fullmatch(r"[0-9]{1,20}", system_id):
        raise SetError(f"not a Postgres system identifier: {system_id!r}")
    return f"{backup_set.folder(store, host_id)}{backup_set.WAL_FOLDER}/{system_id}/"


def is_wal_file(name: str) -> bool:
    return bool(SEGMENT.match(name) or HISTORY.match(name))


def position(segment: str) -> int:
    """The segment's place in the WAL stream, across timelines (log * 256 + seg)."""
    match = SEGMENT.match(segment)
    if not match:
        raise SetError(f"not a WAL segment name: {segment!r}")
    pos = match["pos"]
    return int(pos[:8], 16) * SEGMENTS_PER_LOG + int(pos[8:], 16)


def gaps(segments: Iterable[str]) -> list[str]:
    """Segments missing between the first and the last of one timeline (pure): a gap means
    no replay past it."""
    by_tli: dict[str, list[int]] = {}
    for name in segments:
        if SEGMENT.match(name):
            by_tli.setdefault(name[:8], []).append(position(name))
    missing = []
    for tli, found in sorted(by_tli.items()):
        have = set(found)
        for p in range(min(found), max(found) + 1):
            if p not in have:
                missing.append(f"{tli}{p // SEGMENTS_PER_LOG:08X}{p % SEGMENTS_PER_LOG:08X}")
    return missing


def _aad(host_id: str, system_id: str, file: str) -> str:
    return f"{host_id}/{backup_set.WAL_FOLDER}/{system_id}/{file}"


def _file(name: str, store: BackupStore) -> str:
    return f"{name}.zst" + (".enc" if store.backup_key is not None else "")


def names(store: BackupStore, host_id: str, system_id: str) -> dict[str, str]:
    """WAL file name -> key, of every file in the archive of this cluster."""
    found = {}
    for key in store.list_keys(folder(store, host_id, system_id)):
        name = key.rsplit("/", 1)[1].split(".zst", 1)[0]
        if is_wal_file(name):
            found[name] = key
    return found


def put(
    store: BackupStore, host_id: str, system_id: str, name: str, compressed: BinaryIO
) -> tuple[str, int]:
    """One WAL file (its zstd stream) into the archive; (key, bytes stored)."""
    if not is_wal_file(name):
        raise SetError(f"not a WAL file name: {name!r}")
    file = _file(name, store)
    key = folder(store, host_id, system_id) + file
    stream = backup_set.encrypting(store, compressed, _aad(host_id, system_id, file))
    size, _ = store.upload_stream(key, stream)
    return key, size


def get(store: BackupStore, host_id: str, system_id: str, key: str) -> bytes:
    """The WAL file under `key`, decrypted and decompressed."""
    file = key.rsplit("/", 1)[1]
    body: BinaryIO = store.open(key)
    if file.endswith(".enc"):
        body = backup_set.decrypting(store, body, _aad(host_id, system_id, file), file)
    return zstandard.ZstdDecompressor().stream_reader(body).read()


def write_head(store: BackupStore, head: Head) -> None:
    key = folder(store, head.host_id, head.system_identifier) + HEAD
    store.put_bytes(key, backup_set.sealed_json(store, head), "application/json")


def read_head(store: BackupStore, host_id: str, system_id: str) -> Head | None:
    key = folder(store, host_id, system_id) + HEAD
    body = store.get_bytes(key)
    if body is None:
        return None
    try:
        head = Head.model_validate(backup_set.unseal(store, body, f"the WAL head {key}"))
    except ValidationError as exc:
        raise SetError(f"the WAL head {key} is not valid: {exc}") from None
    if (head.host_id, head.system_identifier) != (host_id, system_id):
        raise SetError(f"the WAL head {key} names another archive; refusing it")
    return head


def newest_head(store: BackupStore, host_id: str) -> Head | None:
    """The most recently shipped head of any cluster of the host (None: no archive)."""
    base = f"{backup_set.folder(store, host_id)}{backup_set.WAL_FOLDER}/"
    heads = []
    for key in store.list_keys(base):
        parts = key[len(base) :].split("/")
        if len(parts) == 2 and parts[1] == HEAD:
            try:
                if head := read_head(store, host_id, parts[0]):
                    heads.append(head)
            except SetError:
                continue  # a head that is not ours or not sealed right says nothing
    return max(heads, key=lambda h: h.shipped_at, default=None)


def needed(found: dict[str, str], start: str) -> list[str]:
    """The files a replay from `start` reads (pure): every history file, every segment of any
    timeline from `start`'s position on; refused when a timeline has a gap or `start` is not
    there (the base backup's WAL then cannot be followed)."""
    segments = sorted(n for n in found if SEGMENT.match(n) and position(n) >= position(start))
    if not any(position(n) == position(start) for n in segments):
        raise SetError(
            f"the WAL archive has no segment {start} (the base backup's first): its WAL was not "
            "shipped, or retention removed it; restore without point in time (the dump)"
        )
    if missing := gaps(segments):
        raise SetError(
            f"the WAL archive misses {len(missing)} segment(s) after the base backup (first "
            f"{missing[0]}): replay would stop there; restore to a time before it"
        )
    return sorted(n for n in found if HISTORY.match(n)) + segments


def staging_tar(store: BackupStore, host_id: str, system_id: str, start: str) -> BinaryIO:
    """A zstd-compressed tar of the files a replay from `start` needs (decrypted, decompressed),
    spooled to a temporary file on the worker: what `restore_volume` unpacks into the restored
    data directory's `sentry_ops_wal/`. WAL from pg_receivewal is zero-padded: it packs small."""
    found = names(store, host_id, system_id)
    spool = tempfile.TemporaryFile()  # noqa: SIM115 (returned, read by the caller)
    with (
        zstandard.ZstdCompressor(level=1).stream_writer(spool, closefd=False) as packed,
        tarfile.open(fileobj=packed, mode="w|") as tar,
    ):
        for name in needed(found, start):
            data = get(store, host_id, system_id, found[name])
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    spool.seek(0)
    return spool  # type: ignore[return-value]


def prune(store: BackupStore, host_id: str, system_id: str, keep_from: str) -> int:
    """Delete the segments of this cluster before `keep_from` (the oldest kept base backup's
    first); history files and the head stay. Returns how many went."""
    found = names(store, host_id, system_id)
    old = [k for n, k in found.items() if SEGMENT.match(n) and position(n) < position(keep_from)]
    if old:
        store.delete_keys(old)
    return len(old)
