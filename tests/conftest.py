"""Fixtures: the sandbox (real sshd, Docker, containers, S3) and one real Prefect API per session.

Nothing here skips: if the sandbox cannot come up, every integration test errors, loudly.
"""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest

from tests.helpers import EVENTS, LAYOUTS, PREFECT_SERVER, free_port, insert_nodes

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "0")
# a killed run's host lock (a 60 s lease, Prefect's minimum) is freed by the server's repossessor
# within 5 s of its expiry instead of 15
os.environ.setdefault("PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS", "5")


@pytest.fixture(scope="session")
def sandbox() -> dict:
    from infra import sandbox as sb

    return sb.up()


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory, sandbox):
    """A real Prefect server for the session (`prefect server start`, its own database on the
    sandbox's PostgreSQL, leases on disk in a temp home, with its services: a killed run's lock
    lease expires), stopped by its PID at the end and its database dropped."""
    from prefect.context import refresh_global_settings_context

    from infra import sandbox as sb

    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    pidfile = home / "server.pid"
    database = sb.prefect_database(f"prefect_tests_{port}")
    url = sb.start_prefect_server(home, port, pidfile, home / "server.log", database)
    PREFECT_SERVER.update(
        home=home, port=port, pidfile=pidfile, log=home / "server.log", database=database
    )
    # for every thread and child process: the process's settings, not a context-local override
    os.environ["PREFECT_API_URL"] = url
    refresh_global_settings_context()
    try:
        yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        refresh_global_settings_context()
        sb.stop_pid(pidfile, "the tests' Prefect server")
        sb.prefect_database(f"prefect_tests_{port}", drop=True)


@pytest.fixture()
def sentry_host(sandbox):
    """The guide-layout sandbox host."""
    from infra.sandbox.prefect_blocks import host_from_connection

    return host_from_connection(sandbox, "guide")


@pytest.fixture()
def saved_host(sandbox, prefect_api) -> str:
    from infra.sandbox.prefect_blocks import save_blocks

    save_blocks(sandbox, "test-sandbox", "guide")
    return "test-sandbox"


@pytest.fixture(params=LAYOUTS)
def layout(request) -> str:
    return request.param


@pytest.fixture()
def layout_host(sandbox, layout):
    """The sandbox host of the parametrized layout."""
    from infra.sandbox.prefect_blocks import host_from_connection

    return host_from_connection(sandbox, layout)


@pytest.fixture()
def saved_layout_host(sandbox, prefect_api, layout) -> str:
    from infra.sandbox.prefect_blocks import save_blocks

    name = f"test-{layout}"
    save_blocks(sandbox, name, layout)
    return name


@pytest.fixture()
def store_name(sandbox, prefect_api) -> str:
    """A store block with a prefix of its own, so tests never see each other's backups."""
    from infra.sandbox.prefect_blocks import store_from_connection

    name = f"test-{uuid.uuid4().hex[:8]}"
    store_from_connection(sandbox, prefix=name).save(name, overwrite=True)
    return name


@pytest.fixture()
def bare_host(sandbox, prefect_api):
    """A bare host: a project dir that does not exist yet, on ports of its own (slot 2)."""
    import secrets

    from prefect.blocks.system import Secret

    from infra import sandbox as sb
    from infra.sandbox.prefect_blocks import host_from_connection

    name = f"boot{uuid.uuid4().hex[:6]}"
    stack = sb.stack_info("guide", name, 2)
    host = host_from_connection({**sandbox, "stacks": {"guide": stack}})
    host.save(name, overwrite=True)
    password = secrets.token_urlsafe(16)
    Secret(value=password).save(f"{name}-admin", overwrite=True)
    yield {"name": name, "host": host, "stack": stack, "password": password}
    sb.remove_stack(name)


@pytest.fixture(scope="session")
def seeded(sandbox) -> int:
    """The guide stack with >= 100k event payloads in its Postgres nodestore (unicode, large ones,
    incompressible ones, all within 30 days) and 500 issues, where real Sentry keeps them."""
    from blocks import postgres
    from infra.sandbox.prefect_blocks import host_from_connection

    host = host_from_connection(sandbox, "guide")
    with postgres.psql(host) as db:
        if int(db.value("SELECT count(*) FROM nodestore_node")) < EVENTS:
            db.rows(
                "INSERT INTO sentry_organization (slug, name) VALUES ('acme', 'Acmé GmbH ✓') "
                "ON CONFLICT DO NOTHING"
            )
            project = db.value(
                "INSERT INTO sentry_project (organization_id, slug, name) SELECT id, 'web', "
                "'Wéb 🚀' FROM sentry_organization WHERE slug = 'acme' "
                "ON CONFLICT (organization_id, slug) DO UPDATE SET name = excluded.name "
                "RETURNING id"
            )
            db.rows(
                "INSERT INTO sentry_groupedmessage (project_id, title, culprit, level, "
                f"first_seen, last_seen) SELECT {project}, 'Ошибка ' || g || ' — ünïcødé', "
                "CASE WHEN g % 3 = 0 THEN NULL ELSE 'app.views.' || g END, 'error', "
                "now() - interval '20 days', now() FROM generate_series(1, 500) g "
                "ON CONFLICT DO NOTHING"
            )
            # rows as Sentry writes them (base64 of zlib, tests/conformance/fixtures/
            # sentry_nodestore_row.json): every 1000th a 256 KB payload of random text
            insert_nodes(db, ((hashlib.md5(f"e{i}".encode()).hexdigest(), {
                "blob": os.urandom(128 << 10).hex()} if i % 1000 == 0 else {
                "exception": f"ValueError: {i} ✗ ñ 漢字 " + f"frame {i}" * 20},
                i % 600) for i in range(1, EVENTS + 1)))  # fmt: skip
        if int(db.value("SELECT count(*) FROM nodestore_node WHERE id LIKE 'rand-%'")) < 3000:
            # incompressible payloads: the dump spans several S3 parts
            insert_nodes(db, ((f"rand-{i}", {"r": os.urandom(8000).hex()}, 24)
                              for i in range(1, 3001)))  # fmt: skip
        users = int(db.value("SELECT count(*) FROM auth_user"))
    assert users >= 1  # the sandbox's admin, made by the stand-in's `sentry createuser`
    return EVENTS
