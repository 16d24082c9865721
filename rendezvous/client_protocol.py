"""The client's half of the rendezvous protocol, written once, pure.

Both clients of the server use it: :class:`rendezvous.client.RendezvousClient`
(asyncio, for tests, tools and benchmarks) and the webpeer's sans-IO
:class:`webpeer.registration.RegistrationMachine`.  It owns

- building requests (REGISTER, the SESSION requests, SEND indications),
- the registration handshake: unsigned REGISTER, the server's CHALLENGE, the
  signed REGISTER, the answer (:class:`RegisterHandshake`),
- one conversation with the server (:class:`ServerConversation`): requests
  retransmitted under a :class:`~rendezvous.transactions.RetransmitPolicy`,
  answers matched to them, INTRODUCE requests acknowledged every time and
  reported once, DATA indications checked.

No sockets, no clock: ``now`` comes in as an argument, datagrams come out of
:meth:`ServerConversation.datagrams_to_send`.  Transaction ids are random
(``os.urandom`` unless the caller passes its own).  The wire format is in
docs/PROTOCOL.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from .stun import (
    Address,
    Attr,
    Candidate,
    CandidateKind,
    ErrorValue,
    Message,
    MessageClass,
    Method,
    PeerEntry,
    encode,
)
from .tokens import registration_details, registration_payload
from .transactions import RetransmitPolicy, TransactionTable

# Interactive: a lost server is noticed after ~3 s (sends at 0, 0.25, 0.75,
# 1.75 and 3.75 s, then 1 s more) instead of the RFC's 39.5 s.
INTERACTIVE_POLICY = RetransmitPolicy(rto=0.25, max_sends=5, last_wait_factor=4)
TRANSACTION_ID_LENGTH = 12
# INTRODUCE transaction ids remembered to report a retransmission once: the
# server retransmits for under 40 s, so a few hundred cover any burst.
MAX_REMEMBERED_INTRODUCTIONS = 256

Context = TypeVar("Context")


# ------------------------------------------------------------ building requests


def new_request(method: Method, transaction_id: bytes | None = None) -> Message:
    if transaction_id is None:
        transaction_id = os.urandom(TRANSACTION_ID_LENGTH)
    return Message(method, MessageClass.REQUEST, transaction_id)


def register_request(
    public_key: bytes,
    *,
    nickname: str = "",
    local: Iterable[Address] = (),
    ttl: int | None = None,
    challenge: bytes | None = None,
    signature: bytes | None = None,
    transaction_id: bytes | None = None,
) -> Message:
    message = new_request(Method.REGISTER, transaction_id).add(Attr.PUBLIC_KEY, public_key)
    if nickname:
        message.add(Attr.NICKNAME, nickname)
    for address in local:
        message.add(Attr.CANDIDATE, Candidate(CandidateKind.LOCAL, address))
    if ttl is not None:
        message.add(Attr.TTL, ttl)
    if challenge is not None:
        message.add(Attr.CHALLENGE, challenge)
    if signature is not None:
        message.add(Attr.SIGNATURE, signature)
    return message


def session_request(
    method: Method, session: bytes, *attributes: tuple[int, Any], transaction_id: bytes | None = None
) -> Message:
    """A request of a registered peer: SESSION first (the server's fast path
    for REFRESH expects it there), then ``attributes`` in order."""
    message = new_request(method, transaction_id).add(Attr.SESSION, session)
    for code, value in attributes:
        message.add(code, value)
    return message


def relay_indication(session: bytes, peer_id: int, payload: bytes, transaction_id: bytes) -> Message:
    """SEND: the server forwards ``payload`` to ``peer_id`` as a DATA indication."""
    message = Message(Method.SEND, MessageClass.INDICATION, transaction_id)
    return message.add(Attr.SESSION, session).add(Attr.PEER_ID, peer_id).add(Attr.DATA, payload)


# ------------------------------------------------------------ reading answers


def error_of(message: Message) -> ErrorValue | None:
    """The error of an error response; None for anything else."""
    if message.message_class != MessageClass.ERROR:
        return None
    value: ErrorValue | None = message.get(Attr.ERROR_CODE)
    return value if value is not None else ErrorValue(500, "error without ERROR-CODE")


@dataclass(frozen=True)
class Registration:
    """What a successful REGISTER gives."""

    peer_id: int
    ttl: int
    observed: Address
    session: bytes

    @classmethod
    def from_message(cls, message: Message) -> Registration | None:
        """None when the answer lacks one of the four attributes."""
        peer_id, ttl = message.get(Attr.PEER_ID), message.get(Attr.TTL)
        observed, session = message.get(Attr.XOR_MAPPED_ADDRESS), message.get(Attr.SESSION)
        if not isinstance(peer_id, int) or not isinstance(ttl, int) or observed is None or session is None:
            return None
        return cls(peer_id, ttl, observed, session)


@dataclass(frozen=True)
class PeerInfo:
    """What CONNECT and INTRODUCE say about the other side."""

    peer_id: int
    public_key: bytes
    nickname: str
    candidates: tuple[Candidate, ...]
    punch_key: bytes | None = None  # shared by both sides of one introduction

    @classmethod
    def from_message(cls, message: Message) -> PeerInfo:
        return cls(
            peer_id=message.get(Attr.PEER_ID),
            public_key=message.get(Attr.PUBLIC_KEY),
            nickname=message.get(Attr.NICKNAME, ""),
            candidates=tuple(message.get_all(Attr.CANDIDATE)),
            punch_key=message.get(Attr.PUNCH_KEY),
        )

    @property
    def complete(self) -> bool:
        """It names a peer and its key (the codec gives None for a missing attribute)."""
        return isinstance(self.peer_id, int) and isinstance(self.public_key, bytes)


# ------------------------------------------------------------ registering


class Signer(Protocol):
    """Holds the peer's Ed25519 private key (an ``Ed25519PrivateKey`` or a webpeer ``Identity``)."""

    def sign(self, data: bytes, /) -> bytes: ...


