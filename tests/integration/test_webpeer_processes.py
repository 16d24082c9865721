"""The course project's scenario with real processes: one `rendezvous` and three
`webpeer`s on loopback, driven through their HTTP API and websockets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from processes import WebPeer, free_udp_port, start_rendezvous, start_webpeer, wait_until


@pytest.fixture
async def network(tmp_path: Path):
    port = free_udp_port()
    server = await start_rendezvous(port, tmp_path / "r.sqlite3")
    peers: list[WebPeer] = []

    async def add(name: str) -> WebPeer:
        peer = await start_webpeer(f"127.0.0.1:{port}", name, tmp_path / name, "--udp-host", "127.0.0.1")
        peers.append(peer)
        return peer

    try:
        yield add
        for peer in peers:
            assert await peer.stop() == 0, peer.text()
        assert await server.stop() == 0, server.text()
    finally:
        for child in [*peers, server]:
            await child.kill()


async def ws_events(session: aiohttp.ClientSession, peer: WebPeer):
    ws = await session.ws_connect(f"ws://127.0.0.1:{peer.port}/ws?token={peer.token}", headers={"Origin": peer.base})
    hello = json.loads((await ws.receive()).data)
    assert hello["type"] == "hello"
    return ws


async def next_event(ws, predicate, timeout: float = 8.0) -> dict:
    async def loop():
        while True:
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.TEXT, message
            frame = json.loads(message.data)
            # Events ready at once come as one batch frame.
            for event in frame["events"] if frame["type"] == "batch" else [frame]:
                if predicate(event):
                    return event

    return await asyncio.wait_for(loop(), timeout)


async def test_three_webpeers_like_the_course_project(network) -> None:
    one, two, three = await network("one"), await network("two"), await network("three")
    async with aiohttp.ClientSession() as session:
        me = [await wait_until(lambda p=p: _registered(session, p)) for p in (one, two, three)]
        assert [m["id"] for m in me] == [1, 2, 3]

        async def one_sees_both():
            peers = await one.get(session, "/api/peers")
            return {p["id"] for p in peers if p["online"]} == {2, 3}

        await wait_until(one_sees_both)
        ws1, ws3 = await ws_events(session, one), await ws_events(session, three)
        sent = await one.post(session, "/api/messages", {"to": 3, "text": "Hello from 1 to 3"})
        got = await next_event(ws3, lambda e: e["type"] == "message")
        assert (got["message"]["from"], got["message"]["text"]) == (1, "Hello from 1 to 3")
        await next_event(ws1, lambda e: e["type"] == "status" and e["id"] == sent["id"] and e["status"] == "delivered")

        sent2 = await two.post(session, "/api/messages", {"to": 1, "text": "Hello from 2 to 1"})
        got = await next_event(ws1, lambda e: e["type"] == "message" and e["message"]["from"] == 2)
        assert got["message"]["text"] == "Hello from 2 to 1"

        async def delivered():
            history = await two.get(session, "/api/messages?peer=1")
            return history and history[-1]["id"] == sent2["id"] and history[-1]["status"] == "delivered"

        await wait_until(delivered)
        history = await three.get(session, "/api/messages?peer=1")
        assert [m["text"] for m in history] == ["Hello from 1 to 3"]
        peers = await one.get(session, "/api/peers")
        conn = next(p for p in peers if p["id"] == 3)["connection"]
        assert conn["state"] == "direct"
        await ws1.close()
        await ws3.close()


async def _registered(session: aiohttp.ClientSession, peer: WebPeer):
    me = await peer.get(session, "/api/me")
    return me if me["id"] else None
