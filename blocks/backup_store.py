"""`BackupStore`: the S3 (or S3-compatible) bucket where backup sets live, and its secrets.

This module is the one way sentry-ops talks to S3 (boto3 managed transfers); every S3 failure
leaves it as a `StoreError` naming the store and what was being done. What a backup set *is*
(keys, manifest, seal, encryption) belongs to `blocks.backup_set`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO, Literal

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError
from prefect.blocks.core import Block
from prefect_aws import AwsCredentials
from pydantic import Field, SecretStr, field_validator, model_validator

PART = 8 << 20  # multipart part size
THREADS = 4  # parallel part uploads
IN_MEMORY_PARTS = 4  # parts buffered from a non-seekable stream: memory ~ (4 + 4) x 8 MiB
MIN_KEY_CHARS = 32
NEW_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class StoreError(Exception):
    pass


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
    _logo_url = None  # none rather than a remote image that is broken offline
    _documentation_url = "https://develop.sentry.dev/self-hosted/backup/"  # type: ignore[assignment]
    _description = (
        "An S3 bucket/prefix for Sentry backup sets (one folder per host), with the key that "
        "encrypts and seals them, and retention settings."
    )

    def __str__(self) -> str:
        """The block's saved name (flow run names), else the bucket and prefix."""
        return self._block_document_name or f"s3://{self.bucket}/{self.prefix}"

    bucket: str = Field(description="S3 bucket name.")
    prefix: str = Field(default="sentry", description="Key prefix for all backup sets.")
    credentials: AwsCredentials = Field(
        default_factory=AwsCredentials,
        description="AWS credentials; aws_client_parameters.endpoint_url for MinIO and others.",
    )
    backup_key: SecretStr | None = Field(
        default=None,
        description=f"Secret (>= {MIN_KEY_CHARS} characters; `{NEW_KEY}`) from which each "
        "object's AES-256-GCM key and the manifests' HMAC seal key are derived. Keep a copy "
        "outside this server: without it no backup can be restored.",
    )
    allow_unencrypted: bool = Field(
        default=False,
        description="Allow a store without backup_key: objects stored in clear, manifests "
        "unsealed, config left out. Every run warns.",
    )
    retention_days: int = Field(
        default=30, ge=1, description="Delete complete backups older than this."
    )
    min_keep: int = Field(
        default=7, ge=1, description="Never delete a host's newest this-many complete backups."
    )
    server_side_encryption: Literal["AES256", "aws:kms"] | None = Field(
        default=None, description="S3 server-side encryption for every object, on top."
    )
    kms_key_id: str | None = Field(default=None, description="KMS key id for aws:kms.")
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
        value = value.strip("/")
        if not value:
            raise ValueError("prefix must not be empty (backup sets live under it)")
        return value

    @model_validator(mode="after")
    def _key_or_consent(self) -> BackupStore:
        key = self.backup_key.get_secret_value() if self.backup_key else ""
        if self.backup_key is not None and len(key) < MIN_KEY_CHARS:
            raise ValueError(
                f"backup_key must have at least {MIN_KEY_CHARS} characters; make one with {NEW_KEY}"
            )
        if self.backup_key is None and not self.allow_unencrypted:
            raise ValueError(
                f"set backup_key (make one with {NEW_KEY}; keep a copy elsewhere) so backups are "
                "encrypted and sealed, or set allow_unencrypted=True to store them in clear"
            )
        if self.kms_key_id and self.server_side_encryption != "aws:kms":
            raise ValueError("kms_key_id needs server_side_encryption='aws:kms'")
        return self

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    # -- plumbing ----------------------------------------------------------------------------
    def client(self):
        return self.credentials.get_s3_client()

    @contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Any S3 failure inside leaves as a StoreError naming the store and `doing`."""
        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code, status = err.get("Code", ""), exc.response.get("ResponseMetadata", {})
            raise StoreError(
                f"{self.where}: {doing} failed: S3 answered {code or '?'} "
                f"(HTTP {status.get('HTTPStatusCode', '?')}): {err.get('Message', exc)}"
            ) from exc
        except BotoCoreError as exc:
            raise StoreError(f"{self.where}: {doing} failed: {exc}") from exc

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
        where = self.where
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
        with self.errors(f"uploading {key}"):
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
        with self.errors(f"writing {key}"):
            self.client().put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                **self._extra_args(),
            )

    # -- reading -----------------------------------------------------------------------------
    def open(self, key: str) -> BinaryIO:
        with self.errors(f"reading {key}"):
            return self.client().get_object(Bucket=self.bucket, Key=key)["Body"]

    def get_bytes(self, key: str) -> bytes | None:
        """A small object's bytes; None when there is no such key."""
        try:
            with self.errors(f"reading {key}"):
                return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except StoreError as exc:
            cause = exc.__cause__
            code = (
                cause.response.get("Error", {}).get("Code")
                if isinstance(cause, ClientError)
                else None
            )
            if code in ("NoSuchKey", "404"):
                return None
            raise

    def sha256_of(self, key: str) -> tuple[int, str]:
        digest, size = hashlib.sha256(), 0
        with self.errors(f"reading {key}"):
            body = self.open(key)
            while chunk := body.read(PART):
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()

    def list_keys(self, prefix: str) -> Iterator[str]:
        return (key for key, _ in self.list_objects(prefix))

    def list_objects(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under `prefix`."""
        with self.errors(f"listing {prefix}"):
            paginator = self.client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield obj["Key"], int(obj.get("Size", 0))

    # -- deleting ----------------------------------------------------------------------------
    def delete_keys(self, keys: list[str]) -> None:
        with self.errors(f"deleting {len(keys)} objects"):
            client = self.client()
            for i in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[i : i + 1000]]
                result = client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
                if result.get("Errors"):
                    raise StoreError(f"{self.where}: could not delete: {result['Errors'][:3]}")

    def open_uploads(self, prefix: str | None = None) -> list[dict]:
        with self.errors("listing open multipart uploads"):
            result = self.client().list_multipart_uploads(
                Bucket=self.bucket, Prefix=prefix or f"{self.prefix}/"
            )
        return result.get("Uploads", [])

    def abort_uploads(
        self, key_prefix: str, older_than: dt.datetime | None = None, dry_run: bool = False
    ) -> int:
        """Abort open multipart uploads under `key_prefix` (started before `older_than`); with
        `dry_run`, only count them."""
        aborted = 0
        for upload in self.open_uploads(key_prefix):
            if older_than is None or upload["Initiated"] < older_than:
                if dry_run:
                    aborted += 1
                    continue
                with self.errors(f"aborting the upload of {upload['Key']}"):
                    self.client().abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                aborted += 1
        return aborted