@dataclass(frozen=True)
class RegisterRefused:
    """The registration did not succeed: ``error`` is the server's error, or
    None when its success answer lacked attributes."""

    reason: str
    error: ErrorValue | None
    response: Message


class RegisterHandshake:
    """One registration (docs/PROTOCOL.md, REGISTER): send :meth:`first_request`,
    feed each answer to :meth:`answer`, and send what it returns until it
    returns a :class:`Registration` or a :class:`RegisterRefused`.

    The signature covers the challenge, the key and the details the REGISTER
    carries (nickname, local candidates, TTL), so both requests are built here
    from the same fields.
    """

    def __init__(
        self,
        signer: Signer,
        public_key: bytes,
        *,
        nickname: str = "",
        local: tuple[Address, ...] = (),
        ttl: int | None = None,
    ) -> None:
        self._signer = signer
        self.public_key = public_key
        self.nickname = nickname
        self.local = local
        self.ttl = ttl
        self.signed = False  # the signed REGISTER went out: a second challenge is a refusal

    def first_request(self) -> Message:
        """The unsigned REGISTER, which the server answers with a challenge."""
        self.signed = False
        return register_request(self.public_key, nickname=self.nickname, local=self.local, ttl=self.ttl)

    def answer(self, response: Message) -> Message | Registration | RegisterRefused:
        """The next request to send, or how the registration ended."""
        error = error_of(response)
        if error is not None:
            challenge = response.get(Attr.CHALLENGE)
            if error.code == 401 and challenge is not None and not self.signed:
                self.signed = True
                return self._signed_request(challenge)
            return RegisterRefused(f"registration refused: {error.code} {error.reason}", error, response)
        registration = Registration.from_message(response)
        if registration is None:
            return RegisterRefused("registration answer is missing attributes", None, response)
        return registration

    def _signed_request(self, challenge: bytes) -> Message:
        details = registration_details(self.nickname, self.local, self.ttl)
        signature = self._signer.sign(registration_payload(challenge, self.public_key, details))
        return register_request(
            self.public_key,
            nickname=self.nickname,
            local=self.local,
            ttl=self.ttl,
            challenge=challenge,
            signature=signature,
        )


# ------------------------------------------------------------ the conversation


@dataclass(frozen=True)
class Answer(Generic[Context]):
    """The response to one of our requests, with the context it was sent with."""

    context: Context
    response: Message


@dataclass(frozen=True)
class Introduction:
    """The server introduces a peer that wants to talk to us (first copy only)."""

    info: PeerInfo


@dataclass(frozen=True)
class PresenceNotice:
    """The server tells of watched ids whose presence changed (first copy only):
    LIST's entries for those online, the ids of the others."""

    online: tuple[PeerEntry, ...]
    offline: tuple[int, ...]


