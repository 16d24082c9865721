"""An in-memory :class:`webpeer.api.PeerApi` for testing the web layer alone.

It keeps peers and messages in dicts, records what the web layer asked for,
and lets a test play the network: ``receive`` (a peer sent us something),
``set_status``, ``set_connection``, ``publish``.  It checks input with
webpeer.validate, the rules the real peer applies.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from webpeer import validate
from webpeer.api import JSON, ApiError

QUEUE_SIZE = 256


class FakePeerApi:
    """Behaves like the contract in webpeer/api.py says, with no network."""

    def __init__(self, my_id: int = 1, name: str = "alice", *, highest_id: int = 100) -> None:
        self._me: JSON = {
            "id": my_id,
            "name": name,
            "fingerprint": "SHA256:fake-" + name,
            "public_address": "127.0.0.1:40001",
            "server": "127.0.0.1:3478",
            "registered": True,
        }
        self._peers: dict[int, JSON] = {}
        self._messages: dict[str, JSON] = {}
        self._queues: list[asyncio.Queue[JSON]] = []
        self._ids = itertools.count(1)
        self.sent: list[tuple[int, str]] = []
        self.read_marks: list[int] = []
        self.retried: list[str] = []
        self.cancelled: list[str] = []
        # Ids above this were never assigned by "the server" (404 unknown peer N).
        self.highest_id = highest_id

    # -------------------------------------------------- test controls

    def add_peer(self, peer_id: int, name: str, *, online: bool = True, key_changed: bool = False) -> JSON:
        peer: JSON = {
            "id": peer_id,
            "name": name,
            "fingerprint": f"SHA256:fake-{name}",
            "online": online,
            "unread": 0,
            "key_changed": key_changed,
            "connection": None,
            "error": None,
        }
        self._peers[peer_id] = peer
        self.publish({"type": "peers", "peers": self.peers_json()})
        return peer

    def publish(self, event: JSON, *, skip: asyncio.Queue[JSON] | None = None) -> None:
        for queue in list(self._queues):
            if queue is skip:
                continue
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:  # as PeerNode: drop the backlog, tell the page to reload
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait({"type": "resync"})

    def receive(self, from_id: int, text: str) -> JSON:
        """A message from ``from_id`` arrives."""
        message = self._new_message(from_id, from_id, self._me["id"], text, "received")
        peer = self._peers.get(from_id)
        if peer is not None:
            peer["unread"] += 1
        self.publish({"type": "message", "message": dict(message)})
        return dict(message)

    def set_status(self, message_id: str, status: str, error: str | None = None) -> None:
        message = self._messages[message_id]
        message["status"] = status
        message["error"] = error
        self.publish({"type": "status", "id": message_id, "status": status, "error": error})

    def set_connection(self, peer_id: int, state: str | None, address: str | None = None) -> None:
        connection = None if state is None else {"state": state, "address": address}
        self._peers[peer_id]["connection"] = connection
        self.publish({"type": "connection", "peer": peer_id, "connection": connection})

    def set_peer_error(self, peer_id: int, error: str | None) -> None:
        self._peers[peer_id]["error"] = error
        self.publish({"type": "peers", "peers": self.peers_json()})

    def rename_quietly(self, peer_id: int, name: str) -> None:
        """A change the page is not told about (as if its event was dropped)."""
        self._peers[peer_id]["name"] = name

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    # -------------------------------------------------- PeerApi

    def me(self) -> JSON:
        return dict(self._me)

    def peers_json(self) -> list[JSON]:
        return [dict(peer) for peer in self._peers.values()]

    def messages(self, peer_id: int, limit: int = 500) -> list[JSON]:
        found = [dict(m) for m in self._messages.values() if m["peer"] == peer_id]
        found.sort(key=lambda m: m["time"])
        return found[-limit:]

    async def send_message(self, to: int, text: str) -> JSON:
        return await self.submit_message(to, text)

    def submit_message(
        self, to: int, text: str, *, answered_on: asyncio.Queue[JSON] | None = None
    ) -> asyncio.Future[JSON]:
        text = validate.message_text(text)
        to = validate.peer_id(to, "to")
        if to == self._me["id"]:
            raise ApiError(400, "cannot send a message to yourself")
        if to > self.highest_id:
            raise ApiError(404, f"unknown peer {to}")
        self.sent.append((to, text))
        # An id that exists but was never listed is offline: queued, as a real peer does.
        status = "sending" if to in self._peers and self._peers[to]["online"] else "queued"
        message = self._new_message(to, self._me["id"], to, text, status)
        self.publish({"type": "message", "message": dict(message)}, skip=answered_on)
        future: asyncio.Future[JSON] = asyncio.get_running_loop().create_future()
        future.set_result(dict(message))
        return future

    async def retry(self, message_id: str) -> JSON:
        message = self._messages.get(message_id)
        if message is None:
            raise ApiError(404, f"no message {message_id}")
        if message["status"] != "failed":
            raise ApiError(409, f"message {message_id} has not failed")
        self.retried.append(message_id)
        self.set_status(message_id, "sending")
        return dict(message)

    async def cancel(self, message_id: str) -> JSON:
        message = self._messages.get(message_id)
        if message is None or message["status"] == "received":
            raise ApiError(404, f"no message {message_id}")
        if message["status"] not in ("queued", "sending"):
            raise ApiError(
                409, f"message {message_id} is {message['status']}: only a queued or sending one can be cancelled"
            )
        self.cancelled.append(message_id)
        self.set_status(message_id, "failed", "cancelled")
        return dict(message)

    def mark_read(self, peer_id: int) -> None:
        self.read_marks.append(peer_id)
        peer = self._peers.get(peer_id)
        if peer is not None and peer["unread"]:
            peer["unread"] = 0
            self.publish({"type": "peers", "peers": self.peers_json()})

    def subscribe(self) -> asyncio.Queue[JSON]:
        queue: asyncio.Queue[JSON] = asyncio.Queue(QUEUE_SIZE)
        self._queues.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[JSON]) -> None:
        if queue in self._queues:
            self._queues.remove(queue)

    # -------------------------------------------------- internals

    def _new_message(self, peer: int, sender: Any, to: Any, text: str, status: str) -> JSON:
        message_id = f"m{next(self._ids)}"
        message: JSON = {
            "id": message_id,
            "peer": peer,
            "from": sender,
            "to": to,
            "text": text,
            "status": status,
            "time": time.time(),
            "error": None,
        }
        self._messages[message_id] = message
        return message
