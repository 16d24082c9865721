"""The rendezvous protocol end to end over real loopback UDP sockets."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from processes import WAIT, wait_until

from rendezvous.client import RendezvousClient, RendezvousError, register_request, session_request
from rendezvous.server import RendezvousServer
from rendezvous.stun import Attr, CandidateKind, Message, MessageClass, Method, decode, encode


async def test_binding_returns_the_observed_address(server: RendezvousServer, make_client) -> None:
    client = await make_client()
    assert await client.binding() == client.address


async def test_register_assigns_ids_in_order_and_keeps_them(server: RendezvousServer, make_client) -> None:
    alice = await make_client(nickname="alice")
    bob = await make_client(nickname="bob")
    a = await alice.register()
    b = await bob.register()
    assert (a.peer_id, b.peer_id) == (1, 2)
    assert a.observed == alice.address
    assert a.ttl == 60
    # Same key from a new socket: same id.
    again = await make_client(private_key=alice.private_key)
    assert (await again.register()).peer_id == 1


async def test_first_register_gets_a_small_challenge(server: RendezvousServer, make_client) -> None:
    client = await make_client()
    request = register_request(client.public_key)
    response = await client.request(request, check=False)
    assert response.message_class == MessageClass.ERROR
    assert response.get(Attr.ERROR_CODE).code == 401
    assert len(response.get(Attr.CHALLENGE)) == 20
    assert len(response.raw) <= 3 * len(encode(request))


async def test_bad_signature_is_refused(server: RendezvousServer, make_client) -> None:
    client = await make_client()
    first = await client.request(register_request(client.public_key), check=False)
    challenge = first.get(Attr.CHALLENGE)
    forged = register_request(client.public_key, challenge=challenge, signature=os.urandom(64))
    with pytest.raises(RendezvousError, match="401 Bad Signature"):
        await client.request(forged)
    assert server.core.stats["bad_signatures"] == 1


async def test_challenge_is_bound_to_the_address(server: RendezvousServer, make_client) -> None:
    thief = await make_client()
    victim = await make_client()
    first = await victim.request(register_request(victim.public_key), check=False)
    challenge = first.get(Attr.CHALLENGE)
    from rendezvous.tokens import registration_payload

    signature = victim.private_key.sign(registration_payload(challenge, victim.public_key))
    replayed = register_request(victim.public_key, challenge=challenge, signature=signature)
    response = await thief.request(replayed, check=False)
    assert response.get(Attr.ERROR_CODE).code == 401
    assert response.get(Attr.CHALLENGE) is not None  # a fresh one, for the thief's own address


async def test_list_pages_cover_everyone_but_me(server: RendezvousServer, make_client) -> None:
    clients = [await make_client(nickname=f"peer{i}") for i in range(7)]
    for client in clients:
        await client.register()
    me = clients[2]
    seen = []
    cursor = None
    pages = 0
    while True:
        entries, cursor = await me.list_page(limit=2, cursor=cursor)
        pages += 1
        assert len(entries) <= 2
        seen.extend(entries)
        if cursor is None:
            break
    assert [e.peer_id for e in seen] == [1, 2, 4, 5, 6, 7]
    assert pages >= 3
    assert {e.nickname for e in seen} == {f"peer{i}" for i in range(7)} - {"peer2"}
    assert seen[0].public_key == clients[0].public_key


async def test_list_reply_never_exceeds_1200_bytes(server: RendezvousServer, make_client) -> None:
    clients = [await make_client(nickname="n" * 64) for _ in range(40)]
    for client in clients:
        await client.register()
    response = await clients[0].request(
        session_request(Method.LIST, clients[0].registration.session, (Attr.LIMIT, 100))
    )
    assert len(response.raw) <= 1200
    assert response.get(Attr.CURSOR) is not None
    assert len(await clients[0].list_all(limit=100)) == 39


async def test_connect_answers_and_introduces(server: RendezvousServer, make_client) -> None:
    alice = await make_client(nickname="alice", local=(("10.1.2.3", 4444),))
    bob = await make_client(nickname="bob", local=(("10.9.9.9", 5555),))
    await alice.register()
    await bob.register()
    info = await alice.connect(2)
    assert info.peer_id == 2
    assert info.public_key == bob.public_key
    assert info.nickname == "bob"
    assert [(c.kind, c.address) for c in info.candidates] == [
        (CandidateKind.OBSERVED, bob.address),
        (CandidateKind.LOCAL, ("10.9.9.9", 5555)),
    ]
    intro = await asyncio.wait_for(bob.introductions.get(), WAIT)
    assert intro.peer_id == 1
    assert intro.public_key == alice.public_key
    assert intro.candidates[0].address == alice.address
    await wait_until(lambda: server.core.stats["introductions_acknowledged"] == 1, what="the acknowledgement")


async def test_introduction_is_retransmitted_until_acknowledged(server: RendezvousServer, make_client) -> None:
    alice = await make_client()
    await alice.register()
    silent = await make_client()
    await silent.register()
    # Make the target deaf: answer nothing, just collect.
    got: list[bytes] = []
    silent._on_datagram = lambda data, address: got.append(data)  # type: ignore[method-assign]
    silent._endpoint._on_datagram = silent._on_datagram  # type: ignore[union-attr]
    await alice.connect(2)
    await wait_until(lambda: len(got) >= 3, what="three sends (at 0, 0.5 and 1.5 s)")
    intros = [decode(d) for d in got]
    assert len({m.transaction_id for m in intros}) == 1
    assert all(m.method == Method.INTRODUCE for m in intros)


async def test_connect_to_unknown_or_self(server: RendezvousServer, make_client) -> None:
    alice = await make_client()
    await alice.register()
    with pytest.raises(RendezvousError, match="410 No Such Peer"):
        await alice.connect(99)
    with pytest.raises(RendezvousError, match="400"):
        await alice.connect(1)


async def test_a_restarted_server_still_knows_which_ids_it_gave_out(db_path) -> None:
    from rendezvous.core import ServerConfig
    from rendezvous.sqlite_registry import SqliteRegistry

    server = RendezvousServer(ServerConfig(), SqliteRegistry(db_path), "127.0.0.1", 0)
    await server.start()
    try:
        bob = await RendezvousClient(server.address).open()
        await bob.register()
        await bob.unregister()
        bob.close()
    finally:
        await server.stop()
    again = RendezvousServer(ServerConfig(), SqliteRegistry(db_path), "127.0.0.1", 0)
    await again.start()
    try:
        assert again.core is not None and again.core.highest_id == 1
        alice = await RendezvousClient(again.address).open()
        assert (await alice.register()).peer_id == 2
        with pytest.raises(RendezvousError, match="404 Unknown Peer"):
            await alice.connect(1)  # bob's id: his, though he is offline
        with pytest.raises(RendezvousError, match="410 No Such Peer"):
            await alice.connect(3)
        alice.close()
    finally:
        await again.stop()


async def test_requests_need_a_valid_session(server: RendezvousServer, make_client) -> None:
    alice = await make_client()
    reg = await alice.register()
    mallory = await make_client()
    # Alice's token from another address is worthless.
    with pytest.raises(RendezvousError, match="401 Register Again"):
        await mallory.request(session_request(Method.LIST, reg.session))
    with pytest.raises(RendezvousError, match="401 SESSION missing"):
        await mallory.request(Message(Method.LIST, MessageClass.REQUEST, os.urandom(12)))


async def test_unregister_leaves_the_list_and_keeps_the_id(server: RendezvousServer, make_client) -> None:
    alice = await make_client()
    bob = await make_client()
    await alice.register()
    await bob.register()
    await bob.unregister()
    assert await alice.list_all() == []
    bob2 = await make_client(private_key=bob.private_key)
    assert (await bob2.register()).peer_id == 2
    assert [e.peer_id for e in await alice.list_all()] == [2]


async def test_refresh_extends_and_expiry_removes(db_path) -> None:
    from rendezvous.core import ServerConfig
    from rendezvous.sqlite_registry import SqliteRegistry

    server = RendezvousServer(ServerConfig(default_ttl=1, min_ttl=1), SqliteRegistry(db_path), "127.0.0.1", 0)
    await server.start()
    try:
        alice = await RendezvousClient(server.address).open()
        bob = await RendezvousClient(server.address).open()
        await alice.register()
        await bob.register()
        for _ in range(4):
            await asyncio.sleep(0.4)
            assert await alice.refresh() == 1
        # bob never refreshed: gone after its 1 s TTL; alice is still there.
        assert 2 not in server.core.directory
        assert 1 in server.core.directory
        with pytest.raises(RendezvousError, match="401 Register Again"):
            await bob.refresh()
        assert (await bob.register()).peer_id == 2
        alice.close()
        bob.close()
    finally:
        await server.stop()


async def test_retransmitted_request_gets_the_same_answer(server: RendezvousServer, make_client) -> None:
    alice = await make_client()
    bob = await make_client()
    await alice.register()
    await bob.register()
    request = session_request(Method.CONNECT, alice.registration.session, (Attr.PEER_ID, 2))
    first = await alice.request(request)
    # Same transaction id again: byte-identical reply, and no second introduction.
    second = await asyncio.wait_for(alice.request(request), 2)
    assert second.raw == first.raw
    await asyncio.sleep(0.1)
    assert server.core.stats["introductions_sent"] == 1


async def test_relay_forwards_payload_between_peers(server: RendezvousServer, make_client) -> None:
    alice = await make_client()
    bob = await make_client()
    await alice.register()
    await bob.register()
    alice.send_relayed(2, b"\x40opaque quic bytes")
    assert await asyncio.wait_for(bob.relayed.get(), 2) == (1, b"\x40opaque quic bytes")


async def test_relay_is_rate_limited(db_path) -> None:
    from rendezvous.core import ServerConfig
    from rendezvous.sqlite_registry import SqliteRegistry

    config = ServerConfig(relay_packets_per_second=10, relay_burst_seconds=1)
    server = RendezvousServer(config, SqliteRegistry(db_path), "127.0.0.1", 0)
    await server.start()
    try:
        alice = await RendezvousClient(server.address).open()
        bob = await RendezvousClient(server.address).open()
        await alice.register()
        await bob.register()
        started = time.monotonic()
        for _ in range(50):
            alice.send_relayed(2, b"x" * 100)

        def accounted() -> bool:
            return bob.relayed.qsize() + server.core.stats["dropped: relay rate limited"] == 50

        await wait_until(accounted, what="every datagram relayed or dropped")
        took = time.monotonic() - started
        delivered = bob.relayed.qsize()
        # A burst of 10, then 10 a second for as long as the server took to
        # get through the 50 (milliseconds, unless the machine is loaded).
        assert 8 <= delivered <= 10 + 10 * took + 1, (delivered, took)
        alice.close()
        bob.close()
    finally:
        await server.stop()


async def test_every_server_message_carries_a_fingerprint(server: RendezvousServer, make_client) -> None:
    alice = await make_client()
    await alice.register()
    response = await alice.request(session_request(Method.LIST, alice.registration.session))
    assert response.attributes[-1][0] == Attr.FINGERPRINT
    assert response.get(Attr.SOFTWARE) == "peerlink"


async def test_refreshes_are_batched_not_written_one_by_one(db_path) -> None:
    from rendezvous.core import ServerConfig
    from rendezvous.sqlite_registry import SqliteRegistry

    # No periodic flush during the test (the fixture's comes every 0.2 s, and
    # a slow machine would fit any number of them into the 100 refreshes).
    server = RendezvousServer(ServerConfig(), SqliteRegistry(db_path), "127.0.0.1", 0, flush_interval=3600)
    await server.start()
    clients = [await RendezvousClient(server.address).open() for _ in range(5)]
    for client in clients:
        await client.register()
    await server.flush_registry()
    before = server.registry.transactions
    for _ in range(20):
        for client in clients:
            await client.refresh()
    assert server.registry.transactions == before  # 100 refreshes: in memory only
    await server.flush_registry()
    assert server.registry.transactions == before + 1  # then one transaction writes them all

    check = SqliteRegistry(server.registry.path)
    await check.open()
    try:
        for client in clients:
            stored = await check.get(client.registration.peer_id)
            live = server.core.directory.get(client.registration.peer_id)
            assert stored.last_seen == live.last_seen
            assert stored.expires_at == live.expires_at
    finally:
        await check.close()
        for client in clients:
            client.close()
        await server.stop()


async def test_a_big_write_behind_lets_the_loop_run_between_chunks(db_path) -> None:
    """A thousand changed records are written a chunk at a time, the event
    loop serving other work between the chunks, and all of them arrive."""
    from rendezvous.core import ServerConfig
    from rendezvous.registry import PeerRecord
    from rendezvous.server import SAVE_CHUNK
    from rendezvous.sqlite_registry import SqliteRegistry

    server = RendezvousServer(ServerConfig(), SqliteRegistry(db_path), "127.0.0.1", 0, flush_interval=3600)
    await server.start()
    try:
        assert server.core is not None
        now = time.time()
        count = 4 * SAVE_CHUNK
        for n in range(1, count + 1):
            identity = n.to_bytes(4, "big") * 8
            peer_id = await server.registry.assign_id(identity)
            address = ("127.0.0.1", 10_000 + n)
            server.core.directory.put(PeerRecord(peer_id, identity, f"p{n}", address, (), now, now, now + 60, now))
        order: list[str] = []

        async def flush() -> None:
            assert await server.flush_registry()
            order.append("flushed")

        task = asyncio.ensure_future(flush())
        asyncio.get_running_loop().call_soon(order.append, "other work")
        await task
        assert order == ["other work", "flushed"]
        check = SqliteRegistry(server.registry.path)
        await check.open()
        try:
            stored = await check.load_online(now)
            assert sorted(record.nickname for record in stored) == sorted(f"p{n}" for n in range(1, count + 1))
        finally:
            await check.close()
    finally:
        await server.stop()
