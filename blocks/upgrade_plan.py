"""What an upgrade decides before and while it changes anything, as pure functions (no I/O): the
hops over Sentry's hard stops, the flow's parameters checked, the disk it needs, when a container
counts as up, and the texts an operator reads (the plan to approve, the restore question, where a
rollback left the host). flows/upgrade.py runs them; tests/unit/test_upgrade_plan.py tests them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

# Sentry's hard stops: releases no self-hosted upgrade may skip (getsentry/sentry-docs
# develop-docs/self-hosted/releases.mdx, "Hard Stops", with the stops its merged PRs added:
# 24.8.0 #11146, 25.5.1 #13783, 26.5.1 #17988 (2026-06), 26.7.0 #18702, 26.5.0 #18747; fixture
# tests/conformance/fixtures/docs_hard_stops.json). 23.11.0 is kept though only third parties
# list it: a needless stop costs one hop, a missing one a refused upgrade. The flow's
# `hard_stops` overrides them.
HARD_STOPS = ("9.1.2", "21.5.0", "21.6.3", "23.6.2", "23.11.0", "24.8.0", "25.5.1", "26.5.0",
              "26.5.1", "26.7.0")  # fmt: skip
VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(-[A-Za-z0-9.]+)?$")
FRESH_BACKUP_SECONDS = 1800  # an approval later than this after the pre-backup takes a new one
STABLE_SECONDS = 5  # a container without a healthcheck must stay running this long

# self-hosted's install.sh run unattended: no prompt for a first user, no error-report prompt,
# config updates applied (getsentry/self-hosted install.sh, its flags in install/parse-cli.sh)
INSTALL_FLAGS = ("--skip-user-creation", "--no-report-self-hosted-issues",
                 "--apply-automatic-config-updates")  # fmt: skip


class UpgradePlanError(Exception):
    pass


def version_key(version: str) -> tuple[int, int, int]:
    match = VERSION.match(version)
    if not match:
        raise UpgradePlanError(
            f"{version!r} is not a Sentry version (YY.M.P, as its image tags and self-hosted's "
            "release tags are, e.g. 24.8.0)"
        )
    return int(match[1]), int(match[2]), int(match[3])


def plan_upgrade(
    current: str,
    target: str,
    hard_stops: Iterable[str] = HARD_STOPS,
    available: Collection[str] | None = None,
) -> list[str]:
    """The versions to upgrade to, in order: every hard stop strictly between `current` and
    `target`, then `target` ([] when already there). Refuses a downgrade, a version that is
    not one, and (given `available`, e.g. the tags a host can run) a hop it cannot run."""
    now, goal = version_key(current), version_key(target)
    stops = sorted(set(hard_stops), key=version_key)
    if goal < now:
        raise UpgradePlanError(
            f"{current} -> {target} is a downgrade: Sentry's migrations only go forward; to go "
            f"back, restore a backup taken on {target}"
        )
    if goal == now:
        return []
    hops = [s for s in stops if now < version_key(s) < goal] + [target]
    if available is not None:
        missing = [h for h in hops if h not in available]
        if missing:
            raise UpgradePlanError(
                f"{current} -> {target} goes through {' -> '.join(hops)}, and {missing} "
                f"{'is' if len(missing) == 1 else 'are'} not available: known versions "
                f"{sorted(available, key=version_key)[-8:]}"
            )
    return hops


def parameter_problems(
    target_version: str, batch_size: int, health_timeout: int, approval_timeout: int
) -> list[str]:
    problems = []
    if not isinstance(target_version, str) or not VERSION.match(target_version):
        problems.append(
            f"target_version {target_version!r} is not a Sentry version (YY.M.P, e.g. 24.8.0)"
        )
    for name, value, low, high in (
        ("batch_size", batch_size, 1, 100),
        ("health_timeout", health_timeout, 10, 86400),
        ("approval_timeout", approval_timeout, 60, 7 * 86400),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    return problems


def plan_line(current: str, hops: list[str]) -> str:
    """The plan in one line, for the audit."""
    return " -> ".join([current, *hops]) if hops else f"already at {current}"


def disk_needed(database_bytes: int, image_bytes: int = 0) -> int:
    """Bytes an upgrade needs free for Docker's data: 1 GiB, the images it pulls, and 10% of the
    database (migrations rewrite tables)."""
    return (1 << 30) + image_bytes + database_bytes // 10


def container_failed(state: str) -> bool:
    """A container state ("<status> <health or ->") that waiting will not turn healthy."""
    return not state.startswith("running") or state.endswith("unhealthy")


def containers_ready(states: dict[str, str], waited: float, stable: float = STABLE_SECONDS) -> bool:
    """Every container healthy, or running `stable` s without a healthcheck."""
    return all(
        s == "running healthy" or (s == "running -" and waited >= stable) for s in states.values()
    )


def plan_markdown(
    label: str, current: str, hops: list[str], backup_id: str, batch_size: int, auto_restore: bool
) -> str:
    """The plan an operator approves or rejects."""
    path = " -> ".join([current, *hops])
    return (
        f"## Upgrade of {label}: {path}\n\n"
        f"- hops: {len(hops)} ({', '.join(hops)}); each gets its own verified pre-backup\n"
        f"- pre-backup of the first hop: `{backup_id}` (verified)\n"
        f"- web replaced {batch_size} replica(s) at a time, each batch gated on health\n"
        f"- on failure: rollback; the database is restored from the hop's pre-backup "
        f"{'at once' if auto_restore else 'after a second approval'} if migrations ran\n\n"
        "Tick **approve** to apply it; leave it unticked to reject (nothing changes)."
    )


def restore_question(label: str, version: str, previous: str, backup_id: str) -> str:
    """What an operator is asked before a failed hop's database is restored."""
    return (
        f"## The upgrade of {label} to {version} failed after its "
        f"migrations started\n\nRestore the database from `{backup_id}` "
        f"(taken on {previous})? Data written since then is lost; without it "
        f"{previous} runs on a schema migrated towards {version}."
    )


def rollback_state(
    label: str, previous: str, backup_id: str, migrated: bool, restored: bool, healthy: bool
) -> str:
    """Where a rollback left the host, in one sentence."""
    data = (
        f"database restored from {backup_id}"
        if restored
        else "database as the migrations left it"
        if migrated
        else "database untouched"
    )
    return f"{label} is back on {previous} ({'healthy' if healthy else 'NOT healthy'}), {data}"
