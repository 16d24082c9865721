"""How a node moves messages: the page's sends, stored and handed to links;
incoming messages and receipts, stored; the queue of messages for peers
that are offline (docs/PROTOCOL.md 11.2).

A mixin of :class:`webpeer.node.PeerNode`, like traversal.py: these methods
use the node's state (peers, links, store, subscribers) and live here so
that each file has one job: node.py runs the socket, the timers and the
links, traversal.py finds paths, this file moves messages.  Everything a
flush stores is one SQLite commit; what the page and the other peer hear
of it (answers, events, acks, message frames) goes only after that commit.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .api import JSON, MAX_TEXT_BYTES, ApiError
from .link import LinkState, PeerLink
from .store import NewMessage, Status
from .wire import FrameError, require

if TYPE_CHECKING:
    from .node import PeerNode, PeerState

    _Base = PeerNode
else:
    _Base = object

logger = logging.getLogger("webpeer")


class MessagingMixin(_Base):
    """Message flow for :class:`webpeer.node.PeerNode` (see the module docstring)."""

    async def send_message(self, to: int, text: str) -> JSON:
        return await self.submit_message(to, text)

    def submit_message(
        self, to: int, text: str, *, answered_on: asyncio.Queue[JSON] | None = None
    ) -> asyncio.Future[JSON]:
        """Check a message and queue it for the next flush, which stores every
        message submitted in this loop turn in one commit and then hands them
        to their links.  The future gets the stored message after that commit
        (so an answer to the page never gets ahead of the disk); bad input
        raises ApiError here.  ``answered_on``: the subscriber that gets the
        message as its answer, so not as a "message" event too."""
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "message text is empty")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as error:  # a lone surrogate: SQLite could not store it
            raise ApiError(400, f"message text is not valid Unicode: {error.reason}") from None
        if size > MAX_TEXT_BYTES:
            raise ApiError(413, f"message text is longer than {MAX_TEXT_BYTES} bytes")
        my_id = self.registration.peer_id
        if my_id is None:
            raise ApiError(503, "not registered with the rendezvous server yet")
        if not isinstance(to, int) or isinstance(to, bool) or not 0 < to < 2**32:
            raise ApiError(400, "'to' must be a peer id")
        if to == my_id:
            raise ApiError(400, "cannot send a message to yourself")
        now = self.clock()
        message: JSON = {"id": self._new_message_id(now), "peer": to, "from": my_id, "to": to, "text": text,
                         "status": str(Status.QUEUED), "time": now, "error": None}
        future: asyncio.Future[JSON] = asyncio.get_running_loop().create_future()
        self._outbox.append((message, future, answered_on))
        self._schedule_flush()
        return future

    def _new_message_id(self, now: float) -> str:
        """32 hex digits: the time in microseconds, 32 random bits chosen at
        start-up, then a counter (so ids never repeat).  Ids that grow with
        time go to the end of the store's id index (ours and, prefixed by our
        id, the receiver's); random ones would dirty a different index page
        per message, and each commit would write all of those pages."""
        time_us = max(0, int(now * 1_000_000)) & 0xFF_FFFF_FFFF_FFFF
        return f"{time_us:014x}{self._id_prefix}{next(self._id_counter) & 0xFF_FFFF_FFFF:010x}"

    async def retry(self, message_id: str) -> JSON:
        message = self.store.get_message(message_id)
        if message is None:
            raise ApiError(404, "no such message")
        if message["status"] != Status.FAILED:
            raise ApiError(409, f"message is {message['status']}, not failed")
        peer = self.peer_state(message["to"])
        self._set_status(message_id, Status.SENDING if peer.online else Status.QUEUED)
        peer.last_error = None
        self._pump_peer(peer)
        self._flush()
        return self.store.get_message(message_id) or message

    def mark_read(self, peer_id: int) -> None:
        if self.store.mark_read(peer_id):
            self._publish_peers()

    def _set_status(self, message_id: str, status: Status, error: str | None = None) -> None:
        if self.store.set_status(message_id, status, error, now=self.clock()):
            self._publish({"type": "status", "id": message_id, "status": str(status), "error": error})

    def _store_outbox(self, outbox: list[tuple[JSON, asyncio.Future[JSON], asyncio.Queue[JSON] | None]]) -> None:
        """Inside the flush's transaction: store the submitted messages.  One
        whose peer has a ready link is stored as sent, and its frame goes on
        that link once the commit is done; the others are queued or sending,
        and their peers start connecting."""
        waiting: dict[int, PeerState] = {}
        for message, _, answered_on in outbox:
            to = message["to"]
            peer = self.peer_state(to)
            link = peer.link
            if link is not None and link.state is LinkState.READY:
                status = Status.SENT
                self._after_commit.setdefault(link, []).append(
                    {"t": "msg", "id": message["id"], "text": message["text"], "time": message["time"]})
            else:
                status = Status.SENDING if peer.online else Status.QUEUED
                waiting[to] = peer
            message["status"] = str(status)
            self._publish({"type": "message", "message": message}, skip=answered_on)
        self.store.add_messages([NewMessage(m["id"], m["from"], m["to"], m["text"], m["status"], m["time"])
                                 for m, _, _ in outbox])
        for peer in waiting.values():
            self._pump_peer(peer)

    def _store_incoming(self, now: float) -> None:
        """Inside the flush's transaction: store the messages and receipts
        that the links' frames brought, hold the acks for those messages
        until the commit, and tell the page (also after it) what is new."""
        incoming, self._incoming = self._incoming, []
        if incoming:
            fresh = self.store.add_messages(incoming)
            for message in incoming:
                if message.message_id in fresh:
                    fresh.discard(message.message_id)  # a repeat in the same flush: once
                    # The page counts unread messages from these events; a full
                    # peer list (with its unread query) per message would cost
                    # more than the message itself.  (The row as get_message reads it.)
                    self._publish({"type": "message", "message": {
                        "id": message.message_id, "peer": message.sender, "from": message.sender,
                        "to": message.recipient, "text": message.text, "status": str(Status.RECEIVED),
                        "time": message.time, "error": None}})
        acks, self._acks = self._acks, {}
        for link, frames in acks.items():
            self._after_commit.setdefault(link, []).extend(frames)
        receipts, self._receipts = self._receipts, {}
        for peer_id, message_ids in receipts.items():
            valid = [m for m in message_ids if m and len(m) <= 64 and m.isascii()]  # ours are hex
            for message_id in self.store.mark_delivered(valid, peer_id, now=now):
                self._publish({"type": "status", "id": message_id, "status": str(Status.DELIVERED), "error": None})

    def _on_frame(self, link: PeerLink, frame: JSON, now: float) -> None:
        peer_id = link.peer_id
        assert peer_id is not None
        kind = frame["t"]
        try:
            if kind == "msg":
                message_id = require(frame, "id", str)
                text = require(frame, "text", str)
                sent_at = frame.get("time")
                try:
                    size = len(text.encode("utf-8"))
                    message_id.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate: SQLite could not store it
                    raise FrameError("message is not valid Unicode") from None
                if len(message_id) > 64 or size > MAX_TEXT_BYTES:
                    raise FrameError("message too long")
                when = float(sent_at) if isinstance(sent_at, (int, float)) and not isinstance(sent_at, bool) else now
                # Ids are the sender's: scope them by sender.  Stored with the
                # others of this flush, before its commit.
                self._incoming.append(NewMessage(
                    f"{peer_id}:{message_id}", peer_id, self.registration.peer_id or 0, text, Status.RECEIVED, when))
                # Acknowledge, also a duplicate (its ack was lost), once it is
                # stored; the ack leaves after the commit.
                self._acks.setdefault(link, []).append({"t": "ack", "id": message_id})
            elif kind == "birthday":
                self._on_birthday_frame(link, frame, now)
            elif kind == "nat":
                self._on_nat_frame(link, frame, now)
            elif kind == "ack":
                message_id = require(frame, "id", str)
                # Applied with the others of this flush, before its commit; only a
                # receipt from the peer the message went to counts.
                self._receipts.setdefault(peer_id, []).append(message_id)
            else:
                self.stats["unknown_frames"] += 1
        except FrameError as error:
            link.close(f"bad frame: {error}")

    def _undelivered(self, peer_id: int) -> list[JSON]:
        """Outgoing messages to ``peer_id`` with no receipt yet, oldest first."""
        me = self.registration.peer_id
        return [
            m for m in self.store.conversation(peer_id, limit=10_000)
            if m["from"] == me and m["status"] in (Status.QUEUED, Status.SENDING, Status.SENT)
        ]

    def _pump_peer(self, peer: PeerState, *, resend_sent: bool = False, force_connect: bool = False) -> None:
        """Make progress on a peer's outgoing messages: connect, or send.
        ``resend_sent``: a new link, so messages already sent on a previous one
        without a receipt go again."""
        pending = self.store.pending_outgoing(peer.peer_id)
        if resend_sent or force_connect:
            pending = self._undelivered(peer.peer_id)
        if not pending:
            return
        link = peer.link
        if link is not None and link.state is LinkState.READY:
            for message in pending:
                if message["status"] != Status.SENT or resend_sent:
                    self._send_on(link, message)
            return
        if not peer.online:
            for message in pending:
                if message["status"] == Status.SENDING:
                    self._set_status(message["id"], Status.QUEUED)
            return
        for message in pending:
            if message["status"] == Status.QUEUED:
                self._set_status(message["id"], Status.SENDING)
        if peer.connecting_since is None and (link is None or link.state is LinkState.CLOSED):
            if self.registration.connect(peer.peer_id, self.clock()):
                peer.connecting_since = self.clock()
                self._publish({"type": "connection", "peer": peer.peer_id, "connection": peer.connection()})

    def _send_on(self, link: PeerLink, message: JSON) -> None:
        link.send_frame({"t": "msg", "id": message["id"], "text": message["text"], "time": message["time"]}, self.clock())
        if message["status"] != Status.SENT:
            self._set_status(message["id"], Status.SENT)

    async def _expire_queued_periodically(self) -> None:
        while True:
            await asyncio.sleep(60)
            for message_id in self.store.expire_queued(self.clock() - self.config.retention, now=self.clock()):
                self._publish({"type": "status", "id": message_id, "status": "failed", "error": "peer stayed offline"})
