"""Throwaway containers of the tool image next to the data: volume tars both ways through a FIFO,
short tool commands, the config tar.

A part of `SentryHost` (blocks/sentry_host.py): its methods use the block's fields and its one
transport."""

from __future__ import annotations

import contextlib
import io
import posixpath
import tarfile
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO, Literal

from blocks import commands
from blocks.layouts import DataVolume
from blocks.ssh import Prefixed

if TYPE_CHECKING:
    from blocks.sentry_host import SentryHost  # noqa: F401
# Runs a throwaway container whose stdout (mode "out") or stdin (mode "in") is a FIFO in a private
# temp dir that this SSH command reads or writes: Docker 20.10's attach relay costs more CPU than
# SSH (measured here: 10.1 s through the relay vs 5.8 s through a FIFO for the same dump), a FIFO
# avoids it. The first stdin line is a secret (a pgpass line, or empty)
# written to a 0600 file the container sees as $PGPASSFILE: never argv. The container's exit
# status is this command's; on any exit or hang-up the container and the temp dir are removed.
# Arguments: mode job image netns n_options options... command...
CONTAINER_IO = r"""set -euo pipefail
mode=$1 job=$2 image=$3 netns=$4 nopts=$5
shift 5
opts=("${@:1:$nopts}")
shift "$nopts"
d=$(mktemp -d /tmp/sentry-ops.XXXXXXXX)
cid=
cleanup() { if [ -n "$cid" ]; then docker rm -f "$cid" >/dev/null 2>&1 || true; fi; rm -rf "$d"; }
trap cleanup EXIT
trap 'exit 129' HUP INT TERM PIPE
IFS= read -r secret || true
if [ -n "$secret" ]; then (umask 077; printf '%s\n' "$secret" >"$d/pgpass"); fi
unset secret
mkfifo -m 600 "$d/fifo"
net=(--network none)
if [ -n "$netns" ]; then net=(--network "container:$netns"); fi
if [ "$mode" = out ]; then io='exec >/io/fifo'; else io='exec </io/fifo'; fi
cid=$(docker run -d --label "sentry-ops.job=$job" "${net[@]}" -v "$d:/io" \
    -e PGPASSFILE=/io/pgpass "${opts[@]}" --entrypoint sh "$image" -c "$io; exec \"\$@\"" sh "$@")
if [ "$mode" = out ]; then cat "$d/fifo"; else cat >"$d/fifo" || true; fi
code=$(docker wait "$cid")
if [ "$code" != 0 ]; then
    docker logs --tail 40 "$cid" >&2 2>&1 || true
    echo "$job container ($image) exited with $code" >&2
    exit "$code"
fi
"""
# Arguments: a `docker create` argv. Its container gets the tar on stdin (a secret file, 0600),
# then starts; a failed copy removes it (never left "created", which a job would wait on).
SECRET_FILE_JOB = r"""set -e
cid=$("$@")
if ! docker cp - "$cid:/"; then docker rm -f "$cid" >/dev/null; exit 1; fi
exec docker start "$cid"
"""


def secret_tar(name: str, data: bytes) -> bytes:
    """A tar of one file `name`, mode 0600, owned by root: what `docker cp - <container>:/`
    unpacks as /<name> (no directory entries: the image's own keep their modes)."""
    if "/" in name:
        raise ValueError(f"a secret file's name, not a path: {name!r}")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o600
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


# the transport's stdin convention: a throwaway container's first stdin line is a secret (a
# pgpass line); an empty line when there is none
NO_SECRET = b"\n"


