"""Block validation and the argv the block builds (commands are data)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from blocks.host_compose import name_problems
from blocks.host_docker import listening_ports
from blocks.layouts import GUIDE, SELF_HOSTED, DataVolume, Role, default_project_name, get_layout
from blocks.sentry_host import ComposeContext, SentryHost, resolve_context
from blocks.ssh import quote
from blocks.ssh_connection import SSHConnection


def keypair() -> tuple[str, str]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return private, public


def make_host(**overrides) -> SentryHost:
    """A host block; `ssh.<field>` overrides go to its SSH Connection block."""
    private, public = keypair()
    ssh = {"host": "sentry-1.example.internal", "private_key": private, "host_key": public}
    ssh |= {k.removeprefix("ssh."): v for k, v in overrides.items() if k.startswith("ssh.")}
    fields = {"project_dir": "/opt/sentry"}
    fields |= {k: v for k, v in overrides.items() if not k.startswith("ssh.")}
    return SentryHost(ssh=SSHConnection(**ssh), **fields)


def test_defaults_are_the_guide_layout():
    host = make_host()
    assert host.ssh.port == 22 and host.layout == "guide"
    assert host.stack == GUIDE


def test_names_are_per_host_and_validated():
    host = make_host(
        service_names={"worker": "my-worker"},
        volume_names={"files": "ridehailing_files"},
        postgres_user="app",
    )
    assert host.stack.service(Role.WORKER) == "my-worker"
    assert host.stack.service(Role.WEB) == "sentry"  # the rest stays the preset's
    assert host.stack.postgres_user == "app" and host.stack.postgres_db == "sentry"
    host.use_context(ComposeContext("ridehailing"))
    assert host.volume_name(DataVolume.FILES) == "ridehailing_ridehailing_files"
    for bad in (
        {"service_names": {"worker": "bad name"}},
        {"volume_names": {"files": "../x"}},
        {"postgres_user": "x; DROP TABLE"},
        {"secret_key_env": "A-B"},
        {"project_name": "Upper Case"},
    ):
        with pytest.raises(ValidationError):
            make_host(**bad)


def test_project_name_resolves_like_compose():
    assert resolve_context("/opt/Sentry.Prod", None, "", False).project == "sentryprod"
    env = "COMPOSE_PROJECT_NAME=sentry-self-hosted\n"
    ctx = resolve_context("/opt/self-hosted", None, env, True)
    assert ctx.project == "sentry-self-hosted"
    assert ctx.env_files == ("/opt/self-hosted/.env", "/opt/self-hosted/.env.custom")
    assert resolve_context("/opt/x", "given", env, False).project == "given"
    assert default_project_name("/srv/_my app!") == "myapp"


def test_compose_argv_adds_env_custom_when_the_install_has_one():
    host = make_host(layout="self-hosted", project_dir="/opt/sentry")
    host.use_context(
        ComposeContext("sentry-self-hosted", ("/opt/sentry/.env", "/opt/sentry/.env.custom"))
    )
    assert host.compose_argv("ps") == [
        "docker", "compose", "--project-directory", "/opt/sentry",
        "--env-file", "/opt/sentry/.env", "--env-file", "/opt/sentry/.env.custom",
        "-p", "sentry-self-hosted", "ps",
    ]  # fmt: skip


def test_name_problems_name_the_missing_service_or_volume_and_the_field():
    config = {
        "services": {s: {} for s in GUIDE.services.values() if s != "sentry-cron"},
        "volumes": {"sentry_data": {}, "sentry_postgres_data": {}},
    }
    problems = name_problems(GUIDE, config, (DataVolume.FILES, DataVolume.CLICKHOUSE))
    assert len(problems) == 2
    assert "service 'sentry-cron' (role cron)" in problems[0]
    assert "set service_names.cron in the block" in problems[0]
    assert "volume 'sentry_clickhouse_data' (clickhouse)" in problems[1]
    assert "set volume_names.clickhouse" in problems[1]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ssh.host", "", "ssh host must be a non-empty word"),
        ("ssh.host", "  ", "ssh host must be a non-empty word"),
        ("ssh.port", 0, "ssh port must be a TCP port 1-65535"),
        ("ssh.port", 70000, "ssh port must be a TCP port 1-65535"),
        ("layout", "kubernetes", "Input should be 'guide' or 'self-hosted'"),
        ("project_dir", "sentry", "project_dir must be an absolute path"),
        ("ssh.host_key", "not-a-key", "a pinned host key looks like 'ssh-ed25519"),
    ],
)
def test_bad_fields_are_rejected_with_a_message(field, value, message):
    with pytest.raises(ValidationError) as info:
        make_host(**{field: value})
    assert message in str(info.value)
    assert field.removeprefix("ssh.") in str(info.value)


def test_secret_key_is_not_in_repr():
    host = make_host()
    secret = host.ssh.private_key.get_secret_value()
    assert secret.splitlines()[1] not in repr(host)
    assert secret.splitlines()[1] not in str(host.model_dump())


def test_known_hosts_line_is_accepted_as_pin():
    _, public = keypair()
    assert make_host(**{"ssh.host_key": f"[10.0.0.5]:2222 {public}"}).ssh.host_key


def test_compose_and_probe_argv():
    host = make_host(project_name="prod", postgres_port=15432).use_context(ComposeContext("prod"))
    assert host.compose_argv("ps") == [
        "docker",
        "compose",
        "--project-directory",
        "/opt/sentry",
        "-p",
        "prod",
        "ps",
    ]
    argv = host.probe_argv(Role.POSTGRES)
    assert (
        argv[-11:]
        == [
            "exec",
            "-T",
            "sentry-postgres",
            "pg_isready",
            "-h",
            "127.0.0.1",
            "-p",
            "15432",
            "-U",
            "sentry",
            "-d",
            "sentry",
        ][-11:]
    )
    selfhosted = make_host(layout="self-hosted").use_context(ComposeContext("sentry-self-hosted"))
    assert selfhosted.probe_argv(Role.REDIS)[-5:] == ["redis", "redis-cli", "-p", "6379", "ping"]
    # no port in the block: pg_isready uses the container's own (trust auth, unpublished)
    assert selfhosted.probe_argv(Role.POSTGRES)[-7:] == [
        "pg_isready", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"
    ]  # fmt: skip


def test_quote_is_the_one_place_argv_becomes_a_line():
    assert quote(["echo", "a b", "$HOME", "it's"]) == "echo 'a b' '$HOME' 'it'\"'\"'s'"
    with pytest.raises(ValueError):
        quote([])


def test_layout_presets_match_shared_layouts():
    assert GUIDE.service(Role.WORKER) == "sentry-worker"
    assert SELF_HOSTED.service(Role.WORKER) == "taskworker"
    assert SELF_HOSTED.service(Role.CRON) == "taskscheduler"
    assert SELF_HOSTED.service(Role.NODESTORE) == "seaweedfs"
    assert GUIDE.volumes[DataVolume.FILES].docker_name("ridehailing") == "ridehailing_sentry_data"
    assert GUIDE.volumes[DataVolume.CLICKHOUSE].name == "sentry_clickhouse_data"
    assert GUIDE.postgres_password_env == "SENTRY_DB_PASSWORD"
    assert "relay/credentials.json" in SELF_HOSTED.config_files
    assert SELF_HOSTED.clickhouse_database == "default"
    assert SELF_HOSTED.volumes[DataVolume.POSTGRES].docker_name("x") == "sentry-postgres"
    assert DataVolume.NODESTORE in SELF_HOSTED.backup_volumes
    assert GUIDE.role_of("sentry-cron") is Role.CRON
    with pytest.raises(ValueError, match="choose one of"):
        get_layout("nope")


def test_remove_tree_refuses_shallow_or_relative_paths_before_any_io():
    host = make_host()
    for path in ("/", "/opt", "opt/sentry-drill", "/opt/../"):
        with pytest.raises(ValueError, match="refusing to remove"):
            host.remove_tree(path)


def test_listening_ports_parses_ss_output():
    out = (
        "LISTEN 0 4096 127.0.0.1:19000 0.0.0.0:*\n"
        "LISTEN 0 128 [::]:22 [::]:*\n"
        "LISTEN 0 511 *:80 *:*\n"
    )
    assert listening_ports(out) == {19000, 22, 80}


def test_a_sqlite_volume_is_copied_by_sqlites_online_backup_and_others_by_tar():
    host = make_host(layout="self-hosted", project_dir="/opt/sentry").use_context(
        ComposeContext("sentry-sh")
    )
    argv = host.volume_tar_argv(DataVolume.TASKBROKER, "tool")
    assert any(".backup /tmp/copy/$0" in a for a in argv)
    assert "taskbroker-activations.sqlite" in argv and "sentry-sh_sentry-taskbroker:/volume" in argv
    files = host.volume_tar_argv(DataVolume.FILES, "tool")
    assert "sentry-data:/volume:ro" in files and not any(".backup" in a for a in files)
