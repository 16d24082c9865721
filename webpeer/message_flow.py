"""How messages move (pure): the page's sends, stored and handed to links;
incoming messages and receipts, stored; the queue of messages for peers
that are offline (docs/PROTOCOL.md 11.2).

:class:`MessageFlow` owns what is in flight within one flush: the messages
the links brought, the acks owed for them, the receipts, and the frames that
may leave only after the flush's commit.  It reads and writes the history
through :class:`History` (the SQLite store in the real peer) inside the
transaction the node opens around a flush, and reaches the rest of the
engine only through :class:`FlowContext`.  Everything a flush stores is one
commit; what the page and the other peer hear of it (answers, events, acks,
message frames) goes only after that commit.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import validate
from .api import ApiError
from .events import MessageAdded, PageEvent, ReadUpTo, StatusChanged
from .link import PeerLink
from .peer_session import PeerSession
from .quota import InboundQuota, QuotaConfig, reason_text
from .store import KEY_CHANGE_HIDDEN, KEY_CHANGE_NONE, NewMessage, Status
from .wire import Frame, FrameError, require

logger = logging.getLogger("webpeer")

MAX_SANE_TIME = 1e11  # unix seconds, about the year 5138: anything past is not a time
# A message sent on a ready link whose receipt has not come this long after
# goes again on that link (the receiver stores by id: a repeat is harmless),
# waiting twice as long each time, up to RECEIPT_WAIT_MAX.  QUIC delivered the
# bytes, but the receiver may have failed to store them (a full disk).
RECEIPT_WAIT = 2.0
RECEIPT_WAIT_MAX = 8.0
# The error of a message the user cancelled (a final failure: nothing sends
# a failed message by itself).
CANCELLED = "cancelled"

JSON = dict[str, Any]


def unknown_peer(peer_id: int) -> str:
    """What the page is told about an id the server never assigned."""
    return f"unknown peer {peer_id}"


class History(Protocol):
    """What the message flow needs of the history store."""

    def add_messages(self, messages: Sequence[NewMessage]) -> set[str]: ...

    def set_status(self, message_id: str, status: str, error: str | None = None, *, now: float) -> bool: ...

    def mark_delivered(self, message_ids: Sequence[str], recipient: int, *, now: float) -> list[str]: ...

    def get_message(self, message_id: str) -> dict[str, Any] | None: ...

    def conversation(self, peer: int, limit: int = 500) -> list[dict[str, Any]]: ...

    def pending_outgoing(self, peer: int | None = None) -> list[dict[str, Any]]: ...

    def expire_queued(self, older_than: float, *, now: float | None = None) -> list[str]: ...

    def held_outgoing(self, peer: int) -> list[dict[str, Any]]: ...

    def stored_bytes_from(self, sender: int) -> int: ...

    def latest_received(self, peer: int) -> str | None: ...

    def mark_seen_by(self, peer: int, message_id: str, *, now: float) -> float | None: ...


class FlowContext(Protocol):
    """What the message flow may ask of the engine."""

    @property
    def my_id(self) -> int | None: ...

    def session(self, peer_id: int) -> PeerSession: ...

    def connect(self, session: PeerSession, now: float) -> bool:
        """Ask the rendezvous to introduce us (unless an attempt is under
        way); False if no attempt is under way (we are not registered)."""

    def publish(self, event: PageEvent) -> None: ...

    # The key-change gate (webpeer/trust.py decides).
    def send_gate(self, peer_id: int) -> tuple[Status, str] | None:
        """The status (held or failed) and reason that the peer's outgoing
        messages take instead of going out; None: they may go."""

    def hides_from(self, link: PeerLink) -> bool:
        """Messages over ``link`` are stored hidden (a key not accepted yet)."""


@dataclass(slots=True)
class Draft:
    """A message the page submitted, waiting for the next flush to store it.
    ``origin``: who submitted it (it gets the message as its answer, not as
    an event); opaque here."""

    message: JSON
    origin: object | None = None


class MessageFlow:
    def __init__(
        self, context: FlowContext, history: History, stats: Counter[str], quota: QuotaConfig | None = None
    ) -> None:
        self.context = context
        self.history = history
        self.stats = stats
        self.quota = InboundQuota(quota or QuotaConfig(), history)
        self._over_quota: set[int] = set()  # senders refused since their last stored message (logged once)
        self._id_prefix = f"{secrets.randbits(32):08x}"
        self._id_counter = itertools.count()
        self._incoming: list[NewMessage] = []  # what the links brought this flush
        self._sizes: list[int] = []  # their texts' UTF-8 bytes, as the quota counted them
        self._acks: dict[PeerLink, list[Frame]] = {}  # owed for those messages once stored
        self._receipts: dict[int, list[str]] = {}  # peer id -> our message ids it acknowledged
        self._refusals: dict[int, list[tuple[str, object]]] = {}  # peer id -> (our message id, its reason code)
        self._seen: dict[int, list[str]] = {}  # peer id -> our message ids it says it has read
        # Read receipts we owe a peer that had no ready link when the user read
        # its messages: peer id -> its latest message id (sent on the next link;
        # kept in memory only: a restart forgets them, the next read sends anew).
        self._reads_owed: dict[int, str] = {}
        # Frames that may leave only once the flush's commit is done: acks for
        # stored messages, and new messages stored as sent.
        self._after_commit: dict[PeerLink, list[Frame]] = {}
        # Our messages sent without a receipt yet: id -> (peer id, sends, when
        # to send again), and the same deadlines as a heap (stale entries are
        # skipped when they come up).
        self._unacked: dict[str, tuple[int, int, float]] = {}
        self._receipt_deadlines: list[tuple[float, str]] = []

    # ------------------------------------------------------------ the page's side

    def draft(self, to: int, text: str, now: float, origin: object | None = None) -> Draft:
        """A checked message (text and id already validated by the caller),
        to be stored by the next :meth:`store_drafts`."""
        my_id = self.context.my_id
        if my_id is None:
            # Our id (the sender of every message) comes from our first
            # registration; once known it is kept, and sends are queued.
            raise ApiError(
                503, "this peer has never registered with its rendezvous server, so it has no id to send from yet"
            )
        if to == my_id:
            raise ApiError(400, "cannot send a message to yourself")
        message: JSON = {
            "id": self.new_message_id(now),
            "peer": to,
            "from": my_id,
            "to": to,
            "text": text,
            "status": str(Status.QUEUED),
            "time": now,
            "error": None,
            "key_changed": False,
        }
        return Draft(message, origin)

    def new_message_id(self, now: float) -> str:
        """32 hex digits: the time in microseconds, 32 random bits chosen at
        start-up, then a counter (so ids never repeat).  Ids that grow with
        time go to the end of the store's id index (ours and, prefixed by our
        id, the receiver's); random ones would dirty a different index page
        per message, and each commit would write all of those pages."""
        time_us = max(0, int(now * 1_000_000)) & 0xFF_FFFF_FFFF_FFFF
        return f"{time_us:014x}{self._id_prefix}{next(self._id_counter) & 0xFF_FFFF_FFFF:010x}"

    def retry(self, message_id: str, now: float) -> None:
        message = self.history.get_message(message_id)
        if message is None:
            raise ApiError(404, "no such message")
        if message["status"] != Status.FAILED:
            raise ApiError(409, f"message is {message['status']}, not failed")
        session = self.context.session(message["to"])
        self.set_status(message_id, Status.SENDING if session.online else Status.QUEUED, now)
        session.last_error = None
        self.pump(session, now)

    def cancel(self, message_id: str, now: float) -> None:
        """The user takes back a message not yet handed to a link: ``queued``
        or ``sending`` (a ``sent`` one may have arrived).  It becomes
        ``failed`` (:data:`CANCELLED`), which nothing sends by itself."""
        message = self.history.get_message(message_id)
        if message is None or message["status"] == Status.RECEIVED:
            raise ApiError(404, "no such message")
        if message["status"] not in (Status.QUEUED, Status.SENDING):
            raise ApiError(409, f"message is {message['status']}: only a queued or sending one can be cancelled")
        # Conditional on its status still being queued or sending (the store's table).
        if not self.history.set_status(message_id, Status.FAILED, CANCELLED, now=now):
            raise ApiError(409, "message was sent meanwhile: it can no longer be cancelled")
        self.context.publish(StatusChanged(message_id, str(Status.FAILED), CANCELLED))

    def fail_unknown_peer(self, peer_id: int, now: float) -> None:
        """The server never assigned ``peer_id``: what waits for it can never go."""
        for message in self.history.pending_outgoing(peer_id):
            self.set_status(message["id"], Status.FAILED, now, unknown_peer(peer_id))

    def set_status(self, message_id: str, status: Status, now: float, error: str | None = None) -> None:
        if self.history.set_status(message_id, status, error, now=now):
            self.context.publish(StatusChanged(message_id, str(status), error))

    def store_drafts(self, drafts: list[Draft], now: float) -> None:
        """Inside the flush's transaction: store the submitted messages.  One
        whose peer has a ready link is stored as sent, and its frame goes on
        that link once the commit is done; the others are queued or sending,
        and their peers start connecting."""
        if not drafts:
            return
        waiting: dict[int, PeerSession] = {}
        for draft in drafts:
            message = draft.message
            session = self.context.session(message["to"])
            link = session.ready_link
            if (gate := self.context.send_gate(session.peer_id)) is not None:
                # Key change pending (trust.py): stored held, with the reason; nothing goes.
                status, message["error"] = gate
            elif link is not None:
                status = Status.SENT
                self._after_commit.setdefault(link, []).append(
                    {"t": "msg", "id": message["id"], "text": message["text"], "time": message["time"]}
                )
                self._await_receipt(message["id"], session.peer_id, now)
            else:
                status = Status.SENDING if session.reachable else Status.QUEUED
                waiting[session.peer_id] = session
                if session.unreachable and session.retry_at is None:
                    session.retry_at = now + session.retry_delay  # it went quiet: keep trying, backing off
            message["status"] = str(status)
            self.context.publish(MessageAdded(message, draft.origin))
        self.history.add_messages(
            [
                NewMessage(m["id"], m["from"], m["to"], m["text"], m["status"], m["time"], error=m["error"])
                for m in (d.message for d in drafts)
            ]
        )
        for session in waiting.values():
            self.pump(session, now)

    def expire(self, older_than: float, now: float) -> None:
        """Queued messages for a peer that stayed offline too long fail."""
        for message_id in self.history.expire_queued(older_than, now=now):
            self.context.publish(StatusChanged(message_id, str(Status.FAILED), "peer stayed offline"))

    # ------------------------------------------------------------ the links' side

    def on_frame(self, link: PeerLink, frame: Frame, now: float) -> bool:
        """A message or receipt frame from a peer; False if it is neither.
        Raises FrameError for a malformed one."""
        peer_id = link.peer_id
        assert peer_id is not None
        kind = frame["t"]
        if kind == "msg":
            try:
                message_id = validate.message_id(frame.get("id"), max_chars=validate.MAX_FRAME_MESSAGE_ID_CHARS)
                text = validate.message_text(frame.get("text"))
            except validate.InvalidValue as error:
                raise FrameError(f"frame 'msg': {error.message}") from None
            sent_at = frame.get("time")
            # The sender's clock, shown beside the message: a number, and a
            # sane one (JSON from a peer may carry Infinity or NaN), else ours.
            when = now
            if isinstance(sent_at, (int, float)) and not isinstance(sent_at, bool) and abs(sent_at) < MAX_SANE_TIME:
                when = float(sent_at)
            if (refusal := self._over_quota_refusal(link, peer_id, message_id, text, now)) is not None:
                self._acks.setdefault(link, []).append(refusal)
                return True
            # Ids are the sender's: scope them by sender.  Stored with the
            # others of this flush, before its commit.
            hidden = KEY_CHANGE_HIDDEN if self.context.hides_from(link) else KEY_CHANGE_NONE
            self._incoming.append(
                NewMessage(
                    f"{peer_id}:{message_id}", peer_id, self.context.my_id or 0, text, Status.RECEIVED, when, hidden
                )
            )
            # Acknowledge, also a duplicate (its ack was lost), once it is
            # stored; the ack leaves after the commit.
            self._acks.setdefault(link, []).append({"t": "ack", "id": message_id})
            return True
        if kind == "ack":
            message_id = require(frame, "id", str)
            # Applied with the others of this flush, before its commit; only a
            # receipt from the peer the message went to counts.
            self._receipts.setdefault(peer_id, []).append(message_id)
            return True
        if kind == "refused":
            # The peer would not store one of ours (its quota, webpeer/quota.py):
            # applied with the receipts; only the code of its reason is used.
            message_id = require(frame, "id", str)
            self._refusals.setdefault(peer_id, []).append((message_id, frame.get("reason")))
            return True
        if kind == "read":
            # The peer has read our messages up to this one (docs/PROTOCOL.md).
            try:
                seen = validate.message_id(frame.get("id"), max_chars=validate.MAX_FRAME_MESSAGE_ID_CHARS)
            except validate.InvalidValue as error:
                raise FrameError(f"frame 'read': {error.message}") from None
            self._seen.setdefault(peer_id, []).append(seen)
            return True
        return False

    def take_mailed(self, sender: int, message_id: str, text: str, when: float, now: float, *, hidden: bool) -> bool:
        """A message fetched from our mailbox (webpeer/mailbox_flow.py), opened
        and checked: stored with this flush's incoming messages, as if its
        sender's link had brought it (so a copy that also comes directly is
        stored once).  False if the sender is over its quota (not stored)."""
        size = len(text.encode())
        if self.quota.admit(sender, size, now) is not None:
            if self.history.get_message(f"{sender}:{message_id}") is not None:
                return True  # a repeat of one stored: nothing to store
            self.stats["mail_refused_quota"] += 1
            return False
        self._sizes.append(size)
        flag = KEY_CHANGE_HIDDEN if hidden else KEY_CHANGE_NONE
        self._incoming.append(
            NewMessage(f"{sender}:{message_id}", sender, self.context.my_id or 0, text, Status.RECEIVED, when, flag)
        )
        return True

    def _over_quota_refusal(self, link: PeerLink, peer_id: int, message_id: str, text: str, now: float) -> Frame | None:
        """The ``refused`` frame for a message its sender may not make us
        store (webpeer/quota.py), or None: it is stored.  A repeat of one
        already stored is acknowledged again, never refused."""
        size = len(text.encode())
        reason = self.quota.admit(peer_id, size, now)
        if reason is None:
            self._over_quota.discard(peer_id)
            self._sizes.append(size)
            return None
        if self.history.get_message(f"{peer_id}:{message_id}") is not None:
            return {"t": "ack", "id": message_id}
        self.stats[f"messages_refused_{reason}"] += 1
        if peer_id not in self._over_quota:
            if len(self._over_quota) >= 4096:
                self._over_quota.clear()  # only the log's once-per-streak depends on it
            self._over_quota.add(peer_id)
            logger.warning("peer %d is over its %s quota: its messages are refused until it is not", peer_id, reason)
        return {"t": "refused", "id": message_id, "reason": reason}

    def store_incoming(self, now: float) -> None:
        """Inside the flush's transaction: store the messages and receipts
        that the links' frames brought, hold the acks for those messages
        until the commit, and tell the page (also after it) what is new."""
        incoming, self._incoming = self._incoming, []
        sizes, self._sizes = self._sizes, []
        if incoming:
            fresh = self.history.add_messages(incoming)
            for message, size in zip(incoming, sizes, strict=True):
                if message.message_id not in fresh:
                    self.quota.refund(message.sender, size)  # a repeat: held once
            for message in incoming:
                if message.message_id in fresh and message.key_change == KEY_CHANGE_HIDDEN:
                    fresh.discard(message.message_id)  # shown once its key is accepted (trust.py)
                elif message.message_id in fresh:
                    fresh.discard(message.message_id)  # a repeat in the same flush: once
                    # The page counts unread messages from these events; a full
                    # peer list (with its unread query) per message would cost
                    # more than the message itself.  (The row as get_message reads it.)
                    self.context.publish(
                        MessageAdded(
                            {
                                "id": message.message_id,
                                "peer": message.sender,
                                "from": message.sender,
                                "to": message.recipient,
                                "text": message.text,
                                "status": str(Status.RECEIVED),
                                "time": message.time,
                                "error": None,
                                "key_changed": False,
                            }
                        )
                    )
        acks, self._acks = self._acks, {}
        for link, frames in acks.items():
            self._after_commit.setdefault(link, []).extend(frames)
        receipts, self._receipts = self._receipts, {}
        for peer_id, message_ids in receipts.items():
            valid = [m for m in message_ids if m and len(m) <= validate.MAX_FRAME_MESSAGE_ID_CHARS and m.isascii()]
            for message_id in self.history.mark_delivered(valid, peer_id, now=now):
                self.context.publish(StatusChanged(message_id, str(Status.DELIVERED)))
            for message_id in valid:
                if (entry := self._unacked.get(message_id)) is not None and entry[0] == peer_id:
                    del self._unacked[message_id]
        refusals, self._refusals = self._refusals, {}
        for peer_id, refused in refusals.items():
            for message_id, reason in refused:
                self._refused(peer_id, message_id, reason, now)
        seen, self._seen = self._seen, {}
        for peer_id, message_ids in seen.items():
            for message_id in message_ids:
                if (when := self.history.mark_seen_by(peer_id, message_id, now=now)) is not None:
                    self.context.publish(ReadUpTo(peer_id, message_id, when))

    def _refused(self, peer_id: int, message_id: str, reason: object, now: float) -> None:
        """Our message ``message_id`` to ``peer_id`` was refused by it: it
        fails, with the reason (the user may retry it)."""
        if not (message_id and len(message_id) <= validate.MAX_FRAME_MESSAGE_ID_CHARS and message_id.isascii()):
            return
        message = self.history.get_message(message_id)
        if message is None or message["to"] != peer_id or message["from"] != self.context.my_id:
            return  # not one of ours to that peer: nothing to say
        if message["status"] not in (Status.SENDING, Status.SENT):
            return
        self.stats["messages_refused_by_peer"] += 1
        text = reason_text(reason)
        logger.info("peer %d refused message %s: %s", peer_id, message_id, text)
        self.set_status(message_id, Status.FAILED, now, text)
        if (entry := self._unacked.get(message_id)) is not None and entry[0] == peer_id:
            del self._unacked[message_id]

    def take_after_commit(self) -> dict[PeerLink, list[Frame]]:
        """The frames the commit released, per link."""
        after_commit, self._after_commit = self._after_commit, {}
        return after_commit

    def rolled_back(self) -> None:
        """The flush's commit failed: nothing it stored may be acknowledged
        (the senders will send it again)."""
        self._incoming, self._acks, self._receipts, self._after_commit = [], {}, {}, {}
        self._sizes, self._refusals = [], {}
        self.quota.forget()  # it counted what was not stored
        self._seen = {}

    # ------------------------------------------------------------ read receipts we send

    def send_read(self, session: PeerSession, now: float) -> None:
        """The user has read the peer's messages: tell it which is the latest
        (on its ready link, else on the next one).  The stored id is
        ``"<peer>:<its id>"``; the peer knows its message by its own id."""
        latest = self.history.latest_received(session.peer_id)
        if latest is None:
            return
        self._reads_owed[session.peer_id] = latest.partition(":")[2]
        self.send_owed_read(session, now)

    def send_owed_read(self, session: PeerSession, now: float) -> None:
        """A ready link to the peer: the read receipt it is owed, if any, goes."""
        link = session.ready_link
        if link is not None and (message_id := self._reads_owed.pop(session.peer_id, None)):
            link.send_frame({"t": "read", "id": message_id}, now)

    # ------------------------------------------------------------ outgoing progress

    def undelivered(self, peer_id: int) -> list[JSON]:
        """Outgoing messages to ``peer_id`` with no receipt yet, oldest first."""
        me = self.context.my_id
        return [
            m
            for m in self.history.conversation(peer_id, limit=10_000)
            if m["from"] == me and m["status"] in (Status.QUEUED, Status.SENDING, Status.SENT, Status.STORED)
        ]

    def pump(
        self,
        session: PeerSession,
        now: float,
        *,
        resend_sent: bool = False,
        force_connect: bool = False,
        retry: bool = False,
    ) -> None:
        """Make progress on a peer's outgoing messages: connect, or send.
        ``resend_sent``: a new link, so messages already sent on a previous one
        without a receipt go again.  ``retry``: try to connect even though the
        peer did not answer last time (its retry time has come)."""
        if (gate := self.context.send_gate(session.peer_id)) is not None:
            self._gate(session.peer_id, *gate, now)
            return
        pending = self.history.pending_outgoing(session.peer_id)
        if resend_sent or force_connect:
            pending = self.undelivered(session.peer_id)
        if not pending:
            return
        link = session.ready_link
        if link is not None:
            for message in pending:
                if message["status"] != Status.SENT or resend_sent:
                    self._send_on(link, message, now)
            return
        if not session.online or (session.unreachable and not retry):
            self.requeue(session, now)
            return
        for message in pending:
            if message["status"] == Status.QUEUED:
                self.set_status(message["id"], Status.SENDING, now)
        if session.live_link is None and not self.context.connect(session, now):
            self.requeue(session, now)  # we are not registered: they go when we are

    def has_pending(self) -> set[int]:
        """The peers with outgoing messages not yet sent."""
        return {message["to"] for message in self.history.pending_outgoing()}

    def went_offline(self, session: PeerSession, now: float) -> None:
        """The registry no longer lists the peer: what was being sent waits."""
        if session.ready_link is None:
            self.requeue(session, now)

    def requeue(self, session: PeerSession, now: float) -> None:
        """No attempt is under way for the peer: what was being sent waits,
        ``queued``, for the next one (it is never ``failed`` for that)."""
        for message in self.history.pending_outgoing(session.peer_id):
            if message["status"] == Status.SENDING:
                self.set_status(message["id"], Status.QUEUED, now)

    # ------------------------------------------------------------ receipts that do not come

    def receipt_deadline(self) -> float | None:
        heap = self._receipt_deadlines
        while heap and self._unacked.get(heap[0][1], (0, 0, -1.0))[2] != heap[0][0]:
            heapq.heappop(heap)  # answered, or sent again since
        return heap[0][0] if heap else None

    def resend_unreceipted(self, now: float) -> None:
        """Messages whose receipt is overdue go again on their peer's ready
        link (a link that closed sends them all again when the next opens)."""
        due: dict[int, list[str]] = {}
        while (deadline := self.receipt_deadline()) is not None and deadline <= now:
            _, message_id = heapq.heappop(self._receipt_deadlines)
            due.setdefault(self._unacked[message_id][0], []).append(message_id)
        for peer_id, message_ids in due.items():
            link = self.context.session(peer_id).ready_link
            for message_id in message_ids:
                message = self.history.get_message(message_id)
                if link is None or message is None or message["status"] != Status.SENT:
                    self._unacked.pop(message_id, None)
                    continue
                self.stats["messages_resent"] += 1
                self._send_on(link, message, now)

    def _await_receipt(self, message_id: str, peer_id: int, now: float) -> None:
        sends = self._unacked[message_id][1] + 1 if message_id in self._unacked else 0
        deadline = now + min(RECEIPT_WAIT * 2**sends, RECEIPT_WAIT_MAX)
        self._unacked[message_id] = (peer_id, sends, deadline)
        heapq.heappush(self._receipt_deadlines, (deadline, message_id))

    def _send_on(self, link: PeerLink, message: JSON, now: float) -> None:
        link.send_frame({"t": "msg", "id": message["id"], "text": message["text"], "time": message["time"]}, now)
        assert link.peer_id is not None
        self._await_receipt(message["id"], link.peer_id, now)
        if message["status"] not in (Status.SENT, Status.STORED):  # a stored one stays so until its ack
            self.set_status(message["id"], Status.SENT, now)

    # ------------------------------------------------------------ the key-change gate (trust.py decides)

    def _gate(self, peer_id: int, status: Status, reason: str, now: float) -> None:
        """Nothing goes to the peer: what waits to go is held (or failed)."""
        for message in self.undelivered(peer_id) + self.history.held_outgoing(peer_id):
            self.set_status(message["id"], status, now, reason)

    def release_held(self, session: PeerSession, now: float) -> None:
        """The peer's key is trusted again: its held messages go on."""
        for message in self.history.held_outgoing(session.peer_id):
            self.set_status(message["id"], Status.SENDING if session.reachable else Status.QUEUED, now)
        self.pump(session, now, force_connect=True)
