"""The backup set: the one owner of its format. Flows call `begin`/`put`/`seal` to write a set
and `list_sets`/`load`/`open_object`/`check_object` to read one; nothing else builds a key, a
codec or a manifest.

A set is the folder `<store prefix>/<host id>/<backup id>/` of one host (host id: compose
project and Docker engine ID, `SentryHost.identity`; sets of releases before it sit under
`SentryHost.legacy_identity`, SSH target and project, and are read from there):
- objects, one per `Kind`: `postgres.dump`, `volume-<name>.tar.zst`, `clickhouse-...`,
  `config.tar`; `.enc` appended when encrypted;
- `manifest.json`, written last: the commit marker (no manifest = incomplete = never restored),
  sealed with an HMAC-SHA256 over its canonical JSON (sorted keys, no spaces);
- `verification.json`: the last verify or drill result, sealed the same way.

With the store's `backup_key`, every object is encrypted on the worker while it streams:
AES-256-GCM in 1 MiB chunks, key = HKDF-SHA256(backup_key, salt = 16 random bytes at the head of
the object), nonce = chunk counter + a last-chunk flag (a truncated or reordered object fails),
associated data = `<host id>/<backup id>/<file>` (an object moved to another set fails). The
size and sha256 in the manifest are those of the stored bytes: verifying needs no key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from enum import StrEnum
from typing import BinaryIO, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from blocks.backup_store import BackupStore, HashingReader, StoreError
from blocks.result import Result

FORMAT = 2
MANIFEST = "manifest.json"
VERIFICATION = "verification.json"
WAL_FOLDER = "wal"  # <host id>/wal/: the host's WAL archive (blocks/wal_archive.py), not a set
SUPPORT_FOLDER = "support"  # <host id>/support/: diagnose's support bundles, not sets
STAMP = "%Y%m%dT%H%M%SZ"
HOST_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,150}$")
BACKUP_ID = re.compile(r"^(?P<stamp>\d{8}T\d{6}Z)-(?P<host>[a-z0-9][a-z0-9_-]*)$")
# ClickHouse names, parts and paths as a manifest may carry them into SQL or a shell: checked when
# any manifest is read, sealed or not (an unsealed one is anybody's text)
CLICKHOUSE_NAME = re.compile(r"^[A-Za-z0-9_.$-]+$")
PART_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
DATA_PATH = re.compile(r"^(?!/)(?!.*(^|/)\.\.(/|$))[A-Za-z0-9_./%-]+/?$")
CREATED = ("TABLE", "VIEW", "MATERIALIZED VIEW", "DICTIONARY")
CHUNK = 1 << 20  # plaintext bytes per encrypted chunk
TAG = 16
MAGIC = b"SOPSGCM1"
SALT = 16
OBJECT_KEY_INFO = b"sentry-ops backup object v1"
SEAL_KEY_INFO = b"sentry-ops manifest seal v1"

Compression = Literal["zstd", "pg_dump:zstd:1", "none"]
Encryption = Literal["aes-256-gcm", "none"]


class SetError(StoreError):
    """A backup set that cannot be trusted or read: the message says which and why."""


class Kind(StrEnum):
    POSTGRES = "postgres"
    POSTGRES_BASE = "postgres-base"  # a physical base backup (pg_basebackup), for PITR
    VOLUME = "volume"
    CLICKHOUSE = "clickhouse"
    CONFIG = "config"


def object_name(kind: Kind, part: str = "") -> str:
    """The name a manifest lists an object under: `postgres`, `volume:files`, `config`."""
    return f"{kind}:{part}" if part else str(kind)


def file_name(kind: Kind, part: str, compression: Compression, encrypted: bool) -> str:
    base = {
        Kind.POSTGRES: "postgres.dump",
        Kind.POSTGRES_BASE: "postgres-base.tar",
        Kind.CONFIG: "config.tar",
    }.get(kind)
    if kind is Kind.CLICKHOUSE and not part:
        base = "clickhouse.tar"
    name = base or f"{kind}-{part}.tar"
    if compression == "zstd":
        name += ".zst"
    return name + (".enc" if encrypted else "")


# -- ids ----------------------------------------------------------------------------------------
def new_backup_id(host_id: str, now: dt.datetime) -> str:
    return f"{now.astimezone(dt.UTC).strftime(STAMP)}-{host_id}"


def host_id_of(project: str, engine_id: str) -> str:
    """A stack's host id: its compose project and its Docker engine's own ID (`docker info`,
    `<ID>@<root>`, hashed), `<project>-<12 hex>`: the same however SSH reaches the machine."""
    name = re.sub(r"[^a-z0-9_-]+", "-", project.lower()).strip("-_")[:130] or "sentry"
    return f"{name}-{hashlib.sha256(engine_id.encode()).hexdigest()[:12]}"


def current_host_id(manifest: BackupManifest) -> str:
    """The host id the stack of `manifest` has now: its folder's, or, for a set an older release
    filed under the SSH target, the engine-based one when the manifest recorded its engine."""
    if manifest.engine_id:
        return host_id_of(manifest.project_name, manifest.engine_id)
    return manifest.host_id


def parse_backup_id(backup_id: str) -> tuple[dt.datetime, str] | None:
    """(UTC time, host id) of a backup id, or None when it is not one of ours."""
    match = BACKUP_ID.match(backup_id)
    if not match:
        return None
    try:
        when = dt.datetime.strptime(match["stamp"], STAMP).replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return when, match["host"]


def folder(store: BackupStore, host_id: str, backup_id: str = "") -> str:
    if not HOST_ID.match(host_id):
        raise SetError(f"not a host id: {host_id!r}")
    return f"{store.prefix}/{host_id}/" + (f"{backup_id}/" if backup_id else "")


# -- what the manifest says -----------------------------------------------------------------------
class StoredObject(BaseModel):
    kind: Kind
    name: str = Field(description="postgres, volume:<name>, clickhouse:<name>, config")
    key: str
    size: int = Field(description="bytes stored (after compression and encryption)")
    sha256: str = Field(description="of the bytes stored")
    compression: Compression
    encryption: Encryption = "none"
    raw_size: int | None = None
    seconds: float = 0.0
    consistency: str = Field(default="", description="How the copy was made consistent")

    @property
    def mb_per_s(self) -> float:
        return (self.raw_size or self.size) / 1e6 / self.seconds if self.seconds else 0.0


class ClickHouseTable(BaseModel):
    """One table of the ClickHouse database at snapshot time."""

    database: str
    name: str
    engine: str
    create: str = Field(description="its CREATE statement, as system.tables shows it")
    copied: bool = Field(description="its frozen parts are in the clickhouse object")
    why: str = Field(description="how its copy was made consistent, or why it was not copied")
    data_path: str | None = Field(
        default=None, description="its data folder, relative to ClickHouse's data directory"
    )
    parts: list[str] = Field(default_factory=list, description="the frozen parts")
    rows: int | None = None
    checksum: str | None = Field(
        default=None, description="sum(cityHash64(...)) over the frozen rows (UInt64, as text)"
    )

    @field_validator("database", "name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not CLICKHOUSE_NAME.match(value):
            raise ValueError(f"{value!r} is not a ClickHouse name sentry-ops restores")
        return value

    @field_validator("parts")
    @classmethod
    def _parts(cls, value: list[str]) -> list[str]:
        bad = [p for p in value if not PART_NAME.match(p)]
        if bad:
            raise ValueError(f"part names {bad[:3]} are not ClickHouse part names")
        return value

    @field_validator("data_path")
    @classmethod
    def _data_path(cls, value: str | None) -> str | None:
        if value is not None and not DATA_PATH.match(value):
            raise ValueError(f"data_path {value!r} is not a path inside ClickHouse's data dir")
        return value

    @field_validator("checksum")
    @classmethod
    def _checksum(cls, value: str | None) -> str | None:
        if value is not None and not value.isdigit():
            raise ValueError(f"checksum {value!r} is not a number")
        return value

    @model_validator(mode="after")
    def _creates_only_itself(self) -> ClickHouseTable:
        """`create` is run on restore: one CREATE of exactly this object, nothing else."""

        def name(x: str) -> str:
            return f"(?:{re.escape(x)}|`{re.escape(x)}`)"

        kinds = "|".join(CREATED)
        head = rf"^CREATE (?:{kinds}) {name(self.database)}\.{name(self.name)}(?:\s|\(|$)"
        # (one statement: ClickHouse refuses multi-statements on every interface we use)
        if not re.match(head, self.create):
            raise ValueError(
                f"create of {self.database}.{self.name} is not one CREATE of that table: "
                f"{self.create[:80]!r}"
            )
        return self


class ClickHouseSnapshot(BaseModel):
    version: str
    database: str = Field(pattern=CLICKHOUSE_NAME.pattern)
    freeze_name: str = Field(
        description="ALTER TABLE ... FREEZE WITH NAME of this snapshot", pattern=r"^[A-Za-z0-9_]+$"
    )
    tables: list[ClickHouseTable]
    newest_event: str | None = Field(
        default=None, description="max(timestamp) of Snuba's errors table, if it has one"
    )
    newest_event_id: str | None = Field(
        default=None,
        description="the event id of that newest row (a drill reads its payload)",
        pattern=r"^[0-9a-fA-F-]{32,36}$",
    )


class PostgresBase(BaseModel):
    """A physical base backup in the set (`postgres-base`): where WAL replay starts from."""

    system_identifier: str = Field(pattern=r"^[0-9]{1,20}$", description="pg_control_system()")
    timeline: int
    wal_start: str = Field(
        pattern=r"^[0-9A-F]{24}$",
        description="the WAL segment current before the base began: replay needs it and later",
    )
    finished_at: dt.datetime = Field(description="when pg_basebackup ended (consistent from)")
    server_version: str


class BackupManifest(BaseModel):
    """The commit marker of a backup set: everything needed to verify and restore it."""

    format: int = FORMAT
    scope: Literal["full", "clickhouse"] = Field(
        default="full",
        description="full: a whole install (what drills restore); clickhouse: a ClickHouse "
        "snapshot taken alone (clickhouse_snapshot)",
    )
    backup_id: str
    host_id: str = Field(
        description="the set's folder: compose project and Docker engine (SentryHost.identity)"
    )
    host: str = Field(description="name of the SentryHost block the backup ran with")
    engine_id: str | None = Field(
        default=None,
        description="the Docker engine's ID and data root (`docker info`, `<ID>@<root>`): which "
        "engine the set came from however SSH reached it (none in sets older than this field)",
    )
    layout: str
    project_name: str
    started_at: dt.datetime
    finished_at: dt.datetime
    objects: list[StoredObject]
    postgres_version: str = ""
    sentry_version: str
    images: dict[str, str] = Field(description="compose service -> image")
    row_counts: dict[str, int] = Field(default_factory=dict)
    newest_event: str | None = Field(
        default=None, description="'<event_id> <time>' of the newest event in the dump"
    )
    config_included: bool
    encrypted: bool
    sentry_ops_version: str
    clickhouse: ClickHouseSnapshot | None = Field(
        default=None, description="the ClickHouse snapshot's tables, when the set has one"
    )
    postgres_base: PostgresBase | None = Field(
        default=None,
        description="the physical base backup (with the host's WAL archive: point-in-time "
        "restores), when the set has one",
    )

    def object(self, name: str) -> StoredObject:
        for obj in self.objects:
            if obj.name == name:
                return obj
        raise KeyError(f"backup {self.backup_id} has no object {name!r}")


class Verification(BaseModel):
    """The last verification of a set (by the verify flow or a drill), kept beside it."""

    backup_id: str
    ok: bool
    by: str
    at: dt.datetime
    detail: str
    rto_seconds: float | None = None  # a drill's recovery time


@dataclass(frozen=True)
class SetListing:
    host_id: str
    backup_id: str
    when: dt.datetime | None  # None: not a set sentry-ops writes (never deleted)
    complete: bool  # has a manifest
    trusted: bool  # manifest loads and its seal is right
    verified: bool  # last verification passed (sealed record)
    keys: tuple[str, ...]
    problem: str = ""
    scope: str = "full"  # the manifest's: full, or clickhouse (a snapshot taken alone)
    size: int = 0  # bytes stored, every object of the set

    @property
    def status(self) -> str:
        if self.when is None:
            return "not a sentry-ops set"
        if not self.complete:
            return "incomplete (no manifest)"
        if not self.trusted:
            return "UNTRUSTED: " + self.problem
        return "verified" if self.verified else "complete, not verified"


# -- keys and seals -------------------------------------------------------------------------------
def _secret(store: BackupStore) -> bytes | None:
    return store.backup_key.get_secret_value().encode() if store.backup_key else None


def _hkdf(secret: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


def canonical(raw: dict) -> bytes:
    return json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _mac(secret: bytes, raw: dict) -> str:
    return hmac.new(_hkdf(secret, None, SEAL_KEY_INFO), canonical(raw), hashlib.sha256).hexdigest()


def sealed_json(store: BackupStore, model: BaseModel) -> bytes:
    raw = model.model_dump(mode="json")
    secret = _secret(store)
    if secret is not None:
        raw["seal"] = _mac(secret, raw)
    return json.dumps(raw, indent=2, sort_keys=True).encode()


def unseal(store: BackupStore, body: bytes, what: str) -> dict:
    """The JSON of a sealed record, once its seal is checked; refuses a missing or wrong one."""
    try:
        raw = json.loads(body)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise SetError(f"{what} is not valid JSON ({exc}); refusing it") from None
    seal, secret = raw.pop("seal", None), _secret(store)
    if secret is None:
        if seal is not None:
            raise SetError(
                f"{what} is sealed but the store block has no backup_key: set the key it was "
                "written with"
            )
        return raw  # the store allows unencrypted, unsealed sets (its runs warn)
    if not isinstance(seal, str) or not seal:
        raise SetError(
            f"{what} has no seal: it was not written with this store's backup_key, or was "
            "edited in the bucket; refusing it"
        )
    if not hmac.compare_digest(seal, _mac(secret, raw)):
        raise SetError(
            f"{what} has a wrong seal: it was edited in the bucket, or sealed with another "
            "backup_key; refusing it"
        )
    return raw


# -- chunked AES-256-GCM ------------------------------------------------------------------------
def _read_full(source: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        data = source.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class _Chunked:
    """A readable made one chunk at a time: `_step` appends a chunk to `_out` or sets `_done`."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._counter, self._done = 0, False

    def _step(self) -> None:
        raise NotImplementedError

    def read(self, n: int = -1) -> bytes:
        while not self._done and (n < 0 or len(self._out) < n):
            self._step()
        n = len(self._out) if n < 0 else n
        data = bytes(self._out[:n])
        del self._out[:n]
        return data


