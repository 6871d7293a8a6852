"""The setup config: every mistake is named (table, key, fix) before anything changes, and the
deployments planned from prefect.yaml's templates carry each host's own parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.config import ConfigError, load_config
from deployments.deploy import as_refs, plan_deployments, templates

PINNED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILq2jpTrU6H31jVfJ/y/b491m480Mxrr69IiPK4bmBH5"
HOST = f"""
[hosts.sentry-1]
store = "main"
ssh = {{ host = "sentry-1.internal", private_key_file = "key", host_key = "{PINNED}" }}
project_dir = "/opt/sentry"
"""
STORE = """
[stores.main]
bucket = "sentry-backups"
access_key_id_file = "key"
secret_access_key_file = "key"
backup_key_file = "key"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nx\n")
    (tmp_path / "hook").write_text("http://127.0.0.1:1/hook\n")
    path = tmp_path / "hosts.toml"
    path.write_text(text)
    return path


def test_a_valid_config_reads_secrets_from_files_into_secret_fields(tmp_path):
    config = load_config(write(tmp_path, STORE + HOST + '[alerts]\nwebhook_url_file = "hook"\n'))
    host = config.hosts["sentry-1"]
    assert host.ssh.private_key.get_secret_value().startswith("-----BEGIN")
    assert "BEGIN" not in repr(host)
    assert config.webhook_url.get_secret_value() == "http://127.0.0.1:1/hook"
    assert config.host_store == {"sentry-1": "main"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            STORE + HOST.replace("project_dir", "projectdir"),
            "[hosts.sentry-1]: unknown key 'projectdir'",
        ),
        (STORE + HOST + 'postgres_password = "x"\n', "postgres_password: secrets are not written"),
        (
            STORE + HOST.replace('"key"', '"nope"'),
            "[hosts.sentry-1].ssh.private_key_file: cannot read",
        ),
        (
            STORE + HOST.replace('private_key_file = "key"', 'private_key = "k"'),
            "[hosts.sentry-1].ssh.private_key: secrets are not written",
        ),
        (
            STORE + HOST.replace("host = ", "hostname = "),
            "[hosts.sentry-1].ssh: unknown key 'hostname'",
        ),
        (STORE + HOST + 'layout = "selfhosted"\n', "[hosts.sentry-1]: layout:"),
        (STORE + HOST + 'project_dir = "opt"\n', "Cannot overwrite"),
        (HOST, "store = 'main' is not one of [stores.*] (none)"),
        (STORE + HOST.replace('store = "main"\n', ""), "store = None"),
        (STORE, "no [hosts.<name>] table"),
        (STORE + HOST + '[alerts]\nwebhook_url_file = "key"\n', "must hold an http(s) URL"),
        (STORE + HOST + '[prefect]\nwork_pool_type = "docker"\n', "needs image"),
        (STORE.replace("bucket", "bukket") + HOST, "[stores.main]: unknown key(s) ['bukket']"),
        (
            STORE + HOST + '[hosts.sentry-1.deployments.restore-drill]\ndrill_host = "d"\n',
            "drill_host = 'd'",
        ),
        ("[hostz]\n" + STORE + HOST, "unknown table(s) ['hostz']"),
        (STORE + HOST + "x = [", "not valid TOML"),
    ],
)
def test_each_mistake_is_named_with_where_it_is(tmp_path, text, expected):
    with pytest.raises((ConfigError, Exception)) as caught:
        load_config(write(tmp_path, text))
    assert isinstance(caught.value, ConfigError), caught.value
    assert expected in str(caught.value)


def test_a_relative_project_dir_is_refused_by_the_block(tmp_path):
    with pytest.raises(ConfigError, match=r"\[hosts.sentry-1\]: project_dir"):
        load_config(write(tmp_path, STORE + HOST.replace('"/opt/sentry"', '"opt/sentry"')))


