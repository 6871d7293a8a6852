"""The sandbox's Sentry stand-in answers as upstream does (the same fixtures the product is
replayed against, tests/conformance/fixtures/), on both layouts: a stand-in kinder than Sentry
would let a flow pass here that fails on a real host."""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import time
import uuid

import pytest
from pydantic import SecretStr

from blocks import nodestore
from blocks.layouts import Role
from blocks.ssh import RemoteCommandError
from tests.conformance.corpus import load, sample
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
    existing = sample("sentry_cli_outputs", "createuser_existing")
    argv = layout_host.sentry_argv("createuser", "--email", "admin@sentry.local", "--superuser")
    result = layout_host.run(argv, stdin=b"x\nx\n", check=False)
    assert result.exit_code == existing["exit_code"]
    assert result.text == existing["stdout"].replace("admin@example.com", "admin@sentry.local")
    assert layout_host.create_superuser("admin@sentry.local", "whatever") is False


def test_version_prints_the_build_as_official_images_do(layout_host):
    pattern = sample("sentry_cli_outputs", "version")["stdout_pattern"]
    out = layout_host.run(layout_host.sentry_version_argv(), timeout=120).text
    assert re.match(pattern, out), out
    assert layout_host.running_version() == out.split()[-1].split("+")[0]


def test_upgrade_is_idempotent_and_refuses_to_jump_a_hard_stop(layout_host):
    cli = sample("sentry_cli_outputs")
    applied, out = layout_host.upgrade()
    assert not applied and out == cli["upgrade_noinput_up_to_date"]["stdout"].replace(
        "<comma-separated app labels>", "sentry"
    )
    web = layout_host.stack.service(Role.WEB)
    jump = layout_host.compose_argv(
        "run", "--rm", "-T", "-e", "SENTRY_STANDIN_VERSION=25.1.0", web, "upgrade", "--noinput"
    )
    result = layout_host.run(jump, check=False, timeout=120)
    refused = cli["upgrade_skipped_hard_stop"]
    # compose may add its own lines to stderr; Sentry's is there whole, its last
    assert result.exit_code == refused["exit_code"]
    assert result.stderr.rstrip().endswith(refused["stderr"].rstrip()), result.stderr


def test_health_answers_as_current_sentry(layout_host):
    for case in ("plain", "full"):
        want = sample("sentry_health_full_ok", case)
        status, body = layout_host.web_request(want["request"].split()[1])
        assert (status, body.decode()) == (want["status"], want["body"]), case


