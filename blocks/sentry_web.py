"""Sentry's web health endpoints, read as Sentry serves them: `/_health/` (the process answers;
it does not touch the database) and `/_health/?full` (its status checks); and the proof neither
gives, the ingestion probe: a synthetic event must come out processed through Sentry's API."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid

from blocks.layouts import Role
from blocks.poll import poll
from blocks.result import Result, Status
from blocks.sentry_host import SentryHost
from blocks.ssh import RemoteCommandError


def assess_full_health(status: int, body: bytes) -> Result:
    """`/_health/?full`: 200 and no problems; else the problems Sentry names.

    Sentry answers `{"problems": ["<sentence>", ...], "healthy": {"<Check>": bool}}`, 500 when a
    critical problem exists (getsentry/sentry src/sentry/middleware/health.py; fixtures
    tests/conformance/fixtures/sentry_health_full_*.json). Current releases run only
    WarningStatusCheck, whose problems are warnings it filters out: `?full` is then 200 whenever
    the process answers, so no gate may treat it as proof of a working stack."""
    name = f"{Role.WEB}: /_health/?full"
    text = body.decode("utf-8", "replace")
    try:
        answer = json.loads(text)
        problems = answer.get("problems", [])
        failing = sorted(k for k, ok in (answer.get("healthy") or {}).items() if ok is False)
    except (ValueError, AttributeError):
        return Result.check(name, False, f"{status} {text[:200]}")
    messages = [(p if isinstance(p, str) else json.dumps(p))[:200] for p in problems]
    if status == 200 and not problems:
        return Result.check(name, True, "200, no problems")
    checks = f" (failing: {', '.join(failing)})" if failing else ""
    return Result.check(name, False, f"{status}: " + ("; ".join(messages) or text[:200]) + checks)


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


# the probe event's message, before its marker (the issue a probe makes is titled by it)
PROBE_MESSAGE = "sentry-ops ingestion probe"


def probe_ingestion(host: SentryHost, within: float) -> Result:
    """Send a synthetic event; it must come out processed (issue + payload) within `within` s."""
    name = "ingestion: synthetic event"
    if host.probe_dsn is None or host.api_token is None:
        return Result(
            name,
            Status.WARNING,
            "not probed: set probe_dsn and api_token in the host block to prove that events are "
            "processed, not only that /_health/ answers",
        )
    marker = uuid.uuid4().hex
    event = {
        "event_id": marker,
        "message": f"{PROBE_MESSAGE} {marker[:8]}",
        "level": "info",
        "platform": "other",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "tags": {"sentry-ops": "health-probe"},
    }
    started = time.monotonic()
    try:
        event_id = host.send_event(event)
    except RemoteCommandError as exc:
        return Result.check(name, False, f"store endpoint refused the event: {exc}"[:300])
    try:
        found, processed = poll(
            lambda: host.lookup_event(event_id),
            lambda found: bool(found and found.get("groupId") and found.get("event")),
            timeout=max(0.0, within - (time.monotonic() - started)),
            interval=0.25,
        )
    except RemoteCommandError as exc:  # e.g. a token without org:read: named, not a crash
        return Result.check(name, False, f"Sentry's API refused the lookup: {exc}"[:400])
    waited = time.monotonic() - started
    if processed:
        assert found is not None
        return Result.check(
            name, True, f"processed in {waited:.2f}s (issue {found['groupId']})", waited
        )
    state = "stored without an issue" if found else "never processed"
    return Result.check(
        name, False, f"event {event_id} {state} after {within:g}s: ingestion is stuck"
    )
