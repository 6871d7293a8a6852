"""The host lock's lease: when it counts as lost, what stops, what setup refuses."""

from __future__ import annotations

import pytest

from blocks import host_lease


def test_a_lease_is_lost_when_gone_or_not_renewed_for_a_whole_lease():
    assert not host_lease.is_lost(last_renewed=100, now=159, lease_seconds=60, gone=False)
    assert host_lease.is_lost(last_renewed=100, now=160, lease_seconds=60, gone=False)
    assert host_lease.is_lost(last_renewed=100, now=101, lease_seconds=60, gone=True)


def test_a_lost_lease_stops_every_later_command_on_that_host_only():
    host_lease._lost["root@127.0.0.1:22022"] = "not renewed for 75 s"
    try:
        with pytest.raises(host_lease.LockLost, match=r"not renewed for 75 s.*stopped before"):
            host_lease.check("root@127.0.0.1:22022")
        host_lease.check("root@127.0.0.2:22022")  # another host goes on
    finally:
        host_lease._lost.clear()
    host_lease.check("root@127.0.0.1:22022")


def test_setup_refuses_a_server_that_keeps_leases_in_memory():
    memory = {"server": {"concurrency": {"lease_storage": host_lease.MEMORY_LEASES}}}
    problem = host_lease.lease_storage_problem(memory)
    assert problem and "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=" in problem
    assert host_lease.lease_storage_problem({"server": {}}) is not None  # the default: memory
    durable = {"server": {"concurrency": {"lease_storage": host_lease.DURABLE_LEASES}}}
    assert host_lease.lease_storage_problem(durable) is None