class _Encrypting(_Chunked):
    """Reads `source`, returns its encryption (header, then sealed chunks)."""

    def __init__(self, source: BinaryIO, secret: bytes, aad: bytes) -> None:
        super().__init__()
        salt = os.urandom(SALT)
        self._aead = AESGCM(_hkdf(secret, salt, OBJECT_KEY_INFO))
        self._source, self._aad = source, aad
        self._out += MAGIC + salt
        self._pending: bytes | None = None

    def _step(self) -> None:
        if self._pending is None:
            self._pending = _read_full(self._source, CHUNK)
        nxt = _read_full(self._source, CHUNK) if len(self._pending) == CHUNK else b""
        last = not nxt
        self._out += self._aead.encrypt(_nonce(self._counter, last), self._pending, self._aad)
        self._counter += 1
        self._pending, self._done = nxt, last


class _Decrypting(_Chunked):
    def __init__(self, source: BinaryIO, secret: bytes, aad: bytes, what: str) -> None:
        super().__init__()
        self._source, self._secret, self._aad, self._what = source, secret, aad, what
        self._aead: AESGCM | None = None
        self._block = b""

    def _step(self) -> None:
        if self._aead is None:
            head = _read_full(self._source, len(MAGIC) + SALT)
            if len(head) < len(MAGIC) + SALT or not head.startswith(MAGIC):
                raise SetError(f"{self._what}: not an object encrypted by sentry-ops (bad header)")
            self._aead = AESGCM(_hkdf(self._secret, head[len(MAGIC) :], OBJECT_KEY_INFO))
            self._block = _read_full(self._source, CHUNK + TAG)
        full = len(self._block) == CHUNK + TAG
        nxt = _read_full(self._source, CHUNK + TAG) if full else b""
        last = not nxt
        try:
            plain = self._aead.decrypt(_nonce(self._counter, last), self._block, self._aad)
        except InvalidTag:
            raise SetError(
                f"{self._what}: cannot decrypt chunk {self._counter}: the store's backup_key "
                "is not the one it was written with, or the object was altered, truncated "
                "or moved from another set"
            ) from None
        self._out += plain
        self._counter += 1
        self._block, self._done = nxt, last


