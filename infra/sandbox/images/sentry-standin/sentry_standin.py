#!/usr/bin/python3
"""SENTRY STAND-IN for the sentry-ops sandbox. Not Sentry.

Sentry itself cannot run on the sandbox machines, so this small program answers the same CLI verbs
against real Postgres/Redis/ClickHouse, so that sentry-ops' flows are exercised for real:

  sentry --version                 "sentry, version X"
  sentry upgrade --noinput         create/migrate real Postgres tables (+ a ClickHouse table);
                                   records its version in sentry_migrations
  sentry createuser --email E --password P --superuser --no-input
                                   (fails like the real one when the user exists)
  sentry cleanup --days N          delete events older than N days, prints how many
  sentry run web                   /_health/ ("ok" only when the DB is migrated to this version),
                                   POST /api/<project>/store/ stores an event in Postgres+ClickHouse
  sentry run worker                drains the Redis queue "sentry:ingest" into Postgres
  sentry run cron                  writes a heartbeat option every few seconds

Configuration comes from the environment (SENTRY_POSTGRES_*, SENTRY_REDIS_PORT, ...). The image tag
sets SENTRY_STANDIN_VERSION; a version ending in "-broken" migrates, then never becomes healthy.
Product code must never depend on this file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import secrets
import signal
import sys
import time
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg

VERSION = os.environ.get("SENTRY_STANDIN_VERSION", "24.1.0")
BROKEN = VERSION.endswith("-broken")

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
            """CREATE TABLE IF NOT EXISTS sentry_groupedmessage (
                id bigserial PRIMARY KEY, project_id bigint REFERENCES sentry_project,
                title text NOT NULL, culprit text, level text,
                first_seen timestamptz NOT NULL, last_seen timestamptz NOT NULL,
                times_seen bigint NOT NULL DEFAULT 1, UNIQUE (project_id, title))""",
            """CREATE TABLE IF NOT EXISTS sentry_message (
                id bigserial PRIMARY KEY, project_id bigint REFERENCES sentry_project,
                group_id bigint REFERENCES sentry_groupedmessage, event_id uuid UNIQUE NOT NULL,
                message text, platform text, datetime timestamptz NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS sentry_message_datetime ON sentry_message (datetime)",
            """CREATE TABLE IF NOT EXISTS nodestore_node (
                id text PRIMARY KEY, data text NOT NULL, timestamp timestamptz NOT NULL)""",
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
]


def _vkey(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("-")[0].split("."))


def connect() -> psycopg.Connection:
    env = os.environ
    return psycopg.connect(
        host=env.get("SENTRY_POSTGRES_HOST", "127.0.0.1"),
        port=int(env.get("SENTRY_POSTGRES_PORT", "5432")),
        dbname=env.get("SENTRY_DB_NAME", "sentry"),
        user=env.get("SENTRY_DB_USER", "sentry"),
        password=env.get("SENTRY_DB_PASSWORD", ""),
        connect_timeout=5,
        autocommit=True,
    )


def clickhouse(query: str, body: bytes | None = None) -> str:
    port = os.environ.get("SENTRY_CLICKHOUSE_HTTP_PORT")
    if not port:
        return ""
    url = f"http://127.0.0.1:{port}/?query=" + urllib.parse.quote(query)
    with urllib.request.urlopen(urllib.request.Request(url, data=body or b""), timeout=10) as resp:
        return resp.read().decode()


