"""Upgrade runbook (issue 14; in progress): this module has the hop planner so far.

A Sentry upgrade must not jump a hard stop (self-hosted's release docs; `sentry upgrade` refuses
the jump): 23.6.2 -> 24.10.0 is 23.6.2 -> 23.11.0 -> 24.8.0 -> 24.10.0. `plan_upgrade` turns the
current and the target version into those hops before anything changes; the flow will take a
verified pre-backup before each hop.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

# getsentry/self-hosted's hard stops (shared/LAYOUTS.md); a flow parameter will override them
HARD_STOPS = ("9.1.2", "21.5.0", "21.6.3", "23.6.2", "23.11.0", "24.8.0", "25.5.1", "26.5.0",
              "26.7.0")  # fmt: skip
VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(-[A-Za-z0-9.]+)?$")


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
