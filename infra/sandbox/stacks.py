"""The sandbox's Sentry-shaped stacks (guide and self-hosted layouts): ports, compose project
names, the files an install puts in the project dir, start and removal."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from blocks.layouts import Role, get_layout
from infra.sandbox.common import (
    ADMIN_EMAIL,
    DEFAULT_VERSION,
    HERE,
    SELF_HOSTED_RELEASES,
    STATE,
    TOOL_IMAGE,
    log,
    sh,
    wait_for,
)
from infra.sandbox.images import digest


@dataclass(frozen=True)
class StackPorts:
    web: int  # what the host publishes: Sentry web (guide) or nginx (self-hosted)
    web_internal: int  # self-hosted: web behind nginx
    postgres: int
    pgbouncer: int
    redis: int
    clickhouse: int
    clickhouse_http: int
    clickhouse_interserver: int
    seaweedfs: int  # first of 13 consecutive ports (their gRPC ports are +10000)
    snuba: int  # snuba-api (self-hosted) / sentry-snuba (guide)
    relay: int  # relay / sentry-relay: where the guide's DSN points

    @classmethod
    def slot(cls, n: int) -> StackPorts:
        """Ports for the n-th stack: 19000+100n etc., never the services' default ports."""
        b = 100 * n
        return cls(
            19000 + b, 19050 + b, 15432 + b, 15440 + b, 16379 + b, 19001 + b, 18123 + b,
            19009 + b, 19060 + b, 19080 + b, 19085 + b,
        )  # fmt: skip


# layout -> (stack name, port slot). Slot 1 is the guide stack's restore drill (+100), slot 5 the
# self-hosted one's (on the drill host, same 127.0.0.1); slots 2-3 are for tests and benchmarks (a
# bare host, a bench stack and its drill); slot 6 for the restore test's stack, 7 for the upgrade
# tests' one, 8 for the move test's.
STACKS = {"guide": ("production", 0), "self-hosted": ("self-hosted", 4)}
# self-hosted's external volumes (created by its install.sh; here by `ensure_stack`)
EXTERNAL_VOLUMES = (
    "sentry-data",
    "sentry-postgres",
    "sentry-redis",
    "sentry-clickhouse",
    "sentry-seaweedfs",
)
SANDBOX_LABEL = "sentry-ops.sandbox"


def project_name(name: str) -> str:
    """Unique per state dir: two checkouts' sandboxes never share containers or volumes."""
    return f"sandbox{digest(str(STATE))[:6]}-{name}"


def stack_dir(name: str) -> Path:
    # the guide's compose project is its directory's name (compose's default), so the directory
    # carries the unique project name
    return STATE / "stacks" / project_name(name)


def compose_argv(name: str, *args: str) -> list[str]:
    d = stack_dir(name)
    # like self-hosted's own scripts: .env.custom, when present, after .env
    custom = ["--env-file", str(d / ".env"), "--env-file", str(d / ".env.custom")]
    env_files = custom if (d / ".env.custom").exists() else []
    return ["docker", "compose", "--project-directory", str(d), *env_files,
            "-p", project_name(name), *args]  # fmt: skip


