"""Peer nodes (no web layer) messaging over real loopback UDP and QUIC."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from rendezvous.core import ServerConfig
from rendezvous.server import RendezvousServer
from rendezvous.sqlite_registry import SqliteRegistry
from webpeer.node import NodeConfig, PeerNode


async def wait_for(predicate, timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def next_event(queue: asyncio.Queue, kind: str, match=lambda e: True, timeout: float = 5.0) -> dict:
    async def loop() -> dict:
        while True:
            event = await queue.get()
            if event["type"] == kind and match(event):
                return event

    return await asyncio.wait_for(loop(), timeout)


@pytest.fixture
async def rendezvous(tmp_path: Path):
    server = RendezvousServer(ServerConfig(), SqliteRegistry(tmp_path / "server.sqlite3"), "127.0.0.1", 0)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def nodes(rendezvous: RendezvousServer, tmp_path: Path):
    started: list[PeerNode] = []

    async def make(name: str, data_dir: Path | None = None) -> PeerNode:
        config = NodeConfig(server=rendezvous.address, data_dir=data_dir or tmp_path / name, name=name,
                            udp_host="127.0.0.1", list_interval=0.3)
        node = PeerNode(config)
        await node.start()
        started.append(node)
        await wait_for(lambda: node.registration.peer_id, what=f"{name} registered")
        return node

    yield make
    for node in started:
        if node._endpoint is not None:
            await node.stop()


async def test_the_course_project_scenario(nodes) -> None:
    one, two, three = await nodes("one"), await nodes("two"), await nodes("three")
    assert [n.registration.peer_id for n in (one, two, three)] == [1, 2, 3]
    await wait_for(lambda: {p["id"] for p in one.peers() if p["online"]} == {2, 3}, what="1 sees 2 and 3")
    inbox3, inbox1 = three.subscribe(), one.subscribe()
    events1 = one.subscribe()
    sent = await one.send_message(3, "Hello from 1 to 3")
    got = await next_event(inbox3, "message")
    assert got["message"]["text"] == "Hello from 1 to 3"
    assert got["message"]["from"] == 1
    await next_event(events1, "status", lambda e: e["id"] == sent["id"] and e["status"] == "delivered")
    sent2 = await two.send_message(1, "Hello from 2 to 1")
    got = await next_event(inbox1, "message", lambda e: e["message"]["from"] == 2)
    assert got["message"]["text"] == "Hello from 2 to 1"
    await wait_for(lambda: two.store.get_message(sent2["id"])["status"] == "delivered", what="2's message delivered")
    # History on both sides.
    assert [m["text"] for m in three.messages(1)] == ["Hello from 1 to 3"]
    assert [m["status"] for m in one.messages(3)] == ["delivered"]
    conn = next(p for p in one.peers() if p["id"] == 3)["connection"]
    assert conn["state"] == "direct" and conn["address"] == f"127.0.0.1:{three.udp_address[1]}"


async def test_both_sides_talk_on_one_connection(nodes) -> None:
    alice, bob = await nodes("alice"), await nodes("bob")
    await wait_for(lambda: any(p["online"] for p in alice.peers()), what="alice sees bob")
    await wait_for(lambda: any(p["online"] for p in bob.peers()), what="bob sees alice")
    a = await alice.send_message(2, "hi bob")
    b = await bob.send_message(1, "hi alice")
    await wait_for(lambda: alice.store.get_message(a["id"])["status"] == "delivered", what="a delivered")
    await wait_for(lambda: bob.store.get_message(b["id"])["status"] == "delivered", what="b delivered")
    for _ in range(10):
        await alice.send_message(2, "more")
    await wait_for(lambda: len(bob.messages(1)) == 12, what="all at bob")
    ready = [p.link for p in alice.peer_states.values() if p.link is not None]
    assert len(ready) == 1


async def test_message_to_offline_peer_is_queued_then_delivered(nodes, tmp_path) -> None:
    alice = await nodes("alice")
    bob = await nodes("bob")
    await wait_for(lambda: any(p["online"] for p in alice.peers()), what="alice sees bob")
    await bob.stop()
    await wait_for(lambda: not any(p["online"] for p in alice.peers()), what="bob offline")
    queued = await alice.send_message(2, "are you there?")
    assert queued["status"] == "queued"
    bob_again = await nodes("bob", data_dir=tmp_path / "bob")
    assert bob_again.registration.peer_id == 2
    await wait_for(lambda: alice.store.get_message(queued["id"])["status"] == "delivered", timeout=8, what="delivered")
    assert [m["text"] for m in bob_again.messages(1)] == ["are you there?"]
