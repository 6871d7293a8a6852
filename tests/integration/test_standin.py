"""The sandbox's Sentry stand-in behaves like real Sentry where sentry-ops depends on it (as read
in getsentry/sentry: src/sentry/middleware/health.py, src/sentry/runner/commands/; and in
getsentry/self-hosted's docker-compose.yml), on both layouts."""

from __future__ import annotations

import datetime as dt
import time

from blocks.layouts import Role
from tests.helpers import SHARED

pytestmark = SHARED  # the sandbox's shared stacks (tests/helpers.py)


def psql(host, query: str) -> str:
    """A query in the stack's Postgres container (local socket), for looking, not for flows."""
    stack = host.stack
    argv = host.exec_argv(
        Role.POSTGRES, "psql", "-U", stack.postgres_user, "-d", stack.postgres_db, "-tAc", query
    )
    return host.run(argv, timeout=60).text.strip()


def processed(host, event_id: str, within: float = 30) -> dict:
    deadline = time.monotonic() + within
    while (found := host.lookup_event(event_id)) is None:
        assert time.monotonic() < deadline, f"{event_id} was not processed"
        time.sleep(0.2)
    return found


def test_createuser_reports_an_existing_user_on_stdout_and_exits_0(layout_host):
    argv = layout_host.sentry_argv("createuser", "--email", "admin@sentry.local", "--superuser")
    result = layout_host.run(argv, stdin=b"x\nx\n", check=False)
    assert result.exit_code == 0
    assert "User: admin@sentry.local exists, use --force-update to force." in result.text
    assert layout_host.create_superuser("admin@sentry.local", "whatever") is False


def test_upgrade_is_idempotent_and_refuses_to_jump_a_hard_stop(layout_host):
    applied, out = layout_host.upgrade()
    assert not applied and "Already at" in out
    web = layout_host.stack.service(Role.WEB)
    jump = layout_host.compose_argv(
        "run", "--rm", "-T", "-e", "SENTRY_STANDIN_VERSION=25.1.0", web, "upgrade", "--noinput"
    )
    result = layout_host.run(jump, check=False, timeout=120)
    assert result.exit_code != 0 and "skips the hard stop 24.8.0" in result.stderr


def test_an_event_becomes_an_issue_a_nodestore_payload_and_a_clickhouse_row(layout_host):
    event_id = layout_host.send_event({"message": "KeyError: 'stand-in' ✓"})
    found = processed(layout_host, event_id)
    assert found["groupId"] and found["event"]["message"] == "KeyError: 'stand-in' ✓"
    title = psql(
        layout_host, "SELECT title FROM sentry_groupedmessage WHERE id = " + found["groupId"]
    )
    assert title == "KeyError: 'stand-in' ✓"
    assert psql(layout_host, "SELECT count(*) FROM sentry_message") == "0"  # unused, like Sentry
    nodes = psql(layout_host, "SELECT count(*) FROM nodestore_node WHERE id = '" + event_id + "'")
    # the guide era keeps payloads in Postgres; self-hosted 25.9+ in SeaweedFS
    assert nodes == ("1" if layout_host.layout == "guide" else "0")


def test_cleanup_removes_old_issues_and_payloads_and_keeps_new_ones(layout_host):
    old_when = (dt.datetime.now(dt.UTC) - dt.timedelta(days=40)).isoformat()
    old = layout_host.send_event({"message": "OldError: 40 days", "timestamp": old_when})
    new = layout_host.send_event({"message": "NewError: today"})
    processed(layout_host, old), processed(layout_host, new)
    out = layout_host.run(layout_host.sentry_argv("cleanup", "--days", "30"), timeout=300).text
    assert "Removed" in out
    assert layout_host.lookup_event(old) is None  # its payload is gone from the nodestore
    assert processed(layout_host, new)["event"]["message"] == "NewError: today"
    titles = psql(
        layout_host, "SELECT title FROM sentry_groupedmessage WHERE title LIKE '%Error: %'"
    )
    assert "OldError: 40 days" not in titles and "NewError: today" in titles