def encrypting(store: BackupStore, source: BinaryIO, aad: str) -> BinaryIO:
    """`source` as the store keeps it: encrypted (chunked AES-256-GCM bound to `aad`, the
    object's place) when the store has a backup_key, else as it is. Also the WAL archive's
    codec (blocks/wal_archive.py)."""
    secret = _secret(store)
    if secret is None:
        return source
    return _Encrypting(source, secret, aad.encode())  # type: ignore[return-value]


def decrypting(store: BackupStore, source: BinaryIO, aad: str, what: str) -> BinaryIO:
    """The plaintext of an object `encrypting` wrote with the same `aad`."""
    secret = _secret(store)
    if secret is None:
        raise SetError(f"{what} is encrypted and the store block has no backup_key")
    return _Decrypting(source, secret, aad.encode(), what)  # type: ignore[return-value]


# -- writing a set --------------------------------------------------------------------------------
class _Counter:
    """Counts the bytes read; with `limit` (bytes/s), reads no faster than that on average."""

    def __init__(self, source: BinaryIO, limit: int | None = None) -> None:
        self.source, self.count, self.limit = source, 0, limit
        self.started = time.monotonic()

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n)
        self.count += len(data)
        if self.limit:
            ahead = self.count / self.limit - (time.monotonic() - self.started)
            if ahead > 0:
                time.sleep(ahead)
        return data


