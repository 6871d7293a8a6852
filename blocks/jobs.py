"""Long remote steps (`sentry cleanup`, VACUUM, migrations) as detached, named containers.

A step that can run for hours must not die with the SSH session that started it (operators report
migrations killed half-way by a dropped connection). So it runs in a container started with
`-d --name sentry-ops-<job>-<project>`, labelled with the flow run that wants it, and this side
only follows its log. After a dropped connection, or a task retry, `run` finds the container by
name and follows it again instead of starting a second one; a container left by another run is
waited for (never doubled) and a finished one of another run is cleared before a new start. The
container is removed once its exit code is read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from blocks.sentry_host import SentryHost

RUN_LABEL = "sentry-ops.run"
TAIL = 20  # last log lines kept for the report


class JobError(Exception):
    pass


@dataclass(frozen=True)
class Job:
    """How a detached step ended: its container, exit code, last lines, and whether it was
    found already running (re-attached) rather than started here."""

    name: str
    exit_code: int
    seconds: float
    tail: tuple[str, ...]
    reattached: bool

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def failure(self, what: str) -> str | None:
        """None when the step succeeded; else one sentence: `what` exited N: its last lines."""
        if self.ok:
            return None
        return f"{what} exited {self.exit_code}: " + " | ".join(self.tail[-5:])


def container_name(host: SentryHost, job: str) -> str:
    return f"sentry-ops-{job}-{host.project}"


def state(host: SentryHost, name: str) -> tuple[str, int, str] | None:
    """(status, exit code, run label) of the named container, None when there is none."""
    fmt = (
        f'{{{{.State.Status}}}} {{{{.State.ExitCode}}}} {{{{index .Config.Labels "{RUN_LABEL}"}}}}'
    )
    result = host.run(["docker", "inspect", "-f", fmt, name], check=False, timeout=30)
    if result.exit_code != 0:
        return None
    status, code, run = [*result.text.split(), "", "", ""][:3]
    return status, int(code or 0), run


def run(
    host: SentryHost,
    job: str,
    start_argv: Callable[[str, dict[str, str]], Sequence[str]],
    *,
    run_id: str,
    on_line: Callable[[str], None],
    stdin: bytes | None = None,
    timeout: float = 24 * 3600,
) -> Job:
    """Run (or re-attach to) the detached step `job` on `host` and wait for its end.

    `start_argv(name, labels)` builds the `docker run -d` / `docker compose run -d` command with
    that container name and labels; `stdin` (a secret env line) is fed to that command only.
    Each log line goes to `on_line` as it comes.
    """
    name = container_name(host, job)
    started = time.monotonic()
    found = state(host, name)
    if found and found[0] not in ("running", "created", "restarting") and found[2] != run_id:
        on_line(f"[sentry-ops] removing {name}, left finished by run {found[2] or '?'}")
        host.run(["docker", "rm", "-f", name], timeout=60)
        found = None
    while found and found[2] != run_id and found[0] in ("running", "created", "restarting"):
        on_line(f"[sentry-ops] {name} of run {found[2] or '?'} still runs: waiting for it first")
        _follow(host, name, lambda _: None, timeout)
        found = state(host, name)
        if found and found[2] != run_id:
            host.run(["docker", "rm", "-f", name], timeout=60)
            found = None
    reattached = found is not None
    if reattached:
        on_line(f"[sentry-ops] re-attaching to {name} (status {found[0]})")  # type: ignore[index]
    else:
        labels = {RUN_LABEL: run_id, "sentry-ops.job": job}
        host.run(start_argv(name, labels), stdin=stdin, timeout=600)
    tail = _follow(host, name, on_line, timeout)
    end = state(host, name)
    if end is None:
        raise JobError(f"{host.label}: the container {name} vanished before its end was read")
    host.run(["docker", "rm", "-f", name], timeout=60)
    return Job(name, end[1], round(time.monotonic() - started, 2), tuple(tail), reattached)


def _follow(
    host: SentryHost, name: str, on_line: Callable[[str], None], timeout: float
) -> list[str]:
    """Stream the container's log until it exits (`docker logs -f` ends then), then make sure
    it has (`docker wait`); returns the last lines."""
    tail: list[str] = []
    argv = ["sh", "-c", 'exec docker logs -f "$0" 2>&1', name]  # the step's stderr too
    with host.transport.session(argv, timeout=timeout) as session:
        while (line := session.readline()) is not None:
            on_line(line)
            tail = [*tail[-(TAIL - 1) :], line]
    host.run(["docker", "wait", name], timeout=timeout, check=False)
    return tail
