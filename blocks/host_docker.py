"""The Docker engine under the stack: containers, volumes, images, disk and the host's facts.

A part of `SentryHost` (blocks/sentry_host.py): its methods use the block's fields and its one
transport."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from blocks import commands
from blocks.backup_store import HashingReader
from blocks.layouts import DataVolume, Role
from blocks.poll import poll
from blocks.ssh import CommandResult, RemoteCommandError
from blocks.upgrade_plan import STABLE_SECONDS, container_failed, containers_ready

if TYPE_CHECKING:
    from blocks.sentry_host import SentryHost
FACT_ARGV = {
    "docker": ["docker", "version", "--format", "{{.Server.Version}}"],
    "compose": ["docker", "compose", "version", "--short"],
    "cpus": ["nproc"],
    "meminfo": ["cat", "/proc/meminfo"],
    "listening": ["ss", "-Hltn"],
}


class NotReadyError(RuntimeError):
    """Containers that did not get ready: one exited or is unhealthy, or time ran out."""


def probe_seconds(healthcheck_json: str) -> float:
    """Interval + timeout of a container's healthcheck (`docker inspect`'s
    `.Config.Healthcheck` as JSON, nanoseconds; Docker's defaults, 30 s each, where unset)."""
    config = json.loads(healthcheck_json or "null") or {}
    return ((config.get("Interval") or 30e9) + (config.get("Timeout") or 30e9)) / 1e9


