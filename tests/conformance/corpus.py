"""The upstream conformance corpus: what real Sentry, self-hosted, taskbroker and compose return,
one JSON file per behaviour in fixtures/, each naming the upstream repo, path and ref it was copied
(or, where upstream has no sample, written) from. The product's parsers and decisions are replayed
against it (test_product.py) and so is the sandbox's stand-in (test_standin.py): neither may
agree only with the other."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).with_name("fixtures")


@dataclass(frozen=True)
class Fixture:
    name: str
    source: dict[str, str]  # repo, path, ref, how
    notes: str
    sample: Any


def names() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.json"))


def load(name: str) -> Fixture:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    return Fixture(name, data["source"], data.get("notes", ""), data["sample"])


def sample(name: str, key: str | None = None) -> Any:
    value = load(name).sample
    return value if key is None else value[key]
