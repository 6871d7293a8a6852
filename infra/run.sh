#!/usr/bin/env bash
# The project's entry point on a Debian machine; installs what it needs, idempotently.
#   bash infra/run.sh demo   # sandbox + Prefect server + the demo flows, with a report
#   bash infra/run.sh test   # sandbox + lint + the whole test suite
#   bash infra/run.sh up|down
#   bash infra/run.sh idle   # the machine's load with the sandbox up and nothing running
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv

ensure_python() {
    if ! python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
        echo "sentry-ops needs Python >= 3.11 (python3)" >&2
        exit 1
    fi
    if [ ! -x "$venv/bin/python" ]; then
        if ! python3 -m venv "$venv" 2>/dev/null; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
            python3 -m venv "$venv"
        fi
    fi
    stamp=$(sha256sum pyproject.toml | cut -c1-16)
    if [ "$(cat "$venv/.installed" 2>/dev/null)" != "$stamp" ]; then
        "$venv/bin/pip" install -q --upgrade pip
        "$venv/bin/pip" install -q -e '.[test]'
        echo "$stamp" >"$venv/.installed"
    fi
}

ensure_python
export PREFECT_SERVER_ANALYTICS_ENABLED=0 PREFECT_LOGGING_LEVEL="${PREFECT_LOGGING_LEVEL:-INFO}"
case "${1:-}" in
demo)
    "$venv/bin/python" -m infra.sandbox up --prefect --bare
    "$venv/bin/python" -m infra.demo
    ;;
test)
    "$venv/bin/ruff" check .
    "$venv/bin/ruff" format --check .
    "$venv/bin/python" -m infra.sandbox up
    "$venv/bin/python" -m infra.sandbox idle --seconds 15 # what the sandbox costs before a test
    # two pytest processes side by side (tests/helpers.py, SHARED): the tests sharing the sandbox's
    # stacks in this one, the unit tests and those on a stack of their own in the other
    other_log=$(mktemp)
    "$venv/bin/python" -m pytest -m "not shared_sandbox" --durations=10 "${@:2}" >"$other_log" 2>&1 &
    other=$!
    shared_rc=0 other_rc=0
    "$venv/bin/python" -m pytest -m shared_sandbox --durations=15 "${@:2}" || shared_rc=$?
    wait "$other" || other_rc=$?
    echo "=== the other pytest process (unit tests, tests on a stack of their own) ==="
    cat "$other_log"
    rm -f "$other_log"
    echo "exit codes: shared $shared_rc, other $other_rc (5: no test selected)"
    shots="${SENTRY_OPS_SANDBOX_DIR:-.sandbox}/ui-screenshots"
    if [ -d "$shots" ]; then
        echo "Prefect UI screenshots (headless Chromium): $(cd "$shots" && pwd)/: $(ls "$shots" | tr '\n' ' ')"
    fi
    # one selection may be empty when arguments narrow the run (-k ...); both empty is a failure
    if { [ "$shared_rc" = 5 ] && [ "$other_rc" = 5 ]; } ||
        { [ "$shared_rc" != 0 ] && [ "$shared_rc" != 5 ]; } ||
        { [ "$other_rc" != 0 ] && [ "$other_rc" != 5 ]; }; then
        exit 1
    fi
    ;;
up | down)
    "$venv/bin/python" -m infra.sandbox "$1"
    ;;
idle)
    "$venv/bin/python" -m infra.sandbox idle "${@:2}"
    ;;
*)
    echo "usage: bash infra/run.sh demo|test|up|down|idle" >&2
    exit 2
    ;;
esac
