"""Remote commands as data: pure functions of plain values that return argv lists (quoted in
one place, the SSH transport). `SentryHost`'s named verbs call them with the host's values;
each is unit-tested on its exact command (tests/unit/test_commands.py), as Kamal tests its
`commands/*`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def compose(project_dir: str, env_files: Sequence[str], project: str, *args: str) -> list[str]:
    """`docker compose` of one project, resolved as in its directory (env files, -p)."""
    files = [a for f in env_files for a in ("--env-file", f)]
    return ["docker", "compose", "--project-directory", project_dir, *files, "-p", project, *args]


def up(
    *services: str,
    no_deps: bool = False,
    no_recreate: bool = False,
    scale: Mapping[str, int] | None = None,
    stop_timeout: int | None = None,
) -> list[str]:
    """`compose up -d` arguments: the services (none: all), with replica counts."""
    flags = ["--no-deps"] * no_deps + ["--no-recreate"] * no_recreate
    counts = [a for s, n in (scale or {}).items() for a in ("--scale", f"{s}={n}")]
    timeout = ["--timeout", str(stop_timeout)] if stop_timeout is not None else []
    return ["up", "-d", *flags, *counts, *timeout, *services]


def down(remove_volumes: bool, stop_timeout: int = 10) -> list[str]:
    """`compose down` arguments: orphans too; volumes only when asked."""
    return ["down", *["-v"] * remove_volumes, "--remove-orphans", "-t", str(stop_timeout)]


def labels(values: Mapping[str, str]) -> list[str]:
    return [a for k, v in values.items() for a in ("--label", f"{k}={v}")]


def volume_create(name: str, label: Mapping[str, str]) -> list[str]:
    return ["docker", "volume", "create", *labels(label), name]


def volume_inspect(name: str) -> list[str]:
    return ["docker", "volume", "inspect", name]


def volumes_labelled(label: str) -> list[str]:
    """Names of the volumes carrying `label` (`key` or `key=value`)."""
    return ["docker", "volume", "ls", "-q", "--filter", f"label={label}"]


def containers_labelled(label: str) -> list[str]:
    """IDs of the containers, running or not, carrying `label`."""
    return ["docker", "ps", "-aq", "--filter", f"label={label}"]


def volume_rm(names: Sequence[str], force: bool = False) -> list[str]:
    return ["docker", "volume", "rm", *["-f"] * force, *names]


def git(repo: str, *args: str) -> list[str]:
    return ["git", "-C", repo, *args]


def checkout(repo: str, ref: str) -> list[str]:
    """A detached checkout of a tag or commit, quietly."""
    return git(repo, "-c", "advice.detachedHead=false", "checkout", "--quiet", ref)


def git_modified(repo: str) -> list[str]:
    """The checkout's tracked files that differ from its commit, one porcelain line each
    (untracked files left out)."""
    return git(repo, "status", "--porcelain", "--untracked-files=no")


def tar_out(directory: str, paths: Sequence[str]) -> list[str]:
    """An uncompressed tar of the `paths` under `directory` that exist, on stdout."""
    return ["tar", "-C", directory, "--ignore-failed-read", "-cf", "-", *paths]


def tar_in(directory: str) -> list[str]:
    return ["tar", "-C", directory, "-xf", "-"]


def docker_rm(*names: str) -> list[str]:
    return ["docker", "rm", "-f", *names]
