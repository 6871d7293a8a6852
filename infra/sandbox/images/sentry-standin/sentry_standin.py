#!/usr/bin/python3
"""SENTRY STAND-IN for the sentry-ops sandbox. Not Sentry.

Sentry itself cannot run on the sandbox machines, so this small program answers the same CLI verbs
and HTTP endpoints against real Postgres/Redis/ClickHouse/SeaweedFS, behaving like real Sentry
wherever sentry-ops depends on it. Each behaviour copies upstream; where upstream is unknown it does
the harsher thing. The same upstream samples are replayed against it and against the product
(tests/conformance/: fixtures naming repo, path and ref).

Behaviour a flow depends on -> where it is copied from (S: getsentry/sentry, master late 2025,
commit 57915b5d; the sandbox cannot read a release tag of that repository whole):
- `sentry --version` prints "sentry, version X+<build>" -> S src/sentry/__init__.py and
  runner/main.py (official images set SENTRY_BUILD)
- `upgrade --noinput` runs pending migrations only, printing Django's "Applying x.y... OK" or
  "No migrations to apply."; a jump over a hard stop exits 1 with "It looks like you've skipped
  a hard stop ..." naming no version -> S runner/commands/upgrade.py (_check_history)
- the hard stops 9.1.2 ... 25.5.1, 26.5.0, 26.5.1, 26.7.0 -> getsentry/sentry-docs
  develop-docs/self-hosted/releases.mdx and its PRs #11146 #13783 #17988 #18702 #18747
- `createuser` prints "Added to organization: sentry" then "User created: E"; an existing user
  "User: E exists, use --force-update to force.", exit 0 -> S runner/commands/createuser.py
- `cleanup --days N` deletes old issues and payloads, its last line "Clean up took N second(s)."
  -> S runner/commands/cleanup.py
- GET /_health/ -> 200 "ok" without the database; GET /_health/?full -> 200
  {"problems":[],"healthy":{"WarningStatusCheck":true}} whatever the database, Redis or Snuba
  do -> S middleware/health.py, status_checks/__init__.py (its only check's warnings filtered)
- web has no store endpoint (POST /api/<project>/store/ -> 404: the Python store endpoint was
  removed in 2020, getsentry/sentry#19135); RELAY takes events: `relay run` (this program as
  `relay`, RELAY_PORT) answers POST /api/<project>/store/ with a DSN key -> 200
  {"id": "<32 hex>"} -> getsentry/relay relay-server/src/endpoints/store.rs, and GET
  /api/relay/healthcheck/ready/ -> relay-server/src/endpoints/health_check.rs
- GET /api/0/organizations/<org>/eventids/<id>/ wants a token with org:read, org:write or
  org:admin, else 403 {"detail": "You do not have permission to perform this action."}; unknown:
  404 {"detail": "The requested resource does not exist"}; the body's keys organizationSlug,
  projectSlug, groupId (a string), eventId, event -> S issues/endpoints/organization_eventid.py,
  api/bases/organization.py
- nodestore_node rows: id md5("<project>:<event>"), data base64(zlib(compact sorted JSON)) -> S
  services/nodestore/django/backend.py, utils/strings.py
- the S3 nodestore (self-hosted) reads a payload missing from S3 out of nodestore_node, and
  `cleanup` deletes there too, only when sentry.conf.py's SENTRY_NODESTORE_OPTIONS set
  "read_through": True / "delete_through": True (default False) -> sentry-nodestore-s3's
  S3PassthroughDjangoNodeStorage, as getsentry/self-hosted sentry/sentry.conf.example.py and
  install/bootstrap-s3-nodestore.sh @26.8.0 configure it
- the taskbroker store: `inflight_taskactivations` with taskbroker's schema, status 'Pending'; at
  most TASKBROKER_MAX_PENDING_COUNT (2048) pending, the rest waits in "Kafka" ->
  getsentry/taskbroker migrations/sqlite @26.7.2, src/config/store.rs, activation_writer.rs
- never writes `sentry_message` -> S (unused since Sentry 10)
- with SNUBA set (self-hosted's x-sentry-defaults), `upgrade` makes no ClickHouse table (Snuba's
  bootstrap does: install/bootstrap-snuba.sh @26.8.0) and an event's searchable row is Snuba's
  errors_local row (the columns without a default: dashed UUID event_id, platform, primary_hash,
  received, message_timestamp, retention_days = SENTRY_EVENT_RETENTION_DAYS, deleted = 0, type;
  Snuba's DDL at 26.8.0, tests/conformance/fixtures/snuba_clickhouse_tables.json); the lookup
  reads it by toUUID and deleted = 0 -> getsentry/snuba errors processor and storage at 26.8.0

A stack ingests only through the services a real one needs: without Relay nothing takes an
SDK's event (web answers 404), without Snuba (SNUBA unset) an event is never searchable.
Kinder than Relay, known: an event's timestamp is kept however old (Relay moves one older than
its max_secs_in_past, 30 days, to the time received); tests use it to make old events.

  sentry run web                   the endpoints above
  sentry run worker|taskworker     processes the queue: the issue row (sentry_groupedmessage), the
                                   payload in the nodestore (Postgres nodestore_node, or S3 on
                                   SeaweedFS), Snuba's searchable row in ClickHouse errors_local
  relay run                        the RELAY STAND-IN (this program under the name `relay`)
  sentry run cron|taskscheduler    writes a heartbeat option every few seconds

Configuration comes from the environment (SENTRY_POSTGRES_*, SENTRY_REDIS_PORT, SENTRY_NODESTORE,
...); the secret key from SENTRY_SECRET_KEY or `system.secret-key` in $SENTRY_CONF/config.yml. The
image tag sets SENTRY_STANDIN_VERSION; a version ending in "-broken" migrates, then its web crashes
at start. Product code must never depend on this file.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import getpass
import hashlib
import json
import os
import re
import secrets
import signal
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg

VERSION = os.environ.get("SENTRY_STANDIN_VERSION", "24.1.0")
BROKEN = VERSION.endswith("-broken")
# Versions an upgrade must not jump over (getsentry/self-hosted's hard stops).
HARD_STOP_ERROR = (
    "Error: It looks like you've skipped a hard stop in our upgrade process. Please follow the "
    "upgrade process here: https://develop.sentry.dev/self-hosted/releases/#hard-stops"
)
HARD_STOPS = ("9.1.2", "21.5.0", "21.6.3", "23.6.2", "23.11.0", "24.8.0", "25.5.1", "26.5.0",
              "26.5.1", "26.7.0")  # fmt: skip
# Where queued events wait for a worker, as in real Sentry: the guide era's Celery keeps one Redis
# list per queue (events.save_event here); 26.x's taskbroker keeps pending activations in SQLite
# (`inflight_taskactivations`, status 'Pending') on its volume: SENTRY_TASKBROKER_DB points there
# (the stand-in's web and taskworkers share the file instead of speaking gRPC to a broker).
QUEUE = "events.save_event"

# Each migration: (version, statements). A version's schema is every migration up to it.
MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "24.1.0",
        [
            """CREATE TABLE IF NOT EXISTS auth_user (
                id bigserial PRIMARY KEY, username text UNIQUE NOT NULL, email text NOT NULL,
                password text NOT NULL, is_superuser boolean NOT NULL DEFAULT false,
                is_active boolean NOT NULL DEFAULT true,
                date_joined timestamptz NOT NULL DEFAULT now())""",
            """CREATE TABLE IF NOT EXISTS sentry_organization (
                id bigserial PRIMARY KEY, slug text UNIQUE NOT NULL, name text NOT NULL,
                date_added timestamptz NOT NULL DEFAULT now())""",
            """CREATE TABLE IF NOT EXISTS sentry_organizationmember (
                id bigserial PRIMARY KEY, organization_id bigint REFERENCES sentry_organization,
                user_id bigint REFERENCES auth_user, role text NOT NULL)""",
            """CREATE TABLE IF NOT EXISTS sentry_project (
                id bigserial PRIMARY KEY, organization_id bigint REFERENCES sentry_organization,
                slug text NOT NULL, name text NOT NULL,
                date_added timestamptz NOT NULL DEFAULT now(), UNIQUE (organization_id, slug))""",
            """CREATE TABLE IF NOT EXISTS sentry_projectkey (
                id bigserial PRIMARY KEY, project_id bigint REFERENCES sentry_project,
                public_key text UNIQUE NOT NULL, secret_key text NOT NULL,
                date_added timestamptz NOT NULL DEFAULT now())""",
            """CREATE TABLE IF NOT EXISTS sentry_apitoken (
                id bigserial PRIMARY KEY, user_id bigint REFERENCES auth_user,
                token text UNIQUE NOT NULL, scope_list text NOT NULL DEFAULT '')""",
            """CREATE TABLE IF NOT EXISTS sentry_groupedmessage (
                id bigserial PRIMARY KEY, project_id bigint REFERENCES sentry_project,
                title text NOT NULL, culprit text, level text,
                first_seen timestamptz NOT NULL, last_seen timestamptz NOT NULL,
                times_seen bigint NOT NULL DEFAULT 1, UNIQUE (project_id, title))""",
            # present in real Sentry's schema, never written since 2019
            """CREATE TABLE IF NOT EXISTS sentry_message (
                id bigserial PRIMARY KEY, project_id bigint, group_id bigint,
                event_id uuid UNIQUE NOT NULL, message text, platform text,
                datetime timestamptz NOT NULL)""",
            """CREATE TABLE IF NOT EXISTS nodestore_node (
                id text PRIMARY KEY, data text NOT NULL, timestamp timestamptz NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS nodestore_node_timestamp ON nodestore_node (timestamp)",
            """CREATE TABLE IF NOT EXISTS sentry_option (
                key text PRIMARY KEY, value text, last_updated timestamptz NOT NULL)""",
        ],
    ),
    (
        "24.2.0",
        [
            """CREATE TABLE IF NOT EXISTS sentry_release (
                id bigserial PRIMARY KEY, organization_id bigint REFERENCES sentry_organization,
                version text NOT NULL, date_added timestamptz NOT NULL DEFAULT now(),
                UNIQUE (organization_id, version))""",
        ],
    ),
    (  # a hard stop (HARD_STOPS): 24.2.0 -> 24.9.0 must go through it
        "24.8.0",
        [
            """CREATE TABLE IF NOT EXISTS sentry_deploy (
                id bigserial PRIMARY KEY, release_id bigint REFERENCES sentry_release,
                environment text NOT NULL, date_finished timestamptz NOT NULL DEFAULT now())""",
        ],
    ),
    ("24.9.0", ["ALTER TABLE sentry_deploy ADD COLUMN IF NOT EXISTS url text"]),
]


