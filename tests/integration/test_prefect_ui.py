"""The Prefect UI the demo points at can reach its API: `/ui-settings` names this server's port."""

from __future__ import annotations

import json
import urllib.request

from tests.helpers import SHARED

pytestmark = SHARED  # the sandbox's shared stacks (tests/helpers.py)


def test_the_ui_is_told_the_api_address_of_this_server(prefect_api):
    base = prefect_api.removesuffix("/api")
    with urllib.request.urlopen(f"{base}/ui-settings", timeout=30) as response:
        settings = json.loads(response.read())
    assert settings["api_url"] == prefect_api