class DataVerbs:
    """Throwaway containers of the tool image next to the data."""

    def container_io_argv(
        self,
        mode: Literal["out", "in"],
        image: str,
        netns: str | None,
        command: Sequence[str],
        *,
        job: str,
        options: Sequence[str] = (),
    ) -> list[str]:
        """Run `command` in a throwaway container of `image` (in `netns`'s network namespace, else
        none). "out": its stdout comes out of this SSH command; "in": this SSH command's stdin
        (after one secret line) becomes its stdin. Through a FIFO, not Docker's relay."""
        options = [*self.pull_argv(), *options]
        return ["bash", "-c", CONTAINER_IO, "sentry-ops", mode, job, image, netns or "",
                str(len(options)), *options, *command]  # fmt: skip

    def volume_tar_argv(self, volume: DataVolume, image: str, path: str = ".") -> list[str]:
        """zstd-compressed tar of a data volume (or `path` in it), made on the host (read-only
        mount). A volume the layout copies with SQLite's online backup (`sqlite_copy`) gives a
        tar of that one database file, copied consistently while its writers go on."""
        mount = ["-v", f"{self.volume_name(volume)}:/volume:ro"]
        where = posixpath.join("/volume", _inside(path))
        command = ["tar", "--use-compress-program=zstd -1 -T0", "-C", where, "-cf", "-", "."]
        if db := self.stack.sqlite_copy.get(volume):
            # a WAL database's readers write its -shm (locks): mounted read-write; the copy goes
            # into the throwaway container's own /tmp (the file is small: in-flight tasks)
            mount = ["-v", f"{self.volume_name(volume)}:/volume"]
            script = (
                'mkdir /tmp/copy && sqlite3 "/volume/$0" ".backup /tmp/copy/$0" && '
                'exec tar --use-compress-program="zstd -1 -T0" -C /tmp/copy -cf - .'
            )
            command = ["sh", "-c", script, _inside(db)]
        return self.container_io_argv("out", image, None, command, job="backup", options=mount)

    def volume_untar_argv(self, volume: DataVolume, image: str, path: str = ".") -> list[str]:
        """Unpack a zstd-compressed tar into a data volume (or `path` in it, made if missing),
        on the host."""
        mount = ["-v", f"{self.volume_name(volume)}:/volume"]
        where = posixpath.join("/volume", _inside(path))
        untar = 'mkdir -p "$0" && exec tar --use-compress-program="zstd -d" -C "$0" -xf -'
        command = ["sh", "-c", untar, where]
        return self.container_io_argv("in", image, None, command, job="restore", options=mount)

    def volume_run_argv(self, volume: DataVolume | str, image: str, *argv: str) -> list[str]:
        """A short command of the tool image with a data volume (or the volume of that name)
        mounted at /volume."""
        name = self.volume_name(volume) if isinstance(volume, DataVolume) else volume
        return ["docker", "run", "--rm", "--network", "none", "--label", "sentry-ops.job=volume",
                *self.pull_argv(), "-v", f"{name}:/volume", "--entrypoint", argv[0], image,
                *argv[1:]]  # fmt: skip

    def empty_volume(self, volume: DataVolume) -> None:
        """Everything in a data volume deleted; the volume itself (its name, labels and driver
        options: one bound to a device stays bound) is kept."""
        argv = self.volume_run_argv(
            volume, self.tool_image, "find", "/volume", "-mindepth", "1", "-delete"
        )
        self.run(argv, timeout=6 * 3600)

    def tool_argv(self, image: str, tool: str, *args: str) -> list[str]:
        """A short command from the tool image (no network, no mounts)."""
        return ["docker", "run", "--rm", "--network", "none", "--label", "sentry-ops.job=tool",
                *self.pull_argv(), "--entrypoint", tool, image, *args]  # fmt: skip

    def tool_job_argv(
        self,
        name: str,
        labels: dict[str, str],
        netns: str,
        *command: str,
        secret_file: str = "",
        options: Sequence[str] = (),
    ) -> list[str]:
        """`command` of the tool image, detached, named `name`, in the network namespace of the
        container `netns`. With `secret_file`, the container is created, then given that file
        from this SSH command's stdin (a tar, `secret_tar`) before it starts: the secret is in
        neither argv nor the container's environment (`docker inspect` shows no secret)."""
        verb = ["create"] if secret_file else ["run", "-d"]
        create = ["docker", *verb, "--name", name, *commands.labels(labels), "--network",
                  f"container:{netns}", *self.pull_argv(), *options, "--entrypoint", command[0],
                  self.tool_image, *command[1:]]  # fmt: skip
        return ["sh", "-c", SECRET_FILE_JOB, "sentry-ops", *create] if secret_file else create

    def pull_argv(self) -> list[str]:
        return [] if self.pull_images else ["--pull", "never"]

    def config_tar_argv(self, paths: Sequence[str] = ()) -> list[str]:
        """tar of the stack's configuration files that exist (they hold secrets), and `paths`."""
        files = list(dict.fromkeys([*self.stack.config_files, *paths]))
        return ["tar", "-C", self.project_dir, "--ignore-failed-read", "--exclude=.git", "-cf",
                "-", "--", *files]  # fmt: skip

    @contextlib.contextmanager
    def stream_volume(self, volume: DataVolume, path: str = ".") -> Iterator[BinaryIO]:
        """A zstd-compressed tar of a data volume (or `path` in it), made on the host, as a
        readable (see volume_tar_argv); no secret goes with it."""
        with self.stream(self.volume_tar_argv(volume, self.tool_image, path), timeout=300,
                         stdin=NO_SECRET) as tar:  # fmt: skip
            yield tar

    def restore_volume(self, volume: DataVolume, data: BinaryIO, path: str = ".") -> None:
        """Unpack a zstd-compressed tar (a readable) into a data volume, on the host."""
        argv = self.volume_untar_argv(volume, self.tool_image, path)
        self.run(argv, stdin=Prefixed(NO_SECRET, data), timeout=6 * 3600)

    def config_tar(self) -> bytes:
        """A tar of the stack's configuration files that exist (they hold secrets) and of every
        file or folder of the project dir a service bind-mounts (read from the resolved compose
        config, not a list: self-hosted mounts redis.conf, clickhouse/, taskbroker/, geoip/, ...,
        which a rebuilt host needs)."""
        binds = project_binds(self.compose_config(), self.project_dir)
        return self.run(self.config_tar_argv(binds), timeout=120).stdout


def project_binds(config: dict, project_dir: str) -> list[str]:
    """The bind-mount sources of a resolved compose config that lie inside `project_dir`, relative
    to it (the project dir itself, and anything outside it such as the Docker socket, left out)."""
    root = posixpath.normpath(project_dir)
    found = []
    for service in (config.get("services") or {}).values():
        for mount in service.get("volumes") or []:
            if not isinstance(mount, dict) or mount.get("type") != "bind":
                continue
            source = posixpath.normpath(str(mount.get("source", "")))
            if source.startswith(root + "/"):
                found.append(posixpath.relpath(source, root))
    return sorted(set(found))


def _inside(path: str) -> str:
    """A relative path that stays inside the volume."""
    norm = posixpath.normpath(path)
    if posixpath.isabs(norm) or norm.startswith(".."):
        raise ValueError(f"{path!r} is not a path inside a volume")
    return norm
