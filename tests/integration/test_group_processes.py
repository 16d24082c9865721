"""Groups between real ``webpeer`` processes on loopback (issue 12): one
rendezvous and five webpeers started once for the module, driven through
their HTTP API; each test makes a group of its own.

The forgery test adds one peer node in this process (``mallory``), a member
but not an admin, so that it can put hand-made frames on its real QUIC links
to the processes; the unit tests (tests/unit/test_group_log.py) pin every
kind of forgery on the pure log."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from processes import Child, WebPeer, free_udp_port, start_rendezvous, start_webpeer, wait_until

from webpeer.group_codec import Op, OpKind
from webpeer.group_frames import op_frame
from webpeer.node import NodeConfig, PeerNode
from webpeer.wire import Frame

pytestmark = pytest.mark.asyncio(loop_scope="module")

NAMES = ("ann", "ben", "cat", "dan", "eve")
PER_MEMBER = 50


@dataclass
class Lab:
    root: Path
    port: int
    server: Child
    peers: list[WebPeer]
    ids: list[int]
    session: aiohttp.ClientSession
    children: list[Child]  # every process started, stopped at the end

    async def start(self, index: int) -> WebPeer:
        """(Re)start webpeer ``index`` on its data dir; it keeps its id."""
        name = NAMES[index]
        peer = await start_webpeer(
            f"127.0.0.1:{self.port}", name, self.root / name, "--udp-host", "127.0.0.1", log=self.root / f"{name}.log"
        )
        self.children.append(peer)
        if index < len(self.peers):
            self.peers[index] = peer
        return peer

    async def get(self, index: int, path: str) -> Any:
        return await self.peers[index].get(self.session, path)

    async def post(self, index: int, path: str, body: Any) -> Any:
        return await self.peers[index].post(self.session, path, body)

    async def messages(self, index: int, group: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.get(index, f"/api/groups/{group}/messages?limit=1000")
        return result

    async def group(self, index: int, group: str) -> dict[str, Any] | None:
        return next((g for g in await self.get(index, "/api/groups") if g["id"] == group), None)

    async def sees_online(self, index: int, ids: set[int]) -> bool:
        online = {p["id"] for p in await self.get(index, "/api/peers") if p["online"]}
        return ids <= online

    async def know(self, index: int, ids: set[int]) -> None:
        """Peer ``index`` has the others' keys (to make a group with them): as
        contacts, looked up at the server at once instead of at its next LIST."""
        for peer_id in sorted(ids):
            await self.post(index, "/api/peers", {"id": peer_id})
        await wait_until(lambda: self.sees_online(index, ids), what=f"{NAMES[index]} sees {sorted(ids)} online")

    async def create(self, members: list[int], name: str) -> str:
        """A group made by ann; once every member has it."""
        group = await self.post(0, "/api/groups", {"name": name, "members": members})
        for index, peer_id in enumerate(self.ids):
            if peer_id in members and self.peers[index].returncode is None:
                await wait_until(lambda i=index: self.group(i, group["id"]), what=f"{NAMES[index]} has the group")
        return str(group["id"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    root = tmp_path_factory.mktemp("groups")
    port = free_udp_port()
    server = await start_rendezvous(port, root / "r.sqlite3", log=root / "rendezvous.log")
    children: list[Child] = [server]
    try:
        async with aiohttp.ClientSession() as session:
            lab = Lab(root, port, server, [], [], session, children)
            lab.peers = list(await asyncio.gather(*(lab.start(i) for i in range(len(NAMES)))))
            for index in range(len(NAMES)):
                me = await wait_until(lambda i=index: _registered(lab, i), what=f"{NAMES[index]} registered")
                lab.ids.append(int(me["id"]))
            await lab.know(0, set(lab.ids[1:]))
            yield lab
    finally:
        for child in children:
            await child.kill()


async def _registered(lab: Lab, index: int) -> dict[str, Any] | None:
    me: dict[str, Any] = await lab.get(index, "/api/me")
    return me if me["registered"] else None


def stored_senders(data_dir: Path, group: str) -> list[tuple[int, int]]:
    """The (sender, seq) of the group messages in a peer's own SQLite store."""
    with sqlite3.connect(data_dir / "history.sqlite3") as db:
        rows = db.execute("SELECT sender, seq FROM group_messages WHERE group_id = ? ORDER BY rowid", (group,))
        return [(int(s), int(q)) for s, q in rows]


