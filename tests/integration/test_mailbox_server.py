"""The rendezvous's mailbox end to end over loopback UDP, in-process, on
both stores (the registry's SQLite file, and a real ``redis-server``):
DEPOSIT, FETCH and delete, and the 486 when a quota is reached."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rendezvous.client import RendezvousClient, RendezvousError, session_request
from rendezvous.core import ServerConfig
from rendezvous.mailbox import MailLimits
from rendezvous.redis_registry import RedisRegistry
from rendezvous.server import RendezvousServer
from rendezvous.sqlite_registry import SqliteRegistry
from rendezvous.stun import Attr, MailItem, Method


@pytest.fixture(params=["sqlite", "redis"])
async def mail_server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RendezvousServer]:
    registry: SqliteRegistry | RedisRegistry
    if request.param == "sqlite":
        registry = SqliteRegistry(tmp_path / "r.sqlite3")
    else:
        registry = RedisRegistry(request.getfixturevalue("redis_server").url)
    config = ServerConfig(mailbox=MailLimits(max_messages=2))
    server = RendezvousServer(config, registry, "127.0.0.1", 0, flush_interval=0.2, mailbox=registry.mailbox())
    await server.start()
    yield server
    await server.stop()


async def client(server: RendezvousServer) -> RendezvousClient:
    peer = RendezvousClient(server.address)
    await peer.open()
    await peer.register()
    return peer


async def test_deposit_then_fetch_and_delete_over_udp(mail_server: RendezvousServer) -> None:
    alice, bob = await client(mail_server), await client(mail_server)
    try:
        assert alice.registration is not None and bob.registration is not None
        bob_id, alice_id = bob.registration.peer_id, alice.registration.peer_id
        await bob.unregister()  # offline: the mailbox is for that
        for n in (1, 2):
            deposit = session_request(
                Method.DEPOSIT,
                alice.registration.session,
                (Attr.PEER_ID, bob_id),
                (Attr.MAIL_ID, bytes([n]) * 16),
                (Attr.SEALED, bytes([n]) * 1024),
            )
            await alice.request(deposit)
        third = session_request(
            Method.DEPOSIT,
            alice.registration.session,
            (Attr.PEER_ID, bob_id),
            (Attr.MAIL_ID, b"\x03" * 16),
            (Attr.SEALED, b"x"),
        )
        with pytest.raises(RendezvousError, match="486 Mailbox Full"):
            await alice.request(third)
        await bob.register()
        assert bob.registration is not None
        got: list[MailItem] = []
        delete: bytes | None = None
        while True:
            extra = ((Attr.MAIL_ID, delete),) if delete is not None else ()
            answer = await bob.request(session_request(Method.FETCH, bob.registration.session, *extra))
            item = answer.get(Attr.MAIL_ITEM)
            if item is None:
                assert answer.get(Attr.MAIL_COUNT) == 0
                break
            assert answer.get(Attr.MAIL_COUNT) == 2 - len(got)
            got.append(item)
            delete = item.mail_id
        assert [(i.sender, i.mail_id, i.sealed) for i in got] == [
            (alice_id, bytes([n]) * 16, bytes([n]) * 1024) for n in (1, 2)
        ]
        assert mail_server.core is not None
        assert mail_server.core.stats["mail_deposited"] == 2
        assert mail_server.core.stats["mail_fetched"] == 2
    finally:
        alice.close()
        bob.close()


async def test_messages_past_the_age_limit_are_purged(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    registry = SqliteRegistry(tmp_path / "r.sqlite3")
    config = ServerConfig(mailbox=MailLimits(max_age=3600.0))
    server = RendezvousServer(
        config, registry, "127.0.0.1", 0, flush_interval=0.2, clock=lambda: now[0], mailbox=registry.mailbox()
    )
    await server.start()
    alice = await client(server)
    try:
        assert alice.registration is not None
        deposit = session_request(
            Method.DEPOSIT,
            alice.registration.session,
            (Attr.PEER_ID, 1),
            (Attr.MAIL_ID, bytes(16)),
            (Attr.SEALED, b"old"),
        )
        with pytest.raises(RendezvousError, match="400 Cannot mail yourself"):
            await alice.request(deposit)
        bob = await client(server)
        bob.close()
        assert bob.registration is not None
        deposit = session_request(
            Method.DEPOSIT,
            alice.registration.session,
            (Attr.PEER_ID, bob.registration.peer_id),
            (Attr.MAIL_ID, bytes(16)),
            (Attr.SEALED, b"old"),
        )
        await alice.request(deposit)
        assert await server.purge_mail() == 0  # not old yet
        now[0] += 3601.0
        await server.purge_mail()  # (or the periodic one, if it came first: counted the same)
        assert server.core is not None and server.core.stats["mail_expired"] == 1
        assert await registry.mailbox().fetch(bob.registration.peer_id, None, now[0], 1e9) == (None, 0)
    finally:
        alice.close()
        await server.stop()
