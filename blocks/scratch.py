"""The scratch stack of a restore drill: a copy of production's stack beside it (or on a drill
host) with its own directory, compose project, ports and the images the backup recorded, checked
for isolation from production before anything runs, and torn down after. Used by the drill, and
by cleanup (leftovers of killed drills)."""

from __future__ import annotations

import posixpath
import re
import time

import yaml
from pydantic import BaseModel, Field

from blocks.backup_set import BackupManifest
from blocks.dotenv import parse_env, render_env
from blocks.result import Result, Status
from blocks.sentry_host import ComposeContext, SentryHost

DRILL_COMPOSE = "docker-compose.drill.yml"
# written first into every scratch directory: what a teardown may remove carries it
DRILL_MARKER = ".sentry-ops-drill"
WORKING_DIR = "com.docker.compose.project.working_dir"
DRILL_LABEL = "sentry-ops.drill"
# a Docker image reference: [registry[:port]/]path[:tag][@digest], nothing YAML could misread
IMAGE_REF = re.compile(
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)
PORT_KEY = re.compile(r"(PORT|^SENTRY_BIND)$")


class DrillStack(BaseModel):
    """Where the scratch stack lives beside production on the drill host."""

    suffix: str = Field(
        default="drill",
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="Appended to the project dir's and project's names.",
    )
    port_offset: int = Field(
        default=100,
        ge=1,
        le=30000,
        description="Scratch ports = production's ports + this offset (every *_PORT and "
        "SENTRY_BIND of .env, and the block's ports).",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra .env settings of the scratch stack."
    )
    web_timeout: float = Field(default=300, description="Seconds to wait for /_health/ ok.")
    allowed_images: list[str] = Field(
        default_factory=list,
        description="Images the drill may run besides those production's compose file uses "
        "(a backup taken before an upgrade recorded older tags).",
    )


class DrillError(Exception):
    pass


def check_images(images: dict[str, str], production: dict[str, str], allowed: set[str]) -> None:
    """Each image the manifest pins must be a plain image reference, and the one production's
    compose file uses for that service (or explicitly allowed)."""
    for service, image in images.items():
        if not IMAGE_REF.match(image or ""):
            raise DrillError(f"the manifest's image for {service} is not an image name: {image!r}")
        if image != production.get(service) and image not in allowed:
            raise DrillError(
                f"the manifest's image for {service}, {image}, is not the one production's "
                f"compose file uses for it ({production.get(service)}): refusing to run it "
                "(add it to drill.allowed_images if it is yours)"
            )


def shifted(value: str, offset: int) -> str:
    """'9000' -> '9100'; '127.0.0.1:9000' -> '127.0.0.1:9100'."""
    host, sep, port = value.rpartition(":")
    if not port.isdigit():
        raise DrillError(f"cannot shift the port setting {value!r}")
    new = int(port) + offset
    if not 0 < new < 65536:
        raise DrillError(f"port {port} + offset {offset} is not a TCP port")
    return f"{host}{sep}{new}"


def scratch_env(current: dict[str, str], drill: DrillStack) -> dict[str, str]:
    """The scratch stack's own ports: every port setting of production's .env, shifted."""
    ports = {k: shifted(v, drill.port_offset) for k, v in current.items() if PORT_KEY.search(k)}
    return {**ports, **drill.env}


