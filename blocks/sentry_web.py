"""Sentry's web health endpoints, read as Sentry serves them: `/_health/` (the process answers;
it does not touch the database) and `/_health/?full` (its status checks)."""

from __future__ import annotations

import json

from blocks.layouts import Role
from blocks.result import Result
from blocks.sentry_host import SentryHost


def assess_full_health(status: int, body: bytes) -> Result:
    """`/_health/?full`: 200 and no problems; else the problems Sentry names."""
    name = f"{Role.WEB}: /_health/?full"
    text = body.decode("utf-8", "replace")
    try:
        problems = json.loads(text).get("problems", [])
    except (ValueError, AttributeError):
        return Result.check(name, False, f"{status} {text[:200]}")
    messages = [f"{p.get('id', '?')}: {p.get('message', '')}"[:200] for p in problems]
    if status == 200 and not problems:
        return Result.check(name, True, "200, no problems")
    return Result.check(name, False, f"{status}: " + ("; ".join(messages) or text[:200]))


def probe_web(host: SentryHost) -> Result:
    """GET /_health/ (plain function: pollable). Like Sentry's, it does not touch the database."""
    status, body = host.web_request("/_health/")
    text = body.decode("utf-8", "replace").strip()[:200]
    return Result.check(
        f"{Role.WEB}: /_health/", status == 200 and "ok" in text, f"{status} {text}"
    )


def full_health(host: SentryHost) -> Result:
    """GET /_health/?full, judged."""
    return assess_full_health(*host.web_request("/_health/?full"))
