"""The demo: sentry-ops against the local sandbox, through the sandbox's Prefect server.

    bash infra/run.sh demo     (brings the sandbox up first, then runs this)

Saves the SentryHost block for the sandbox host, runs the flows against it and prints a report
and the Prefect UI address where the runs, their logs and artifacts are.
"""

from __future__ import annotations

import os
import sys
import time

from infra.sandbox import sandbox


def main() -> int:
    info = sandbox.connection()
    api = info.get("prefect_api_url")
    if not api:
        print("no Prefect server in the sandbox: run `python -m infra.sandbox up --prefect`")
        return 2
    os.environ["PREFECT_API_URL"] = api  # before prefect is imported

    from deployments.setup import save_blocks
    from flows.health import UnhealthyError, health_check

    print(f"saved blocks: {', '.join(save_blocks(info, 'sandbox'))}")
    report: list[tuple[str, str, float]] = []

    started = time.monotonic()
    try:
        checks = health_check("sandbox")
        status = f"passed ({len(checks)} checks)"
    except UnhealthyError as exc:
        status = f"FAILED: {exc}"
    report.append(("health-check", status, time.monotonic() - started))

    ui = api.removesuffix("/api")
    print("\n=== sentry-ops demo report ===")
    for name, result, seconds in report:
        print(f"{name:<16} {seconds:6.1f}s  {result}")
    print(f"\nPrefect UI: {ui}  (flow runs, logs and artifacts)")
    print(f"Sentry (stand-in) web: http://127.0.0.1:{info['stack']['web_port']}/_health/")
    return 0 if all("FAILED" not in r for _, r, _ in report) else 1


if __name__ == "__main__":
    sys.exit(main())