@dataclass(frozen=True)
class RelayData:
    """A relayed datagram from ``peer_id``."""

    peer_id: int
    payload: bytes


class ServerConversation(Generic[Context]):
    """One client's exchange with the server, sans-IO.

    ``Context`` is whatever the caller wants back with an answer or a timeout
    (a future, a record of what was asked).
    """

    def __init__(self, policy: RetransmitPolicy = INTERACTIVE_POLICY) -> None:
        self._table: TransactionTable[Context] = TransactionTable(policy)
        self._outbox: list[bytes] = []
        # Insertion-ordered, so the oldest is forgotten first.
        self._seen_introductions: dict[bytes, None] = {}

    def datagrams_to_send(self) -> list[bytes]:
        out, self._outbox = self._outbox, []
        return out

    def request(self, message: Message, context: Context, now: float) -> None:
        """Send ``message`` now and retransmit it until it is answered, cancelled or times out."""
        self._outbox.append(self._table.start(message.transaction_id, encode(message), context, now))

    def indicate(self, message: Message) -> None:
        """Send ``message`` once (indications get no answer)."""
        self._outbox.append(encode(message))

    def cancel(self, transaction_id: bytes) -> None:
        """Stop retransmitting (the caller gave up); a late answer is then ignored."""
        self._table.cancel(transaction_id)

    def __len__(self) -> int:
        return len(self._table)

    def get_timer(self) -> float | None:
        return self._table.get_timer()

    def handle_timer(self, now: float) -> list[Context]:
        """Queue the retransmissions due by ``now``; returns the contexts of the
        requests that timed out (in the order their deadlines passed)."""
        result = self._table.handle_timer(now)
        self._outbox.extend(data for data, _ in result.resend)
        return [context for _, context in result.timed_out]

    def receive(self, message: Message) -> Answer[Context] | Introduction | PresenceNotice | RelayData | None:
        """A decoded message from the server's address.  None: nothing to report
        (a stray or late answer, a repeated or incomplete introduction, an
        incomplete DATA indication, a method a client does not handle)."""
        cls = message.message_class
        if cls in (MessageClass.SUCCESS, MessageClass.ERROR):
            context = self._table.complete(message.transaction_id)
            # None: not ours, or answered already (a retransmission's answer).
            return None if context is None else Answer(context, message)
        if cls == MessageClass.REQUEST and message.method == Method.INTRODUCE:
            return self._introduce(message)
        if cls == MessageClass.REQUEST and message.method == Method.PRESENCE:
            return self._presence(message)
        if cls == MessageClass.INDICATION and message.method == Method.DATA:
            peer_id, payload = message.get(Attr.PEER_ID), message.get(Attr.DATA)
            if isinstance(peer_id, int) and isinstance(payload, bytes):
                return RelayData(peer_id, payload)
        return None

    def _presence(self, message: Message) -> PresenceNotice | None:
        # Acknowledged every time, reported once, as INTRODUCE (the server
        # sends one PRESENCE at a time to us, so they cannot overtake each other).
        self._outbox.append(encode(Message(Method.PRESENCE, MessageClass.SUCCESS, message.transaction_id)))
        if not self._first_copy(message.transaction_id):
            return None
        return PresenceNotice(tuple(message.get_all(Attr.PEER_ENTRY)), message.get(Attr.OFFLINE_IDS, ()))

    def _first_copy(self, transaction_id: bytes) -> bool:
        if transaction_id in self._seen_introductions:
            return False
        self._seen_introductions[transaction_id] = None
        if len(self._seen_introductions) > MAX_REMEMBERED_INTRODUCTIONS:
            del self._seen_introductions[next(iter(self._seen_introductions))]
        return True

    def _introduce(self, message: Message) -> Introduction | None:
        # Acknowledged every time: a repeat means our last ack was lost, and the
        # server retransmits until one arrives.
        self._outbox.append(encode(Message(Method.INTRODUCE, MessageClass.SUCCESS, message.transaction_id)))
        if message.transaction_id in self._seen_introductions:
            return None
        self._seen_introductions[message.transaction_id] = None
        if len(self._seen_introductions) > MAX_REMEMBERED_INTRODUCTIONS:
            del self._seen_introductions[next(iter(self._seen_introductions))]
        info = PeerInfo.from_message(message)
        return Introduction(info) if info.complete else None
