"""An in-memory :class:`webpeer.api.PeerApi` for testing the web layer alone.

It keeps peers and messages in dicts, records what the web layer asked for,
and lets a test play the network: ``receive`` (a peer sent us something),
``set_status``, ``set_connection``, ``publish``.  It checks input with
webpeer.validate, the rules the real peer applies.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from typing import Any

from webpeer import validate
from webpeer.api import JSON, ApiError
from webpeer.identity import fingerprint
from webpeer.trust import KEY_BLOCKED, KEY_CHANGED, safety_number

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
            "server_state": "registered",
            "port_mapping": {"protocol": "pcp", "external": "198.51.100.7:40001", "expires": 1900000000.0},
        }
        self._peers: dict[int, JSON] = {}
        self._messages: dict[str, JSON] = {}
        self._queues: list[asyncio.Queue[JSON]] = []
        self._ids = itertools.count(1)
        self.sent: list[tuple[int, str]] = []
        self.read_marks: list[int] = []
        self.retried: list[str] = []
        self.trust_actions: list[tuple[int, str]] = []
        self._keys: dict[int, list[bytes]] = {}  # peer id -> its keys, oldest first
        self._my_key = hashlib.sha256(b"me:" + name.encode()).digest()
        self.cancelled: list[str] = []
        self.directory_refreshes = 0
        # Ids above this were never assigned by "the server" (404 unknown peer N).
        self.highest_id = highest_id
        self._settings: JSON = {"read_receipts": True}
        self._groups: dict[str, JSON] = {}  # group id -> <group>
        self._group_messages: dict[str, list[JSON]] = {}  # group id -> its messages, oldest first
        self._group_seq: dict[tuple[str, int], int] = {}  # (group, sender) -> its last seq
        self._group_changes: dict[str, list[JSON]] = {}  # group id -> its changes, oldest first

    # -------------------------------------------------- test controls

    def add_peer(self, peer_id: int, name: str, *, online: bool = True, key_changed: bool = False) -> JSON:
        peer: JSON = {
            "id": peer_id,
            "name": name,
            "fingerprint": f"SHA256:fake-{name}",
            "online": online,
            "unread": 0,
            "trust": "changed" if key_changed else "trusted",
            "key_changed": key_changed,
            "verified": False,
            "verified_key_changed": False,
            "connection": None,
            "error": None,
            "nickname": None,
            "read_up_to": None,
            "last_seen": None if online else time.time() - 3600,
            "auto_accept_bytes": 0,
        }
        self._peers[peer_id] = peer
        self._keys[peer_id] = [hashlib.sha256(f"{peer_id}:{name}".encode()).digest()]
        if key_changed:
            self._keys[peer_id].append(hashlib.sha256(f"{peer_id}:{name}:new".encode()).digest())
        peer["fingerprint"] = fingerprint(self._keys[peer_id][-1])
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

    def change_key(self, peer_id: int) -> None:
        """The registry gives the peer a new key: what waits to go is held (as trust.py does)."""
        peer = self._peers[peer_id]
        keys = self._keys[peer_id]
        keys.append(hashlib.sha256(keys[-1] + b"new").digest())
        peer.update(
            fingerprint=fingerprint(keys[-1]),
            trust="changed",
            key_changed=True,
            verified_key_changed=peer["verified"],
            verified=False,
        )
        for message in self._messages.values():
            if message["to"] == peer_id and message["status"] in ("queued", "sending", "sent"):
                self.set_status(message["id"], "held", KEY_CHANGED)
        self._publish_trust(peer_id)

    def receive_from_new_key(self, from_id: int, text: str) -> JSON:
        """A message from the peer's key that the user has not accepted: kept
        out of the history and the events until it is (as the store does)."""
        message = self._new_message(from_id, from_id, self._me["id"], text, "received")
        message["hidden"] = True
        return dict(message)

    def _publish_trust(self, peer_id: int) -> None:
        peer = self._peers[peer_id]
        self.publish(
            {
                "type": "trust",
                "peer": peer_id,
                "trust": peer["trust"],
                "verified": peer["verified"],
                "verified_key_changed": peer["verified_key_changed"],
            }
        )
        self.publish({"type": "peers", "peers": self.peers_json()})

    def rename_quietly(self, peer_id: int, name: str) -> None:
        """A change the page is not told about (as if its event was dropped)."""
        self._peers[peer_id]["name"] = name

    @property
    def backlog(self) -> int:
        """Events published and not yet taken by the slowest subscriber."""
        return max((queue.qsize() for queue in self._queues), default=0)

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    # -------------------------------------------------- PeerApi

    def me(self) -> JSON:
        return dict(self._me)

    def peers_json(self) -> list[JSON]:
        return [dict(peer, last_message=self._last_message(peer["id"])) for peer in self._peers.values()]

    def _last_message(self, peer_id: int) -> JSON | None:
        latest = self.messages(peer_id, 1)
        if not latest:
            return None
        return {key: latest[0][key] for key in ("id", "from", "time")} | {"text": latest[0]["text"][:120]}

    def messages(self, peer_id: int, limit: int = 500) -> list[JSON]:
        found = [
            {k: v for k, v in m.items() if k != "hidden"}
            for m in self._messages.values()
            if m["peer"] == peer_id and not m.get("hidden")
        ]
        found.sort(key=lambda m: m["time"])
        return found[-limit:]

    def messages_page(
        self, peer_id: int, limit: int, *, before: str | None = None, after: str | None = None
    ) -> list[JSON]:
        everything = self.messages(peer_id, len(self._messages))
        ids = [m["id"] for m in everything]
        anchor = before if before is not None else after
        if anchor not in ids:
            raise ApiError(404, f"no message {anchor} with peer {peer_id}")
        at = ids.index(anchor)
        return everything[max(0, at - limit) : at] if before is not None else everything[at + 1 : at + 1 + limit]

    def add_history(self, peer_id: int, count: int, *, start: float, step: float = 60.0) -> None:
        """``count`` old messages with the peer, alternately theirs and mine,
        ``step`` seconds apart from ``start``, published to no one (history
        from before the page opened)."""
        me = self._me["id"]
        for n in range(count):
            mine = n % 2 == 1
            message = self._new_message(
                peer_id,
                me if mine else peer_id,
                peer_id if mine else me,
                f"old {n}",
                "delivered" if mine else "received",
            )
            message["time"] = start + n * step

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
        peer = self._peers.get(to)
        if peer is not None and peer["trust"] == "blocked":
            raise ApiError(409, f"peer {to}'s key is blocked")
        self.sent.append((to, text))
        # An id that exists but was never listed is offline: queued, as a real peer does.
        status = "sending" if peer is not None and peer["online"] else "queued"
        if peer is not None and peer["trust"] == "changed":
            status = "held"
        message = self._new_message(to, self._me["id"], to, text, status)
        if status == "held":
            message["error"] = KEY_CHANGED
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

    def peer_read(self, peer_id: int, message_id: str) -> None:
        """Test control: the peer says it has read our messages up to ``message_id``."""
        message = self._messages[message_id]
        self._peers[peer_id]["read_up_to"] = {"id": message_id, "time": message["time"]}
        self.publish({"type": "read-up-to", "peer": peer_id, "id": message_id, "time": message["time"]})

    async def add_contact(self, peer_id: int) -> JSON:
        peer_id = validate.peer_id(peer_id, "id")
        if peer_id == self._me["id"]:
            raise ApiError(400, "that is your own id")
        if peer_id > self.highest_id:
            raise ApiError(404, f"unknown peer {peer_id}")
        if peer_id not in self._peers:
            self.add_peer(peer_id, "", online=False)
        return dict(self._peers[peer_id])

    def set_nickname(self, peer_id: int, nickname: str | None) -> None:
        if peer_id in self._peers:
            self._peers[peer_id]["nickname"] = nickname
            self.publish({"type": "peers", "peers": self.peers_json()})

    def set_auto_accept(self, peer_id: int, max_bytes: int) -> None:
        if peer_id in self._peers:
            self._peers[peer_id]["auto_accept_bytes"] = max_bytes
            self.publish({"type": "peers", "peers": self.peers_json()})

    def settings(self) -> JSON:
        return dict(self._settings)

    def search(self, words: list[str], peer_id: int | None, limit: int) -> list[JSON]:
        """Every word anywhere in the text, case-blind (the store matches word starts)."""
        found = [
            m
            for m in self._messages.values()
            if not m.get("hidden")
            and (peer_id is None or m["peer"] == peer_id)
            and all(w.lower() in m["text"].lower() for w in words)
        ]
        found.sort(key=lambda m: m["time"], reverse=True)
        return [dict(m) for m in found[:limit]]

    def set_settings(self, changes: JSON) -> JSON:
        self._settings.update(validate.settings_change(changes, self._settings))
        return dict(self._settings)

    def safety(self, peer_id: int) -> JSON:
        peer = self._peers.get(peer_id)
        if peer is None:
            raise ApiError(404, f"no key is known for peer {peer_id} yet")
        keys = self._keys[peer_id]
        return {
            "peer": peer_id,
            "safety_number": safety_number(self._my_key, keys[-1]),
            "my_fingerprint": fingerprint(self._my_key),
            "their_fingerprint": fingerprint(keys[-1]),
            "previous_fingerprint": fingerprint(keys[-2]) if len(keys) > 1 else None,
            "trust": peer["trust"],
            "key_changed": peer["key_changed"],
            "verified": peer["verified"],
            "verified_key_changed": peer["verified_key_changed"],
        }

    async def set_trust(self, peer_id: int, action: str) -> JSON:
        action = validate.trust_action(action)
        peer = self._peers.get(peer_id)
        if peer is None:
            raise ApiError(404, f"no key is known for peer {peer_id} yet")
        self.trust_actions.append((peer_id, action))
        if action in ("accept", "verify") and peer["trust"] != "trusted":
            if action == "verify" and peer["trust"] == "blocked":
                raise ApiError(409, "blocked: accept it before verifying it")
            peer.update(trust="trusted", key_changed=False, verified_key_changed=False)
            for message in self._messages.values():
                if message["peer"] == peer_id and message.pop("hidden", False):
                    message["key_changed"] = True
            # Released: the held messages go (and, in this fake, arrive at once).
            for message in list(self._messages.values()):
                if message["to"] == peer_id and message["status"] == "held":
                    self.set_status(message["id"], "sending")
                    self.set_status(message["id"], "delivered")
        elif action == "accept":
            raise ApiError(409, "no key change to accept")
        if action == "block":
            if peer["trust"] == "blocked":
                raise ApiError(409, "already blocked")
            peer.update(trust="blocked", key_changed=False)
            for message in list(self._messages.values()):
                if message["to"] == peer_id and message["status"] == "held":
                    self.set_status(message["id"], "failed", KEY_BLOCKED)
        peer["verified"] = action == "verify" or (peer["verified"] and action != "unverify")
        self._publish_trust(peer_id)
        return self.safety(peer_id)

    # Files: none in the fake (the page's files view lists an empty conversation).

    def files(self, peer_id: int | None = None, limit: int = 500) -> list[JSON]:
        return []

    async def send_file(self, to: int, name: str, mime: str, chunks: Any) -> JSON:
        raise ApiError(503, "the fake peer sends no files")

    async def accept_file(self, file_id: str) -> JSON:
        raise ApiError(404, "no such file")

    async def cancel_file(self, file_id: str) -> JSON:
        raise ApiError(404, "no such file")

    async def retry_file(self, file_id: str) -> JSON:
        raise ApiError(404, "no such file")

    def file_download(self, file_id: str) -> Any:
        raise ApiError(404, "no such file")

    async def refresh_directory(self) -> None:
        self.directory_refreshes += 1

    def subscribe(self) -> asyncio.Queue[JSON]:
        queue: asyncio.Queue[JSON] = asyncio.Queue(QUEUE_SIZE)
        self._queues.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[JSON]) -> None:
        if queue in self._queues:
            self._queues.remove(queue)

    # -------------------------------------------------- groups (webpeer/groups.py's page side)

    def add_group(self, name: str, members: list[int], *, admin: int | None = None, created: float = 0.0) -> JSON:
        """A group that already exists (we are in it), made by ``admin`` (default: us)."""
        me = self._me["id"]
        by = me if admin is None else admin
        group_id = hashlib.sha256(f"group:{name}:{len(self._groups)}".encode()).hexdigest()
        group: JSON = {
            "id": group_id,
            "name": name,
            "members": sorted({me, by, *members}),
            "admins": [by],
            "member": True,
            "created_by": by,
            "created": created or time.time(),
        }
        self._groups[group_id] = group
        self._group_messages[group_id] = []
        self._group_changes[group_id] = []
        self._changed(group, {"kind": "create", "by": by, "members": group["members"], "target": None, "name": name})
        return dict(group)

    def _changed(self, group: JSON, change: JSON) -> None:
        at = group["created"] if change["kind"] == "create" else time.time()
        change = change | {"time": at, "applied": True}
        self._group_changes[group["id"]].append(change)
        self.publish({"type": "group", "group": dict(group), "change": change})

    def group_receive(self, group_id: str, from_id: int, text: str, *, at: float | None = None) -> JSON:
        """A member's message in the group arrives."""
        message = self._group_message(group_id, from_id, text, at)
        self.publish({"type": "message", "message": dict(message)})
        return dict(message)

    def group_delivered(self, group_id: str, message_id: str, member: int) -> None:
        """``member`` reports having our messages up to ``message_id``."""
        sender, seq = (int(part) for part in message_id.split(":"))
        for message in self._group_messages[group_id]:
            if message["from"] == sender and message["seq"] <= seq and member not in message["delivered_to"]:
                message["delivered_to"] = sorted([*message["delivered_to"], member])
        delivered = [m for m in self._group_messages[group_id] if m["id"] == message_id][0]["delivered_to"]
        self.publish({"type": "group_delivery", "group": group_id, "id": message_id, "delivered_to": delivered})

    def _group_message(self, group_id: str, sender: int, text: str, at: float | None) -> JSON:
        seq = self._group_seq.get((group_id, sender), 0) + 1
        self._group_seq[(group_id, sender)] = seq
        message: JSON = {
            "id": f"{sender}:{seq}",
            "group": group_id,
            "from": sender,
            "seq": seq,
            "text": text,
            "time": time.time() if at is None else at,
            "delivered_to": [],
        }
        self._group_messages[group_id].append(message)
        return message

    def _group(self, group_id: str) -> JSON:
        if group_id not in self._groups:
            raise ApiError(404, "no such group")
        return self._groups[group_id]

    def groups(self) -> list[JSON]:
        return [dict(group) for group in self._groups.values()]

    async def create_group(self, name: str, members: list[int]) -> JSON:
        if not name.strip() or len(name) > 100:
            raise ApiError(400, "a group name is 1 to 100 characters, not blank")
        for peer_id in members:
            if peer_id not in self._peers:
                raise ApiError(409, f"no key known for peer {peer_id} yet: it must have been online once")
        return self.add_group(name, [m for m in members if m != self._me["id"]])

    def group_messages(
        self, group_id: str, limit: int = 500, *, before: str | None = None, after: str | None = None
    ) -> list[JSON]:
        self._group(group_id)
        messages = self._group_messages[group_id]
        cursor = before or after
        if cursor is None:
            return [dict(m) for m in messages[-limit:]]
        at = next((i for i, m in enumerate(messages) if m["id"] == cursor), None)
        if at is None:
            raise ApiError(404, f"no message {cursor} in this group")
        chosen = messages[max(0, at - limit) : at] if before else messages[at + 1 : at + 1 + limit]
        return [dict(m) for m in chosen]

    async def send_group_message(self, group_id: str, text: str) -> JSON:
        if not self._group(group_id)["member"]:
            raise ApiError(403, "you are not a member of this group")
        message = self._group_message(group_id, self._me["id"], text, None)
        self.publish({"type": "message", "message": dict(message)})
        return dict(message)

    async def change_group(self, group_id: str, action: str, *, members: tuple[int, ...] = (), target: int = 0) -> JSON:
        group = self._group(group_id)
        me = self._me["id"]
        if action in ("add", "remove") and me not in group["admins"]:
            raise ApiError(403, "not an admin of this group")
        if action == "add":
            group["members"] = sorted({*group["members"], *members})
        elif action == "remove":
            group["members"] = [m for m in group["members"] if m != target]
        elif action == "leave":
            group["members"] = [m for m in group["members"] if m != me]
            group["member"] = False
        else:
            raise ApiError(400, f"unknown group action {action!r}")
        self._changed(
            group, {"kind": action, "by": me, "members": list(members), "target": target or None, "name": None}
        )
        return dict(group)

    def group_changes(self, group_id: str) -> list[JSON]:
        self._group(group_id)
        return [dict(change) for change in self._group_changes[group_id]]

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
            "key_changed": False,
        }
        self._messages[message_id] = message
        return message