async def test_five_members_writing_fifty_each_at_once_all_end_with_the_same_250(lab: Lab) -> None:
    group = await lab.create(lab.ids[1:], "all five")

    async def write(index: int) -> None:
        for n in range(PER_MEMBER):  # one writer's posts in order; the five writers at once
            await lab.post(index, f"/api/groups/{group}/messages", {"text": f"{NAMES[index]} {n}"})

    await asyncio.gather(*(write(i) for i in range(len(NAMES))))
    total = PER_MEMBER * len(NAMES)

    async def has_all(index: int) -> bool:
        return len(await lab.messages(index, group)) >= total

    for index in range(len(NAMES)):
        await wait_until(lambda i=index: has_all(i), 60, f"{NAMES[index]} has all {total}")
    memberships = []
    for index in range(len(NAMES)):
        messages = await lab.messages(index, group)
        assert len(messages) == total and len({m["id"] for m in messages}) == total  # no duplicates
        for writer, name in zip(lab.ids, NAMES, strict=True):
            theirs = [m for m in messages if m["from"] == writer]
            assert [m["text"] for m in theirs] == [f"{name} {n}" for n in range(PER_MEMBER)]
            assert [m["seq"] for m in theirs] == list(range(1, PER_MEMBER + 1))
        assert len(stored_senders(lab.root / NAMES[index], group)) == total
        info = await lab.group(index, group)
        assert info is not None
        memberships.append((info["members"], info["admins"]))
    assert memberships == [(sorted(lab.ids), [lab.ids[0]])] * len(NAMES)


async def test_a_removed_member_gets_nothing_and_forged_or_replayed_ops_change_nothing(lab: Lab) -> None:
    mallory = PeerNode(
        NodeConfig(server=("127.0.0.1", lab.port), data_dir=lab.root / "mallory", name="mallory", udp_host="127.0.0.1")
    )
    await mallory.start()
    try:
        mallory_id = await wait_until(lambda: mallory.registration.peer_id, what="mallory registered")
        await lab.know(0, {mallory_id})
        ann, ben, dan = lab.ids[0], lab.ids[1], lab.ids[3]
        group = await lab.create([*lab.ids[1:], mallory_id], "with mallory")
        await wait_until(lambda: mallory.groups(), what="mallory has the group")
        await lab.post(0, f"/api/groups/{group}/messages", {"text": "before"})
        await wait_until(lambda: stored_senders(lab.root / "dan", group) == [(ann, 1)], what="dan has 'before'")

        await _remove(lab, group, dan)
        for index in range(len(NAMES)):
            await wait_until(
                lambda i=index: _members_without(lab, i, group, dan), what=f"{NAMES[index]} sees dan removed"
            )
        await wait_until(lambda: dan not in mallory.groups()[0]["members"], what="mallory sees dan removed")
        for index in (1, 2):
            await lab.post(index, f"/api/groups/{group}/messages", {"text": f"after, from {NAMES[index]}"})
        # Mallory writes too: its links to every member are then up for what follows.
        await mallory.send_group_message(group, "after, from mallory")
        for index in (0, 1, 2, 4):
            await wait_until(
                lambda i=index: len(stored_senders(lab.root / NAMES[i], group)) == 4,
                what=f"{NAMES[index]} has the messages written after the removal",
            )
        assert stored_senders(lab.root / "dan", group) == [(ann, 1)]  # its store: nothing after its removal

        # A non-admin's removal of ben, after a replay of the (accepted, signed) removal of dan
        # once dan is back: on one link, in that order, to every member.
        await lab.post(0, f"/api/groups/{group}/members", {"members": [dan]})
        for index in range(len(NAMES)):
            await wait_until(lambda i=index: _has_member(lab, i, group, dan), what=f"{NAMES[index]} sees dan back")
        await wait_until(lambda: dan in mallory.groups()[0]["members"], what="mallory sees dan back")
        log = mallory.engine.groups.logs[group]
        [removal] = [op for op, _ in log.timeline() if op.kind is OpKind.REMOVE]
        forged = Op(group, OpKind.REMOVE, mallory_id, log.heads, 1, target=ben)
        forged = replace(forged, sig=mallory.engine.groups.context.sign(forged.signed_bytes()))
        refusal = f"refused a group frame from peer {mallory_id}: operation refused: peer {mallory_id} is not an admin"
        for peer_id, peer in zip(lab.ids, lab.peers, strict=True):
            await _send_until_logged(mallory, peer_id, [op_frame(removal), op_frame(forged)], peer, refusal)
        for index in range(len(NAMES)):
            info = await lab.group(index, group)
            assert info is not None and info["members"] == sorted([*lab.ids, mallory_id]), info
    finally:
        await mallory.stop()