def _vkey(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("-")[0].split("."))


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def secret_key() -> str:
    """SENTRY_SECRET_KEY, else `system.secret-key` in $SENTRY_CONF/config.yml (self-hosted)."""
    if key := env("SENTRY_SECRET_KEY"):
        return key
    path = os.path.join(env("SENTRY_CONF", "/etc/sentry"), "config.yml")
    try:
        with open(path) as f:
            match = re.search(r"^system\.secret-key:\s*['\"]?([^'\"\n]+)", f.read(), re.M)
    except OSError:
        match = None
    if not match or "!!changeme!!" in match.group(1):
        raise SystemExit("Error: system.secret-key is not set (SENTRY_SECRET_KEY or config.yml)")
    return match.group(1)


def connect() -> psycopg.Connection:
    return psycopg.connect(
        host=env("SENTRY_POSTGRES_HOST", "127.0.0.1"),
        port=int(env("SENTRY_POSTGRES_PORT", "5432")),
        dbname=env("SENTRY_DB_NAME", "sentry"),
        user=env("SENTRY_DB_USER", "sentry"),
        password=env("SENTRY_DB_PASSWORD"),
        connect_timeout=5,
        autocommit=True,
        prepare_threshold=None,  # through pgbouncer in transaction mode, like self-hosted
    )


