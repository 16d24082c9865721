"""The group API (POST/GET /api/groups ..., websocket "group" and group
"message" events) on real peer nodes over loopback UDP and QUIC, each with
its own site under pytest-aiohttp's ``aiohttp_client``."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from rendezvous.core import ServerConfig
from rendezvous.server import RendezvousServer
from rendezvous.sqlite_registry import SqliteRegistry
from webpeer.node import NodeConfig, PeerNode
from webpeer.web import WebConfig, create_app

TOKEN = "group-test-token_0123456789abcdef"
DEADLINE = 20.0


async def wait_for(predicate: Callable[[], Any], what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while not (value := predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return value


async def next_event(
    ws: aiohttp.ClientWebSocketResponse, kind: str, match: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    async def loop() -> dict[str, Any]:
        while True:
            data = await ws.receive_json()
            for event in data["events"] if data.get("type") == "batch" else [data]:
                if event.get("type") == kind and match(event):
                    return event

    return await asyncio.wait_for(loop(), DEADLINE)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Member:
    def __init__(self, node: PeerNode, client: TestClient[web.Request, web.Application], port: int) -> None:
        self.node, self.client, self.port = node, client, port
        self.headers = {"Authorization": f"Bearer {TOKEN}", "Origin": f"http://127.0.0.1:{port}"}

    @property
    def id(self) -> int:
        peer_id = self.node.registration.peer_id
        assert peer_id is not None
        return peer_id

    async def call(self, method: str, path: str, status: int, body: Any = None) -> Any:
        response = await self.client.request(method, path, json=body, headers=self.headers)
        answer = await response.json()
        assert response.status == status, answer
        return answer

    async def ws(self) -> aiohttp.ClientWebSocketResponse:
        return await self.client.ws_connect("/ws", headers=self.headers)


@pytest.fixture
async def members(tmp_path: Path, aiohttp_client: AiohttpClient) -> AsyncIterator[Callable[[str], Awaitable[Member]]]:
    server = RendezvousServer(ServerConfig(), SqliteRegistry(tmp_path / "server.sqlite3"), "127.0.0.1", 0)
    await server.start()
    started: list[PeerNode] = []

    async def make(name: str) -> Member:
        config = NodeConfig(
            server=server.address, data_dir=tmp_path / name, name=name, udp_host="127.0.0.1", list_interval=0.3
        )
        node = PeerNode(config)
        await node.start()
        started.append(node)
        node.subscribe()  # a page open (its queue unread): the directory is fetched only then
        await wait_for(lambda: node.registration.peer_id, f"{name} registered")
        port = free_port()
        client = await aiohttp_client(
            create_app(WebConfig(port=port, token=TOKEN), node), server_kwargs={"host": "127.0.0.1", "port": port}
        )
        return Member(node, client, port)

    yield make
    for node in started:
        if node._endpoint is not None:
            await node.stop()
    await server.stop()


async def test_a_group_made_written_in_and_changed_through_the_api(members: Callable[[str], Awaitable[Member]]) -> None:
    alice, bob, carol = await members("alice"), await members("bob"), await members("carol")
    bob_ws = await bob.ws()
    for other in (bob, carol):
        await wait_for(lambda o=other: alice.node.engine.key_of(o.id), f"alice knows {other.id}'s key")

    group = await alice.call("POST", "/api/groups", 201, {"name": "lunch", "members": [bob.id, carol.id]})
    assert group["members"] == sorted([alice.id, bob.id, carol.id]) and group["admins"] == [alice.id]
    seen = await next_event(bob_ws, "group", lambda e: e["group"]["id"] == group["id"])
    assert seen["group"]["name"] == "lunch"
    assert [g["id"] for g in await bob.call("GET", "/api/groups", 200)] == [group["id"]]

    alice_ws = await alice.ws()
    sent = await bob.call("POST", f"/api/groups/{group['id']}/messages", 201, {"text": "noodles?"})
    assert sent["group"] == group["id"] and sent["from"] == bob.id
    got = await next_event(alice_ws, "message", lambda e: e["message"].get("group") == group["id"])
    assert got["message"]["text"] == "noodles?"
    await wait_for(lambda: carol.node.group_messages(group["id"]), "carol has the message")
    delivered = await next_event(bob_ws, "group_delivery", lambda e: len(e["delivered_to"]) == 2)
    assert delivered["delivered_to"] == sorted([alice.id, carol.id]) and delivered["id"] == sent["id"]
    [listed] = await alice.call("GET", f"/api/groups/{group['id']}/messages?limit=10", 200)
    assert listed["text"] == "noodles?"

    # Only an admin removes; anyone leaves.
    refused = await bob.call("DELETE", f"/api/groups/{group['id']}/members/{alice.id}", 403)
    assert "not an admin" in refused["error"]
    after = await alice.call("DELETE", f"/api/groups/{group['id']}/members/{carol.id}", 200)
    assert carol.id not in after["members"]
    left = await bob.call("POST", f"/api/groups/{group['id']}/leave", 200)
    assert left["member"] is False
    await wait_for(lambda: alice.node.groups()[0]["members"] == [alice.id], "alice sees bob leave")
    await bob_ws.close()
    await alice_ws.close()


async def test_bad_group_requests_get_clear_errors(members: Callable[[str], Awaitable[Member]]) -> None:
    alice = await members("alice")
    assert "64 lower-case hex" in (await alice.call("GET", "/api/groups/xyz/messages", 400))["error"]
    assert (await alice.call("GET", f"/api/groups/{'0' * 64}/messages", 404))["error"] == "no such group"
    assert "name" in (await alice.call("POST", "/api/groups", 400, {"name": "  ", "members": []}))["error"]
    assert "peer id" in (await alice.call("POST", "/api/groups", 400, {"name": "x", "members": ["2"]}))["error"]
    assert "no key known" in (await alice.call("POST", "/api/groups", 409, {"name": "x", "members": [77]}))["error"]
    mine = await alice.call("POST", "/api/groups", 201, {"name": "just me", "members": []})
    empty = await alice.call("POST", f"/api/groups/{mine['id']}/messages", 400, {"text": ""})
    assert empty["error"] == "empty message"


async def test_group_history_pages_back_and_forth_like_one_to_one(members: Callable[[str], Awaitable[Member]]) -> None:
    alice = await members("alice")
    group = await alice.call("POST", "/api/groups", 201, {"name": "notes", "members": []})
    base = f"/api/groups/{group['id']}/messages"
    sent = [(await alice.call("POST", base, 201, {"text": f"note {n}"}))["id"] for n in range(7)]

    async def texts(query: str, status: int = 200) -> list[str]:
        return [m["text"] for m in await alice.call("GET", f"{base}?{query}", status)]

    assert await texts("limit=3") == ["note 4", "note 5", "note 6"]
    assert await texts(f"before={sent[4]}&limit=3") == ["note 1", "note 2", "note 3"]
    assert await texts(f"before={sent[1]}&limit=3") == ["note 0"]
    assert await texts(f"before={sent[0]}") == []
    assert await texts(f"after={sent[2]}&limit=2") == ["note 3", "note 4"]
    assert await texts(f"after={sent[6]}") == []
    both = await alice.call("GET", f"{base}?before={sent[1]}&after={sent[2]}", 400)
    assert "not both" in both["error"]
    missing = await alice.call("GET", f"{base}?before=9:9", 404)
    assert missing["error"] == "no message 9:9 in this group"