def compose(name: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return sh(*compose_argv(name, *args), **kw)


def up_ready(name: str, *services: str, timeout: float = 180) -> None:
    """`compose up -d`, then until every container of these services (none: all) passes its
    own healthcheck, run now by `docker exec` (Docker would first run it a whole interval after
    the start: the stacks' healthchecks are self-hosted's 30 s), or is running without one."""
    compose(name, "up", "-d", *services)
    ids = compose(name, "ps", "-q", *services).stdout.split()
    fmt = "{{.State.Status}}|{{if .Config.Healthcheck}}{{index .Config.Healthcheck.Test 1}}{{end}}"

    def ready(cid: str) -> bool:
        status, _, test = sh("docker", "inspect", "-f", fmt, cid).stdout.strip().partition("|")
        if status != "running":
            raise RuntimeError(f"{project_name(name)}: container {cid[:12]} is {status}")
        return not test or sh("docker", "exec", cid, "sh", "-c", test, check=False).returncode == 0

    for cid in ids:
        what = f"{project_name(name)}: container {cid[:12]} ready"
        wait_for(what, lambda cid=cid: ready(cid), timeout, 0.5)


def abandoned(state: str) -> bool:
    """Another sandbox's state dir whose sandbox is down: gone (a clone removed, another
    machine's path), or without its connection file (killed before `down`)."""
    return Path(state) != STATE and not (Path(state) / "connection.json").exists()


def reap_orphan_stacks() -> None:
    """Remove what sandboxes that are down left: their stacks (containers and volumes), and
    their labelled volumes (self-hosted's external ones) with the containers using them."""
    label = "com.docker.compose.project"
    fmt = f'{{{{.Label "{label}"}}}} {{{{.Label "{label}.working_dir"}}}}'
    rows = sh("docker", "ps", "-a", "--filter", f"label={label}", "--format", fmt).stdout
    orphans = {
        project
        for project, _, workdir in (row.partition(" ") for row in rows.splitlines())
        if project.startswith("sandbox") and "/stacks/" in workdir
        and abandoned(workdir.rsplit("/stacks/", 1)[0])
    }  # fmt: skip
    for project in sorted(orphans):
        ids = sh("docker", "ps", "-aq", "--filter", f"label={label}={project}").stdout.split()
        sh("docker", "rm", "-f", *ids, check=False)
        vols = sh("docker", "volume", "ls", "-q", "--filter", f"label={label}={project}")
        if vols.stdout.split():
            sh("docker", "volume", "rm", *vols.stdout.split(), check=False)
        log(f"removed orphaned sandbox stack {project} (its sandbox is down or gone)")
    fmt = f'{{{{.Name}}}} {{{{.Label "{SANDBOX_LABEL}"}}}}'
    rows = sh("docker", "volume", "ls", "--filter", f"label={SANDBOX_LABEL}", "--format", fmt)
    for name, _, state in (r.partition(" ") for r in rows.stdout.splitlines()):
        if abandoned(state):
            users = sh("docker", "ps", "-aq", "--filter", f"volume={name}").stdout.split()
            if users:
                sh("docker", "rm", "-f", *users, check=False)
            sh("docker", "volume", "rm", "-f", name, check=False)
            log(f"removed orphaned sandbox volume {name} (its sandbox {state} is down or gone)")


def stack_settings(slot: int, layout: str = "guide", version: str = DEFAULT_VERSION) -> dict:
    """The non-secret .env values of a sandbox stack: its image version and ports."""
    p = StackPorts.slot(slot)
    settings = {
        "SENTRY_VERSION": version,
        "POSTGRES_PORT": str(p.postgres),
        "REDIS_PORT": str(p.redis),
        "CLICKHOUSE_PORT": str(p.clickhouse),
        "CLICKHOUSE_HTTP_PORT": str(p.clickhouse_http),
        "CLICKHOUSE_INTERSERVER_PORT": str(p.clickhouse_interserver),
        "SNUBA_PORT": str(p.snuba),
        "RELAY_PORT": str(p.relay),
    }
    if layout == "guide":
        return {**settings, "SENTRY_WEB_PORT": str(p.web)}
    weed = {
        name: p.seaweedfs + i
        for i, name in enumerate(
            ("BASE", "VOLUME", "FILER", "S3", "ADMIN", "METRICS", "ICEBERG", "LANCE")
        )
    }
    return {
        **settings,
        "SENTRY_BIND": str(p.web),
        "WEB_PORT": str(p.web_internal),
        "PGBOUNCER_PORT": str(p.pgbouncer),
        **{f"SEAWEEDFS_{k}_PORT": str(v) for k, v in weed.items()},
        **{f"SEAWEEDFS_{k}_GRPC_PORT": str(v + 10000) for k, v in weed.items()},
    }


def secret_file(path: Path) -> str:
    """A generated secret kept in a 0600 file of the sandbox state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(18))
    return path.read_text()


def stack_info(layout: str = "guide", name: str | None = None, slot: int | None = None) -> dict:
    """How to reach a sandbox stack (whether or not it exists yet): the host block's fields."""
    name, slot = name or STACKS[layout][0], STACKS[layout][1] if slot is None else slot
    ports = StackPorts.slot(slot)
    secret_file(STATE / "admin_password")  # the demo's bootstrap and the tests read it
    info = {
        "project_dir": str(stack_dir(name)),
        "layout": layout,
        "web_port": ports.web,
        "redis_port": ports.redis,
        "clickhouse_port": ports.clickhouse,
        "clickhouse_http_port": ports.clickhouse_http,
        "settings": stack_settings(slot, layout),
        "tool_image": TOOL_IMAGE,
        "pull_images": False,  # no registry here: never let the engine try one
        "admin_email": ADMIN_EMAIL,
        "admin_password_path": str(STATE / "admin_password"),
    }
    probe = STATE / "secrets" / f"{name}-probe.json"
    if probe.exists():
        info.update(json.loads(probe.read_text()))
    if layout == "guide":  # the guide publishes nothing either, but its backups use the port
        info["postgres_port"] = ports.postgres
        info["postgres_password"] = secret_file(STATE / "secrets" / f"{name}-postgres")
    return info


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def install_files(layout: str, name: str, info: dict) -> None:
    """What an operator (guide) or install.sh (self-hosted) puts in the project dir."""
    d = stack_dir(name)
    shutil.copytree(HERE / "stacks" / layout, d, dirs_exist_ok=True)
    env_file = d / ".env"
    if env_file.exists():
        if layout == "self-hosted" and not (d / ".git").exists():  # installed before the tags
            release_checkout(d, dict(x.split("=", 1) for x in env_file.read_text().splitlines()))
        return
    values = dict(info["settings"])
    if layout == "guide":
        values["SENTRY_SECRET_KEY"] = secrets.token_urlsafe(48)
        values["SENTRY_DB_PASSWORD"] = info["postgres_password"]
    else:
        values = {"COMPOSE_PROJECT_NAME": project_name(name), **values}
        config = d / "sentry" / "config.yml"
        write_private(config, f"system.secret-key: '{secrets.token_urlsafe(48)}'\n")
        for volume in EXTERNAL_VOLUMES:
            owner = sh("docker", "volume", "inspect", "-f",
                       f'{{{{index .Labels "{SANDBOX_LABEL}"}}}}', volume, check=False)  # fmt: skip
            if owner.returncode == 0 and owner.stdout.strip() != str(STATE):
                raise RuntimeError(
                    f"Docker volume {volume} exists and is not this sandbox's "
                    f"({owner.stdout.strip() or 'not a sandbox volume'}): a self-hosted install "
                    "owns it. Run `bash infra/run.sh down` in that checkout, or remove it"
                )
            sh("docker", "volume", "create", "--label", f"{SANDBOX_LABEL}={STATE}", volume)
        # an operator's override, the way self-hosted documents it: .env.custom wins over .env
        custom = {"SENTRY_BIND": values.pop("SENTRY_BIND"), "SENTRY_EVENT_RETENTION_DAYS": "90"}
        write_private(d / ".env.custom", "".join(f"{k}={v}\n" for k, v in custom.items()))
    write_private(env_file, "".join(f"{k}={v}\n" for k, v in values.items()))
    if layout == "self-hosted":
        release_checkout(d, values)


def release_checkout(
    d: Path, values: dict, releases: tuple[str, ...] = SELF_HOSTED_RELEASES
) -> None:
    """self-hosted is a git checkout of its release tags: the sandbox's has `releases` (their
    .env differ in SENTRY_VERSION) and is checked out at the first; what an operator adds or
    edits (.env.custom, sentry/config.yml, sentry/sentry.conf.py) is git-ignored, as in
    self-hosted (its .gitignore @26.8.0)."""
    (d / ".gitignore").write_text(
        ".env.custom\nsentry/config.yml\nsentry/sentry.conf.py\nsentry-ops.scale.yml\n"
    )
    git = ["git", "-C", str(d), "-c", "user.name=sandbox", "-c", "user.email=sandbox@localhost",
           "-c", "advice.detachedHead=false"]  # fmt: skip
    sh(*git, "init", "-q")
    for version in releases:
        env = {**values, "SENTRY_VERSION": version}
        write_private(d / ".env", "".join(f"{k}={v}\n" for k, v in env.items()))
        sh(*git, "add", "-A")
        sh(*git, "commit", "-q", "-m", f"release {version}")
        sh(*git, "tag", version)
    sh(*git, "checkout", "-q", releases[0])


def self_hosted_checkout(d: Path, name: str, slot: int, releases: tuple[str, ...]) -> None:
    """A self-hosted checkout not yet installed (as `git clone` leaves it, for another engine):
    the release tags, `.env.custom`, and `sentry/config.yml` with self-hosted's placeholder key;
    no volume, no container (its install.sh makes them)."""
    shutil.copytree(HERE / "stacks" / "self-hosted", d)
    values = {"COMPOSE_PROJECT_NAME": project_name(name), **stack_settings(slot, "self-hosted")}
    write_private(d / "sentry" / "config.yml", "system.secret-key: '!!changeme!!'\n")
    custom = {"SENTRY_BIND": values.pop("SENTRY_BIND"), "SENTRY_EVENT_RETENTION_DAYS": "90"}
    write_private(d / ".env.custom", "".join(f"{k}={v}\n" for k, v in custom.items()))
    release_checkout(d, values, releases)


def psql(name: str, service: str, user: str, db: str, query: str) -> str:
    argv = ["exec", "-T", service, "psql", "-U", user, "-d", db, "-tAc", query]  # local: trust
    return compose(name, *argv).stdout.strip()


def create_probe_credentials(layout: str, name: str, slot: int) -> None:
    """The DSN of the default project and an API token of the admin, for the ingestion probe
    (an operator makes these in Sentry's UI once)."""
    service, user, db = (
        ("sentry-postgres", "sentry", "sentry") if layout == "guide" else ("postgres",) * 3
    )
    token = secrets.token_hex(32)
    psql(name, service, user, db,
         "INSERT INTO sentry_apitoken (user_id, token, scope_list) SELECT id, "
         f"'{token}', 'org:read' FROM auth_user WHERE email = '{ADMIN_EMAIL}'")  # fmt: skip
    row = psql(name, service, user, db,
               "SELECT k.public_key, k.project_id FROM sentry_projectkey k JOIN sentry_project p "
               "ON p.id = k.project_id WHERE p.slug = 'internal'")  # fmt: skip
    public_key, project_id = row.split("|")
    # where SDKs send: the guide's Relay on its own port; self-hosted's nginx (it routes the
    # store endpoint to Relay)
    ports = StackPorts.slot(slot)
    port = ports.relay if layout == "guide" else ports.web
    probe = {
        "probe_dsn": f"http://{public_key}@127.0.0.1:{port}/{project_id}",
        "api_token": token,
    }
    write_private(STATE / "secrets" / f"{name}-probe.json", json.dumps(probe))


def ensure_stack(layout: str, name: str | None = None, slot: int | None = None) -> dict:
    """Install and start a sandbox stack the quick way (tests); the demo bootstraps the guide's.
    A self-hosted checkout a test upgraded is installed anew at the first release (Sentry has no
    downgrade): the other tests expect it there."""
    name, slot = name or STACKS[layout][0], STACKS[layout][1] if slot is None else slot
    d = stack_dir(name)
    if layout == "self-hosted" and (d / ".git").exists():
        at = sh("git", "-C", str(d), "describe", "--tags", check=False).stdout.strip()
        if at != SELF_HOSTED_RELEASES[0]:
            log(f"the self-hosted stack is at {at or '?'} (an upgrade test): installing it anew")
            remove_stack(name)
            remove_external_volumes()
            (STATE / "secrets" / f"{name}-probe.json").unlink(missing_ok=True)
    info = stack_info(layout, name, slot)
    install_files(layout, name, info)
    admin_password = secret_file(STATE / "admin_password")
    expected = len(compose(name, "config", "--services").stdout.split())
    running = compose(name, "ps", "--status", "running", "-q", check=False).stdout.split()
    if len(running) < expected:
        log(f"starting the {layout} stack {project_name(name)!r}")
        web = "sentry" if layout == "guide" else "web"
        deps = (
            ["sentry-postgres", "sentry-redis", "sentry-clickhouse"]
            if layout == "guide"
            else ["postgres", "pgbouncer", "redis", "clickhouse", "seaweedfs"]
        )
        up_ready(name, *deps)
        # Snuba's tables first, as self-hosted's install.sh runs bootstrap-snuba.sh before the
        # migrations
        snuba = get_layout(layout).service(Role.SNUBA)
        compose(name, "run", "--rm", "-T", snuba, "bootstrap", "--force")
        compose(name, "run", "--rm", "-T", web, "upgrade", "--noinput")
        compose(name, "run", "--rm", "-T", web, "createuser", "--email", ADMIN_EMAIL,
                "--superuser", input=f"{admin_password}\n{admin_password}\n")  # fmt: skip
        if not (STATE / "secrets" / f"{name}-probe.json").exists():
            create_probe_credentials(layout, name, slot)
        up_ready(name)
    return stack_info(layout, name, slot)


def remove_stack(d: Path | str) -> None:
    """Remove a sandbox stack by directory or name, with its volumes."""
    d = d if isinstance(d, Path) else stack_dir(d)
    if (d / "docker-compose.yml").exists():
        sh("docker", "compose", "--project-directory", str(d), "down", "-v", "--remove-orphans",
           "-t", "2", check=False)  # fmt: skip
        log(f"removed stack {d.name!r} with its volumes")
    shutil.rmtree(d, ignore_errors=True)


def remove_external_volumes() -> None:
    """self-hosted's external volumes, when this sandbox made them."""
    for volume in EXTERNAL_VOLUMES:
        owner = sh("docker", "volume", "inspect", "-f",
                   f'{{{{index .Labels "{SANDBOX_LABEL}"}}}}', volume, check=False)  # fmt: skip
        if owner.returncode == 0 and owner.stdout.strip() == str(STATE):
            sh("docker", "volume", "rm", "-f", volume, check=False)