def clickhouse(query: str, body: bytes | None = None) -> str:
    url = f"http://127.0.0.1:{env('SENTRY_CLICKHOUSE_HTTP_PORT')}/?query=" + urllib.parse.quote(
        query
    )
    request = urllib.request.Request(url, data=body or b"")  # POST: GET is read-only
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.read().decode()


CH_DB = env("SENTRY_CLICKHOUSE_DATABASE", "default")
# Where Sentry reads events: Snuba (SNUBA in self-hosted's x-sentry-defaults). Snuba owns the
# ClickHouse schema (its bootstrap makes errors_local; `sentry upgrade` touches no ClickHouse
# table) and events land there as Snuba's errors consumer writes them. Without it an event is
# never searchable: a stack without Snuba cannot ingest, as a real one cannot.
SNUBA = bool(env("SNUBA"))


# -- nodestore: Postgres (guide era) or S3 on SeaweedFS (self-hosted >= 25.9) ------------------
def _s3():
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env("SENTRY_NODESTORE_S3_ENDPOINT"),
        aws_access_key_id=env("SENTRY_NODESTORE_S3_KEY", "sentry"),
        aws_secret_access_key=env("SENTRY_NODESTORE_S3_SECRET", "sentry"),
        region_name="us-east-1",
    )


S3_BUCKET, S3_PREFIX = "nodestore", "nodestore/"


def passthrough(option: str) -> bool:
    """S3PassthroughDjangoNodeStorage's read_through/delete_through, from sentry.conf.py's
    SENTRY_NODESTORE_OPTIONS (both False unless set True there)."""
    try:
        with open(os.path.join(env("SENTRY_CONF", "/etc/sentry"), "sentry.conf.py")) as f:
            text = f.read()
    except OSError:
        return False
    options = re.search(r"^SENTRY_NODESTORE_OPTIONS\s*=\s*\{(.*?)\}", text, re.M | re.S)
    return bool(options and re.search(rf"[\"']{option}[\"']\s*:\s*True\b", options.group(1)))


def node_id(project_id: int, event_id: str) -> str:
    """Sentry's node id of an event's payload (sentry.eventstore.models: Event.generate_node_id)."""
    return hashlib.md5(f"{project_id}:{event_id}".encode()).hexdigest()


def compress(value: bytes) -> str:
    """sentry.utils.strings.compress: base64 of zlib; what DjangoNodeStorage stores in `data`."""
    return base64.b64encode(zlib.compress(value)).decode()


def node_bytes(event: dict) -> bytes:
    """NodeStorage._encode: Sentry's json_dumps (compact, sorted keys, ASCII)."""
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode()