@dataclass(frozen=True)
class SetWriter:
    """One set being written. Objects go with `put`; `seal` writes the manifest, last."""

    store: BackupStore
    host_id: str
    backup_id: str
    started_at: dt.datetime

    @property
    def folder(self) -> str:
        return folder(self.store, self.host_id, self.backup_id)

    @property
    def encrypted(self) -> bool:
        return self.store.backup_key is not None

    def put(
        self,
        kind: Kind,
        source: BinaryIO,
        compression: Compression,
        part: str = "",
        raw_size: int | None = None,
        on_progress: Callable[[int], None] | None = None,
        consistency: str = "",
    ) -> StoredObject:
        """Stream `source` (already compressed as `compression` says) into the set: encrypted
        here when the store has a key, hashed, multipart-uploaded in bounded memory. A source that
        fails or stays silent past its timeout raises from its read, and the upload aborts."""
        file = file_name(kind, part, compression, self.encrypted)
        key = self.folder + file
        started = time.monotonic()
        counted = _Counter(source, self.store.bandwidth_limit)
        secret = _secret(self.store)
        stream: BinaryIO = counted  # type: ignore[assignment]
        if secret is not None:
            aad = f"{self.host_id}/{self.backup_id}/{file}".encode()
            stream = _Encrypting(counted, secret, aad)  # type: ignore[assignment]
        with ThreadPoolExecutor(1, thread_name_prefix="upload") as pool:
            upload = pool.submit(self.store.upload_stream, key, stream)
            while True:  # progress reports run in the caller's (the task's) thread
                try:
                    size, sha256 = upload.result(timeout=2)
                    break
                except FutureTimeout:
                    if on_progress:
                        on_progress(counted.count)
        return StoredObject(
            kind=kind,
            name=object_name(kind, part),
            key=key,
            size=size,
            sha256=sha256,
            compression=compression,
            encryption="aes-256-gcm" if secret is not None else "none",
            raw_size=raw_size if raw_size is not None else counted.count,
            seconds=round(time.monotonic() - started, 3),
            consistency=consistency,
        )

    def put_bytes(
        self, kind: Kind, data: bytes, part: str = "", consistency: str = ""
    ) -> StoredObject:
        return self.put(
            kind, io.BytesIO(data), "none", part, raw_size=len(data), consistency=consistency
        )

    def seal(self, manifest: BackupManifest) -> str:
        """Write the manifest (sealed when the store has a key): the set is complete."""
        if (manifest.backup_id, manifest.host_id) != (self.backup_id, self.host_id):
            raise SetError(f"manifest of {manifest.backup_id} given to set {self.backup_id}")
        key = self.folder + MANIFEST
        self.store.put_bytes(key, sealed_json(self.store, manifest), "application/json")
        return key


