"""Prefect's own block standards suite for sentry-ops' blocks: a description, a documentation URL,
every field described (ending with a period), a code example that loads the block by name.
The logo: none (decided: an operator's UI often has no internet, and a remote logo then shows as
a broken image; an offline one would need a data: URL, which Prefect's client refuses)."""

from __future__ import annotations

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from blocks.backup_store import BackupStore
from blocks.sentry_host import SentryHost
from blocks.ssh_connection import SSHConnection


class TestSentryHost(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return SentryHost

    def test_has_a_valid_image(self, block: type[Block]) -> None:
        assert block._logo_url is None  # no logo rather than a broken one offline


class TestBackupStore(TestSentryHost):
    @pytest.fixture
    def block(self) -> type[Block]:
        return BackupStore


class TestSSHConnection(TestSentryHost):
    @pytest.fixture
    def block(self) -> type[Block]:
        return SSHConnection


def test_the_block_forms_check_what_the_schema_can():
    """The UI validates a form against the block's schema before saving it."""
    schema = SentryHost.model_json_schema()
    props = schema["properties"]
    assert props["layout"]["enum"] == ["guide", "self-hosted"]  # a select, not free text
    assert props["project_dir"]["pattern"] == "^/"
    ssh = SSHConnection.model_json_schema()["properties"]
    assert (ssh["port"]["minimum"], ssh["port"]["maximum"]) == (1, 65535)
    for port in ("web_port", "redis_port", "clickhouse_port", "clickhouse_http_port"):
        assert (props[port]["minimum"], props[port]["maximum"]) == (1, 65535), port
    store = BackupStore.model_json_schema()["properties"]
    assert store["retention_days"]["minimum"] == 1 and store["min_keep"]["minimum"] == 1
    assert set(store["server_side_encryption"]["anyOf"][0]["enum"]) == {"AES256", "aws:kms"}