def nodestore_put(conn: psycopg.Connection, key: str, event: dict, when: dt.datetime) -> None:
    if env("SENTRY_NODESTORE") == "s3":
        _s3().put_object(
            Bucket=S3_BUCKET,
            Key=S3_PREFIX + key,
            Body=node_bytes(event),
            Metadata={"timestamp": when.isoformat()},
        )
    else:
        conn.execute(
            "INSERT INTO nodestore_node (id, data, timestamp) VALUES (%s, %s, %s) "
            "ON CONFLICT (id) DO NOTHING",
            (key, compress(node_bytes(event)), when),
        )


def nodestore_get(conn: psycopg.Connection, key: str) -> dict | None:
    if env("SENTRY_NODESTORE") == "s3":
        try:
            raw = _s3().get_object(Bucket=S3_BUCKET, Key=S3_PREFIX + key)["Body"].read()
            return json.loads(raw.split(b"\n", 1)[0])
        except Exception:
            if not passthrough("read_through"):
                return None
    row = conn.execute("SELECT data FROM nodestore_node WHERE id = %s", (key,)).fetchone()
    if not row:
        return None
    raw = zlib.decompress(base64.b64decode(row[0]))
    return json.loads(raw.split(b"\n", 1)[0])


def nodestore_cleanup(conn: psycopg.Connection, cutoff: dt.datetime) -> int:
    if env("SENTRY_NODESTORE") == "s3":
        s3, removed = _s3(), 0
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=S3_BUCKET, Prefix=S3_PREFIX
        ):
            for obj in page.get("Contents", []):
                meta = s3.head_object(Bucket=S3_BUCKET, Key=obj["Key"])["Metadata"]
                if dt.datetime.fromisoformat(meta.get("timestamp", "9999-01-01")) < cutoff:
                    s3.delete_object(Bucket=S3_BUCKET, Key=obj["Key"])
                    removed += 1
        if not passthrough("delete_through"):
            return removed
        return (
            removed
            + conn.execute("DELETE FROM nodestore_node WHERE timestamp < %s", (cutoff,)).rowcount
        )
    return conn.execute("DELETE FROM nodestore_node WHERE timestamp < %s", (cutoff,)).rowcount


# -- CLI verbs ---------------------------------------------------------------------------------
def schema_version(conn: psycopg.Connection) -> str | None:
    exists = conn.execute("SELECT to_regclass('public.sentry_migrations')").fetchone()[0]
    if not exists:
        return None
    rows = conn.execute("SELECT version FROM sentry_migrations").fetchall()
    return max((r[0] for r in rows), key=_vkey, default=None)