def put_support_bundle(store: BackupStore, host_id: str, name: str, data: bytes) -> str:
    """A support bundle (blocks/diagnosis.py) stored as every object is: encrypted (bound to its
    key) when the store has a backup_key; its key."""
    key = f"{folder(store, host_id)}{SUPPORT_FOLDER}/{name}"
    key += ".enc" if _secret(store) is not None else ""
    store.put_bytes(key, encrypting(store, io.BytesIO(data), key).read())
    return key


def read_support_bundle(store: BackupStore, key: str) -> bytes:
    """The plaintext of a stored support bundle."""
    data = store.get_bytes(key)
    if data is None:
        raise SetError(f"no support bundle at {key}")
    if not key.endswith(".enc"):
        return data
    return decrypting(store, io.BytesIO(data), key, f"support bundle {key}").read()


def begin(store: BackupStore, host_id: str) -> SetWriter:
    """A new set of `host_id`. Ids have 1 s resolution: never one that already has objects."""
    while True:
        now = dt.datetime.now(dt.UTC)
        backup_id = new_backup_id(host_id, now)
        if next(store.list_keys(folder(store, host_id, backup_id)), None) is None:
            return SetWriter(store, host_id, backup_id, now)
        time.sleep(1.0 - now.microsecond / 1e6)


