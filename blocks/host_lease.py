"""A host lock's lease on the Prefect server, kept alive by its holder, and what happens when it
is lost: every later command on that host (`SentryHost.transport`) raises `LockLost`, so a run
whose lease expired (the Prefect API unreachable for longer than the lease, the lease revoked)
stops before its next step instead of going on unlocked beside the run that took the lock.

The lock itself is a Prefect global concurrency limit of one slot (flows/shared.py host_lock);
this module holds its slot through the public client calls: increment with a lease, renew,
release. A lease survives a server restart only with a durable lease storage on the server
(`PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE`, README); `lease_storage_problem` says when the
server keeps leases in memory."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLeaseHolder

# the server's default keeps leases in memory: a restart loses them, a held slot never frees
MEMORY_LEASES = "prefect.server.concurrency.lease_storage.memory"
DURABLE_LEASES = "prefect.server.concurrency.lease_storage.filesystem"
RENEWALS_PER_LEASE = 4  # a renewal every quarter lease: three may fail before it can expire

_lost: dict[str, str] = {}  # SSH target -> why its lock's lease was lost
_guard = threading.Lock()


class LockLost(RuntimeError):
    pass


def check(target: str) -> None:
    """Raise LockLost when this process held a lock on `target` whose lease was lost."""
    why = _lost.get(target)
    if why:
        raise LockLost(
            f"{target}: the host lock's lease was lost ({why}); another run may hold the host "
            "now, so this run stopped before its next command"
        )


def is_lost(last_renewed: float, now: float, lease_seconds: float, gone: bool) -> bool:
    """A lease is lost when the server says it is gone, or when it was not renewed for a whole
    lease (the server may have revoked it and granted the slot to another run)."""
    return gone or now - last_renewed >= lease_seconds


def lease_storage_problem(api_settings: dict) -> str | None:
    """What is wrong with the server's lease storage (from GET /admin/settings), or None."""
    storage = (api_settings.get("server") or {}).get("concurrency", {}).get("lease_storage")
    if storage in (None, MEMORY_LEASES):
        return (
            f"the Prefect server keeps concurrency leases in memory ({storage or 'default'}): a "
            "server restart while a host lock is held leaves it taken for good; start the server "
            f"with PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE={DURABLE_LEASES}"
        )
    return None


def acquire(name: str, lease_seconds: float, timeout: float, run_id: UUID | None) -> UUID | None:
    """One slot of the limit `name` with a lease (held by the flow run `run_id`, shown in the UI);
    None when the limit stays full `timeout` s."""
    holder = ConcurrencyLeaseHolder(type="flow_run", id=run_id) if run_id else None
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            try:
                response = client.increment_concurrency_slots_with_lease(
                    names=[name], slots=1, mode="concurrency", lease_duration=lease_seconds,
                    holder=holder,
                )  # fmt: skip
                return UUID(response.json()["lease_id"])
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 423:  # 423 Locked: full, retry after a while
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                retry = float(exc.response.headers.get("Retry-After") or 1)
                time.sleep(max(0.2, min(retry, left)))


class Lease:
    """Renews a held lease in a thread; marks its host lost when it cannot."""

    def __init__(
        self, target: str, lease_id: UUID, lease_seconds: float, log: Callable[[str], None]
    ) -> None:
        self.target, self.lease_id, self.seconds, self.log = target, lease_id, lease_seconds, log
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._renew, daemon=True, name=f"lease-{lease_id}")

    def __enter__(self) -> Lease:
        with _guard:
            _lost.pop(self.target, None)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        with _guard:
            _lost.pop(self.target, None)
        try:
            with get_client(sync_client=True) as client:
                client.release_concurrency_slots_with_lease(lease_id=self.lease_id)
        except Exception as error:  # the lease then expires by itself; the run's error stays
            self.log(
                f"could not release the host lock ({error}): it frees within {self.seconds:.0f} s"
            )

    def _renew(self) -> None:
        last = time.monotonic()
        with get_client(sync_client=True) as client:
            while not self.stop.wait(self.seconds / RENEWALS_PER_LEASE):
                gone, error = False, ""
                try:
                    client.renew_concurrency_lease(
                        lease_id=self.lease_id, lease_duration=self.seconds
                    )
                    last = time.monotonic()
                    continue
                except httpx.HTTPStatusError as exc:
                    gone = exc.response.status_code in (404, 410)
                    error = f"HTTP {exc.response.status_code}"
                except Exception as exc:  # the API unreachable
                    error = f"{exc.__class__.__name__}: {exc}"[:200]
                quiet = time.monotonic() - last
                if is_lost(last, time.monotonic(), self.seconds, gone):
                    why = (
                        "the server no longer has it"
                        if gone
                        else f"not renewed for {quiet:.0f} s, longer than the {self.seconds:.0f} s "
                        f"lease; last error {error}"
                    )
                    with _guard:
                        _lost[self.target] = why
                    self.log(f"host lock lease {self.lease_id} lost: {why}")
                    return
                self.log(f"host lock lease renewal failed ({error}); {quiet:.0f} s since the last")
