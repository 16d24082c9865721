"""Happy Eyeballs at registration with a real node and a real rendezvous on
loopback: a server name whose IPv6 address swallows every datagram (a
socket on ::1 that never answers) and whose IPv4 address is the server.

Every datagram goes to 127.0.0.1 or ::1.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from processes import WAIT, wait_until

from rendezvous.stun import Method, decode, looks_like_stun
from webpeer.node import NodeConfig, PeerNode


async def test_a_name_with_a_silent_ipv6_address_registers_over_ipv4_by_the_race(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rendezvous.core import ServerConfig
    from rendezvous.server import RendezvousServer
    from rendezvous.sqlite_registry import SqliteRegistry

    server = RendezvousServer(
        ServerConfig(), SqliteRegistry(tmp_path / "r.sqlite3"), "127.0.0.1", 0, flush_interval=0.2
    )
    await server.start()
    port = server.address[1]
    # The name's IPv6 address: datagrams to it arrive and are never answered.
    # (Its own port: the name's two addresses need not share one, and so no
    # other process's socket can stand in the way.)
    sink = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sink.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sink.bind(("::1", 0))
    sink.setblocking(False)
    silent = ("::1", sink.getsockname()[1])

    async def getaddrinfo(host: str, _port: int, **_: object) -> list[Any]:
        assert host == "both.test"
        return [
            (socket.AF_INET6, socket.SOCK_DGRAM, 17, "", (*silent, 0, 0)),
            (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.1", port)),
        ]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    node = PeerNode(NodeConfig(server=("both.test", port), data_dir=tmp_path / "p", list_interval=0.3))
    try:
        await node.start()
        assert node.registration.servers == (silent, ("127.0.0.1", port))
        await wait_until(lambda: node.me()["server_state"] == "registered", WAIT)
        me = node.me()
        assert (me["server"], me["server_address"]) == (f"both.test:{port}", f"127.0.0.1:{port}")
        # Won by the race (the IPv4 attempt that follows the silent IPv6 one),
        # not by the fail-over after the IPv6 attempt's timeout.
        assert node.registration.races_won_by_other_family == 1
        swallowed = []
        while True:
            try:
                swallowed.append(sink.recv(2048))
            except BlockingIOError:
                break
        methods = [decode(data).method for data in swallowed if looks_like_stun(data)]
        assert Method.REGISTER in methods  # the first REGISTER went to IPv6 first
    finally:
        await node.stop()
        await server.stop()
        sink.close()


async def test_a_name_whose_ipv6_address_the_kernel_refuses_races_ipv4_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name's IPv6 address is one the kernel refuses at once (port 0 on
    ::1: EINVAL, nothing sent, and loopback anyway), as a host without an
    IPv6 route refuses every IPv6 address with ENETUNREACH: the IPv4 attempt
    starts from that refusal, not from the 250 ms timer."""
    from rendezvous.core import ServerConfig
    from rendezvous.server import RendezvousServer
    from rendezvous.sqlite_registry import SqliteRegistry

    server = RendezvousServer(
        ServerConfig(), SqliteRegistry(tmp_path / "r.sqlite3"), "127.0.0.1", 0, flush_interval=0.2
    )
    await server.start()
    port = server.address[1]
    refused = ("::1", 0)

    async def getaddrinfo(host: str, _port: int, **_: object) -> list[Any]:
        assert host == "both.test"
        return [
            (socket.AF_INET6, socket.SOCK_DGRAM, 17, "", (*refused, 0, 0)),
            (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.1", port)),
        ]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    node = PeerNode(NodeConfig(server=("both.test", port), data_dir=tmp_path / "p", list_interval=0.3))
    try:
        await node.start()
        assert node.registration.servers == (refused, ("127.0.0.1", port))
        await wait_until(lambda: node.me()["server_state"] == "registered", WAIT)
        assert node.me()["server_address"] == f"127.0.0.1:{port}"
        # The refusal started the race (the timer finds none left to start),
        # and the racing attempt is the one that registered.
        assert node.registration.races_started_by_send_error == 1
        assert node.registration.races_won_by_other_family == 1
        assert node.engine.stats["sends_refused"] >= 1
    finally:
        await node.stop()
        await server.stop()
