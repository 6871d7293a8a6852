"""The one module that reads and writes a compose `.env` file (pure functions, no I/O).

Follows compose's dotenv rules where they matter to us: `export KEY=value` lines, `#` comments,
single-quoted values are literal, double-quoted values are unescaped, bare values end at ` #`.
Writing refuses what would inject lines or be read back differently, and keeps every line it
does not change, in order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from blocks.layouts import ENV_NAME

_BARE = re.compile(r"^[A-Za-z0-9_./:@+,%-]*$")


class EnvFileError(ValueError):
    pass


def _split(line: str) -> tuple[str, str] | None:
    text = line.strip()
    if not text or text.startswith("#") or "=" not in text:
        return None
    text = text.removeprefix("export ").lstrip() if text.startswith("export ") else text
    key, _, value = text.partition("=")
    return key.strip(), value


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return re.split(r"\s+#", value, maxsplit=1)[0].strip()


def parse_env(text: str) -> dict[str, str]:
    """KEY -> value of a .env text; a later line wins, like compose."""
    env = {}
    for line in text.splitlines():
        if (pair := _split(line)) is not None:
            env[pair[0]] = _unquote(pair[1])
    return env


def format_value(key: str, value: str) -> str:
    """`KEY=value`, quoted so compose reads back exactly `value` (no interpolation)."""
    if not ENV_NAME.match(key):
        raise EnvFileError(f".env key {key!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")
    if "\n" in value or "\r" in value or "\0" in value:
        raise EnvFileError(f".env value of {key} contains a line break: refusing to write it")
    if _BARE.match(value):
        return f"{key}={value}"
    if "'" in value:
        raise EnvFileError(
            f".env value of {key} contains both a quote and characters that need quoting"
        )
    return f"{key}='{value}'"


def render_env(current: str, wanted: dict[str, str]) -> str:
    """`current` .env text with `wanted` keys set: other lines and order kept, new keys last."""
    rendered = {key: format_value(key, value) for key, value in wanted.items()}
    lines, seen = [], set()
    for line in current.splitlines():
        pair = _split(line)
        if pair is not None and pair[0] in rendered:
            if pair[0] not in seen:
                lines.append(rendered[pair[0]])
                seen.add(pair[0])
            continue  # a duplicate of a key we set: dropped, so the value is unambiguous
        lines.append(line)
    lines += [rendered[k] for k in wanted if k not in seen]
    return "\n".join(lines) + "\n"


def conflicts(current: dict[str, str], wanted: dict[str, str], keep: set[str]) -> list[str]:
    """Keys in `keep` that `current` already sets to something other than `wanted`."""
    return sorted(k for k in keep if current.get(k) and k in wanted and current[k] != wanted[k])


@dataclass(frozen=True)
class EnvChange:
    """What setting keys in a .env text would do."""

    text: str  # the file afterwards (== the current text when nothing changes)
    changed: list[str]  # keys whose value changes
    conflicts: list[str]  # kept keys the file already sets to another value
    generated: list[str]  # keys that were empty and got a generated value


def settle(
    current: str,
    wanted: dict[str, str],
    keep: set[str],
    generate: dict[str, Callable[[], str]],
) -> EnvChange:
    """`wanted` set in `current`, the `keep` keys never changed (listed as conflicts when they
    would be), and each `generate` key given a new value only where the file has none."""
    have = parse_env(current)
    wanted = dict(wanted)
    differ = conflicts(have, wanted, keep)
    made = [key for key in generate if not have.get(key)]
    wanted |= {key: generate[key]() for key in made}
    changed = sorted(k for k in wanted if have.get(k) != wanted[k])
    return EnvChange(render_env(current, wanted), changed, differ, made)
