"""`BackupStore`: where backup sets live (S3 or S3-compatible), and what a backup set is.

A backup set is the prefix `<prefix>/<backup_id>/` holding its objects and, written last, its
`manifest.json`: the commit marker. No manifest = incomplete = never restored, never counted.
This module is the one way sentry-ops talks to S3 (boto3 managed transfers).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError
from prefect.blocks.core import Block
from prefect_aws import AwsCredentials
from pydantic import BaseModel, Field, SecretStr, field_validator

PART = 8 << 20  # multipart part size
THREADS = 4  # parallel part uploads
IN_MEMORY_PARTS = 4  # parts buffered from a non-seekable stream: memory ~ (4 + 4) x 8 MiB
MANIFEST = "manifest.json"
STAMP = "%Y%m%dT%H%M%SZ"
BACKUP_ID = re.compile(r"^(?P<stamp>\d{8}T\d{6}Z)-(?P<host>[a-z0-9][a-z0-9-]*)$")


class StoreError(Exception):
    pass


# -- what a backup set is -------------------------------------------------------------------------
def new_backup_id(host: str, now: dt.datetime) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", host.lower()).strip("-") or "host"
    return f"{now.astimezone(dt.UTC).strftime(STAMP)}-{slug}"


def parse_backup_id(backup_id: str) -> tuple[dt.datetime, str] | None:
    """(UTC time, host) of a backup id, or None when it is not one of ours."""
    match = BACKUP_ID.match(backup_id)
    if not match:
        return None
    try:
        when = dt.datetime.strptime(match["stamp"], STAMP).replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return when, match["host"]


class StoredObject(BaseModel):
    name: str = Field(description="What it is: postgres, volume:<name>, config")
    key: str
    size: int
    sha256: str
    compression: Literal["zstd", "pg_dump:zstd:1", "none"]
    encryption: Literal["fernet", "none"] = "none"
    raw_size: int | None = None
    seconds: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return (self.raw_size or self.size) / 1e6 / self.seconds if self.seconds else 0.0


class BackupManifest(BaseModel):
    """The commit marker of a backup set: everything needed to verify and restore it."""

    format: int = 1
    backup_id: str
    host: str
    layout: str
    project_name: str
    started_at: dt.datetime
    finished_at: dt.datetime
    objects: list[StoredObject]
    postgres_version: str
    sentry_version: str
    images: dict[str, str] = Field(description="compose service -> image")
    row_counts: dict[str, int]
    newest_event: str | None = Field(
        default=None, description="'<event_id> <time>' of the newest event in the dump"
    )
    config_included: bool
    sentry_ops_version: str

    def object(self, name: str) -> StoredObject:
        for obj in self.objects:
            if obj.name == name:
                return obj
        raise KeyError(f"backup {self.backup_id} has no object {name!r}")


@dataclass(frozen=True)
class BackupListing:
    backup_id: str
    when: dt.datetime | None  # None: not a key we can parse (never deleted)
    complete: bool
    keys: tuple[str, ...]


class HashingReader:
    """Wraps a readable; counts and hashes exactly the bytes that pass through."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data


