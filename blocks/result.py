"""The one result type of every check and step (`Result`), and the one collector of them
(`Report`): what a flow did, in order, for its artifact and its return value."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum


class Status(StrEnum):
    OK = "ok"  # a check passed
    DONE = "done"  # a step changed something
    ALREADY = "already done"  # a step found nothing to change
    WARNING = "warning"  # worth a look; does not fail the run
    FAILED = "failed"


@dataclass(frozen=True)
class Result:
    """One check or one step of a flow: what, how it went, and the detail a person reads."""

    name: str
    status: Status
    detail: str = ""
    seconds: float | None = None
    reclaimed: int | None = None  # bytes a step gave back, where it measures them

    @property
    def ok(self) -> bool:
        return self.status is not Status.FAILED

    @classmethod
    def check(cls, name: str, ok: bool, detail: str, seconds: float | None = None) -> Result:
        return cls(name, Status.OK if ok else Status.FAILED, detail, seconds)

    def row(self) -> dict:
        row = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("seconds", "reclaimed") or v is not None
        }
        row["status"] = str(self.status)
        return row


def failed(results: list[Result]) -> list[Result]:
    return [r for r in results if not r.ok]


def summary(results: list[Result]) -> str:
    return "; ".join(f"{r.name}: {r.detail}" for r in failed(results))


@dataclass
class Report:
    """What a run did: its steps (timed stages, changes) and its checks, each a `Result`, in
    order. `on_add` sees every result as it comes (a flow logs them)."""

    steps: list[Result] = field(default_factory=list)
    checks: list[Result] = field(default_factory=list)
    on_add: Callable[[Result], None] | None = field(default=None, repr=False, compare=False)

    def add(self, *results: Result) -> None:
        """Steps, as they happen."""
        for r in results:
            self.steps.append(r)
            if self.on_add:
                self.on_add(r)

    def stage(self, name: str, started: float, detail: str = "ok") -> None:
        """A step timed from `started` (time.monotonic())."""
        self.add(Result(name, Status.DONE, detail, round(time.monotonic() - started, 2)))

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Result.check(name, ok, detail))
        return ok

    @property
    def failed(self) -> list[str]:
        """'name (detail)' of every failed step or check."""
        return [f"{r.name} ({r.detail})" for r in [*self.steps, *self.checks] if not r.ok]