def healthcheck_argv(healthcheck_json: str) -> tuple[list[str], float]:
    """What Docker runs for a container's healthcheck (`.Config.Healthcheck` as JSON: `CMD-SHELL`
    through /bin/sh -c, `CMD` as given; none, `NONE` or absent: []) and its timeout in s."""
    config = json.loads(healthcheck_json or "null") or {}
    test = config.get("Test") or []
    limit = (config.get("Timeout") or 30e9) / 1e9
    if len(test) < 2 or test[0] not in ("CMD", "CMD-SHELL"):
        return [], limit
    return (["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else test[1:]), limit


class DockerVerbs:
    """The Docker engine under the stack."""

    def disk_argv(self) -> list[str]:
        return ["df", "-P", "-B1", self.docker_data_dir]

    def volume_usage_argv(self, volumes: dict[str, str], image: str) -> list[str]:
        """For each docker volume (label -> name), mounted read-only: `<label> <bytes> <oldest
        file's mtime or ->`, one line each."""
        mounts = [a for label, v in volumes.items() for a in ("-v", f"{v}:/volumes/{label}:ro")]
        script = (
            'for v in "$@"; do b=$(du -sb "/volumes/$v" | cut -f1); '
            "o=$(find \"/volumes/$v\" -type f -printf '%T@\\n' 2>/dev/null | sort -n | head -1); "
            'echo "$v $b ${o:--}"; done'
        )
        return ["docker", "run", "--rm", "--network", "none", "--label", "sentry-ops.job=usage",
                *self.pull_argv(), *mounts, "--entrypoint", "sh", image, "-c", script,
                "sentry-ops", *volumes]  # fmt: skip

    def volume_df_argv(self, volumes: Sequence[DataVolume], image: str) -> list[str]:
        """`df` of each data volume, mounted read-only in a throwaway container."""
        mounts = [a for v in volumes for a in ("-v", f"{self.volume_name(v)}:/volumes/{v}:ro")]
        return [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--label",
            "sentry-ops.job=health",
            *mounts,
            "--entrypoint",
            "df",
            image,
            "-P",
            "-B1",
            *(f"/volumes/{v}" for v in volumes),
        ]

    def later_argv(self, seconds: int, argv: Sequence[str]) -> list[str]:
        """Run `argv` on the host after `seconds`, detached from this SSH session: it still runs
        if the session, or the worker, dies (a dead man's switch)."""
        script = 'setsid nohup sh -c \'sleep "$0"; exec "$@"\' "$@" >/dev/null 2>&1 </dev/null &'
        return ["sh", "-c", script, "sentry-ops", str(seconds), *argv]

    def pause(self, role: Role, deadline: int) -> list[str]:
        """`docker pause` the running containers of a service (processes frozen, files still);
        returns their ids for `unpause`. The host unpauses them by itself after `deadline`
        seconds should this process, or its SSH session, die first (a dead man's switch)."""
        ids = self.running_ids(self.stack.service(role))
        if ids:
            self.run(self.later_argv(deadline, ["docker", "unpause", *ids]), timeout=30)
            self.run(["docker", "pause", *ids], timeout=60)
        return ids

    def unpause(self, ids: Sequence[str]) -> None:
        if ids:
            self.run(["docker", "unpause", *ids], timeout=60, check=False)

    def health_back(self, ids: Sequence[str]) -> tuple[bool, str]:
        """Wait until containers a pause left "unhealthy" pass their healthcheck again: Docker
        marks a paused container unhealthy and keeps that until its next probe after the unpause
        (moby container/health.go, CloseMonitorChannel: "unhealthy when the monitor has stopped"),
        up to a whole interval later (self-hosted: 30 s); meanwhile `compose up --wait` and every
        `depends_on: service_healthy` of a restart fail on it. Bounded by the probe's own
        interval + timeout + 10 s. -> (back, last statuses)."""
        if not ids:
            return True, ""
        fmt = "{{json .Config.Healthcheck}}|{{if .State.Health}}{{.State.Health.Status}}{{end}}"
        first = self.run(["docker", "inspect", "-f", fmt, *ids], timeout=30).text.splitlines()
        if not any(line.rpartition("|")[2] for line in first):
            return True, "no healthcheck"
        limit = 10 + max(probe_seconds(line.rpartition("|")[0]) for line in first)
        argv = ["docker", "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{end}}",
                *ids]  # fmt: skip
        statuses, back = poll(
            lambda: self.run(argv, timeout=30).text.split(),
            lambda out: all(s == "healthy" for s in out),
            timeout=limit,
        )
        return back, " ".join(statuses)

    def paused(self, ids: Sequence[str]) -> bool:
        """All of these containers are paused."""
        if not ids:
            return True
        out = self.run(["docker", "inspect", "-f", "{{.State.Paused}}", *ids], timeout=30).text
        return out.split() == ["true"] * len(ids)

    def container_address(self, role: Role) -> str:
        """The address of a service's running container as Docker reports it; 127.0.0.1 under
        host networking (where the container has no address of its own)."""
        ids = self.running_ids(self.stack.service(role))
        if not ids:
            raise RemoteCommandError(
                self.label, f"find {self.stack.service(role)}", None, "", why="found none running"
            )
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
        out = self.run(["docker", "inspect", "-f", fmt, ids[0]], timeout=30).text.split()
        return out[0] if out else "127.0.0.1"

    def docker_df(self) -> str:
        """`df -P -B1` of Docker's data directory, as printed."""
        return self.run(self.disk_argv(), timeout=30).text

    def volumes_df(self, volumes: Sequence[DataVolume], image: str) -> str:
        """`df -P -B1` of each data volume's file system, as printed, in order."""
        return self.run(self.volume_df_argv(volumes, image), timeout=60).text

    def volume_named_exists(self, name: str) -> bool:
        """A docker volume of this exact name exists (whatever made it)."""
        return self.run(commands.volume_inspect(name), check=False, timeout=60).exit_code == 0

    def create_volume(self, name: str, label: dict[str, str]) -> None:
        self.run(commands.volume_create(name, label), timeout=60)

    def volumes_labelled(self, label: str) -> list[str]:
        return self.run(commands.volumes_labelled(label), timeout=60).text.split()

    def remove_volumes(self, names: Sequence[str]) -> None:
        """`docker volume rm -f` (callers decide they are theirs)."""
        if names:
            self.run(commands.volume_rm(names, force=True), timeout=300)

    def images(self) -> list[dict]:
        """`docker image ls` rows: Repository, Tag, ID, CreatedAt, Size."""
        argv = ["docker", "image", "ls", "--format", "{{json .}}"]
        return [json.loads(line) for line in self.run(argv, timeout=60).text.splitlines()]

    def disk_free(self) -> tuple[int, int]:
        """(total, available) bytes of the file system holding Docker's data."""
        return parse_df(self.run(self.disk_argv(), timeout=30).text)[0]

    def volume_free(self, volume: DataVolume) -> tuple[int, int]:
        """(total, available) bytes of the file system holding a data volume."""
        return parse_df(self.run(self.volume_df_argv([volume], self.tool_image), timeout=60).text)[
            0
        ]

    def volume_usage(self, volumes: dict[str, str]) -> dict[str, tuple[int, float | None]]:
        """label -> (bytes, oldest file's mtime or None) of docker volumes (label -> name)."""
        if not volumes:
            return {}
        out = self.run(self.volume_usage_argv(volumes, self.tool_image), timeout=1800).text
        rows = (line.split() for line in out.splitlines())
        return {r[0]: (int(r[1]), None if r[2] == "-" else float(r[2])) for r in rows}

    def image_tags(self, repository: str) -> list[str]:
        argv = ["docker", "image", "ls", repository, "--format", "{{.Tag}}"]
        return [t for t in self.run(argv, timeout=60).text.split() if t != "<none>"]

    def image_id(self, ref: str) -> str | None:
        """The image's ID on this engine; None when the engine does not have it."""
        result = self.run(["docker", "image", "inspect", "-f", "{{.Id}}", ref], check=False,
                          timeout=60)  # fmt: skip
        return result.text.strip() if result.exit_code == 0 else None

    def copy_images_to(self, other: SentryHost, refs: Sequence[str]) -> int:
        """`docker save` of `refs` on this engine (one archive: layers they share go once)
        streamed into `docker load` on `other`'s, each over its own SSH session, nothing on disk
        between; the bytes moved."""
        with self.stream(["docker", "save", *refs], timeout=3600) as tar:
            counted = HashingReader(tar)
            other.run(["docker", "load", "-q"], stdin=counted, timeout=6 * 3600)
        return counted.size

    def image_size(self, ref: str) -> int | None:
        result = self.run(["docker", "image", "inspect", "-f", "{{.Size}}", ref], check=False,
                          timeout=60)  # fmt: skip
        return int(result.text.strip()) if result.exit_code == 0 else None

    def container_states(self, ids: Sequence[str], probe: bool = False) -> dict[str, str]:
        """container id -> "<status> <health or ->" (e.g. "running healthy", "exited -").

        With `probe`, a running container that Docker does not call healthy yet has its own
        healthcheck run now (`probe_now`): Docker runs it only every interval, and the first run
        comes a whole interval after the start (self-hosted: HEALTHCHECK_INTERVAL=30s; Docker
        20.10 has no start_interval), or after an unpause. So a wait ends when the service is
        ready, not at Docker's next tick, and a sandbox can keep self-hosted's long intervals."""
        if not ids:
            return {}
        # .State.Health and .Config.Healthcheck are absent without a healthcheck
        fmt = '{{.Id}}\t{{json .State}}\t{{json (index .Config "Healthcheck")}}'
        out = self.run(["docker", "inspect", "-f", fmt, *ids], check=False, timeout=60).text
        states = {}
        for line in out.splitlines():
            cid, _, rest = line.partition("\t")
            raw, _, check = rest.partition("\t")
            if not raw.startswith("{"):
                continue
            state = json.loads(raw)
            health = (state.get("Health") or {}).get("Status") or "-"
            if probe and state.get("Status") == "running" and health in ("starting", "unhealthy"):
                health = self.probe_now(cid, check) or health
            states[cid] = f"{state.get('Status', '?')} {health}"
        return {i: next((v for k, v in states.items() if k.startswith(i)), "gone -") for i in ids}

    def probe_now(self, cid: str, healthcheck_json: str) -> str | None:
        """Run a container's own healthcheck once, as Docker would (`CMD-SHELL`: through
        /bin/sh -c; `CMD`: the argv), bounded by its timeout: "healthy" when it passes, else
        None (Docker's own status stands)."""
        argv, limit = healthcheck_argv(healthcheck_json)
        if not argv:
            return None
        result = self.run(["docker", "exec", cid, *argv], check=False, timeout=limit + 30)
        return "healthy" if result.exit_code == 0 else None

    def wait_ready(
        self, ids: Sequence[str], timeout: float, what: str, stable: float = STABLE_SECONDS
    ) -> None:
        """Every container running and healthy, its healthcheck probed now where Docker has not
        run it yet (or running `stable` s without a healthcheck); one that exits, or that Docker
        and the probe both call unhealthy, fails at once with its last lines (NotReadyError)."""
        since = time.monotonic()

        def states() -> dict[str, str]:
            found = self.container_states(ids, probe=True)
            for cid, state in found.items():
                if container_failed(state):
                    tail = " | ".join(self.container_log_tail(cid, 5))
                    raise NotReadyError(
                        f"{self.label}: {what}: container {cid[:12]} is {state}: {tail}"
                    )
            return found

        found, ok = poll(
            states,
            lambda found: containers_ready(found, time.monotonic() - since, stable),
            timeout=timeout,
            interval=1,
        )
        if not ok:
            raise NotReadyError(f"{self.label}: {what}: not ready within {timeout:.0f} s: {found}")

    def container_log_tail(self, cid: str, lines: int = 10) -> list[str]:
        argv = ["sh", "-c", 'exec docker logs --tail "$1" "$0" 2>&1', cid, str(lines)]
        return self.run(argv, check=False, timeout=60).text.splitlines()

    def remove_containers(self, ids: Sequence[str], stop_timeout: int = 30) -> None:
        """Stop (SIGTERM, then SIGKILL after `stop_timeout` s) and remove containers."""
        if ids:
            self.run(["docker", "stop", "-t", str(stop_timeout), *ids], timeout=stop_timeout + 60)
            self.run(["docker", "rm", *ids], timeout=60)

    def remove_image(self, ref: str) -> CommandResult:
        """`docker image rm` (never forced: an image a container uses stays, and says so)."""
        return self.run(["docker", "image", "rm", ref], check=False, timeout=300)

    def remove_volume(self, name: str) -> None:
        """`docker volume rm` (never forced: a volume in use stays, with an error)."""
        self.run(["docker", "volume", "rm", name], timeout=120)

    def engine_id(self) -> str:
        """Which Docker engine this is, however SSH reaches it: `docker info`'s ID and data root,
        `<ID>@<root>`. The root too: before Docker 23 the ID comes from /etc/docker/key.json,
        which every daemon of one machine (and machines cloned from one image) share."""
        argv = ["docker", "info", "--format", "{{.ID}}@{{.DockerRootDir}}"]
        return self.run(argv, timeout=30).text.strip()

    def socket_engine_id(self) -> str:
        """`engine_id` of the engine behind the block's `docker_socket` (what self-hosted's
        install.sh drives, from its container): it must be the one `docker` reaches over SSH."""
        argv = ["docker", "-H", f"unix://{self.docker_socket}", "info", "--format",
                "{{.ID}}@{{.DockerRootDir}}"]  # fmt: skip
        return self.run(argv, timeout=30).text.strip()

    def listening(self) -> frozenset[int]:
        """TCP ports something listens on, on the host (`ss`)."""
        return listening_ports(self.run(FACT_ARGV["listening"], timeout=30).text)

    def facts(self) -> HostFacts:
        """What bootstrap's preflight judges: versions, CPU, memory, free disk, open ports."""
        text = {name: self.run(argv, timeout=30).text for name, argv in FACT_ARGV.items()}
        meminfo = re.search(r"MemTotal:\s+(\d+)", text["meminfo"])
        df = self.run(self.disk_argv(), timeout=30).text.splitlines()[-1].split()
        return HostFacts(
            docker=text["docker"].strip(),
            compose=text["compose"].strip(),
            cpus=int(text["cpus"]),
            memory_gb=int(meminfo.group(1)) * 1024 / 1e9 if meminfo else 0.0,
            disk_free_gb=int(df[3]) / 1e9,
            listening=listening_ports(text["listening"]),
        )


@dataclass(frozen=True)
class HostFacts:
    docker: str
    compose: str
    cpus: int
    memory_gb: float
    disk_free_gb: float
    listening: frozenset[int]


def listening_ports(ss_output: str) -> frozenset[int]:
    """Ports in `ss -Hltn` output (local address is the 4th column)."""
    ports = set()
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) >= 4 and (m := re.search(r":(\d+)$", fields[3])):
            ports.add(int(m.group(1)))
    return frozenset(ports)


def parse_df(output: str) -> list[tuple[int, int]]:
    """`df -P -B1 A B ...` -> (total, available) bytes per path, in order."""
    return [(int(f[1]), int(f[3])) for f in (r.split() for r in output.strip().splitlines()[1:])]
