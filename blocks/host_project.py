"""The project directory's own files: `.env` (blocks/dotenv.py owns the format), the git checkout
(self-hosted), the replica counts kept across `compose up -d`.

A part of `SentryHost` (blocks/sentry_host.py): its methods use the block's fields and its one
transport."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import yaml

from blocks import commands
from blocks.dotenv import EnvChange, parse_env, render_env, settle
from blocks.ssh import CommandResult

if TYPE_CHECKING:
    from blocks.sentry_host import SentryHost  # noqa: F401
SCALE_FILE = "sentry-ops.scale.yml"
SCALE_HEADER = (
    "# Written by sentry-ops (scale-workers / autoscale): replica counts kept across a plain\n"
    "# `docker compose up -d`. COMPOSE_FILE lists this file after the project's own. Change the\n"
    "# counts with the scale-workers deployment; an edit here is overwritten by the next run.\n"
)
# an unfinished operation's marker in the project dir, written before it changes anything and
# removed when it is done (upgrade: its hop done or rolled back; restore: the restored stack
# checked): while one is there the host is mid-operation (a killed run, a failed rollback or
# restore), refused to other mutating flows and red in health
MARKERS = {"upgrade": ".sentry-ops-upgrade.json", "restore": ".sentry-ops-restore.json"}
# compose's default file names, in its order of preference
COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")


class ProjectVerbs:
    """The project directory's own files."""

    def read_env(self, name: str = ".env") -> str:
        """An env file of the project dir as text ("" when it does not exist)."""
        path = f"{self.project_dir}/{name}"
        return self.get(path).decode() if self.exists(path) else ""

    def write_env(self, updates: dict[str, str], name: str = ".env") -> tuple[str, bytes]:
        """Set `updates` in an env file of the project dir (created 0600 when missing; every
        other line kept); returns its path and its bytes before, for an undo."""
        path = f"{self.project_dir}/{name}"
        before = self.get(path) if self.exists(path) else b""
        self.put(path, render_env(before.decode(), updates).encode(), mode=0o600)
        self._compose_context = None  # COMPOSE_PROJECT_NAME or the env files may have changed
        return path, before

    def env_setting(self, key: str) -> tuple[str, str] | None:
        """(value, file) of `key` as compose reads the project's env files (`.env`, then
        `.env.custom` when the stack uses it: a later file wins); None when none sets it."""
        names = [posixpath.basename(f) for f in self.context.env_files] or [".env"]
        found = None
        for name in names:
            if value := parse_env(self.read_env(name)).get(key):
                found = (value, name)
        return found

    @staticmethod
    def settle_env(
        current: str, wanted: dict[str, str], keep: set[str], generate: dict[str, Callable[[], str]]
    ) -> EnvChange:
        """What setting `wanted` in an env file's text would do (blocks/dotenv.py `settle`)."""
        return settle(current, wanted, keep, generate)

    def marker(self, kind: str) -> dict | None:
        """The unfinished operation (`MARKERS`: upgrade or restore) recorded in the project dir
        (run, since, the set, ...)."""
        path = f"{self.project_dir}/{MARKERS[kind]}"
        if not self.exists(path):
            return None
        try:
            return json.loads(self.get(path))
        except ValueError:
            return {"run": "?", "unreadable": path}

    def mark(self, kind: str, record: dict | None) -> None:
        """Write the marker of an unfinished `kind` (`record`), or remove it (None)."""
        path = f"{self.project_dir}/{MARKERS[kind]}"
        if record is None:
            self.remove_tree(path)
        else:
            self.put(path, json.dumps(record, indent=2).encode(), mode=0o644)

    def git(self, *args: str, check: bool = True) -> CommandResult:
        """git in the project dir (self-hosted's checkout)."""
        return self.run(["git", "-C", self.project_dir, *args], check=check, timeout=300)

    def git_head(self) -> str:
        return self.git("rev-parse", "HEAD").text.strip()

    def git_tags(self) -> set[str]:
        return set(self.git("tag", "-l").text.split())

    def modified_files(self) -> str:
        """Tracked files of the project dir's checkout that differ from its commit, as `git
        status --porcelain` lists them ("" when clean)."""
        return self.run(commands.git_modified(self.project_dir), timeout=300).text.strip()

    def checkout(self, ref: str) -> None:
        """`git checkout` of a tag or commit in the project dir (self-hosted's releases)."""
        self.run(commands.checkout(self.project_dir, ref), timeout=300)

    def persist_scale(self, service: str, replicas: int) -> str:
        """Keep `replicas` of `service` across a plain `docker compose up -d` of the stack: the
        count goes into sentry-ops' own compose file (SCALE_FILE, as `scale` and
        `deploy.replicas`, whichever the project's files set), which COMPOSE_FILE in the
        operator's env file lists after the project's files. Returns what was changed."""
        d = self.project_dir
        path = f"{d}/{SCALE_FILE}"
        current = yaml.safe_load(self.get(path)) if self.exists(path) else None
        services = dict((current or {}).get("services") or {})
        # both keys, equal: compose refuses distinct `scale` and `deploy.replicas` across the
        # merged files, and the guide's HA recipe sets `deploy.replicas` in the project's own
        services[service] = {"scale": replicas, "deploy": {"replicas": replicas}}
        body = yaml.safe_dump({"services": dict(sorted(services.items()))}, sort_keys=True)
        self.put(path, (SCALE_HEADER + body).encode(), mode=0o644)
        env_path = f"{d}/{self.stack.operator_env_file}"
        env_text = self.get(env_path).decode() if self.exists(env_path) else ""
        merged = {}  # what compose reads: .env, then the operator's file over it
        if self.stack.operator_env_file != ".env" and self.exists(f"{d}/.env"):
            merged.update(parse_env(self.get(f"{d}/.env").decode()))
        merged.update(parse_env(env_text))
        files = compose_files_with_scale(
            merged.get("COMPOSE_FILE"), self.listdir(d), d, merged.get("COMPOSE_PATH_SEPARATOR")
        )
        if files is None:
            return f"{SCALE_FILE}: {service} scale {replicas}"
        created = not env_text
        self.put(env_path, render_env(env_text, {"COMPOSE_FILE": files}).encode(), mode=0o600)
        self._compose_context = None  # a new .env.custom changes the env files compose reads
        return (
            f"{SCALE_FILE}: {service} scale {replicas}; COMPOSE_FILE in "
            f"{self.stack.operator_env_file}{' (created)' if created else ''} lists it"
        )


def compose_files_with_scale(
    current: str | None, names: Sequence[str], project_dir: str, separator: str | None = None
) -> str | None:
    """COMPOSE_FILE that adds SCALE_FILE to what compose reads today (None: it already does).
    Unset COMPOSE_FILE means compose's default file and its override; paths are absolute,
    because compose resolves them against its working directory, not the project's."""
    sep = separator or ":"
    if current:
        files = [f for f in current.split(sep) if f]
    else:
        base = next((n for n in COMPOSE_FILES if n in names), None)
        if base is None:
            raise ValueError(f"no compose file ({', '.join(COMPOSE_FILES)}) in {project_dir}")
        stem, ext = base.rsplit(".", 1)
        files = [base] + [f"{stem}.override.{ext}"] * (f"{stem}.override.{ext}" in names)
    if any(posixpath.basename(f) == SCALE_FILE for f in files):
        return None
    files.append(SCALE_FILE)
    return sep.join(f if posixpath.isabs(f) else posixpath.join(project_dir, f) for f in files)