# -- reading a set --------------------------------------------------------------------------------
def load(store: BackupStore, host_id: str, backup_id: str) -> BackupManifest:
    """The manifest of a set, its seal checked, naming this set and keeping to its folder."""
    where = folder(store, host_id, backup_id)
    what = f"the manifest of backup {backup_id} ({store.where})"
    body = store.get_bytes(where + MANIFEST)
    if body is None:
        raise SetError(f"backup {backup_id} has no manifest: it is incomplete and never restored")
    raw = unseal(store, body, what)
    if raw.get("format") != FORMAT:
        raise SetError(
            f"{what} has format {raw.get('format')!r}; this sentry-ops reads format {FORMAT}"
        )
    try:
        manifest = BackupManifest.model_validate(raw)
    except ValidationError as exc:
        raise SetError(f"{what} is not a valid manifest: {exc}") from None
    if manifest.backup_id != backup_id or manifest.host_id != host_id:
        raise SetError(
            f"{what} names another backup: {manifest.host_id}/{manifest.backup_id}; refusing it"
        )
    for obj in manifest.objects:
        if not obj.key.startswith(where) or ".." in obj.key:
            raise SetError(f"{what}: object {obj.name} lies outside its set: {obj.key}")
    if manifest.encrypted != all(o.encryption != "none" for o in manifest.objects):
        raise SetError(f"{what}: says encrypted={manifest.encrypted} but its objects differ")
    return manifest


