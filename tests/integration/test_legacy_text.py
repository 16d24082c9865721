"""The original course project's clients, unmodified, against ``--legacy-text``.

Each legacy client here is what the original one was: a plain UDP socket that
sends one text line per datagram and splits the replies as strings.  The
server runs in this process (the ``server`` fixture has legacy_text=True).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

import pytest

from rendezvous.client import RendezvousError
from rendezvous.core import ServerConfig
from rendezvous.server import RendezvousServer
from rendezvous.sqlite_registry import SqliteRegistry
from rendezvous.stun import Address, Attr, Message, MessageClass, Method, decode, encode


class OriginalClient:
    """sendto / recvfrom on one socket, nothing else."""

    def __init__(self, server: Address) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address: Address = self.sock.getsockname()

    async def send(self, data: bytes, to: Address | None = None) -> None:
        await asyncio.get_running_loop().sock_sendto(self.sock, data, to or self.server)

    async def receive(self, timeout: float = 2.0) -> tuple[bytes, Address]:
        data, sender = await asyncio.wait_for(asyncio.get_running_loop().sock_recvfrom(self.sock, 4096), timeout)
        return data, (sender[0], sender[1])

    async def ask(self, data: bytes) -> bytes:
        await self.send(data)
        reply, sender = await self.receive()
        assert sender == self.server
        return reply

    async def no_answer(self, data: bytes, wait: float = 0.2) -> None:
        await self.send(data)
        with pytest.raises(asyncio.TimeoutError):
            await self.receive(wait)

    async def register(self) -> int:
        reply = await self.ask(b"REGISTER")
        assert reply.startswith(b"REGISTER_ACK:"), reply
        return int(reply.decode().split(":")[1])

    async def list(self) -> list[str]:
        reply = (await self.ask(b"LIST")).decode()
        assert reply.startswith("LIST_ACK:"), reply
        body = reply[len("LIST_ACK:") :]
        return body.split("\n") if body else []

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def legacy(server: RendezvousServer):
    made: list[OriginalClient] = []

    def make() -> OriginalClient:
        client = OriginalClient(server.address)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def line(peer_id: int, client: OriginalClient) -> str:
    host, port = client.address
    return f"{peer_id},('{host}', {port})"


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_register_list_connect_and_chat_directly(server: RendezvousServer, legacy, caplog) -> None:
    alice, bob, carol = legacy(), legacy(), legacy()
    assert await alice.register() == 1
    assert await bob.register() == 2
    assert await carol.register() == 3
    # Everyone but the requester, one "<id>,('<ip>', <port>)" line each, in id order.
    assert await alice.list() == [line(2, bob), line(3, carol)]
    assert await bob.list() == [line(1, alice), line(3, carol)]
    assert await alice.ask(b"LIST") == f"LIST_ACK:{line(2, bob)}\n{line(3, carol)}".encode()

    reply = await alice.ask(b"CONNECT:2")
    assert reply == f"CONNECT_ACK:127.0.0.1:{bob.address[1]}".encode()
    # The original client split the reply at ':' and sent its chat there.
    _, host, port = reply.decode().split(":")
    await alice.send(b"hello bob, this is alice", (host, int(port)))
    assert await bob.receive() == (b"hello bob, this is alice", alice.address)
    await bob.send(b"hi alice", alice.address)
    assert await alice.receive() == (b"hi alice", bob.address)
    no_errors_logged(caplog)


async def test_exit_leaves_the_list_and_the_same_address_gets_its_id_back(server: RendezvousServer, legacy) -> None:
    alice, bob = legacy(), legacy()
    assert await alice.register() == 1
    assert await bob.register() == 2
    assert await bob.register() == 2  # registering twice changes nothing
    assert await bob.ask(b"EXIT") == b"EXIT_ACK"
    assert await alice.list() == []
    assert 2 not in server.core.directory
    assert await alice.ask(b"CONNECT:2") == b"ERROR:unknown peer 2"
    assert await bob.register() == 2
    assert await alice.list() == [line(2, bob)]


async def test_bad_requests_get_errors_and_break_nothing(server: RendezvousServer, legacy, caplog) -> None:
    alice, bob = legacy(), legacy()
    assert await alice.register() == 1
    assert await bob.register() == 2
    assert await alice.ask(b"CONNECT:99") == b"ERROR:unknown peer 99"
    assert await alice.ask(b"CONNECT:abc") == b"ERROR:peer id must be ASCII decimal digits, got 'abc'"
    assert await alice.ask(b"CONNECT:") == b"ERROR:CONNECT needs a peer id"
    assert await alice.ask(b"CONNECT:0") == b"ERROR:peer id must be positive, got 0"
    assert await alice.ask(b"CONNECT:99999999999") == b"ERROR:peer id out of range, got '99999999999'"
    reply = await alice.ask(b"LIST\xff\xfe")
    assert reply.startswith(b"ERROR:") and b"UTF-8" in reply
    assert await alice.ask(b"List") == b"ERROR:unknown command 'List'"
    assert (await alice.ask(b"REGISTER" + b"x" * 100)).startswith(b"ERROR:request too long")
    # Line endings and surrounding blanks are what a line-reading client leaves on.
    assert await alice.ask(b"CONNECT:2\r\n") == f"CONNECT_ACK:127.0.0.1:{bob.address[1]}".encode()
    assert server.core.stats["legacy_errors"] == 7

    # A sender that never registered gets nothing it could be used to amplify:
    # small errors only (at most 3x its datagram), the rest counted as drops.
    stranger = legacy()
    dropped = server.core.stats["dropped: legacy reply would amplify"]
    assert await stranger.ask(b"CONNECT:2") == b"ERROR:register first"
    await stranger.no_answer(b"LIST")
    await stranger.no_answer(b"CONNECT:abc")
    await stranger.no_answer(b"X\xff")
    assert server.core.stats["dropped: legacy reply would amplify"] == dropped + 3
    # Still serving, same peers, nothing logged as a failure.
    assert await alice.list() == [line(2, bob)]
    assert await stranger.register() == 3
    no_errors_logged(caplog)


async def test_legacy_and_stun_peers_share_one_id_space(server: RendezvousServer, legacy, make_client) -> None:
    alice, bob = legacy(), legacy()
    assert await alice.register() == 1
    assert await bob.register() == 2
    stun = await make_client(nickname="modern")
    assert (await stun.register()).peer_id == 3
    carol = legacy()
    assert await carol.register() == 4
    # Neither kind can reach the other: the lists and introductions stay apart.
    assert await alice.list() == [line(2, bob), line(4, carol)]
    assert await alice.ask(b"CONNECT:3") == b"ERROR:unknown peer 3"
    assert await stun.list_all() == []
    with pytest.raises(RendezvousError, match="404"):
        await stun.connect(1)


async def test_legacy_peers_expire_and_keep_their_id(db_path: Path) -> None:
    config = ServerConfig(default_ttl=1, min_ttl=1, legacy_text=True)
    server = RendezvousServer(config, SqliteRegistry(db_path), "127.0.0.1", 0, flush_interval=0.2)
    await server.start()
    alice, bob = OriginalClient(server.address), OriginalClient(server.address)
    try:
        assert await alice.register() == 1
        assert await bob.register() == 2
        # The original client never refreshes: any request counts as one, so
        # alice (asking LIST) stays and bob (silent) expires after 1 s.
        listed = []
        for _ in range(6):
            await asyncio.sleep(0.3)
            listed.append(await alice.list())
        assert listed[0] == [line(2, bob)]
        assert listed[-1] == []
        assert 2 not in server.core.directory and 1 in server.core.directory
        assert server.core.stats["peers_expired"] == 1
        # Expired means unregistered: LIST now goes unanswered (4 bytes in, a
        # 20-byte error out would amplify) ...
        await bob.no_answer(b"LIST")
        # ... and registering again gives the same id.
        assert await bob.register() == 2
    finally:
        alice.close()
        bob.close()
        await server.stop()

    # Across a restart too: the address is the legacy peer's identity.
    again = RendezvousServer(config, SqliteRegistry(db_path), "127.0.0.1", 0)
    await again.start()
    try:
        carol = OriginalClient(again.address)
        assert await carol.register() == 3
        carol.close()
        assert await again.registry.count() == 3
    finally:
        await again.stop()


async def test_one_port_speaks_both_protocols(server: RendezvousServer, legacy, make_client) -> None:
    alice = legacy()
    stun = await make_client()
    assert await alice.register() == 1
    assert (await stun.register()).peer_id == 2
    # The legacy client's own socket can still ask the STUN question.
    request = Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
    reply = decode(await alice.ask(encode(request)))
    assert reply.transaction_id == request.transaction_id
    assert reply.get(Attr.XOR_MAPPED_ADDRESS) == alice.address
    assert await alice.list() == []
    assert await stun.binding() == stun.address