def scratch_of(prod: SentryHost, target: SentryHost | None, drill: DrillStack) -> SentryHost:
    """The scratch stack's host block: production's layout and names, the drill host's SSH,
    its own project dir and name, shifted ports. Validated like any block."""
    same = target is None or same_engine(prod, target)
    external = [v for v in prod.stack.volumes.values() if v.external]
    if same and external:
        raise DrillError(
            f"layout {prod.layout!r} uses external volumes ({', '.join(v.name for v in external)})"
            " that a scratch stack on the same Docker host would share with production; run the "
            "drill on another host (drill_host=...)"
        )
    base = posixpath.dirname(prod.project_dir) if same else target.project_dir
    where = target or prod
    # the drill engine's own SSH, data dir (its free space) and socket
    update: dict = {
        "ssh": where.ssh,
        "docker_data_dir": where.docker_data_dir,
        "docker_socket": where.docker_socket,
    }
    o = drill.port_offset
    update |= {
        "project_dir": posixpath.join(
            base, f"{posixpath.basename(prod.project_dir)}-{drill.suffix}"
        ),
        "project_name": f"{prod.project}-{drill.suffix}",
        "web_port": int(shifted(str(prod.web_port), o)),
        "postgres_port": int(shifted(str(prod.postgres_port), o)) if prod.postgres_port else None,
        "redis_port": int(shifted(str(prod.redis_port), o)),
        "clickhouse_port": int(shifted(str(prod.clickhouse_port), o)),
        "clickhouse_http_port": int(shifted(str(prod.clickhouse_http_port), o)),
    }
    return SentryHost.model_validate({**dict(prod), **update})


def _ports(config: dict) -> set[str]:
    """Host ports a resolved compose project takes: published ones, and for host-network services
    the *_PORT / SENTRY_BIND settings of their environment."""
    taken = set()
    for svc in (config.get("services") or {}).values():
        for port in svc.get("ports") or []:
            taken.add(str(port.get("published")))
        if svc.get("network_mode") == "host":
            for key, value in (svc.get("environment") or {}).items():
                if PORT_KEY.search(key) and value and str(value).rpartition(":")[2].isdigit():
                    taken.add(str(value).rpartition(":")[2])
    return taken


def _overlap(a: set[str], b: set[str]) -> list[str]:
    """Paths of `a` that are, contain or sit inside a path of `b`."""

    def within(inner: str, outer: str) -> bool:
        return inner == outer or inner.startswith(outer.rstrip("/") + "/")

    norm = {posixpath.normpath(x) for x in b}
    return sorted(
        p
        for p in {posixpath.normpath(x) for x in a}
        if any(within(p, q) or within(q, p) for q in norm)
    )


def _host_paths(config: dict) -> set[str]:
    """Host paths a resolved project mounts: bind sources, and the devices of named volumes bound
    to a host path (`driver_opts: {type: none, o: bind, device: /srv/...}`)."""
    binds = {
        v.get("source")
        for s in (config.get("services") or {}).values()
        for v in s.get("volumes") or []
        if v.get("type") == "bind" and v.get("source")
    }
    devices = {
        (v.get("driver_opts") or {}).get("device")
        for v in (config.get("volumes") or {}).values()
        if (v.get("driver_opts") or {}).get("device")
    }
    return binds | devices


def _networks(config: dict) -> dict[str, bool]:
    """Docker network name -> external, of the networks the project's services join."""
    declared = config.get("networks") or {}
    used = {}
    for svc in (config.get("services") or {}).values():
        if svc.get("network_mode"):
            continue
        for key in svc.get("networks") or {"default": None}:
            net = declared.get(key) or {}
            used[net.get("name") or key] = bool(net.get("external"))
    return used


def _reaches_out(config: dict) -> list[str]:
    """What joins the project to containers it does not own: external_links, volumes_from and
    network_mode naming a container."""
    found = []
    for name, svc in sorted((config.get("services") or {}).items()):
        found += [f"{name}: external_links {link}" for link in svc.get("external_links") or []]
        found += [
            f"{name}: volumes_from {src}"
            for src in svc.get("volumes_from") or []
            if str(src).startswith("container:")
        ]
        if str(svc.get("network_mode") or "").startswith("container:"):
            found.append(f"{name}: network_mode {svc['network_mode']}")
    return found