def test_deployments_per_host_and_per_store_with_the_hosts_parameters(tmp_path):
    text = (
        STORE
        + HOST
        + 'admin_password_file = "key"\n'
        + "[hosts.sentry-1.deployments.health-check]\nmin_free_gb = 20\n"
        + "[hosts.sentry-1.deployments.autoscale]\nenabled = false\n"
        + HOST.replace("sentry-1", "sentry-2")
    )
    planned = plan_deployments(load_config(write(tmp_path, text)))
    by = {(d["flow_name"], d["name"]): d["parameters"] for d in planned}
    assert by["backup", "sentry-1"] == {"host": "sentry-1", "store": "main"}
    assert by["health-check", "sentry-1"]["min_free_gb"] == 20
    assert by["health-check", "sentry-2"]["min_free_gb"] == 5.0  # the template's
    assert by["bootstrap", "sentry-1"]["admin_password_secret"] == "sentry-1-admin-password"
    assert ("bootstrap", "sentry-2") not in by  # no admin password, no bootstrap deployment
    assert ("autoscale", "sentry-1") not in by and ("autoscale", "sentry-2") in by
    assert by["backup-retention", "main"] == {"store": "main"}
    assert by["fleet-backup", "main"] == {"store": "main", "hosts": ["sentry-1", "sentry-2"]}
    assert "sandbox" not in str(by)
    flows = {d["flow_name"] for d in planned}
    assert len(flows) == len(templates())  # every template made at least one deployment
    for d in planned:
        assert f"target:{d['name']}" in d["tags"]


def test_an_operation_that_is_not_a_hosts_is_refused(tmp_path):
    text = STORE + HOST + "[hosts.sentry-1.deployments.nightly-backup]\nretries = 3\n"
    with pytest.raises(ConfigError, match=r"\['nightly-backup'\] are not operations of a host"):
        plan_deployments(load_config(write(tmp_path, text)))


def test_a_parameter_the_flow_does_not_take_is_refused(tmp_path):
    text = STORE + HOST + "[hosts.sentry-1.deployments.backup]\nretention = 3\n"
    with pytest.raises(ConfigError, match=r"backup/sentry-1: \['retention'\] are not parameters"):
        plan_deployments(load_config(write(tmp_path, text)))


def test_the_sample_config_loads_once_its_placeholders_are_filled(tmp_path):
    sample = (
        Path(__file__).resolve().parents[2] / "deployments" / "hosts.example.toml"
    ).read_text()
    real_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILq2jpTrU6H31jVfJ/y/b491m480Mxrr69IiPK4bmBH5"
    (tmp_path / "hosts.toml").write_text(sample.replace('"ssh-ed25519 AAAA..."', f'"{real_key}"'))
    (tmp_path / "secrets").mkdir()
    for name in ("webhook-url", "s3-access-key-id", "s3-secret-access-key", "backup-key",
                 "id_ed25519", "sentry-1-db-password", "sentry-1-admin-password"):  # fmt: skip
        (tmp_path / "secrets" / name).write_text("https://hooks.example.com/" + "x" * 40)
    config = load_config(tmp_path / "hosts.toml")
    assert list(config.hosts) == ["sentry-1"] and list(config.stores) == ["main"]
    planned = {(d["flow_name"], d["name"]): d["parameters"] for d in plan_deployments(config)}
    assert planned["bootstrap", "sentry-1"]["admin_email"] == "ops@example.com"
    assert planned["health-check", "sentry-1"]["min_free_gb"] == 20


def test_block_parameters_become_references_to_the_saved_blocks():
    ids = {
        ("host", "sentry-1"): "h1",
        ("store", "main"): "s1",
        ("secret", "sentry-1-admin-password"): "p1",
    }
    params = {
        "host": "sentry-1", "store": "main", "drill_host": "nowhere", "hosts": ["sentry-1"],
        "admin_password_secret": "sentry-1-admin-password", "retries": 2,
    }  # fmt: skip
    assert as_refs(params, ids) == {
        "host": {"$ref": {"block_document_id": "h1"}},
        "store": {"$ref": {"block_document_id": "s1"}},
        "drill_host": "nowhere",  # not a saved block: left as the name (the flow loads it)
        "hosts": ["sentry-1"],  # a fleet's list stays names
        "admin_password_secret": {"$ref": {"block_document_id": "p1"}},
        "retries": 2,
    }
