"""aioice (the ICE agent under aiortc) uses our server as its STUN server.

Two levels: aioice's own STUN transaction and parser on a bare socket (both
address families), and aioice's ICE agent gathering a server-reflexive
candidate through us.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, cast

import aioice
import aioice.ice
import pytest
from aioice import stun

from rendezvous.server import RendezvousServer

pytestmark = pytest.mark.interop


class AioiceStunClient(asyncio.DatagramProtocol):
    """Just enough of a transport for aioice's own ``stun.Transaction`` (its
    retransmission timer) and ``stun.parse_message`` (its parser, which also
    checks FINGERPRINT): the shape of aioice's ``StunProtocol`` without the
    ICE agent that one reports to."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.transactions: dict[bytes, stun.Transaction] = {}
        self.unparsed: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass
        # DatagramTransport on Python 3.11, hence a cast, not isinstance.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            message = stun.parse_message(data)
        except ValueError:
            self.unparsed.append(data)
            return
        transaction = self.transactions.get(message.transaction_id)
        if transaction is not None:
            transaction.response_received(message, (addr[0], addr[1]))

    def send_stun(self, message: stun.Message, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(bytes(message), addr)

    async def request(self, message: stun.Message, addr: tuple[str, int]) -> stun.Message:
        # Two retransmissions (0.5 s, then 1 s) are plenty on the loopback and
        # keep a failure quick.
        transaction = stun.Transaction(message, addr, self, retransmissions=2)
        self.transactions[message.transaction_id] = transaction
        try:
            response, _ = await transaction.run()
        finally:
            del self.transactions[message.transaction_id]
        return response


def bare_binding() -> stun.Message:
    return stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)


def binding_with_software_and_fingerprint() -> stun.Message:
    # Not the 20-byte request most clients send: comprehension-optional
    # attributes and a FINGERPRINT take the server's general decoding path.
    request = bare_binding()
    request.attributes["SOFTWARE"] = "aioice interop test"
    request.add_fingerprint()
    return request


@pytest.mark.parametrize(
    "make_request", [bare_binding, binding_with_software_and_fingerprint], ids=["bare", "fingerprint"]
)
async def test_aioice_stun_transaction_reads_our_xor_mapped_address(
    stun_server: RendezvousServer,
    server_stats: Callable[[RendezvousServer], dict[str, int]],
    make_request: Callable[[], stun.Message],
) -> None:
    host, port = stun_server.address
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    transport, client = await loop.create_datagram_endpoint(AioiceStunClient, local_addr=(host, 0), family=family)
    try:
        request = make_request()
        response = await client.request(request, (host, port))
        local = transport.get_extra_info("sockname")[:2]
    finally:
        transport.close()

    assert response.message_method == stun.Method.BINDING
    assert response.message_class == stun.Class.RESPONSE
    assert response.transaction_id == request.transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == local
    assert client.unparsed == []  # aioice's parser took every datagram we sent
    counters = server_stats(stun_server)
    assert counters["binding"] == 1
    assert counters.get("dropped", 0) == 0


async def test_aioice_ice_agent_gathers_a_server_reflexive_candidate(
    server: RendezvousServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aioice's gather_candidates() binds one socket per address that
    # aioice.ice.get_host_addresses() returns, and that function leaves out
    # 127.0.0.1 and ::1 on purpose.  Taken as is, it would bind to this host's
    # real interfaces and the server would answer to those addresses, which
    # the tests must not send to.  So only the interface listing is replaced
    # (with the IPv4 loopback); the rest of gathering is aioice's own code:
    # host candidate, Binding to the STUN server, srflx candidate from our
    # XOR-MAPPED-ADDRESS.  aioice keeps a srflx candidate even when it equals
    # its host candidate (no de-duplication in get_component_candidates), so
    # the loopback shows it.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    connection = aioice.Connection(ice_controlling=True, stun_server=server.address, use_ipv6=False)
    try:
        await connection.gather_candidates()
        candidates = connection.local_candidates
    finally:
        await connection.close()

    by_type = {candidate.type: candidate for candidate in candidates}
    assert sorted(by_type) == ["host", "srflx"], candidates
    host, srflx = by_type["host"], by_type["srflx"]
    assert host.host == "127.0.0.1"
    # On the loopback nothing translates: the server saw the host socket itself.
    assert (srflx.host, srflx.port) == (host.host, host.port)
    assert (srflx.related_address, srflx.related_port) == (host.host, host.port)
    assert srflx.priority < host.priority
    assert server.core is not None
    assert server.core.stats["binding"] == 1
