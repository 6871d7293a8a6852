#!/usr/bin/python3
"""CLICKHOUSE SERVER STAND-IN for the sentry-ops sandbox: a modern ClickHouse engine (chDB, the
ClickHouse engine in-process, PyPI chdb-core-lite) behind the part of ClickHouse's HTTP interface
that clients use. Not clickhouse-server: Debian has no modern server package and no registry is
reachable here, so this is how the sandbox's self-hosted stack runs a ClickHouse of the 25.x/26.x
line (Atomic databases, `store/<uuid>` data paths, FREEZE WITH NAME, SYSTEM UNFREEZE disabled by
default) like self-hosted's own 25.3/25.8 servers, on the data directory its volume holds.

What it copies of ClickHouse's HTTP interface (ClickHouse/ClickHouse docs/en/interfaces/http.md,
src/Server/HTTPHandler.cpp), and what it leaves out:
- GET /ping and GET / answer "Ok.\\n".
- A query is the `query` parameter followed by the POST body (INSERT data inline after its
  FORMAT, as the interface takes it); the default output format is TabSeparated, a FORMAT clause
  of the query wins. `database` runs `USE` first; other settings parameters are ignored.
- An error answers HTTP 500 with "Code: N. DB::Exception: ..." and X-ClickHouse-Exception-Code
  (a real server picks 400/404/500 by the code; clients read any non-200 as an error).
- One query at a time (one engine connection under a lock): a real server runs many at once.
- No native protocol (port 9000): `clickhouse-client` in this image is a shim over HTTP.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, "/opt/chdb")
import _chdb  # the engine's extension module alone: no pandas, no pyarrow

LOCK = threading.Lock()
CONN = None
FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
BINARY_INSERT = re.compile(r"^\s*INSERT\b.*\bFORMAT\s+(Native|RowBinary\w*)\b", re.I | re.S)


def run(sql: str, database: str | None = None) -> tuple[bytes, str]:
    """(result bytes, format) of one query through the engine."""
    match = FORMAT.search(sql[:100000].rstrip())
    fmt = match.group(1) if match and not sql.lstrip().upper().startswith("INSERT") else None
    with LOCK:
        if database:
            CONN.query(f"USE `{database}`", "TabSeparated")
        result = CONN.query(sql, fmt or "TabSeparated")
        return result.bytes(), fmt or "TabSeparated"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args) -> None:  # quiet access log, as the server's
        pass

    def reply(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_query(self, body: bytes) -> None:
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        if url.path in ("/ping", "/") and "query" not in params and not body:
            return self.reply(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
        try:
            # INSERT data travels inline in the query text: text formats only (clickhouse-connect's
            # binary Native inserts are refused, never dropped)
            sql = "\n".join(p for p in (params.get("query", ""), body.decode()) if p)
            if BINARY_INSERT.search(sql[:10000]):
                raise RuntimeError(
                    "Code: 1001. DB::Exception: the sandbox's ClickHouse stand-in "
                    "takes INSERT data in text formats only (not Native/RowBinary)"
                )
            data, fmt = run(sql, params.get("database"))
        except Exception as exc:  # the engine raises RuntimeError("Code: N. DB::Exception: ...")
            message = str(exc)
            code = re.match(r"Code: (\d+)", message)
            headers = {"X-ClickHouse-Exception-Code": code.group(1) if code else "1001",
                       "Content-Type": "text/plain; charset=UTF-8"}  # fmt: skip
            return self.reply(500, (message.rstrip() + "\n").encode(), headers)
        summary = {"read_rows": "0", "read_bytes": "0", "written_rows": "0",
                   "written_bytes": "0", "total_rows_to_read": "0", "result_rows": "0"}  # fmt: skip
        headers = {
            "Content-Type": "text/plain; charset=UTF-8",
            "X-ClickHouse-Format": fmt,
            "X-ClickHouse-Timezone": "UTC",
            "X-ClickHouse-Server-Display-Name": "clickhouse",
            "X-ClickHouse-Query-Id": params.get("query_id", ""),
            "X-ClickHouse-Summary": json.dumps(summary),
        }
        self.reply(200, data, headers)

    def do_GET(self) -> None:
        self.handle_query(b"")

    def do_POST(self) -> None:
        if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Encoding"):
            self.close_connection = True  # its body is not read: the connection cannot go on
            message = (
                b"Code: 1001. DB::Exception: the sandbox's ClickHouse stand-in takes no "
                b"chunked or compressed request body (clickhouse-connect's inserts)\n"
            )
            return self.reply(500, message, {"X-ClickHouse-Exception-Code": "1001"})
        length = int(self.headers.get("Content-Length") or 0)
        self.handle_query(self.rfile.read(length) if length else b"")


def main() -> int:
    global CONN
    parser = argparse.ArgumentParser(prog="clickhouse-server-standin")
    parser.add_argument("--path", default="/var/lib/clickhouse")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--listen", default="127.0.0.1")
    args = parser.parse_args()
    CONN = _chdb.connect(args.path)
    server = ThreadingHTTPServer((args.listen, args.http_port), Handler)
    server.daemon_threads = True

    def stop(*_: object) -> None:  # PID 1 in its container: SIGTERM must end it
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"ClickHouse stand-in {run('SELECT version()')[0].decode().strip()} (chDB) on "
          f"{args.listen}:{args.http_port}, data in {args.path}", flush=True)  # fmt: skip
    server.serve_forever()
    with LOCK:
        CONN.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