async def _send_until_logged(node: PeerNode, peer_id: int, frames: list[Frame], peer: WebPeer, line: str) -> None:
    """Put ``frames`` on ``node``'s link to ``peer_id`` until ``peer`` logs ``line`` (for the last
    of them, so the ones before were taken too): a link closed as a duplicate loses what it carried."""
    for _ in range(4):
        session = node.engine.session(peer_id)
        if session.ready_link is None:
            node.engine.connect(session, node.clock())
            node._flush()
        link = await wait_until(lambda s=session: s.ready_link, what=f"a link to peer {peer_id}")
        link.send_frames(frames, node.clock())
        node._flush()
        try:
            await peer.wait_for_line(line, timeout=10)
            return
        except AssertionError:
            continue
    raise AssertionError(f"peer {peer_id} never logged {line!r}")


async def _remove(lab: Lab, group: str, peer: int) -> None:
    async with lab.session.delete(
        lab.peers[0].base + f"/api/groups/{group}/members/{peer}", headers=lab.peers[0].headers
    ) as response:
        assert response.status == 200, await response.text()


async def _members_without(lab: Lab, index: int, group: str, peer: int) -> bool:
    info = await lab.group(index, group)
    return info is not None and peer not in info["members"]


async def _has_member(lab: Lab, index: int, group: str, peer: int) -> bool:
    info = await lab.group(index, group)
    return info is not None and peer in info["members"]


async def test_a_member_back_from_offline_gets_what_it_missed_from_the_others(lab: Lab) -> None:
    group = await lab.create(lab.ids[1:], "catch up")
    eve = len(NAMES) - 1
    assert await lab.peers[eve].stop() == 0
    texts = [f"while eve was out {n}" for n in range(10)]
    for text in texts:
        await lab.post(0, f"/api/groups/{group}/messages", {"text": text})
    for index in (1, 2, 3):
        await wait_until(lambda i=index: _count_is(lab, i, group, 10), what=f"{NAMES[index]} has the ten")
    assert await lab.peers[0].stop() == 0  # the writer is gone before eve comes back
    await lab.start(eve)
    await wait_until(lambda: _count_is(lab, eve, group, 10), what="eve caught up from ben, cat or dan")
    assert [m["text"] for m in await lab.messages(eve, group)] == texts
    assert stored_senders(lab.root / "eve", group) == [(lab.ids[0], n) for n in range(1, 11)]


async def _count_is(lab: Lab, index: int, group: str, count: int) -> bool:
    return len(await lab.messages(index, group)) == count