def cmd_upgrade(args: argparse.Namespace) -> int:
    with connect() as conn:
        conn.execute(
            """CREATE TABLE IF NOT EXISTS sentry_migrations (
                version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        conn.execute("SELECT pg_advisory_lock(4242)")
        for version, statements in MIGRATIONS:
            if _vkey(version) > _vkey(VERSION):
                break
            with conn.transaction():
                for statement in statements:
                    conn.execute(statement)
                done = conn.execute(
                    "INSERT INTO sentry_migrations (version) VALUES (%s) "
                    "ON CONFLICT DO NOTHING RETURNING version",
                    (version,),
                ).fetchone()
            print(f"  {'Applied' if done else 'Already at'} {version}")
        if BROKEN:
            conn.execute(
                "INSERT INTO sentry_migrations (version) VALUES (%s) ON CONFLICT DO NOTHING",
                (VERSION,),
            )
        # The real `upgrade` creates a default organization and project on first run.
        conn.execute(
            "INSERT INTO sentry_organization (slug, name) VALUES ('sentry', 'Sentry') "
            "ON CONFLICT DO NOTHING"
        )
        conn.execute(
            "INSERT INTO sentry_project (organization_id, slug, name) SELECT id, 'internal', "
            "'Internal' FROM sentry_organization WHERE slug = 'sentry' ON CONFLICT DO NOTHING"
        )
        conn.execute("SELECT pg_advisory_unlock(4242)")
    clickhouse(
        "CREATE TABLE IF NOT EXISTS events (event_id String, project_id UInt64, "
        "timestamp DateTime, message String) ENGINE = MergeTree() "
        "PARTITION BY toYYYYMM(timestamp) ORDER BY (project_id, timestamp, event_id)"
    )
    print(f"Migrated to {VERSION}.")
    return 0


def hash_password(password: str) -> str:
    salt = secrets.token_hex(8)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), 100_000)
    return f"pbkdf2_sha256$100000${salt}${digest.hex()}"


def cmd_createuser(args: argparse.Namespace) -> int:
    if not args.email:
        print("error: --email is required", file=sys.stderr)
        return 2
    if args.password is None:
        if args.no_input:
            print("error: --password is required with --no-input", file=sys.stderr)
            return 2
        # Like the real command's hidden prompt with confirmation, which falls back to stdin
        # when there is no terminal (`docker compose run -T`).
        first, second = sys.stdin.readline().rstrip("\n"), sys.stdin.readline().rstrip("\n")
        if not first or first != second:
            print("Error: the two entered values do not match", file=sys.stderr)
            return 2
        args.password = first
    with connect() as conn:
        try:
            user_id = conn.execute(
                "INSERT INTO auth_user (username, email, password, is_superuser) "
                "VALUES (%s, %s, %s, %s) RETURNING id",
                (args.email, args.email, hash_password(args.password), args.superuser),
            ).fetchone()[0]
        except psycopg.errors.UniqueViolation:
            print(f"CommandError: User with email {args.email} already exists", file=sys.stderr)
            return 3
        conn.execute(
            "INSERT INTO sentry_organizationmember (organization_id, user_id, role) "
            "SELECT id, %s, 'owner' FROM sentry_organization WHERE slug = 'sentry'",
            (user_id,),
        )
    print(f"User created: {args.email}")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=args.days)
    with connect() as conn:
        ids = conn.execute(
            "DELETE FROM sentry_message WHERE datetime < %s RETURNING event_id", (cutoff,)
        ).fetchall()
        conn.execute("DELETE FROM nodestore_node WHERE timestamp < %s", (cutoff,))
    print(f"Removed {len(ids)} events older than {args.days} days.")
    return 0


def schema_version(conn: psycopg.Connection) -> str | None:
    rows = conn.execute("SELECT version FROM sentry_migrations").fetchall()
    return max((r[0] for r in rows), key=_vkey, default=None)


def store_event(conn: psycopg.Connection, project_id: int, event: dict) -> str:
    event_id = str(uuid.UUID(event.get("event_id") or uuid.uuid4().hex))
    message = str(event.get("message", ""))
    when = dt.datetime.fromisoformat(event["timestamp"]) if "timestamp" in event else None
    when = when or dt.datetime.now(dt.UTC)
    title = message.splitlines()[0][:200] if message else "<unlabeled event>"
    with conn.transaction():
        group_id = conn.execute(
            "INSERT INTO sentry_groupedmessage (project_id, title, level, first_seen, last_seen) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (project_id, title) DO UPDATE SET "
            "last_seen = greatest(sentry_groupedmessage.last_seen, excluded.last_seen), "
            "times_seen = sentry_groupedmessage.times_seen + 1 RETURNING id",
            (project_id, title, event.get("level", "error"), when, when),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO sentry_message (project_id, group_id, event_id, message, platform, "
            "datetime) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
            (project_id, group_id, event_id, message, event.get("platform"), when),
        )
        conn.execute(
            "INSERT INTO nodestore_node (id, data, timestamp) VALUES (%s, %s, %s) "
            "ON CONFLICT (id) DO NOTHING",
            (event_id, json.dumps(event), when),
        )
    row = {
        "event_id": event_id,
        "project_id": project_id,
        "timestamp": when.strftime("%Y-%m-%d %H:%M:%S"),
        "message": message,
    }
    clickhouse("INSERT INTO events FORMAT JSONEachRow", json.dumps(row).encode())
    return event_id


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
        if self.path.rstrip("/") != "/_health":
            return self._reply(404, "not found")
        if BROKEN:
            return self._reply(503, f"unhealthy: {VERSION} cannot start")
        try:
            with connect() as conn:
                current = schema_version(conn)
        except Exception as exc:
            return self._reply(503, f"unhealthy: database: {exc.__class__.__name__}")
        if current != VERSION:
            return self._reply(503, f"unhealthy: schema at {current}, this is {VERSION}")
        return self._reply(200, "ok")

    def do_POST(self) -> None:
        parts = self.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "api" or parts[2] != "store":
            return self._reply(404, "not found")
        length = int(self.headers.get("Content-Length", "0"))
        event = json.loads(self.rfile.read(length) or b"{}")
        with connect() as conn:
            event_id = store_event(conn, int(parts[1]), event)
        self._reply(200, json.dumps({"id": event_id}), "application/json")


def cmd_run(args: argparse.Namespace) -> int:
    if args.service == "web":
        port = int(os.environ.get("SENTRY_WEB_PORT", "9000"))
        print(f"sentry {VERSION} web on 127.0.0.1:{port}", flush=True)
        ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    elif args.service == "worker":
        import redis

        queue = redis.Redis(host="127.0.0.1", port=int(os.environ["SENTRY_REDIS_PORT"]))
        print(f"sentry {VERSION} worker draining sentry:ingest", flush=True)
        while True:
            try:
                item = queue.blpop(["sentry:ingest"], timeout=5)
                if item:
                    payload = json.loads(item[1])
                    with connect() as conn:
                        store_event(conn, int(payload["project_id"]), payload["event"])
            except (redis.ConnectionError, psycopg.OperationalError) as exc:
                print(f"worker: {exc.__class__.__name__}, retrying", flush=True)
                time.sleep(2)
    elif args.service == "cron":
        print(f"sentry {VERSION} cron", flush=True)
        while True:
            try:
                with connect() as conn:
                    conn.execute(
                        "INSERT INTO sentry_option (key, value, last_updated) VALUES "
                        "('sentry:last_cron', now()::text, now()) ON CONFLICT (key) DO UPDATE "
                        "SET value = excluded.value, last_updated = excluded.last_updated"
                    )
            except psycopg.Error as exc:
                print(f"cron: {exc.__class__.__name__}, retrying", flush=True)
            time.sleep(5)
    return 1


def main(argv: list[str]) -> int:
    # As PID 1 in a container, SIGTERM has no default action: exit on it like the real services.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    parser = argparse.ArgumentParser(prog="sentry", description="Sentry STAND-IN (sandbox only)")
    parser.add_argument("--version", action="version", version=f"sentry, version {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade")
    up.add_argument("--noinput", action="store_true")
    up.set_defaults(func=cmd_upgrade)
    cu = sub.add_parser("createuser")
    cu.add_argument("--email")
    cu.add_argument("--password")
    cu.add_argument("--superuser", action="store_true")
    cu.add_argument("--no-input", dest="no_input", action="store_true")
    cu.set_defaults(func=cmd_createuser)
    cl = sub.add_parser("cleanup")
    cl.add_argument("--days", type=int, required=True)
    cl.set_defaults(func=cmd_cleanup)
    run = sub.add_parser("run")
    run.add_argument("service", choices=["web", "worker", "cron"])
    run.set_defaults(func=cmd_run)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
