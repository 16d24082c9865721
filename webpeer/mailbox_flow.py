"""The offline mailbox, the peer's side (pure; docs/PROTOCOL.md 11.9).

Sending: a message that has waited ``queued`` for ``after`` seconds for a
peer the server says is offline, whose key we hold, is sealed (at the next
sweep, without that wait, when the peer had already been offline for
``after`` seconds when it was written: the grace is for a peer that is
restarting, not for one that is away)
(mailbox_seal.py) and DEPOSITed at the rendezvous; its answer makes the
message ``stored`` (or ``failed``, with the server's reason, when a quota or
a never-assigned id refuses it; anything else leaves it queued, tried again
later).  A stored message still goes directly once the peer is back (the
flow sends it on the next link like a ``sent`` one), and the receiver's
``ack`` makes it ``delivered``.

Receiving: after each registration (and every :data:`MAIL_POLL` while
registered) we FETCH; each message is opened, checked and handed to the
message flow as if a link had brought it, and the next FETCH, which
deletes it at the server, goes only after the commit that stored it.

:class:`MailboxFlow` reaches the engine only through :class:`MailboxContext`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from rendezvous.mailbox import MAILBOX_FULL, SENDER_QUOTA

from . import validate
from .mailbox_seal import SealError, mail_id, open_sealed, seal, x25519_private
from .message_flow import MAX_SANE_TIME
from .peer_session import PeerSession
from .registration import MailDeposited, MailFetched
from .store import Status

logger = logging.getLogger("webpeer")

MAIL_POLL = 60.0  # FETCH again this often while registered (the server does not push)
# Look for messages to deposit this often while registered (one indexed
# query): a sixth of --mailbox-after, 1 to 5 s (an idle peer wakes for it).
SWEEP_MIN, SWEEP_MAX = 1.0, 5.0
RETRY_AFTER = 30.0  # a DEPOSIT that got no answer (or a 503) is tried again after this
DEFAULT_AFTER = 30.0  # a message waits queued this long before it is deposited

# What the page shows for a refused DEPOSIT, by the server's 486 reason.
REFUSALS = {
    MAILBOX_FULL: "the peer's mailbox on the server is full",
    SENDER_QUOTA: "your share of the server's mailbox is used up",
}


class MailboxContext(Protocol):
    """What the mailbox may ask of the engine."""

    @property
    def my_id(self) -> int | None: ...

    @property
    def signing_key(self) -> Ed25519PrivateKey: ...

    def session(self, peer_id: int) -> PeerSession: ...

    def trusted_key(self, peer_id: int) -> bytes | None:
        """The key we trust for ``peer_id`` (None: never met, or a change is pending)."""

    def send_gate(self, peer_id: int) -> tuple[Status, str] | None: ...

    def mail_deposit(self, peer_id: int, mail: bytes, sealed: bytes, now: float) -> bool: ...

    def mail_fetch(self, delete: bytes | None, now: float) -> bool: ...

    def take_mailed(
        self, sender: int, message_id: str, text: str, when: float, now: float, *, hidden: bool
    ) -> bool: ...

    def set_message_status(self, message_id: str, status: Status, now: float, error: str | None = None) -> None: ...


class Outbox(Protocol):
    def pending_outgoing(self, peer: int | None = None) -> list[dict[str, Any]]: ...

    def conversation(self, peer: int, limit: int = 500) -> list[dict[str, Any]]: ...


class MailboxFlow:
    def __init__(
        self, context: MailboxContext, history: Outbox, stats: Counter[str], *, enabled: bool, after: float
    ) -> None:
        self.context = context
        self.history = history
        self.stats = stats
        self.enabled = enabled
        self.after = after
        self.sweep_interval = min(SWEEP_MAX, max(SWEEP_MIN, after / 6))
        self._served = True  # False once the server said it has no mailbox (until we register again)
        self._in_flight: dict[bytes, str] = {}  # MAIL-ID deposited -> our message id
        self._not_before: dict[str, float] = {}  # message id -> when to try depositing it again
        self._unmailable: set[str] = set()  # too long to seal: they wait queued
        # Peers that went offline (or whose state we do not know yet, after
        # registering), and when to look at what we sent them: a message
        # handed to a link that died with its peer is ``sent`` with no receipt,
        # and is left in the mailbox too.  Only then, not at every sweep: that
        # look reads the conversation.
        self._recheck: dict[int, float] = {}
        self._offline_since: dict[int, float] = {}  # when the server said each went offline
        self._next_sweep: float | None = None
        self._next_poll: float | None = None
        self._sweep_due = False
        self._poll_due = False
        self._fetching = False
        self._delete_after_commit: bytes | None = None
        self._fetch_after_commit = False
        self._x_private: X25519PrivateKey | None = None

    # ------------------------------------------------------------ the engine's calls

    def peer_offline(self, peer_id: int, now: float) -> None:
        """The server says ``peer_id`` went offline."""
        if self.enabled:
            self._recheck[peer_id] = now + self.after
            self._offline_since[peer_id] = now

    def registered(self, now: float, peers: list[int]) -> None:
        """Registered; ``peers``: every peer we know (their presence comes with our WATCH)."""
        if not self.enabled:
            return
        for peer_id in peers:
            self._recheck.setdefault(peer_id, now + self.after + self.sweep_interval)
        self._offline_since.clear()  # what we heard before this registration may be stale
        self._served = True
        self._next_sweep = now + self.sweep_interval
        self._next_poll = now + MAIL_POLL
        self._in_flight.clear()  # answers of the old session will not come
        self._fetching = False
        self._poll_due = True
        self._sweep_due = True

    def lost(self) -> None:
        self._next_sweep = self._next_poll = None
        self._sweep_due = self._poll_due = False

    def deadline(self) -> float | None:
        times = [t for t in (self._next_sweep, self._next_poll) if t is not None]
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        if self._next_sweep is not None and self._next_sweep <= now:
            self._next_sweep = now + self.sweep_interval
            self._sweep_due = True
        if self._next_poll is not None and self._next_poll <= now:
            self._next_poll = now + MAIL_POLL
            self._poll_due = True

    def run(self, now: float) -> None:
        """Inside the flush's transaction: deposit what is due, fetch if due."""
        if self._sweep_due:
            self._sweep_due = False
            if self._served:
                self._sweep(now)
        if self._poll_due and not self._fetching and self._delete_after_commit is None:
            self._poll_due = False
            if self._served and self.context.mail_fetch(None, now):
                self._fetching = True

    def committed(self, now: float) -> None:
        """The flush that stored the fetched message is on disk: delete it
        at the server (the same FETCH asks for the next)."""
        if self._fetch_after_commit:
            self._fetch_after_commit = False
            delete, self._delete_after_commit = self._delete_after_commit, None
            if self.context.mail_fetch(delete, now):
                self._fetching = True

    def rolled_back(self) -> None:
        """Not stored: it stays at the server, fetched again."""
        self._delete_after_commit = None
        self._fetch_after_commit = False
        self._poll_due = True

    # ------------------------------------------------------------ sending

    def _sweep(self, now: float) -> None:
        me = self.context.my_id
        if me is None:
            return
        candidates = self.history.pending_outgoing()
        for peer_id, due in list(self._recheck.items()):
            if due > now:
                continue
            session = self.context.session(peer_id)
            if session.online:
                del self._recheck[peer_id]
            elif session.ready_link is not None:
                self._recheck[peer_id] = now + self.sweep_interval  # its link has not noticed yet
            else:
                del self._recheck[peer_id]
                sent = [m for m in self.history.conversation(peer_id) if m["from"] == me and m["status"] == Status.SENT]
                candidates += [{**m, "to": peer_id} for m in sent]
        for message_id in [m for m, at in self._not_before.items() if at <= now]:
            del self._not_before[message_id]  # (kept only while it holds a message back)
        waiting = set(self._in_flight.values())
        for message in candidates:
            message_id, peer_id = message["id"], message["to"]
            if (
                message["status"] not in (Status.QUEUED, Status.SENT)
                or message_id in waiting
                or message_id in self._unmailable
                or self._not_before.get(message_id, 0.0) > now
                or (now - float(message["time"]) < self.after and not self._away(peer_id, now))
            ):
                continue
            session = self.context.session(peer_id)
            if session.online or session.ready_link is not None or self.context.send_gate(peer_id) is not None:
                continue
            key = self.context.trusted_key(peer_id)
            if key is None:
                continue  # never met: nothing to seal to
            try:
                sealed = seal(self.context.signing_key, me, peer_id, key, message_id, message["text"], message["time"])
            except SealError:
                self._unmailable.add(message_id)
                self.stats["mail_too_long"] += 1
                continue
            mail = mail_id(me, message_id)
            if not self.context.mail_deposit(peer_id, mail, sealed, now):
                return  # not registered after all
            self._in_flight[mail] = message_id
            self.stats["mail_deposits"] += 1

    def _away(self, peer_id: int, now: float) -> bool:
        """Offline for ``after`` seconds already, by the server's word."""
        since = self._offline_since.get(peer_id)
        return since is not None and now - since >= self.after

    def on_deposited(self, event: MailDeposited, now: float) -> None:
        message_id = self._in_flight.pop(event.mail_id, None)
        if message_id is None:
            return
        if event.error is None:
            self.stats["mail_stored"] += 1
            self.context.set_message_status(message_id, Status.STORED, now)
            return
        if event.code == 486:
            reason = event.error.partition(" ")[2]
            self.stats["mail_refused"] += 1
            logger.info("the server refused to store message %s: %s", message_id, event.error)
            self.context.set_message_status(
                message_id, Status.FAILED, now, REFUSALS.get(reason, f"the server's mailbox refused it ({reason})")
            )
        elif event.code == 400 and "Unknown method" in event.error:
            self._served = False  # a server without a mailbox: they wait queued, as before
        else:
            self._not_before[message_id] = now + RETRY_AFTER

    # ------------------------------------------------------------ receiving

    def on_fetched(self, event: MailFetched, now: float) -> None:
        self._fetching = False
        if event.error is not None:
            if event.error.startswith("400 Unknown method"):
                self._served = False
            return
        item = event.item
        if item is None:
            return
        self.stats["mail_received"] += 1
        self._deliver(item.sender, item.mail_id, item.sealed, now)
        # Stored or dropped, it is deleted at the server by the FETCH after the commit.
        self._delete_after_commit = item.mail_id
        self._fetch_after_commit = True

    def _deliver(self, sender: int, mail: bytes, sealed: bytes, now: float) -> None:
        me = self.context.my_id
        if me is None:
            return
        if self._x_private is None:
            self._x_private = x25519_private(self.context.signing_key)
        try:
            letter = open_sealed(self.context.signing_key, me, sender, mail, sealed, x_private=self._x_private)
            validate.message_text(letter.text)
        except SealError as error:
            self._dropped(sender, str(error))
            return
        except validate.InvalidValue as error:
            self._dropped(sender, error.message)
            return
        trusted = self.context.trusted_key(sender)
        # Not the key we trust for it (never met, or changed): stored hidden,
        # as trust.py holds what a link with such a key brings.
        hidden = trusted is None or trusted != letter.sender_key
        if hidden:
            self.stats["mail_hidden"] += 1
        when = letter.time if 0 < letter.time < MAX_SANE_TIME else now
        if not self.context.take_mailed(sender, letter.message_id, letter.text, when, now, hidden=hidden):
            self._dropped(sender, "over its quota")

    def _dropped(self, sender: int, reason: str) -> None:
        self.stats[f"mail_dropped: {reason}"] += 1
        logger.warning("dropped a mailbox message from peer %d: %s", sender, reason)
