"""DEPOSIT and FETCH, the offline mailbox's two requests (docs/PROTOCOL.md
5.11, 5.12), as the core answers them: checked here, stored by the adapter.

Like REGISTER, they need the (async) store: :class:`MailHandler` checks a
request and hands it out as a :class:`MailRequest` (the reply cache marks it
in progress, so retransmissions meanwhile are ignored); the adapter runs it
on the :class:`~rendezvous.mailbox.Mailbox` and gives the outcome back, and
only then is the request answered (and the answer cached).  The handler
reaches the core only through :class:`MailContext`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from .mailbox import Mail, MailLimits
from .registry import PeerRecord
from .stun import Address, Attr, ErrorCode, MailItem, Message


@dataclass(slots=True)
class MailRequest:
    """A checked DEPOSIT (``deposit`` set: store it) or FETCH (``delete``:
    the MAIL-ID to delete first, if any) for the adapter to run."""

    request: Message
    address: Address
    length: int
    peer_id: int
    deposit: Mail | None = None
    delete: bytes | None = None


class MailContext(Protocol):
    """What the mail handler may ask of the server core."""

    @property
    def stats(self) -> Counter[str]: ...

    @property
    def highest_id(self) -> int: ...

    def authorise(self, message: Message, address: Address, now: float) -> PeerRecord | Message:
        """The registered peer behind a request (rate limited), or the error reply."""

    def error(self, request: Message, code: ErrorCode, reason: str | None = None) -> Message: ...

    def success(self, request: Message) -> Message: ...

    def in_progress(self, address: Address, transaction_id: bytes, now: float) -> None:
        """Retransmissions of this request are ignored until it is answered."""

    def answer(self, reply: Message, address: Address, request_length: int, now: float, *, cache: bool) -> None:
        """Send ``reply`` (to a proven address when it is a success) and,
        with ``cache``, keep it for retransmissions; without, forget the
        in-progress mark so a retransmission is processed anew."""


class MailHandler:
    def __init__(self, context: MailContext, limits: MailLimits) -> None:
        self.context = context
        self.limits = limits
        self._requests: list[MailRequest] = []

    def take_requests(self) -> list[MailRequest]:
        out, self._requests = self._requests, []
        return out

    def deposit(self, message: Message, address: Address, now: float, length: int) -> Message | None:
        c = self.context
        c.stats["mail_deposit"] += 1
        peer = c.authorise(message, address, now)
        if isinstance(peer, Message):
            return peer
        recipient = message.get(Attr.PEER_ID)
        mail_id = message.get(Attr.MAIL_ID)
        sealed = message.get(Attr.SEALED)
        if recipient is None:
            return c.error(message, ErrorCode.BAD_REQUEST, "PEER-ID missing")
        if mail_id is None:
            return c.error(message, ErrorCode.BAD_REQUEST, "MAIL-ID missing")
        if sealed is None:
            return c.error(message, ErrorCode.BAD_REQUEST, "SEALED missing")
        if recipient == peer.peer_id:
            return c.error(message, ErrorCode.BAD_REQUEST, "Cannot mail yourself")
        if recipient == 0 or recipient > c.highest_id:
            return c.error(message, ErrorCode.NO_SUCH_PEER)
        mail = Mail(recipient, peer.peer_id, mail_id, sealed, now)
        c.in_progress(address, message.transaction_id, now)
        self._requests.append(MailRequest(message, address, length, peer.peer_id, deposit=mail))
        return None

    def fetch(self, message: Message, address: Address, now: float, length: int) -> Message | None:
        c = self.context
        c.stats["mail_fetch"] += 1
        peer = c.authorise(message, address, now)
        if isinstance(peer, Message):
            return peer
        c.in_progress(address, message.transaction_id, now)
        self._requests.append(MailRequest(message, address, length, peer.peer_id, delete=message.get(Attr.MAIL_ID)))
        return None

    def deposited(self, pending: MailRequest, stored: bool, now: float) -> None:
        """The store took the DEPOSIT (``stored``), or already had its MAIL-ID."""
        self.context.stats["mail_deposited" if stored else "mail_duplicate"] += 1
        self.context.answer(self.context.success(pending.request), pending.address, pending.length, now, cache=True)

    def refused(self, pending: MailRequest, reason: str, now: float) -> None:
        """The DEPOSIT would pass a quota (``reason``: whose); nothing was stored."""
        self.context.stats[f"mail_refused: {reason}"] += 1
        reply = self.context.error(pending.request, ErrorCode.MAILBOX_FULL, reason)
        self.context.answer(reply, pending.address, pending.length, now, cache=True)

    def fetched(self, pending: MailRequest, mail: Mail | None, count: int, now: float) -> None:
        """The FETCH's answer: the oldest message waiting (if any) and how many wait."""
        c = self.context
        if pending.delete is not None:
            c.stats["mail_deleted"] += 1
        reply = c.success(pending.request)
        if mail is not None:
            c.stats["mail_fetched"] += 1
            reply.add(Attr.MAIL_ITEM, MailItem(mail.sender, int(mail.deposited_at), mail.mail_id, mail.sealed))
        reply.add(Attr.MAIL_COUNT, count if mail is not None else 0)
        c.answer(reply, pending.address, pending.length, now, cache=True)

    def failed(self, pending: MailRequest, now: float) -> None:
        """The store failed (or too much waits on it): 503, not cached."""
        self.context.stats["mail_store_failures"] += 1
        reply = self.context.error(pending.request, ErrorCode.TRY_AGAIN_LATER)
        self.context.answer(reply, pending.address, pending.length, now, cache=False)
