"""The shipped Prometheus alert rules: valid for promtool, and their unit tests (a backup gone
26 h, a backup that shrank, a failed or slow drill, a stopped exporter) pass, run by promtool."""

from __future__ import annotations

import subprocess
from pathlib import Path

RULES = Path(__file__).resolve().parents[2] / "infra" / "prometheus"


def promtool(sandbox, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sandbox["promtool"], *args], cwd=RULES, capture_output=True, text=True, timeout=120
    )


def test_the_rules_are_valid(sandbox):
    checked = promtool(sandbox, "check", "rules", "sentry-ops.rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout


def test_the_rules_unit_tests_pass(sandbox):
    tested = promtool(sandbox, "test", "rules", "sentry-ops.rules.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