def test_the_event_lookup_wants_org_read_and_answers_as_sentry(layout_host):
    answers = sample("sentry_eventids_response")
    event_id = layout_host.send_event({"message": "ValueError: conformance"})
    found = processed(layout_host, event_id)
    assert set(answers["ok"]["body"]) <= set(found)
    assert found["eventId"] == event_id and re.fullmatch(r"[0-9a-f]{32}", event_id)
    assert isinstance(found["groupId"], str)
    status, body = layout_host.web_request(
        f"/api/0/organizations/{layout_host.organization}/eventids/{'0' * 32}/",
        headers={"Authorization": f"Bearer {layout_host.api_token.get_secret_value()}"},
    )
    assert (status, json.loads(body)) == (answers["not_found"]["status"],
                                          answers["not_found"]["body"])  # fmt: skip
    # a token of the same user with event:read only (what the README used to ask for)
    token = secrets.token_hex(32)
    psql(layout_host, "INSERT INTO sentry_apitoken (user_id, token, scope_list) SELECT user_id, "
         f"'{token}', 'event:read' FROM sentry_apitoken LIMIT 1")  # fmt: skip
    narrow = layout_host.model_copy(update={"api_token": SecretStr(token)})
    with pytest.raises(RemoteCommandError, match="lacks the org:read scope"):
        narrow.lookup_event(event_id)
    status, body = narrow.web_request(
        f"/api/0/organizations/{layout_host.organization}/eventids/{event_id}/",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert (status, json.loads(body)) == (answers["forbidden"]["status"],
                                          answers["forbidden"]["body"])  # fmt: skip


def test_an_event_becomes_an_issue_a_nodestore_payload_and_a_clickhouse_row(layout_host):
    event_id = layout_host.send_event({"message": "KeyError: 'stand-in' ✓"})
    found = processed(layout_host, event_id)
    assert found["groupId"] and found["event"]["message"] == "KeyError: 'stand-in' ✓"
    title = psql(
        layout_host, "SELECT title FROM sentry_groupedmessage WHERE id = " + found["groupId"]
    )
    assert title == "KeyError: 'stand-in' ✓"
    assert psql(layout_host, "SELECT count(*) FROM sentry_message") == "0"  # unused, like Sentry
    # the guide era keeps payloads in Postgres (as Sentry writes them); self-hosted 25.9+ in
    # SeaweedFS
    project = int(psql(layout_host, f"SELECT project_id FROM sentry_groupedmessage WHERE id = "
                       f"{found['groupId']}"))  # fmt: skip
    key = nodestore.node_id(project, event_id)
    data = psql(layout_host, f"SELECT data FROM nodestore_node WHERE id = '{key}'")
    if layout_host.layout == "guide":
        assert nodestore.decode(data)["message"] == "KeyError: 'stand-in' ✓"
    else:
        assert data == ""


def test_cleanup_removes_old_issues_and_payloads_and_keeps_new_ones(layout_host):
    old_when = (dt.datetime.now(dt.UTC) - dt.timedelta(days=40)).isoformat()
    old = layout_host.send_event({"message": "OldError: 40 days", "timestamp": old_when})
    new = layout_host.send_event({"message": "NewError: today"})
    processed(layout_host, old), processed(layout_host, new)
    out = layout_host.run(layout_host.sentry_argv("cleanup", "--days", "30"), timeout=300).text
    last = sample("sentry_cli_outputs", "cleanup_silent")["stdout"]
    assert re.fullmatch(re.sub(r"\d+", r"\\d+", re.escape(last)), out.splitlines(True)[-1])
    assert layout_host.lookup_event(old) is None  # its payload is gone from the nodestore
    assert processed(layout_host, new)["event"]["message"] == "NewError: today"
    titles = psql(
        layout_host, "SELECT title FROM sentry_groupedmessage WHERE title LIKE '%Error: %'"
    )
    assert "OldError: 40 days" not in titles and "NewError: today" in titles


def test_the_s3_nodestore_reads_postgres_payloads_only_when_told_to(sandbox):
    """self-hosted's S3 passthrough nodestore: a payload that is only in nodestore_node (a
    database restored from the guide era) is read, and cleaned up, only with read_through and
    delete_through in sentry.conf.py (fixture selfhosted_sentry_conf_nodestore: off in the
    example config a fresh install copies)."""
    import base64
    import zlib
    from pathlib import Path

    from blocks import sentry_config
    from infra.sandbox.prefect_blocks import host_from_connection

    host = host_from_connection(sandbox, "self-hosted")
    event_id = uuid.uuid4().hex
    project = int(psql(host, "SELECT id FROM sentry_project WHERE slug = 'internal'"))
    body = json.dumps({"event_id": event_id, "message": "GuideEra: in Postgres"}).encode()
    data = base64.b64encode(zlib.compress(body)).decode()
    key = nodestore.node_id(project, event_id)
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=400)).isoformat()
    psql(host, f"INSERT INTO nodestore_node (id, data, timestamp) VALUES ('{key}', '{data}', "
               f"'{old}')")  # fmt: skip
    # a row of Snuba's errors_local (fixture snuba_clickhouse_tables.json: the columns without
    # a default), as its errors consumer writes it
    columns = (
        "project_id, timestamp, event_id, platform, group_id, primary_hash, received, "
        "message_timestamp, retention_days, deleted, message, title, level, type"
    )
    row = (
        f"({project}, now(), '{uuid.UUID(event_id)}', 'python', 1, generateUUIDv4(), now(), "
        "now(), 90, 0, 'GuideEra: in Postgres', 'GuideEra: in Postgres', 'error', 'error')"
    )
    insert = f"INSERT INTO default.errors_local ({columns}) VALUES {row}"
    port = str(host.clickhouse_port)
    argv = host.exec_argv(Role.CLICKHOUSE, "clickhouse-client", "--port", port, "-q", insert)
    host.run(argv, timeout=60)
    conf = Path(host.project_dir, "sentry", "sentry.conf.py")
    original = conf.read_text()
    try:
        assert sentry_config.nodestore_reads_through(original) is False
        # Sentry answers for the event (its Snuba row), its payload empty: not a readable event
        status, body = host.web_request(
            f"/api/0/organizations/{host.organization}/eventids/{event_id}/",
            headers={"Authorization": f"Bearer {host.api_token.get_secret_value()}"},
        )
        assert status == 200 and not json.loads(body)["event"].get("message"), body
        assert host.lookup_event(event_id) is None
        conf.write_text(sentry_config.with_nodestore_read_through(original))
        assert processed(host, event_id)["event"]["message"] == "GuideEra: in Postgres"
        host.run(host.sentry_argv("cleanup", "--days", "90"), timeout=300)
        assert psql(host, f"SELECT count(*) FROM nodestore_node WHERE id = '{key}'") == "0"
    finally:
        conf.write_text(original)
        psql(host, f"DELETE FROM nodestore_node WHERE id = '{key}'")