def isolation_problems(
    prod: dict, scratch: dict, same_engine: bool, listening: frozenset[int] = frozenset()
) -> list[str]:
    """What the scratch project would share with production, or reach besides its own (empty:
    isolated). Host paths and ports are compared whatever the engine (a drill engine may share
    the machine's disk and network); names of volumes, containers and networks on one engine."""
    problems = []
    if prod.get("name") == scratch.get("name"):
        problems.append(f"the same compose project name {scratch.get('name')!r}")
    ports = _ports(scratch)
    if shared := _ports(prod) & ports:
        problems.append(f"host ports {sorted(shared)}")
    if busy := {p for p in ports if p.isdigit() and int(p) in listening} - _ports(prod):
        problems.append(f"host ports {sorted(busy)} that something already listens on")
    if same_engine:
        names = [
            {v.get("name") for v in (c.get("volumes") or {}).values()} for c in (prod, scratch)
        ]
        if shared := names[0] & names[1]:
            problems.append(f"volumes {sorted(shared)}")
        containers = [
            {s.get("container_name") for s in (c.get("services") or {}).values()} - {None}
            for c in (prod, scratch)
        ]
        if shared := containers[0] & containers[1]:
            problems.append(f"container names {sorted(shared)}")
        nets = _networks(scratch)
        external = {n for n, ext in nets.items() if ext}
        if external:  # made elsewhere: production's, or another stack's
            problems.append(f"external networks {sorted(external)}")
        if shared := (set(nets) & set(_networks(prod))) - external:
            problems.append(f"networks {sorted(shared)}")
    if shared := _overlap(_host_paths(scratch), _host_paths(prod)):
        problems.append(f"host paths {shared} (bind mounts or volumes bound to a device)")
    if outside := _reaches_out(scratch):
        problems.append(f"containers it does not own ({'; '.join(outside)})")
    return problems


class _OverrideDumper(yaml.SafeDumper):
    pass


class Override(list):
    """A YAML sequence tagged `!override`: compose replaces the base file's list with it."""


_OverrideDumper.add_representer(
    Override, lambda d, data: d.represent_sequence("!override", list(data))
)


def drill_override(images: dict[str, str], ports: dict[str, list[str]] | None = None) -> str:
    """A compose override pinning every service to the image the manifest recorded, and moving
    literal published ports; written by a YAML serializer, never by string pasting."""
    services: dict = {service: {"image": image} for service, image in sorted(images.items())}
    for service, published in (ports or {}).items():
        services.setdefault(service, {})["ports"] = Override(published)
    header = "# written by sentry-ops restore_drill: the backup's images, the scratch ports\n"
    return header + yaml.dump({"services": services}, Dumper=_OverrideDumper, sort_keys=True)


def moved_ports(config: dict, offset: int) -> dict[str, list[str]]:
    """Published ports of production's resolved config, each moved by `offset`."""
    moved = {}
    for name, svc in (config.get("services") or {}).items():
        ports = [
            f"{p.get('host_ip') + ':' if p.get('host_ip') else ''}"
            f"{shifted(str(p['published']), offset)}:{p['target']}/{p.get('protocol', 'tcp')}"
            for p in svc.get("ports") or []
            if p.get("published")
        ]
        if ports:
            moved[name] = ports
    return moved