class ObjectReader:
    """An object's plaintext stream (decrypted when it was encrypted); the stored bytes are
    hashed as they pass, and `verify` compares them with the manifest once read to the end."""

    def __init__(self, store: BackupStore, manifest: BackupManifest, obj: StoredObject) -> None:
        self.obj = obj
        self._hashing = HashingReader(store.open(obj.key))
        self._stream: BinaryIO = self._hashing  # type: ignore[assignment]
        if obj.encryption != "none":
            secret = _secret(store)
            if secret is None:
                raise SetError(
                    f"{obj.name} of {manifest.backup_id} is encrypted and the store block has no "
                    "backup_key: set the key it was written with"
                )
            aad = f"{manifest.host_id}/{manifest.backup_id}/{obj.key.rsplit('/', 1)[1]}"
            what = f"{obj.name} of {manifest.backup_id}"
            self._stream = _Decrypting(self._hashing, secret, aad.encode(), what)  # type: ignore[assignment]

    def read(self, n: int = -1) -> bytes:
        return self._stream.read(n)

    @property
    def stored_bytes_read(self) -> int:
        """How much of the stored object has been read (for progress)."""
        return self._hashing.size

    def verify(self) -> None:
        """Raise unless exactly the manifest's bytes were read."""
        digest = self._hashing.sha256.hexdigest()
        if (self._hashing.size, digest) != (self.obj.size, self.obj.sha256):
            raise SetError(
                f"{self.obj.name}: the bytes read ({self._hashing.size}, sha256 {digest[:16]}...) "
                f"are not the manifest's ({self.obj.size}, {self.obj.sha256[:16]}...)"
            )


def open_object(store: BackupStore, manifest: BackupManifest, name: str) -> ObjectReader:
    return ObjectReader(store, manifest, manifest.object(name))


def read_object(store: BackupStore, manifest: BackupManifest, name: str) -> bytes:
    """A small object whole (the config), decrypted and checked against the manifest."""
    reader = open_object(store, manifest, name)
    data = reader.read()
    reader.verify()
    return data


def check_object(store: BackupStore, obj: StoredObject) -> str | None:
    """Re-read an object's stored bytes: None when size and sha256 match the manifest, else
    what differs. Needs no key."""
    size, sha256 = store.sha256_of(obj.key)
    if size == obj.size and sha256 == obj.sha256:
        return None
    return (
        f"size {size} sha256 {sha256[:16]}... differs from the manifest's {obj.size} "
        f"{obj.sha256[:16]}..."
    )


def record_verification(
    store: BackupStore,
    manifest: BackupManifest,
    ok: bool,
    by: str,
    detail: str,
    rto_seconds: float | None = None,
) -> None:
    record = Verification(
        backup_id=manifest.backup_id,
        ok=ok,
        by=by,
        at=dt.datetime.now(dt.UTC),
        detail=detail,
        rto_seconds=rto_seconds,
    )
    key = folder(store, manifest.host_id, manifest.backup_id) + VERIFICATION
    store.put_bytes(key, sealed_json(store, record), "application/json")


def read_verification(store: BackupStore, host_id: str, backup_id: str) -> Verification | None:
    """The set's last verification; None when there is none or its seal is not right."""
    body = store.get_bytes(folder(store, host_id, backup_id) + VERIFICATION)
    if body is None:
        return None
    try:
        record = Verification.model_validate(unseal(store, body, "verification"))
    except (SetError, ValidationError):
        return None
    return record if record.backup_id == backup_id else None


def list_sets(store: BackupStore, host_ids: str | Sequence[str] | None = None) -> list[SetListing]:
    """Every set in the store (or of one host: one host id, or its folders,
    `SentryHost.set_folders`), oldest first, each manifest loaded and its seal checked. Keys
    that are not `<host>/<backup id>/<file>` are listed with when=None."""
    hosts = [host_ids] if isinstance(host_ids, str) else list(host_ids or [])
    bases = [folder(store, h) for h in hosts] if hosts else [f"{store.prefix}/"]
    groups: dict[tuple[str, str], list[str]] = {}
    sizes: dict[tuple[str, str], int] = {}
    for key, size in (found for base in bases for found in store.list_objects(base)):
        parts = key[len(store.prefix) + 1 :].split("/")
        if len(parts) > 2 and parts[1] in (WAL_FOLDER, SUPPORT_FOLDER):
            continue  # the host's WAL archive (blocks/wal_archive.py) or support bundles
        group = (parts[0], parts[1]) if len(parts) == 3 else ("?", "/".join(parts[:-1]))
        groups.setdefault(group, []).append(key)
        sizes[group] = sizes.get(group, 0) + size
    listing = []
    for (host, backup_id), keys in groups.items():
        parsed = parse_backup_id(backup_id)
        when = parsed[0] if parsed and parsed[1] == host and HOST_ID.match(host) else None
        complete = when is not None and any(k.endswith("/" + MANIFEST) for k in keys)
        trusted, verified, problem, scope = False, False, "", "full"
        if complete:
            try:
                scope = load(store, host, backup_id).scope
                trusted = True
                record = read_verification(store, host, backup_id)
                verified = bool(record and record.ok)
            except SetError as exc:
                problem = str(exc)
        listing.append(
            SetListing(
                host,
                backup_id,
                when,
                complete,
                trusted,
                verified,
                tuple(sorted(keys)),
                problem,
                scope,
                sizes[(host, backup_id)],
            )
        )
    return sorted(listing, key=lambda b: (b.when is None, b.when or dt.datetime.min, b.backup_id))


