"""What several flows share: the one result type for checks and steps, and how it is shown."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum

from prefect.artifacts import create_table_artifact


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

    @property
    def ok(self) -> bool:
        return self.status is not Status.FAILED

    @classmethod
    def check(cls, name: str, ok: bool, detail: str, seconds: float | None = None) -> Result:
        return cls(name, Status.OK if ok else Status.FAILED, detail, seconds)

    def row(self) -> dict:
        row = {k: v for k, v in asdict(self).items() if k != "seconds" or v is not None}
        row["status"] = str(self.status)
        return row


def failed(results: list[Result]) -> list[Result]:
    return [r for r in results if not r.ok]


def summary(results: list[Result]) -> str:
    return "; ".join(f"{r.name}: {r.detail}" for r in failed(results))


def artifact_slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "host"


def results_artifact(key: str, results: list[Result], description: str) -> None:
    create_table_artifact(
        key=artifact_slug(key), table=[r.row() for r in results], description=description
    )