def prepare(
    prod: SentryHost,
    scratch: SentryHost,
    config: bytes | None,
    images: dict[str, str],
    drill: DrillStack,
) -> str:
    """Scratch project dir with the backup's config (or production's), pinned images, its own
    ports; then its resolved config checked against production's, before anything runs."""
    prod_config = prod.compose_config()
    prod_images = {name: svc.get("image") for name, svc in prod_config["services"].items()}
    check_images(images, prod_images, set(drill.allowed_images))
    d = scratch.project_dir
    not_ours(scratch)  # a leftover of ours was removed by now; anything else stays untouched
    scratch.makedirs(d)
    scratch.put(f"{d}/{DRILL_MARKER}", f"scratch stack of {prod.label}\n".encode(), mode=0o644)
    if config is not None:
        scratch.extract_tar(d, config)
        source = "the backup's (decrypted) config"
    else:
        for name in ("docker-compose.yml", ".env"):
            scratch.put(f"{d}/{name}", prod.get(f"{prod.project_dir}/{name}"), mode=0o600)
        source = "production's compose file and .env (the backup has no config)"
    names = set(scratch.listdir(d))
    files = ["docker-compose.yml"]
    if "docker-compose.override.yml" in names:
        files.append("docker-compose.override.yml")
    override = drill_override(images, moved_ports(prod_config, drill.port_offset))
    scratch.put(f"{d}/{DRILL_COMPOSE}", override.encode(), mode=0o644)
    current = scratch.get(f"{d}/.env").decode()
    custom: dict[str, str] = {}
    if ".env.custom" in names:
        # compose would read it after .env and let it win: fold it into .env (as self-hosted's
        # install.sh merges them), so the scratch's own ports, project and files below win
        custom = parse_env(scratch.get(f"{d}/.env.custom").decode())
        scratch.remove_tree(f"{d}/.env.custom")
    scratch.use_context(ComposeContext(scratch.project, ()))
    wanted = {
        **custom,
        **scratch_env({**parse_env(current), **custom}, drill),
        "COMPOSE_PROJECT_NAME": scratch.project,
        # absolute: compose resolves COMPOSE_FILE against its working dir, not the project dir
        "COMPOSE_FILE": ":".join(f"{d}/{f}" for f in [*files, DRILL_COMPOSE]),
    }
    scratch.put(f"{d}/.env", render_env(current, wanted).encode(), mode=0o600)
    clashes = isolation_problems(
        prod_config, scratch.compose_config(), same_engine(prod, scratch), scratch.listening()
    )
    if clashes:
        scratch.remove_tree(d)
        raise DrillError(
            f"refusing to start the scratch stack: it would share with production "
            f"{'; '.join(clashes)} (nothing was started)"
        )
    return source


def disk_need(manifest: BackupManifest) -> int:
    """Bytes a drill writes on its engine: every restored object at its size before compression
    (Postgres: the database's size recorded at the dump), plus 10 % and 1 GiB."""
    restored = sum(o.raw_size or o.size for o in manifest.objects if o.name != "config")
    return (1 << 30) + restored + restored // 10


def check_room(
    scratch: SentryHost,
    manifest: BackupManifest,
    what: str = "the drill",
    fix: str = "run it on a drill host with room (drill_host=...) or free space",
    freed: int = 0,
) -> Result:
    """Refuse a restore its engine has no room for (a same-host drill writes on production's
    disk); `freed`: bytes the restore deletes first (the data it replaces)."""
    need = disk_need(manifest)
    _, free = scratch.disk_free()
    figures = f"{need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free in {scratch.docker_data_dir}"
    if freed:
        figures += f" + {freed / 1e9:.1f} GB it replaces"
    if free + freed < need:
        raise DrillError(
            f"{scratch.label}: no room for {what} of {manifest.backup_id} ({figures}, the "
            f"restored set with a margin): {fix}; nothing was changed"
        )
    return Result("disk room", Status.OK, figures)


def same_engine(prod: SentryHost, scratch: SentryHost) -> bool:
    """One Docker engine, told by the engine's own ID (`docker info`), not by the SSH address:
    the same machine reached by another name, address or user is the same engine."""
    return scratch.transport.target == prod.transport.target or (
        scratch.engine_id() == prod.engine_id()
    )