def test_self_hosted_clickhouse_is_modern_and_holds_snubas_tables(sandbox):
    """self-hosted runs ClickHouse 25.x with the tables Snuba's migrations make (fixture
    snuba_clickhouse_tables.json, Snuba 26.8.0): the sandbox's self-hosted ClickHouse is of that
    line (Atomic database, store/<uuid> paths, SYSTEM UNFREEZE off as a server's default) and
    holds exactly those tables, views and engines; an event's row is Snuba's."""
    from blocks import clickhouse
    from infra.sandbox.prefect_blocks import host_from_connection

    host = host_from_connection(sandbox, "self-hosted")
    snuba = sample("snuba_clickhouse_tables")
    assert all(v["create"].startswith("CREATE MATERIALIZED VIEW") for v in snuba["views"])
    expected = {(t["name"], t["engine"]) for t in snuba["tables"]}
    expected |= {(v["name"], "MaterializedView") for v in snuba["views"]}
    with clickhouse.connect(host) as (client, version):
        assert int(version.split(".")[0]) >= 25, version
        # a server's `default` is Atomic; chDB's own `default` is an Overlay over one (its
        # tables are Atomic's: store/<uuid> paths, checked below); a created database is Atomic
        engine = client.rows("SELECT engine FROM system.databases WHERE name = 'default'")
        assert engine in ([("Atomic",)], [("Overlay",)]), engine
        have = client.rows("SELECT name, engine, data_paths FROM system.tables "
                           "WHERE database = 'default'")  # fmt: skip
        assert {(name, eng) for name, eng, _ in have} == expected
        paths = [p for _, eng, ps in have if eng.endswith("MergeTree") for p in ps]
        assert paths and all("/store/" in p for p in paths), paths
        with pytest.raises(Exception, match="enable_system_unfreeze"):
            client.command("SYSTEM UNFREEZE WITH NAME 'none'")
        event_id = host.send_event({"message": "SnubaRow: columns", "platform": "python"})
        processed(host, event_id)
        row = client.rows(
            "SELECT toString(event_id), platform, retention_days, deleted, group_id > 0 "
            f"FROM default.errors_local WHERE event_id = toUUID('{event_id}')"
        )
    assert row == [(str(uuid.UUID(event_id)), "python", 90, 0, True)]


def test_web_takes_no_events_relay_does(layout_host):
    """Sentry has no Python store endpoint since 2020 (getsentry/sentry#19135, in the notes of
    fixture sentry_store_response.json): web answers 404 to an SDK's event; Relay (the DSN's
    port on the guide stack, nginx's route to it on self-hosted) takes it with the store
    response."""
    from blocks.dotenv import parse_env

    assert "#19135" in load("sentry_store_response").notes
    env = parse_env(layout_host.get(f"{layout_host.project_dir}/.env").decode())
    web = int(env["WEB_PORT"]) if layout_host.layout == "self-hosted" else layout_host.web_port
    dsn = layout_host.probe_dsn.get_secret_value()
    key, project = re.match(r"https?://(\w+)@[^/]+/(\d+)$", dsn).groups()
    status, body = layout_host.web_request(
        f"/api/{project}/store/", data=b"{}", port=web,
        headers={"X-Sentry-Auth": f"Sentry sentry_version=7, sentry_key={key}"},
    )  # fmt: skip
    assert status == 404, body
    event_id = layout_host.send_event({"message": "RelayOnly: through Relay"})
    assert re.fullmatch(r"[0-9a-f]{32}", event_id)
    assert processed(layout_host, event_id)["event"]["message"] == "RelayOnly: through Relay"
