#!/usr/bin/python3
"""SNUBA STAND-IN for the sentry-ops sandbox (not Snuba): what self-hosted's `snuba-api` service
does that sentry-ops depends on.

- `snuba bootstrap --force` creates Snuba's ClickHouse tables, views and materialized views in
  CLICKHOUSE_DATABASE (`default` unless set: the guide stack's Snuba uses `sentry`), as Snuba's
  migrations at the pinned tag leave them: the statements are upstream's own (snuba_tables.json in
  this image: getsentry/snuba's migrations at 26.8.0, the tag getsentry/self-hosted 26.8.0 pins,
  read back from system.tables; the conformance fixture
  tests/conformance/fixtures/snuba_clickhouse_tables.json, copied in at build time). Like Snuba's
  runner it is idempotent: what exists is left alone, what is missing is created, every table
  before the views that read or write it; a ClickHouse older than Snuba's minimum (23.8.11.29) is
  refused. self-hosted runs it from install.sh (install/bootstrap-snuba.sh @26.8.0: `$dcr
  snuba-api bootstrap --force`).
- `snuba api` serves GET /health on SNUBA_PORT: 200 once ClickHouse answers and every table is
  there, else 502 naming what is missing (snuba/web/views.py health's `down_file`/`clickhouse`
  checks, loosely: the sandbox's web never calls it).
Events reach errors_local through the Sentry stand-in's worker (a real stack goes Relay -> Kafka
-> Snuba's errors consumer): the row it writes has Snuba's columns.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TABLES = "/usr/src/snuba/snuba_tables.json"
# Snuba's ClickHouse database (snuba/settings/__init__.py CLUSTERS: CLICKHOUSE_DATABASE, default
# "default"); the fixture's statements name `default`, moved here to this one
DATABASE = os.environ.get("CLICKHOUSE_DATABASE", "default")
# the oldest ClickHouse Snuba 26.8.0 runs on (snuba/migrations/clickhouse.py
# CLICKHOUSE_SERVER_MIN_VERSION): older servers are refused, as the real one does
MIN_VERSION = (23, 8, 11, 29)


def clickhouse(query: str) -> str:
    port = os.environ["CLICKHOUSE_HTTP_PORT"]
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=query.encode())
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.read().decode()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(exc.read().decode("utf-8", "replace")) from None


def objects() -> list[dict]:
    """Snuba's tables, then its views (each after the tables it reads and writes)."""
    with open(TABLES) as f:
        sample = json.load(f)["sample"]
    return sample["tables"] + sample["views"]


def in_database(create: str) -> str:
    """A statement of the fixture (database `default`) for DATABASE."""
    create = re.sub(r"(?<![\w`'])default\.(?=[a-z_])", f"{DATABASE}.", create)
    return create.replace("Merge('default',", f"Merge('{DATABASE}',")


def check_version() -> None:
    version = clickhouse("SELECT version()").strip()
    if tuple(int(x) for x in re.findall(r"\d+", version)[:4]) < MIN_VERSION:
        raise SystemExit(f"ClickHouse {version} is not supported: Snuba needs "
                         f"{'.'.join(map(str, MIN_VERSION))} or later")  # fmt: skip


def missing() -> list[str]:
    have = set(clickhouse(f"SELECT name FROM system.tables WHERE database = '{DATABASE}'").split())
    return [o["name"] for o in objects() if o["name"] not in have]


def bootstrap() -> int:
    check_version()
    clickhouse(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    todo = set(missing())
    for obj in objects():
        if obj["name"] in todo:
            clickhouse(in_database(obj["create"]))
    print(f"Finished running migrations ({len(todo)} created, "
          f"{len(objects()) - len(todo)} already there)")  # fmt: skip
    return 0


class Health(BaseHTTPRequestHandler):
    def log_message(self, fmt: str, *args) -> None:
        pass

    def do_GET(self) -> None:
        try:
            gone = missing() if urllib.parse.urlsplit(self.path).path == "/health" else None
            code, body = (
                (404, "not found")
                if gone is None
                else (
                    (200, '{"status":"ok"}') if not gone else (502, json.dumps({"missing": gone}))
                )
            )
        except Exception as exc:  # ClickHouse down
            code, body = 502, json.dumps({"clickhouse": str(exc)[:200]})
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def api() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["SNUBA_PORT"])), Health)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()
    return 0


def main(argv: list[str]) -> int:
    verb = argv[0] if argv else ""
    if verb == "bootstrap":
        return bootstrap()
    if verb == "api":
        return api()
    print("usage: snuba bootstrap [--force] | snuba api", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