def bring_images(prod: SentryHost, scratch: SentryHost) -> Result:
    """Every image the scratch stack runs, and the tool image, onto the drill engine: one it
    lacks (or holds under another ID) is copied from production's engine, never pulled, so the
    drill runs the bytes production runs, locally built ones too (self-hosted's
    `sentry-self-hosted-local`, `pull_policy: never`), and needs no registry."""
    if same_engine(prod, scratch):
        return Result("images", Status.ALREADY, "production's own engine")
    services = scratch.compose_config().get("services", {})
    refs = sorted({s["image"] for s in services.values() if s.get("image")} | {scratch.tool_image})
    started, copied = time.monotonic(), []
    for ref in refs:
        want = prod.image_id(ref)
        if want is None:
            raise DrillError(
                f"{prod.label} has no image {ref}, which the scratch stack runs: the drill "
                "copies images from production (pull or build it there first)"
            )
        if scratch.image_id(ref) != want:
            copied.append(ref)
    moved = prod.copy_images_to(scratch, copied) if copied else 0
    seconds = round(time.monotonic() - started, 1)
    if not copied:
        return Result("images", Status.ALREADY, f"all {len(refs)} already on the drill engine")
    rate = moved / 1e6 / max(seconds, 0.001)
    return Result(
        "images",
        Status.DONE,
        f"{len(copied)} of {len(refs)} copied from production, {moved / 1e6:.0f} MB in "
        f"{seconds:.1f} s ({rate:.0f} MB/s): {', '.join(copied)}",
        seconds,
    )


def external_volumes(config: dict) -> list[str]:
    """Names of the external volumes a resolved compose project needs."""
    return sorted(
        v.get("name") or key
        for key, v in (config.get("volumes") or {}).items()
        if v.get("external")
    )


def create_external_volumes(scratch: SentryHost) -> list[str]:
    """External volumes (self-hosted's) on the drill host: created for the drill, labelled,
    removed after; refused if the host already has one (it would be someone's data)."""
    names = external_volumes(scratch.compose_config())
    for name in names:
        if scratch.volume_named_exists(name):
            raise DrillError(
                f"{scratch.label}: volume {name} already exists on the drill host: refusing to "
                "restore into it (use a drill host without a Sentry install)"
            )
    for name in names:
        scratch.create_volume(name, {DRILL_LABEL: scratch.project})
    return names


def teardown(scratch: SentryHost, prod: SentryHost) -> str:
    """Remove the scratch stack's containers, volumes (external ones it made too) and directory;
    report any leftover."""
    d = scratch.project_dir
    if d == prod.project_dir or scratch.project == prod.project or d.count("/") < 2:
        raise DrillError(f"refusing to remove {d}: not a scratch stack")
    not_ours(scratch)
    if scratch.exists(f"{d}/docker-compose.yml"):
        scratch.compose_down(remove_volumes=True, stop_timeout=5)
    scratch.remove_volumes(scratch.volumes_labelled(f"{DRILL_LABEL}={scratch.project}"))
    scratch.remove_tree(d)
    left = scratch.leftovers()
    return f"leftovers: {left}" if left else "no containers or volumes left"


def not_ours(scratch: SentryHost) -> None:
    """Refuse, before anything is touched, a scratch name that another stack holds: a directory
    without the drill's marker (drill.suffix="staging" would name a real /opt/sentry-staging),
    or containers of the scratch project started from another directory."""
    d = scratch.project_dir
    if scratch.exists(d) and not scratch.exists(f"{d}/{DRILL_MARKER}"):
        raise DrillError(
            f"refusing to touch {d}: it has no {DRILL_MARKER}, so no drill made it (another "
            "stack's directory, or one left by a sentry-ops older than the marker: remove that "
            "yourself); choose another drill.suffix (nothing was changed)"
        )
    containers = scratch.leftovers_argv()[0]
    ids = scratch.run(containers).text.split()
    if ids:
        fmt = "{{index .Config.Labels " + f'"{WORKING_DIR}"' + "}}"
        dirs = set(scratch.run(["docker", "inspect", "-f", fmt, *ids]).text.split())
        if dirs - {d}:
            raise DrillError(
                f"refusing to touch compose project {scratch.project}: its containers were "
                f"started from {sorted(dirs - {d})}, not by a drill in {d}; choose another "
                "drill.suffix (nothing was changed)"
            )


def has_leftovers(scratch: SentryHost) -> bool:
    """A scratch stack (its directory, containers or volumes) is still there."""
    return scratch.exists(scratch.project_dir) or bool(scratch.leftovers())
