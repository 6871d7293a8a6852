"""The compose project on the host: its services, containers, config, leftovers (`docker compose
...`).

A part of `SentryHost` (blocks/sentry_host.py): its methods use the block's fields and its one
transport."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from blocks import commands
from blocks.layouts import DataVolume, Role, StackLayout

if TYPE_CHECKING:
    from blocks.sentry_host import SentryHost  # noqa: F401


class ComposeVerbs:
    """The compose project on the host."""

    def service_containers(self, service: str, probe: bool = False) -> list[dict]:
        """`docker compose ps` rows (running or not) of one service (`probe`: see `probed`)."""
        argv = self.compose_argv("ps", "--all", "--format", "json", service)
        rows = parse_ps(self.run(argv, timeout=60).text)
        return self.probed(rows) if probe else rows

    def volume_name(self, volume: DataVolume) -> str:
        return self.stack.volumes[volume].docker_name(self.project)

    def compose_argv(self, *args: str) -> list[str]:
        return commands.compose(self.project_dir, self.context.env_files, self.project, *args)

    def exec_argv(self, role: Role, *argv: str) -> list[str]:
        """argv to run a command inside the running container of `role`."""
        return self.compose_argv("exec", "-T", self.stack.service(role), *argv)

    def ps_argv(self) -> list[str]:
        return self.compose_argv("ps", "--all", "--format", "json")

    def services_argv(self) -> list[str]:
        return self.compose_argv("config", "--services")

    def config_json_argv(self, interpolate: bool = True) -> list[str]:
        raw = [] if interpolate else ["--no-interpolate"]
        return self.compose_argv("config", *raw, "--format", "json")

    def compose_up(
        self,
        *services: str,
        wait: bool = False,
        no_deps: bool = False,
        no_recreate: bool = False,
        scale: dict[str, int] | None = None,
        stop_timeout: int | None = None,
        timeout: float = 600,
    ) -> None:
        """`docker compose up -d` of these services (none: the whole stack); with `wait`, then
        until their containers are ready (`wait_ready`: healthchecks probed now, not at Docker's
        next interval, as compose's own `--wait` would)."""
        args = commands.up(*services, no_deps=no_deps, no_recreate=no_recreate, scale=scale,
                           stop_timeout=stop_timeout)  # fmt: skip
        started = time.monotonic()
        self.compose(*args, timeout=timeout + (stop_timeout or 0))
        if wait:
            rows = [r for r in self.ps() if not services or r.get("Service") in services]
            left = max(timeout - (time.monotonic() - started), 30)
            what = f"start {' '.join(services) or 'the stack'}"
            self.wait_ready([r["ID"] for r in rows], left, what, stable=0)

    def compose_create(self) -> None:
        """Containers and volumes of the whole project created, nothing started."""
        self.compose("create", timeout=600)

    def compose_down(self, remove_volumes: bool, stop_timeout: int = 10) -> None:
        self.compose(*commands.down(remove_volumes, stop_timeout), timeout=600)

    def compose_stop(self, *services: str) -> None:
        self.compose("stop", *services, timeout=600)

    def stop_ingestion(self) -> list[str]:
        """Stop the services events come in through (`StackLayout.ingest`: the guide's relay
        and web, self-hosted's nginx and relay) that the project defines; their names."""
        defined = self.defined_services()
        services = [self.stack.services[r] for r in self.stack.ingest
                    if self.stack.services.get(r) in defined]  # fmt: skip
        self.compose_stop(*services)
        return services

    def compose_pull(self, *services: str) -> None:
        self.compose("pull", *services, timeout=3600)

    def defined_services(self) -> set[str]:
        """The services the compose project defines."""
        return set(self.run(self.services_argv(), timeout=60).text.split())

    def running_services(self) -> set[str]:
        """The services with a running container."""
        argv = self.compose_argv("ps", "--status", "running", "--services")
        return set(self.run(argv, timeout=60).text.split())

    def project_containers(self) -> set[str]:
        """IDs of the project's containers that exist (an unreadable project: none)."""
        return set(self.run(self.compose_argv("ps", "-q"), timeout=60, check=False).text.split())

    def ps(self, probe: bool = False) -> list[dict]:
        """`docker compose ps --all` rows of every service (`probe`: see `probed`)."""
        rows = parse_ps(self.run(self.ps_argv(), timeout=60).text)
        return self.probed(rows) if probe else rows

    def probed(self, rows: list[dict]) -> list[dict]:
        """The rows, where a running container Docker does not call healthy yet (its first
        probe comes a whole interval after the start, or after an unpause) has its healthcheck
        run now (`container_states`) and its Health from that."""
        pending = [r["ID"] for r in rows if r.get("State") == "running"
                   and r.get("Health") in ("starting", "unhealthy")]  # fmt: skip
        states = self.container_states(pending, probe=True)
        for row in rows:
            if row.get("ID") in states:
                row["Health"] = states[row["ID"]].partition(" ")[2]
        return rows

    def compose_config(self, interpolate: bool = True) -> dict:
        """The project as compose resolves it (`config --format json`): services, volumes.
        Without interpolation it reads before .env has every variable (names only)."""
        return json.loads(self.run(self.config_json_argv(interpolate), timeout=60).stdout)

    def volume_exists(self, volume: DataVolume) -> bool:
        return volume in self.existing_volumes([volume])

    def existing_volumes(self, volumes: Sequence[DataVolume]) -> list[DataVolume]:
        """Those of `volumes` whose docker volume exists (one `docker volume ls`)."""
        argv = ["docker", "volume", "ls", "-q"]
        found = set(self.run(argv, timeout=30).text.split())
        return [v for v in volumes if self.volume_name(v) in found]

    def service_images(self) -> dict[str, str]:
        """compose service -> image, as the project resolves them."""
        services = self.compose_config().get("services", {})
        return {name: svc.get("image", "") for name, svc in services.items()}

    def name_problems(self, volumes: Sequence[DataVolume] = ()) -> list[str]:
        """Names of this block that the host's compose project lacks (empty: all present)."""
        return name_problems(self.stack, self.compose_config(False), tuple(volumes))

    def running_ids(self, service: str) -> list[str]:
        """IDs of the service's running containers."""
        return [c["ID"] for c in self.service_containers(service) if c.get("State") == "running"]

    def up_services(self, counts: dict[str, int]) -> None:
        """`up -d --no-deps` of these services with these replica counts (recreated where their
        configuration changed)."""
        scale = [a for s, n in counts.items() for a in ("--scale", f"{s}={n}")]
        self.compose("up", "-d", "--no-deps", *scale, *counts, timeout=1800)

    def service_log_tail(self, role: Role, lines: int = 20) -> list[str]:
        """The last lines of the service's container log, each with Docker's timestamp."""
        argv = self.compose_argv("logs", "--no-color", "--timestamps", "--tail", str(lines),
                                 self.stack.service(role))  # fmt: skip
        return self.run(argv, timeout=60).text.splitlines()

    def leftovers_argv(self) -> list[list[str]]:
        """Containers and volumes still labelled with this compose project."""
        label = f"label=com.docker.compose.project={self.project}"
        return [
            ["docker", "ps", "-aq", "--filter", label],
            ["docker", "volume", "ls", "-q", "--filter", label],
        ]

    def leftovers(self) -> list[str]:
        return [item for argv in self.leftovers_argv() for item in self.run(argv).text.split()]

    def leftovers_created(self) -> list[str]:
        """Creation times (RFC 3339, as Docker reports them) of the project's containers and
        volumes."""
        containers, volumes = (self.run(a).text.split() for a in self.leftovers_argv())
        times = []
        if containers:
            times += self.run(["docker", "inspect", "-f", "{{.Created}}", *containers]).text.split()
        if volumes:
            fmt = "{{.CreatedAt}}"
            times += self.run(["docker", "volume", "inspect", "-f", fmt, *volumes]).text.split()
        return times

    def leftover_volumes(self) -> list[str]:
        """Volumes still labelled with this compose project."""
        return self.run(self.leftovers_argv()[1]).text.split()

    def dangling_volumes(self) -> list[str]:
        """Volumes labelled with this compose project that no container uses."""
        argv = ["docker", "volume", "ls", "-q", "--filter", "dangling=true", "--filter",
                f"label=com.docker.compose.project={self.project}"]  # fmt: skip
        return self.run(argv, timeout=60).text.split()


def parse_ps(output: str) -> list[dict]:
    """`docker compose ps --format json`: NDJSON (compose >= 2.21) or one JSON array (older)."""
    text = output.strip()
    if not text:
        return []
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def name_problems(stack: StackLayout, config: dict, volumes: tuple[DataVolume, ...]) -> list[str]:
    """Names this host's layout expects that the resolved compose project does not define,
    each with the block field to set."""
    services = set(config.get("services", {}))
    problems = []
    for role in sorted(stack.required):
        name = stack.services.get(role)
        if name not in services:
            problems.append(
                f"service {name!r} (role {role}) is not in the compose project (it has: "
                f"{', '.join(sorted(services)) or 'none'}); set service_names.{role} in the block"
            )
    defined = config.get("volumes", {}) or {}
    for volume in volumes:
        ref = stack.volumes[volume]
        if ref.name not in defined:
            problems.append(
                f"volume {ref.name!r} ({volume}) is not in the compose project (it has: "
                f"{', '.join(sorted(defined)) or 'none'}); set volume_names.{volume} in the block"
            )
    return problems
