"""The server over real loopback sockets with the compiled fast path on and
off: the same answers, the same state, whichever path answers.

On the compiled path the first REFRESH of a session goes through Python
(which checks the token and hands it to the C side) and the later ones are
answered in C; these tests follow a session through re-registration,
unregistration and bursts mixed with junk, on both paths.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastpath_servers import PATHS, server_on_path
from processes import WAIT, wait_until

from rendezvous.client import RendezvousClient, RendezvousError, session_request
from rendezvous.server import RendezvousServer
from rendezvous.stun import Attr, Message, MessageClass, Method, decode, encode


@pytest.fixture(params=PATHS)
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RendezvousServer]:
    async with server_on_path(request.param, tmp_path / "fast.sqlite3", "127.0.0.1") as server:
        yield server


@pytest.fixture
async def clients(server: RendezvousServer) -> AsyncIterator[list[RendezvousClient]]:
    made: list[RendezvousClient] = []
    yield made
    for client in made:
        client.close()


async def new_client(server: RendezvousServer, made: list[RendezvousClient], **kwargs: object) -> RendezvousClient:
    client = RendezvousClient(server.address, **kwargs)  # type: ignore[arg-type]
    await client.open()
    made.append(client)
    return client


def in_c(server: RendezvousServer) -> int:
    assert server.core is not None
    return server.core.stats["answered_in_c"]


async def test_refreshes_extend_the_ttl_and_leave_with_the_session(
    server: RendezvousServer, clients: list[RendezvousClient]
) -> None:
    assert server.core is not None
    alice = await new_client(server, clients)
    registration = await alice.register()
    for ttl in (100, 30, 5000, None):
        granted = await alice.refresh(ttl)
        assert granted == {100: 100, 30: 30, 5000: 3600, None: 60}[ttl]
        record = server.core.directory.get(registration.peer_id)
        assert record is not None
        assert abs(record.expires_at - (time.time() + granted)) < 5
    assert server.core.stats["refresh"] == 4
    # Compiled: the first went through Python, which handed the session to C for the other three.
    assert in_c(server) == (3 if server.fast_path_used else 0)
    session = registration.session
    await alice.unregister()
    reply = await alice.request(session_request(Method.REFRESH, session), check=False)
    assert reply.get(Attr.ERROR_CODE) == (401, "Register Again")


async def test_a_session_from_an_old_address_is_refused_once_the_key_registers_elsewhere(
    server: RendezvousServer, clients: list[RendezvousClient]
) -> None:
    first = await new_client(server, clients)
    peer_id = (await first.register()).peer_id
    await first.refresh()
    await first.refresh()
    moved = await new_client(server, clients, private_key=first.private_key)
    assert (await moved.register()).peer_id == peer_id
    with pytest.raises(RendezvousError, match="401 Register Again"):
        await first.refresh()
    assert await moved.refresh() == 60
    assert await moved.refresh(45) == 45


async def test_a_burst_of_bindings_refreshes_and_junk_gets_exactly_its_answers(
    server: RendezvousServer, clients: list[RendezvousClient]
) -> None:
    alice = await new_client(server, clients)
    await alice.register()
    await alice.refresh()
    session = alice.registration.session if alice.registration else b""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        expected: dict[bytes, str] = {}
        for i in range(120):
            tid = os.urandom(12)
            kind = i % 4
            if kind in (0, 3):  # bare Binding, with and without FINGERPRINT
                request = encode(Message(Method.BINDING, MessageClass.REQUEST, tid), fingerprint=kind == 0)
                expected[tid] = "binding"
            elif kind == 1:
                request = b"\xff" + os.urandom(i % 70)  # junk (not STUN): dropped
            else:
                # Alice's session from another address: never the C side's; 401 from Python.
                request = encode(Message(Method.REFRESH, MessageClass.REQUEST, tid).add(Attr.SESSION, session))
                expected[tid] = "401"
            sock.sendto(request, server.address)
        replies: dict[bytes, str] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while len(replies) < len(expected) and loop.time() < deadline:
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            reply = decode(data, require_fingerprint=True)
            if reply.method == Method.BINDING and reply.message_class == MessageClass.SUCCESS:
                assert reply.get(Attr.XOR_MAPPED_ADDRESS) == sock.getsockname()
                replies[reply.transaction_id] = "binding"
            elif reply.get(Attr.ERROR_CODE) == (401, "Register Again"):
                replies[reply.transaction_id] = "401"
        assert replies == expected
    finally:
        sock.close()
    await wait_until(lambda: server.core is not None and server.core.stats["dropped: not STUN"] == 30)
    assert await alice.refresh() == 60