def cmd_upgrade(args: argparse.Namespace) -> int:
    with connect() as conn:
        current = schema_version(conn)
        skipped = [
            stop for stop in HARD_STOPS if current and _vkey(current) < _vkey(stop) < _vkey(VERSION)
        ]
        if skipped:  # upgrade.py _check_history: it does not say which stop
            print(HARD_STOP_ERROR, file=sys.stderr)
            return 1
        conn.execute(
            """CREATE TABLE IF NOT EXISTS sentry_migrations (
                version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        conn.execute("SELECT pg_advisory_lock(4242)")
        # Django's migrate output, as `sentry upgrade` prints it (runner/commands/upgrade.py)
        print("Running migrations for default\nOperations to perform:\n  Apply all migrations: "
              "sentry\nRunning migrations:")  # fmt: skip
        applied = 0
        for version, statements in MIGRATIONS:
            if _vkey(version) > _vkey(VERSION):
                break
            with conn.transaction():
                done = conn.execute(
                    "INSERT INTO sentry_migrations (version) VALUES (%s) "
                    "ON CONFLICT DO NOTHING RETURNING version",
                    (version,),
                ).fetchone()
                if done:
                    for statement in statements:
                        conn.execute(statement)
            if done:
                applied += 1
                print(f"  Applying sentry.{version}_standin... OK")
        if BROKEN:
            conn.execute(
                "INSERT INTO sentry_migrations (version) VALUES (%s) ON CONFLICT DO NOTHING",
                (VERSION,),
            )
        # The real `upgrade` creates a default organization, project and its key on first run.
        conn.execute(
            "INSERT INTO sentry_organization (slug, name) VALUES ('sentry', 'Sentry') "
            "ON CONFLICT DO NOTHING"
        )
        conn.execute(
            "INSERT INTO sentry_project (organization_id, slug, name) SELECT id, 'internal', "
            "'Internal' FROM sentry_organization WHERE slug = 'sentry' ON CONFLICT DO NOTHING"
        )
        conn.execute(
            "INSERT INTO sentry_projectkey (project_id, public_key, secret_key) "
            "SELECT p.id, %s, %s FROM sentry_project p WHERE p.slug = 'internal' "
            "AND NOT EXISTS (SELECT 1 FROM sentry_projectkey k WHERE k.project_id = p.id)",
            (secrets.token_hex(16), secrets.token_hex(16)),
        )
        conn.execute("SELECT pg_advisory_unlock(4242)")
        if not applied:
            print("  No migrations to apply.")
        print("Creating missing DSNs\nCorrecting Group.num_comments counter")
    if env("SENTRY_NODESTORE") == "s3":
        s3 = _s3()
        if S3_BUCKET not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=S3_BUCKET)
    return 0


def hash_password(password: str) -> str:
    salt = secrets.token_hex(8)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), 100_000)
    return f"pbkdf2_sha256$100000${salt}${digest.hex()}"


def cmd_createuser(args: argparse.Namespace) -> int:
    if not args.email:
        print("error: --email is required", file=sys.stderr)
        return 2
    with connect() as conn:
        exists = conn.execute("SELECT id FROM auth_user WHERE email = %s", (args.email,)).fetchone()
        if exists and not args.force_update:
            print(f"User: {args.email} exists, use --force-update to force.")
            return 0
        if args.password is None:
            if args.no_input:
                print("error: --password is required with --no-input", file=sys.stderr)
                return 2
            # click's hidden prompt with confirmation; without a TTY it reads stdin
            first = getpass.getpass("Password: ") if sys.stdin.isatty() else input()
            second = getpass.getpass("Repeat for confirmation: ") if sys.stdin.isatty() else input()
            if not first or first != second:
                print("Error: The two entered values do not match.", file=sys.stderr)
                return 1
            args.password = first
        if exists:
            conn.execute(
                "UPDATE auth_user SET password = %s, is_superuser = %s WHERE id = %s",
                (hash_password(args.password), args.superuser, exists[0]),
            )
            print(f"User updated: {args.email}")
            return 0
        user_id = conn.execute(
            "INSERT INTO auth_user (username, email, password, is_superuser) "
            "VALUES (%s, %s, %s, %s) RETURNING id",
            (args.email, args.email, hash_password(args.password), args.superuser),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO sentry_organizationmember (organization_id, user_id, role) "
            "SELECT id, %s, 'owner' FROM sentry_organization WHERE slug = 'sentry'",
            (user_id,),
        )
    print("Added to organization: sentry")  # single-organization mode, as self-hosted runs
    print(f"User created: {args.email}")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    started = time.monotonic()
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=args.days)
    with connect() as conn:
        nodes = nodestore_cleanup(conn, cutoff)
        groups = conn.execute(
            "DELETE FROM sentry_groupedmessage WHERE last_seen < %s", (cutoff,)
        ).rowcount
    print(f"Removed {groups} issues and {nodes} nodestore payloads older than {args.days} days.")
    print(f"Clean up took {int(time.monotonic() - started)} second(s).")  # cleanup.py's last line
    return 0


# -- ingestion ----------------------------------------------------------------------------------
# getsentry/taskbroker migrations/sqlite/0001-0006 @ 26.7.2, applied: the table sentry-ops reads
TASKBROKER_SCHEMA = """CREATE TABLE IF NOT EXISTS inflight_taskactivations (
    id TEXT NOT NULL PRIMARY KEY, activation BLOB NOT NULL, partition INTEGER NOT NULL,
    offset INTEGER NOT NULL, added_at INTEGER NOT NULL, processing_attempts INTEGER NOT NULL,
    expires_at INTEGER, processing_deadline_duration INTEGER NOT NULL,
    processing_deadline INTEGER, status TEXT NOT NULL, at_most_once INTEGER NOT NULL DEFAULT 0,
    namespace TEXT, delay_until INTEGER, on_attempts_exceeded INTEGER NOT NULL DEFAULT 1,
    received_at INTEGER NOT NULL DEFAULT 0, taskname TEXT NOT NULL DEFAULT "",
    application TEXT NOT NULL DEFAULT '', bucket INTEGER NOT NULL DEFAULT 0,
    claim_expires_at INTEGER) STRICT"""


class TaskbrokerStore:
    """The taskbroker's activation store, the part sentry-ops reads (its pending count). Like the
    broker (src/kafka/activation_writer.rs), it holds at most max_pending_count (2048 by
    default, src/config/store.rs) pending activations: past that, work stays in "Kafka" (a
    table of its own here) and moves in as workers drain the store."""

    def __init__(self, path: str) -> None:
        import sqlite3

        self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(TASKBROKER_SCHEMA)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS standin_kafka (seq INTEGER PRIMARY KEY, item BLOB)"
        )
        self.cap = int(env("TASKBROKER_MAX_PENDING_COUNT", "2048"))

    def _pending(self) -> int:
        return self.db.execute(
            "SELECT count(*) FROM inflight_taskactivations WHERE status = 'Pending'"
        ).fetchone()[0]

    def _insert(self, item: bytes | str) -> None:
        blob = item if isinstance(item, bytes) else item.encode()  # STRICT: a BLOB column
        self.db.execute(
            "INSERT INTO inflight_taskactivations (id, activation, partition, offset, added_at, "
            "processing_attempts, processing_deadline_duration, status, received_at, taskname) "
            "VALUES (?, ?, 0, 0, ?, 0, 60, 'Pending', ?, 'sentry.tasks.store.save_event')",
            (uuid.uuid4().hex, blob, int(time.time()), int(time.time())),
        )

    def push(self, item: str) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if self._pending() >= self.cap:
                self.db.execute("INSERT INTO standin_kafka (item) VALUES (?)", (item,))
            else:
                self._insert(item)
        finally:
            self.db.execute("COMMIT")

    def take(self) -> tuple[str, str] | None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            row = self.db.execute(
                "SELECT id, activation FROM inflight_taskactivations WHERE status = 'Pending' "
                "ORDER BY added_at LIMIT 1"
            ).fetchone()
            if row:
                self.db.execute(
                    "UPDATE inflight_taskactivations SET status = 'Processing', "
                    "processing_deadline = ? WHERE id = ?",
                    (int(time.time()) + 60, row[0]),
                )
                waiting = self.db.execute(
                    "SELECT seq, item FROM standin_kafka ORDER BY seq LIMIT 1"
                ).fetchone()
                if waiting:  # the broker reads Kafka again once below its cap
                    self.db.execute("DELETE FROM standin_kafka WHERE seq = ?", (waiting[0],))
                    self._insert(waiting[1])
        finally:
            self.db.execute("COMMIT")
        return row

    def done(self, task_id: str, ok: bool) -> None:
        if ok:
            self.db.execute("DELETE FROM inflight_taskactivations WHERE id = ?", (task_id,))
        else:
            self.db.execute(
                "UPDATE inflight_taskactivations SET status = 'Pending' WHERE id = ?", (task_id,)
            )


class RedisQueue:
    """A Celery queue in Redis: one list."""

    def __init__(self) -> None:
        self.redis = redis_client()

    def push(self, item: str) -> None:
        self.redis.rpush(QUEUE, item)

    def take(self) -> tuple[str, str] | None:
        item = self.redis.blpop([QUEUE], timeout=1)
        return (item[1], item[1]) if item else None

    def done(self, task_id: str, ok: bool) -> None:
        if not ok:
            self.redis.rpush(QUEUE, task_id)


def task_queue() -> TaskbrokerStore | RedisQueue:
    path = os.environ.get("SENTRY_TASKBROKER_DB")
    return TaskbrokerStore(path) if path else RedisQueue()


def redis_client():
    import redis

    return redis.Redis(host="127.0.0.1", port=int(env("SENTRY_REDIS_PORT", "6379")))


def process_event(conn: psycopg.Connection, project_id: int, event: dict) -> str:
    """What the pipeline does with one event: issue row, nodestore payload, Snuba row."""
    event_id = uuid.UUID(event["event_id"]).hex
    message = str(event.get("message", ""))
    when = dt.datetime.fromisoformat(event["timestamp"])
    title = message.splitlines()[0][:200] if message else "<unlabeled event>"
    group_id = conn.execute(
        "INSERT INTO sentry_groupedmessage (project_id, title, level, first_seen, last_seen) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (project_id, title) DO UPDATE SET "
        "last_seen = greatest(sentry_groupedmessage.last_seen, excluded.last_seen), "
        "times_seen = sentry_groupedmessage.times_seen + 1 RETURNING id",
        (project_id, title, event.get("level", "error"), when, when),
    ).fetchone()[0]
    nodestore_put(conn, node_id(project_id, event_id), event, when)
    if not SNUBA:  # no Snuba: the event is never searchable, nothing can read it back
        print(f"event {event_id}: SNUBA is not configured, not stored for search", flush=True)
        return event_id
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    row = {  # Snuba's errors row: the columns its processor fills that have no default
        "project_id": project_id,
        "timestamp": when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "event_id": str(uuid.UUID(event_id)),
        "platform": str(event.get("platform", "other")),
        "group_id": group_id,
        "primary_hash": str(uuid.UUID(hashlib.md5(title.encode()).hexdigest())),
        "message": message,
        "title": title,
        "level": event.get("level", "error"),
        "received": now,
        "message_timestamp": now,
        "retention_days": int(env("SENTRY_EVENT_RETENTION_DAYS", "90")),
        "deleted": 0,
        "type": "error",
    }
    clickhouse(f"INSERT INTO {CH_DB}.errors_local FORMAT JSONEachRow", json.dumps(row).encode())
    return event_id


# getsentry/sentry: OrganizationPermission.scope_map["GET"] (src/sentry/api/bases/organization.py),
# DRF's messages (rest_framework/exceptions.py), ResourceDoesNotExist (src/sentry/api/exceptions.py)
LOOKUP_SCOPES = {"org:read", "org:write", "org:admin"}
FORBIDDEN = "You do not have permission to perform this action."
NO_CREDENTIALS = "Authentication credentials were not provided."
NOT_FOUND = "The requested resource does not exist"


def serialize_event(event_id: str, group_id: str, node: dict | None) -> dict:
    """The keys of EventSerializer (src/sentry/api/serializers/models/event.py) the probe reads;
    a payload gone from the nodestore leaves them empty, as Sentry's Snuba row outlives it."""
    node = node or {}
    message = str(node.get("message", ""))
    entries = [{"type": "message", "data": {"formatted": message}}] if message else []
    return {"id": event_id, "eventID": event_id, "groupID": str(group_id), "message": message,
            "title": message.splitlines()[0] if message else "", "entries": entries,
            "dateCreated": node.get("timestamp")}  # fmt: skip


def sentry_key(headers, query: dict) -> str | None:
    auth = headers.get("X-Sentry-Auth", "")
    match = re.search(r"sentry_key=([0-9a-f]+)", auth)
    return match.group(1) if match else (query.get("sentry_key") or [None])[0]


class Handler(BaseHTTPRequestHandler):
    server_version = "sentry-standin"

    def log_message(self, fmt: str, *args) -> None:  # quiet access log
        pass

    def _reply(self, code: int, body: str, ctype: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path.rstrip("/") == "/_health":
            if "full" not in urllib.parse.parse_qs(url.query, keep_blank_values=True):
                return self._reply(200, "ok")  # like Sentry: no database access
            # current Sentry runs only WarningStatusCheck, whose warning-severity problems the
            # middleware filters out: 200, whatever the database, Redis or Snuba do
            body = json.dumps({"problems": [], "healthy": {"WarningStatusCheck": True}},
                              separators=(",", ":"))  # fmt: skip
            return self._reply(200, body, "application/json")
        match = re.fullmatch(r"/api/0/organizations/([^/]+)/eventids/([0-9a-fA-F-]+)/?", url.path)
        if match:
            return self.event_lookup(match.group(1), match.group(2))
        return self._reply(404, "not found")

    def event_lookup(self, org: str, event_id: str) -> None:
        token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        event_id = uuid.UUID(event_id).hex
        if not token:
            return self._reply(401, json.dumps({"detail": NO_CREDENTIALS}), "application/json")
        with connect() as conn:
            row = conn.execute(
                "SELECT t.scope_list FROM sentry_apitoken t JOIN sentry_organizationmember m "
                "ON m.user_id = t.user_id JOIN sentry_organization o ON o.id = "
                "m.organization_id WHERE t.token = %s AND o.slug = %s",
                (token, org),
            ).fetchone()
            if not row:
                return self._reply(401, json.dumps({"detail": "Invalid token"}), "application/json")
            if not set(re.split(r"[\s,]+", row[0])) & LOOKUP_SCOPES:
                return self._reply(403, json.dumps({"detail": FORBIDDEN}), "application/json")
            found = (
                SNUBA
                and clickhouse(
                    f"SELECT project_id, group_id FROM {CH_DB}.errors_local WHERE event_id = "
                    f"toUUID('{event_id}') AND deleted = 0 FORMAT TSV"
                ).split()
            )
            if not found:
                return self._reply(404, json.dumps({"detail": NOT_FOUND}), "application/json")
            payload = nodestore_get(conn, node_id(int(found[0]), event_id))
            project = conn.execute(
                "SELECT slug FROM sentry_project WHERE id = %s", (int(found[0]),)
            ).fetchone()
        body = {
            "organizationSlug": org,
            "projectSlug": project[0] if project else None,
            "groupId": str(found[1]),
            "eventId": event_id,
            "event": serialize_event(event_id, found[1], payload),
        }
        self._reply(200, json.dumps(body), "application/json")

    def do_POST(self) -> None:  # web takes no events (no store endpoint since 2020): Relay does
        self._reply(404, "not found")


class RelayHandler(Handler):
    """RELAY STAND-IN: what a Relay in front of Sentry does with an SDK's event (the store
    endpoint; the DSN key checked against the project's keys, as Relay's project config says),
    then hands it on to Sentry's event processing (real Relay: Kafka -> Sentry's ingest consumer
    -> the save_event task; here the task queue itself). Its readiness: GET
    /api/relay/healthcheck/ready/ -> {"is_healthy": true} (getsentry/relay
    relay-server/src/endpoints/health_check.rs)."""

    server_version = "relay-standin"

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path.rstrip("/") == "/api/relay/healthcheck/ready":
            return self._reply(200, json.dumps({"is_healthy": True}), "application/json")
        self._reply(404, "not found")

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        match = re.fullmatch(r"/api/(\d+)/store/?", url.path)
        if not match:
            return self._reply(404, "not found")
        key = sentry_key(self.headers, urllib.parse.parse_qs(url.query))
        project_id = int(match.group(1))
        with connect() as conn:
            known = conn.execute(
                "SELECT 1 FROM sentry_projectkey WHERE project_id = %s AND public_key = %s",
                (project_id, key or ""),
            ).fetchone()
        if not known:
            return self._reply(401, json.dumps({"detail": "Invalid api key"}), "application/json")
        length = int(self.headers.get("Content-Length", "0"))
        event = json.loads(self.rfile.read(length) or b"{}")
        event["event_id"] = uuid.UUID(event.get("event_id") or uuid.uuid4().hex).hex
        event.setdefault("timestamp", dt.datetime.now(dt.UTC).isoformat())
        task_queue().push(json.dumps({"project_id": project_id, "event": event}))
        self._reply(200, json.dumps({"id": event["event_id"]}), "application/json")


class WebServer(ThreadingHTTPServer):
    allow_reuse_port = True
    daemon_threads = True


READY_FILE = "/tmp/sentry-web-ready"


def cmd_run(args: argparse.Namespace) -> int:
    if args.service == "web":
        secret_key()
        if BROKEN:
            print(f"Traceback: ImproperlyConfigured: sentry {VERSION} cannot start", flush=True)
            return 1
        port = int(env("SENTRY_WEB_PORT", "9000"))
        # Replicas of web share the port (SO_REUSEPORT): with host networking that is what
        # separate container addresses behind a proxy are on a real host.
        server = WebServer(("127.0.0.1", port), Handler)
        print(f"sentry {VERSION} web on 127.0.0.1:{port}", flush=True)
        # this container's own readiness (the sandbox's healthcheck reads it: with a shared port,
        # an HTTP probe could be answered by another replica)
        with open(READY_FILE, "w") as f:
            f.write(VERSION)
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        stopping.wait()
        server.shutdown()  # stop accepting, finish the requests in hand
        server.server_close()
        return 0
    elif args.service == "relay":
        port = int(env("RELAY_PORT", "3000"))
        server = WebServer(("127.0.0.1", port), RelayHandler)
        print(f"relay (stand-in) on 127.0.0.1:{port}, events to {type(task_queue()).__name__}",
              flush=True)  # fmt: skip
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        stopping.wait()
        server.shutdown()
        server.server_close()
        return 0
    elif args.service in ("worker", "taskworker"):
        queue = task_queue()
        print(f"sentry {VERSION} {args.service} processing {type(queue).__name__}", flush=True)
        # warm shutdown, like Celery's and the taskworker's: SIGTERM finishes the task in hand
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        while not stopping.is_set():
            item = None
            try:
                item = queue.take()
                if item is None:
                    if isinstance(queue, TaskbrokerStore):
                        time.sleep(0.2)
                    continue
                payload = json.loads(item[1])
                with connect() as conn, conn.transaction():
                    process_event(conn, int(payload["project_id"]), payload["event"])
                queue.done(item[0], True)
            except Exception as exc:  # keep the worker alive, like Sentry's task retries
                print(f"{args.service}: {exc.__class__.__name__}: {exc}, retrying", flush=True)
                if item:
                    queue.done(item[0], False)
                time.sleep(2)
        print(f"{args.service}: warm shutdown, the task in hand finished", flush=True)
        return 0
    elif args.service in ("cron", "taskscheduler"):
        print(f"sentry {VERSION} {args.service}", flush=True)
        while True:
            try:
                with connect() as conn:
                    conn.execute(
                        "INSERT INTO sentry_option (key, value, last_updated) VALUES "
                        "('sentry:last_cron', now()::text, now()) ON CONFLICT (key) DO UPDATE "
                        "SET value = excluded.value, last_updated = excluded.last_updated"
                    )
            except psycopg.Error as exc:
                print(f"{args.service}: {exc.__class__.__name__}, retrying", flush=True)
            time.sleep(5)
    return 1


def main(argv: list[str]) -> int:
    # As PID 1 in a container, SIGTERM has no default action: exit on it like the real services.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if os.path.basename(sys.argv[0]) == "relay":  # the Relay stand-in: `relay run`
        if argv[:1] != ["run"]:
            print("usage: relay run", file=sys.stderr)
            return 2
        return cmd_run(argparse.Namespace(service="relay"))
    parser = argparse.ArgumentParser(prog="sentry", description="Sentry STAND-IN (sandbox only)")
    # click's version_option prints __semantic_version__: official images set SENTRY_BUILD
    build = hashlib.sha1(VERSION.encode()).hexdigest()
    parser.add_argument("--version", action="version", version=f"sentry, version {VERSION}+{build}")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade")
    up.add_argument("--noinput", action="store_true")
    up.add_argument("--create-kafka-topics", action="store_true")  # self-hosted's install.sh
    up.set_defaults(func=cmd_upgrade)
    cu = sub.add_parser("createuser")
    cu.add_argument("--email")
    cu.add_argument("--password")
    cu.add_argument("--superuser", action="store_true")
    cu.add_argument("--no-input", dest="no_input", action="store_true")
    cu.add_argument("--force-update", dest="force_update", action="store_true")
    cu.set_defaults(func=cmd_createuser)
    cl = sub.add_parser("cleanup")
    cl.add_argument("--days", type=int, default=30)
    cl.set_defaults(func=cmd_cleanup)
    run = sub.add_parser("run")
    run.add_argument("service", choices=["web", "worker", "cron", "taskworker", "taskscheduler"])
    run.set_defaults(func=cmd_run)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
