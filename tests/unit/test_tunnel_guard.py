"""The SSH tunnel forwards only its own process's connections: the kernel's socket table read
by address and port on both ends, uid and inode (blocks/ssh.py own_client)."""

from __future__ import annotations

import socket
import subprocess
import sys

from blocks.ssh import own_client, tcp_sockets

# the entry of torvalds/linux Documentation/networking/proc_net_tcp.rst (v6.x; the layout is
# tcp4_seq_show's in net/ipv4/tcp_ipv4.c), behind the header line /proc/net/tcp starts with
KERNEL_DOC = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout "
    "inode\n"
    "   46: 010310AC:9C4C 030310AC:1770 01 00000150:00000000 01:00000019 00000000  1000        0 "
    "54165785 4 cd1e6040 25 4 27 3 -1\n"
)


def test_the_kernel_socket_table_is_read_by_address_uid_and_inode():
    assert tcp_sockets(KERNEL_DOC) == [
        (("172.16.3.1", 40012), ("172.16.3.3", 6000), 1000, "54165785")
    ]


def test_only_this_process_connections_are_its_own():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    mine = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    assert own_client(conn)
    # another process of the same user, connecting from 127.0.0.2 with a port this process
    # also uses on 127.0.0.1: same port, another socket
    code = (
        "import socket, sys, time; s = socket.socket(); "
        f"s.bind(('127.0.0.2', {mine.getsockname()[1]})); s.connect(('127.0.0.1', {port})); "
        "sys.stdout.write('ok'); sys.stdout.flush(); time.sleep(5)"
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert other.stdout.read(2) == b"ok"
        foreign, peer = server.accept()
        assert peer[1] == mine.getsockname()[1]
        assert not own_client(foreign)
        foreign.close()
    finally:
        other.kill()
        other.wait()
    for s in (mine, conn, server):
        s.close()
