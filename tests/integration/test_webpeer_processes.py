"""The course project's scenario with real processes: one `rendezvous` and three
`webpeer`s on loopback, driven through their HTTP API and websockets."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start(*args: str) -> asyncio.subprocess.Process:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


class WebPeer:
    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self.process = process
        match = re.match(r"http://127\.0\.0\.1:(\d+)/\?token=(\S+)", url)
        assert match, url
        self.port, self.token = int(match[1]), match[2]
        self.base = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {self.token}", "Origin": self.base}

    async def get(self, session: aiohttp.ClientSession, path: str):
        async with session.get(self.base + path, headers=self.headers) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def post(self, session: aiohttp.ClientSession, path: str, body: dict):
        async with session.post(self.base + path, json=body, headers=self.headers) as response:
            assert response.status in (200, 201), await response.text()
            return await response.json()


@pytest.fixture
async def network(tmp_path: Path):
    port = free_udp_port()
    server = await start(
        "rendezvous",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--db",
        str(tmp_path / "r.sqlite3"),
        "--log-level",
        "warning",
    )
    peers: list[WebPeer] = []

    async def add(name: str) -> WebPeer:
        process = await start(
            "webpeer",
            "--server",
            f"127.0.0.1:{port}",
            "--http-port",
            "0",
            "--name",
            name,
            "--data-dir",
            str(tmp_path / name),
            "--no-browser",
            "--udp-host",
            "127.0.0.1",
        )
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        peer = WebPeer(process, line.decode().removeprefix("Open ").strip())
        peers.append(peer)
        return peer

    yield add
    for peer in peers:
        if peer.process.returncode is None:
            peer.process.send_signal(signal.SIGTERM)
    for peer in peers:
        assert await asyncio.wait_for(peer.process.wait(), 10) == 0
    server.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(server.wait(), 10) == 0


async def wait_until(check, timeout: float = 8.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


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