def choose(sets: list[SetListing], backup_id: str | None) -> str:
    """The asked set, or the newest complete, trusted and full one; never an incomplete or a
    refused one (pure: `sets` is one host's listing)."""
    if backup_id:
        match = [s for s in sets if s.backup_id == backup_id]
        if not match:
            raise SetError(f"backup {backup_id} is not among this host's backups")
        if not match[0].complete:
            raise SetError(f"backup {backup_id} has no manifest: incomplete, never restored")
        if not match[0].trusted:
            raise SetError(f"backup {backup_id} is refused: {match[0].problem}")
        return backup_id
    usable = [s for s in sets if s.complete and s.trusted and s.scope == "full"]
    if not usable:
        refused = "; ".join(f"{s.backup_id}: {s.problem}" for s in sets if s.complete)
        raise SetError(
            "no complete, sealed backup of this host"
            + (f" (refused: {refused[:400]})" if refused else "")
        )
    return max(usable, key=lambda s: s.when or dt.datetime.min).backup_id


def load_listed(store: BackupStore, sets: Sequence[SetListing], backup_id: str) -> BackupManifest:
    """The listed set `backup_id`, loaded from the folder it sits in (a host's sets may sit in
    its current folder and in one an older release wrote)."""
    return load(store, next(s.host_id for s in sets if s.backup_id == backup_id), backup_id)


def by_host(store: BackupStore, sets: Sequence[SetListing]) -> dict[str, list[SetListing]]:
    """The store's sets of sentry-ops (when set) grouped by the host they belong to: a folder
    an older release filed under the SSH target joins the host its newest full set names by
    engine (`current_host_id`); a folder with no complete, sealed full set stands alone."""
    folders: dict[str, list[SetListing]] = {}
    for listing in sets:
        if listing.when is not None:
            folders.setdefault(listing.host_id, []).append(listing)
    hosts: dict[str, list[SetListing]] = {}
    for folder_id, listed in folders.items():
        try:
            owner = current_host_id(load_listed(store, listed, choose(listed, None)))
        except SetError:
            owner = folder_id
        hosts.setdefault(owner, []).extend(listed)
    return hosts


def pick(
    store: BackupStore, host_ids: str | Sequence[str], label: str, backup_id: str | None
) -> BackupManifest:
    """The asked set of this host (its id, or its folders: `SentryHost.set_folders`; default its
    newest complete, trusted, full one), loaded: its seal checked and its manifest naming the
    folder it sits in. `label` names the host in errors."""
    try:
        sets = list_sets(store, host_ids)
        chosen = choose(sets, backup_id)
    except SetError as exc:
        raise SetError(f"{label} in {store.where}: {exc}") from None
    return load_listed(store, sets, chosen)


def verify_objects(store: BackupStore, manifest: BackupManifest) -> list[Result]:
    """Re-read every stored object; size and sha256 against the (sealed) manifest."""
    results = []
    for obj in manifest.objects:
        problem = check_object(store, obj)
        results.append(Result.check(obj.name, problem is None, problem or "matches"))
    return results


def delete_set(store: BackupStore, listing: SetListing) -> None:
    """Manifest first: a half-deleted set never looks complete."""
    store.delete_keys(sorted(listing.keys, key=lambda k: not k.endswith("/" + MANIFEST)))
