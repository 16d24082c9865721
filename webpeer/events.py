"""What the engine tells the pages: small frozen events, one class per
websocket event type (their JSON is documented in webpeer/api.py and the
README).  The engine queues them; the node hands them to every subscriber
once the flush that caused them is committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class PageEvent:
    """Base of everything the pages are told."""

    def to_json(self) -> JSON:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class MessageAdded(PageEvent):
    """A new incoming or outgoing message.  ``origin``: the subscriber that
    sent it and gets it as its answer instead (opaque to the engine)."""

    message: JSON
    origin: object | None = None

    def to_json(self) -> JSON:
        return {"type": "message", "message": self.message}


@dataclass(frozen=True, slots=True)
class StatusChanged(PageEvent):
    message_id: str
    status: str
    error: str | None = None

    def to_json(self) -> JSON:
        return {"type": "status", "id": self.message_id, "status": self.status, "error": self.error}


@dataclass(frozen=True, slots=True)
class PeersChanged(PageEvent):
    peers: list[JSON]

    def to_json(self) -> JSON:
        return {"type": "peers", "peers": self.peers}


@dataclass(frozen=True, slots=True)
class ConnectionChanged(PageEvent):
    peer_id: int
    connection: JSON | None

    def to_json(self) -> JSON:
        return {"type": "connection", "peer": self.peer_id, "connection": self.connection}


@dataclass(frozen=True, slots=True)
class PeerTrustChanged(PageEvent):
    """A peer's key changed, came back, or the user accepted, blocked,
    verified or unverified it (webpeer/trust.py).  ``verified_key_changed``:
    the louder warning, a verified key replaced by one not accepted."""

    peer_id: int
    trust: str  # "trusted" | "changed" | "blocked"
    verified: bool
    verified_key_changed: bool

    def to_json(self) -> JSON:
        return {
            "type": "trust",
            "peer": self.peer_id,
            "trust": self.trust,
            "verified": self.verified,
            "verified_key_changed": self.verified_key_changed,
        }


@dataclass(frozen=True, slots=True)
class ReadUpTo(PageEvent):
    """The peer has read our messages up to ``message_id`` (sent at ``time``)."""

    peer_id: int
    message_id: str
    time: float

    def to_json(self) -> JSON:
        return {"type": "read-up-to", "peer": self.peer_id, "id": self.message_id, "time": self.time}


@dataclass(frozen=True, slots=True)
class MeChanged(PageEvent):
    me: JSON

    def to_json(self) -> JSON:
        return {"type": "me", "me": self.me}


@dataclass(frozen=True, slots=True)
class Resync(PageEvent):
    """What the page was told may not hold (a failed commit, or a page that
    fell behind): reload everything."""

    def to_json(self) -> JSON:
        return {"type": "resync"}


@dataclass(frozen=True, slots=True)
class FileChanged(PageEvent):
    """A file offered, accepted, moving, paused, complete, failed or
    cancelled (webpeer/file_transfer.py).  ``kind``: "offer" | "accepted" |
    "progress" | "paused" (the receiver's disk is full) | "complete" |
    "failed" | "cancelled"; ``rate``: bytes a second since the last progress
    event (progress only)."""

    kind: str
    file: JSON
    rate: float = 0.0

    def to_json(self) -> JSON:
        event: JSON = {"type": "file", "kind": self.kind, "file": self.file}
        if self.kind == "progress":
            event["bytes"] = self.file["bytes"]
            event["rate"] = round(self.rate, 1)
        return event


@dataclass(frozen=True, slots=True)
class GroupChanged(PageEvent):
    """A group appeared or its name, members or admins changed (webpeer/groups.py).
    ``change``: the op that did it, as a line for the conversation ("1 added 3"), or None."""

    group: JSON
    change: JSON | None = None

    def to_json(self) -> JSON:
        return {"type": "group", "group": self.group, "change": self.change}


@dataclass(frozen=True, slots=True)
class GroupMessageAdded(PageEvent):
    """A group message delivered here (ours or another member's): a "message"
    event whose message has ``group`` set."""

    message: JSON

    def to_json(self) -> JSON:
        return {"type": "message", "message": self.message}


@dataclass(frozen=True, slots=True)
class GroupDelivery(PageEvent):
    """Which members have delivered our group message ``message_id``."""

    group_id: str
    message_id: str
    delivered_to: list[int]

    def to_json(self) -> JSON:
        return {
            "type": "group_delivery",
            "group": self.group_id,
            "id": self.message_id,
            "delivered_to": self.delivered_to,
        }