class BackupStore(Block):
    """An S3 (or S3-compatible) bucket and prefix where sentry-ops keeps backup sets."""

    _block_type_name = "Sentry Backup Store"
    _block_type_slug = "sentry-backup-store"
    _logo_url = "https://cdn.sanity.io/images/3ugk85nk/production/d74b16fe84ce626345adf235a47008fea2869a60-225x225.png"  # type: ignore[assignment]
    _description = "An S3 bucket/prefix for Sentry backup sets, with retention settings."

    bucket: str = Field(description="S3 bucket name.")
    prefix: str = Field(default="sentry", description="Key prefix for all backup sets.")
    credentials: AwsCredentials = Field(
        default_factory=AwsCredentials,
        description="AWS credentials; aws_client_parameters.endpoint_url for MinIO and others.",
    )
    retention_days: int = Field(default=30, description="Delete complete backups older than this.")
    min_keep: int = Field(
        default=7, description="Never delete the newest this-many complete backups."
    )
    server_side_encryption: Literal["AES256", "aws:kms"] | None = Field(
        default=None, description="S3 server-side encryption for every object."
    )
    kms_key_id: str | None = Field(default=None, description="KMS key id for aws:kms.")
    config_encryption_key: SecretStr | None = Field(
        default=None,
        description="Fernet key (`python -c 'from cryptography.fernet import Fernet; "
        "print(Fernet.generate_key().decode())'`) to encrypt the stack's config (.env, "
        "config.yml: they hold the secret key and passwords). Unset: config is not backed up.",
    )
    bandwidth_limit: int | None = Field(
        default=None,
        description="Bytes per second a backup may move at most (so a nightly backup cannot "
        "saturate the host's link); empty: no limit.",
    )
    storage_class: str | None = Field(
        default=None, description="S3 storage class, e.g. STANDARD_IA (None: bucket default)."
    )

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value or ""):
            raise ValueError(f"bucket must be a valid S3 bucket name, got {value!r}")
        return value

    @field_validator("retention_days", "min_keep")
    @classmethod
    def _positive(cls, value: int, info) -> int:
        if value < 1:
            raise ValueError(f"{info.field_name} must be at least 1, got {value}")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return value.strip("/")

    # -- plumbing ----------------------------------------------------------------------------
    def client(self):
        return self.credentials.get_s3_client()

    def key(self, backup_id: str, name: str) -> str:
        return f"{self.prefix}/{backup_id}/{name}" if self.prefix else f"{backup_id}/{name}"

    def _extra_args(self) -> dict:
        extra: dict = {}
        if self.server_side_encryption:
            extra["ServerSideEncryption"] = self.server_side_encryption
            if self.kms_key_id:
                extra["SSEKMSKeyId"] = self.kms_key_id
        if self.storage_class:
            extra["StorageClass"] = self.storage_class
        return extra

    def check_access(self) -> None:
        """Fail early, before any dump starts, when the bucket is missing or not ours."""
        where = f"s3://{self.bucket}/{self.prefix}"
        try:
            client = self.client()
            client.head_bucket(Bucket=self.bucket)
            client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/", MaxKeys=1)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket"):
                raise StoreError(
                    f"{where}: bucket {self.bucket!r} does not exist; create it "
                    "or fix the store block's bucket"
                ) from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StoreError(
                    f"{where}: access denied ({code}); check the store block's "
                    "AWS credentials and the bucket policy"
                ) from None
            raise StoreError(f"{where}: {exc}") from None
        except BotoCoreError as exc:
            raise StoreError(
                f"{where}: cannot reach S3 ({exc}); check endpoint_url, network and credentials"
            ) from None

    # -- writing -----------------------------------------------------------------------------
    def upload_stream(self, key: str, source: BinaryIO) -> tuple[int, str]:
        """Multipart-upload a non-seekable stream in bounded memory; returns (size, sha256).

        Any open multipart upload of this key (a failed earlier try) is aborted first; when
        `source` raises, boto3 aborts this upload, so a failure never leaves a complete-looking
        object behind.
        """
        client = self.client()
        self.abort_uploads(key)
        config = TransferConfig(
            multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=THREADS
        )
        config.max_in_memory_upload_chunks = IN_MEMORY_PARTS  # s3transfer setting
        reader = HashingReader(source)
        client.upload_fileobj(
            reader, self.bucket, key, ExtraArgs=self._extra_args() or None, Config=config
        )
        return reader.size, reader.sha256.hexdigest()

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream"):
        self.client().put_object(
            Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, **self._extra_args()
        )

    def write_manifest(self, manifest: BackupManifest) -> str:
        key = self.key(manifest.backup_id, MANIFEST)
        self.put_bytes(key, manifest.model_dump_json(indent=2).encode(), "application/json")
        return key

    # -- reading -----------------------------------------------------------------------------
    def open(self, key: str) -> BinaryIO:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"]

    def read_manifest(self, backup_id: str) -> BackupManifest:
        try:
            body = self.open(self.key(backup_id, MANIFEST)).read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise StoreError(
                    f"backup {backup_id} has no manifest: it is incomplete and cannot be restored"
                ) from None
            raise
        return BackupManifest.model_validate(json.loads(body))

    def sha256_of(self, key: str) -> tuple[int, str]:
        body = self.open(key)
        digest, size = hashlib.sha256(), 0
        while chunk := body.read(PART):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()

    def list_backups(self) -> list[BackupListing]:
        """Every backup set under the prefix, oldest first; unparseable ones with when=None."""
        sets: dict[str, list[str]] = {}
        for obj in self._iter_objects(f"{self.prefix}/"):
            rest = obj["Key"][len(self.prefix) + 1 :]
            backup_id, _, _ = rest.partition("/")
            sets.setdefault(backup_id, []).append(obj["Key"])
        listing = []
        for backup_id, keys in sets.items():
            parsed = parse_backup_id(backup_id)
            complete = self.key(backup_id, MANIFEST) in keys
            when = parsed[0] if parsed else None
            listing.append(BackupListing(backup_id, when, complete, tuple(sorted(keys))))
        return sorted(
            listing, key=lambda b: (b.when is None, b.when or dt.datetime.min, b.backup_id)
        )

    def _iter_objects(self, prefix: str) -> Iterator[dict]:
        paginator = self.client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    # -- deleting ----------------------------------------------------------------------------
    def delete_keys(self, keys: list[str]) -> None:
        client = self.client()
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            result = client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
            if result.get("Errors"):
                raise StoreError(f"could not delete: {result['Errors'][:3]}")

    def open_uploads(self, prefix: str | None = None) -> list[dict]:
        result = self.client().list_multipart_uploads(
            Bucket=self.bucket, Prefix=prefix or f"{self.prefix}/"
        )
        return result.get("Uploads", [])

    def abort_uploads(self, key_prefix: str, older_than: dt.datetime | None = None) -> int:
        client, aborted = self.client(), 0
        for upload in self.open_uploads(key_prefix):
            if older_than is None or upload["Initiated"] < older_than:
                client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                aborted += 1
        return aborted
