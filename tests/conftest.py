"""Fixtures: the sandbox (real sshd, Docker, containers, S3) and one real Prefect API per session.

Nothing here skips: if the sandbox cannot come up, every integration test errors, loudly.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "0")


@pytest.fixture(scope="session")
def sandbox() -> dict:
    from infra.sandbox import sandbox as sb

    return sb.up()


@pytest.fixture(scope="session")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture()
def sentry_host(sandbox):
    from deployments.setup import host_from_connection

    return host_from_connection(sandbox)


@pytest.fixture()
def saved_host(sandbox, prefect_api) -> str:
    from deployments.setup import save_blocks

    save_blocks(sandbox, "test-sandbox")
    return "test-sandbox"
