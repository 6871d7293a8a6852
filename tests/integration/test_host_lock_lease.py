"""The host lock's lease (issue 26), on a guide stack of its own (slot 12, its own sshd) in the
pytest process beside the shared one (their waits, a lease running out, overlap the shared
tests): a Prefect server restart while a backup holds the lock does not keep it taken; a holder
cut off from the API loses it to the next backup and stops without sealing its set."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from blocks import backup_set, postgres
from flows.backup import backup
from infra import sandbox as sb
from infra.sandbox.prefect_blocks import store_from_connection
from tests.helpers import Partition, insert_nodes, restart_prefect_server
from tests.integration.test_backup_sets import dump_jobs
from tests.integration.test_bootstrap import run_texts
from tests.integration.test_restore import stack_of_its_own

LEASE_SLOT = 12  # ports of its own (infra/sandbox/stacks.py StackPorts.slot)
ROWS = 40_000  # ~2 KB payloads: a dump that runs for a while, so a test can catch it running


@pytest.fixture(scope="module")
def lease_stack(sandbox, prefect_api):
    made = stack_of_its_own(sandbox, LEASE_SLOT)
    info = next(made)
    with postgres.psql(info["host"]) as db:
        insert_nodes(db, ((f"{i:032x}", {"blob": os.urandom(1024).hex()}, 1) for i in range(ROWS)))
    yield info
    with contextlib.suppress(StopIteration):
        next(made)


def dumps(stack: dict) -> Callable[[], list[str]]:
    """The running pg_dump containers of this stack's backups."""
    return lambda: dump_jobs(stack["name"])


def test_a_prefect_server_restart_while_a_backup_holds_the_lock_does_not_keep_it_taken(
    lease_stack, store_name, sandbox
):
    """The server restarted while a backup holds its host's lock: with leases on disk the holder
    renews on the restarted server, finishes and releases; the next backup gets the lock at once
    (with leases in memory the slot stayed taken and the next backup waited 6 h)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from flows.shared import lock_name

    saved_host, sentry_host = lease_stack["name"], lease_stack["host"]
    code = f"from flows.backup import backup; backup({saved_host!r}, {store_name!r})"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    first = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=sb.REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    sb.wait_for("the first backup's dump (the lock held)", dumps(lease_stack), 120, 0.1)
    down = restart_prefect_server()
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err.decode()[-2000:]
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(lock_name(sentry_host))
    assert limit.active_slots == 0, f"the lock stayed taken after a {down:.0f} s restart"
    started = time.monotonic()
    state = backup(saved_host, store_name, return_state=True)
    assert state.is_completed()
    text = asyncio.run(run_texts(state.state_details.flow_run_id))
    assert "waits for the host lock" not in text
    assert time.monotonic() - started < 300


def test_a_holder_cut_off_from_the_prefect_api_stops_and_the_lock_goes_to_the_next(
    lease_stack, store_name, sandbox
):
    """Issue 26, item 4: a backup holding the host lock loses the Prefect API (a partition
    longer than the lease) while its dump is stalled. The server expires its lease and the next
    backup gets the lock and completes; once the partition heals, the first run stops at its
    next command on the host (LockLost) and never seals its set: never two runs on one host."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from blocks.host_lease import RENEWALS_PER_LEASE
    from flows.shared import LOCK_LEASE_SECONDS, lock_name

    saved_host, sentry_host = lease_stack["name"], lease_stack["host"]
    api = PREFECT_API_URL.value()
    link = Partition(int(api.split(":")[2].split("/")[0]))
    code = f"from flows.backup import backup; backup({saved_host!r}, {store_name!r})"
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{link.port}/api"}
    first = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=sb.REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    sb.wait_for("the first backup's dump (the lock held)", dumps(lease_stack), 120, 0.1)
    jobs = dumps(lease_stack)()
    subprocess.run(["docker", "pause", *jobs], check=True, capture_output=True)
    link.cut()
    cut_at = time.monotonic()
    try:

        def free() -> bool:
            with get_client(sync_client=True) as client:
                name = lock_name(sentry_host)
                return client.read_global_concurrency_limit_by_name(name).active_slots == 0

        sb.wait_for("the server to expire the cut-off holder's lease", free,
                    LOCK_LEASE_SECONDS + 90, 1)  # fmt: skip
        # renewed up to a quarter lease before the cut: it expires 45-60 s after it, never sooner
        renewed_before_cut = LOCK_LEASE_SECONDS / RENEWALS_PER_LEASE
        assert time.monotonic() - cut_at >= LOCK_LEASE_SECONDS - renewed_before_cut - 5
        second = backup(saved_host, store_name)  # the lock is the second run's now
        assert first.poll() is None  # the first is still there, stalled
    finally:
        link.heal()
        subprocess.run(["docker", "unpause", *jobs], capture_output=True)
    _, err = first.communicate(timeout=600)
    text = err.decode()
    assert first.returncode != 0, text[-2000:]
    assert "lease was lost" in text, text[-3000:]
    store = store_from_connection(sandbox, prefix=store_name)
    complete = [s.backup_id for s in backup_set.list_sets(store) if s.complete]
    assert complete == [second["backup_id"]]  # the first never sealed a set
