"""The peer's side of the rendezvous protocol, as a sans-IO state machine.

Messages in (already decoded, from the server's address) and ``now``;
datagrams for the server and events out.  It registers (challenge, then a
signed REGISTER), refreshes well before the TTL runs out, registers again
when the server has forgotten it (401 on refresh, e.g. after a server
restart) or when the server stops answering, lists the online peers every
few seconds, asks for introductions, acknowledges the server's INTRODUCE
requests and unregisters on a clean exit.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from rendezvous.client import PeerInfo, register_request, session_request
from rendezvous.stun import (
    MAX_RELAY_PAYLOAD,
    Address,
    Attr,
    Message,
    MessageClass,
    Method,
    PeerEntry,
    encode,
)
from rendezvous.tokens import registration_details, registration_payload
from rendezvous.transactions import RetransmitPolicy, TransactionTable

from .identity import Identity

# Interactive: a lost server is noticed in ~3 s, not the RFC's 39.5 s.
POLICY = RetransmitPolicy(rto=0.25, max_sends=5, last_wait_factor=4)
REFRESH_FRACTION = 0.35  # refresh at 35% of the TTL: 21 s of 60
MAX_BACKOFF = 30.0


class RegState(enum.Enum):
    IDLE = "idle"
    CHALLENGING = "challenging"  # unsigned REGISTER sent, waiting for a challenge
    REGISTERING = "registering"  # signed REGISTER sent
    REGISTERED = "registered"
    BACKING_OFF = "backing-off"  # the server did not answer; try again later
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class RegEvent:
    """Base of the registration machine's events."""


@dataclass(frozen=True)
class Registered(RegEvent):
    peer_id: int
    observed: Address
    ttl: int


@dataclass(frozen=True)
class RegistrationLost(RegEvent):
    reason: str


@dataclass(frozen=True)
class PeersListed(RegEvent):
    entries: tuple[PeerEntry, ...]


@dataclass(frozen=True)
class Introduced(RegEvent):
    """The server says ``info.peer_id`` wants to talk to us."""

    info: PeerInfo


@dataclass(frozen=True)
class ConnectAnswered(RegEvent):
    peer_id: int
    info: PeerInfo | None
    error: str | None


@dataclass(frozen=True)
class Relayed(RegEvent):
    peer_id: int
    payload: bytes


@dataclass(frozen=True)
class Stopped(RegEvent):
    pass


@dataclass
class _Request:
    kind: str
    peer_id: int = 0
    pages: list[PeerEntry] = field(default_factory=list)


class RegistrationMachine:
    def __init__(
        self,
        identity: Identity,
        *,
        nickname: str = "",
        local: tuple[Address, ...] = (),
        ttl: int = 60,
        list_interval: float = 3.0,
        policy: RetransmitPolicy = POLICY,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.identity = identity
        self.nickname = nickname
        self.local = local
        self.ttl = ttl
        self.list_interval = list_interval
        self.state = RegState.IDLE
        self.peer_id: int | None = None
        self.observed: Address | None = None
        self.granted_ttl = ttl
        self._session: bytes | None = None
        self._random = random_bytes
        self._table: TransactionTable[_Request] = TransactionTable(policy)
        self._outbox: list[bytes] = []
        self._events: list[RegEvent] = []
        self._wake_at: float | None = None  # next refresh, retry or list
        self._next_list: float | None = None
        self._backoff = 1.0
        self._seen_introductions: dict[bytes, None] = {}
        self._listing = False

    # ------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[bytes]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> RegEvent | None:
        return self._events.pop(0) if self._events else None

    def get_timer(self) -> float | None:
        times = [t for t in (self._table.get_timer(), self._wake_at, self._next_list) if t is not None]
        return min(times) if times else None

    # ------------------------------------------------------------ commands

    def start(self, now: float) -> None:
        self._register(now)

    def stop(self, now: float) -> None:
        """Unregister (best effort: one transaction) and stop."""
        if self._session is not None and self.state is RegState.REGISTERED:
            self.state = RegState.STOPPING
            self._request(session_request(Method.UNREGISTER, self._session), _Request("unregister"), now)
        else:
            self._stopped()
        self._wake_at = self._next_list = None

    def connect(self, peer_id: int, now: float) -> bool:
        """Ask the server to introduce us; False when not registered yet."""
        if self._session is None or self.state is not RegState.REGISTERED:
            return False
        request = session_request(Method.CONNECT, self._session, (Attr.PEER_ID, peer_id))
        self._request(request, _Request("connect", peer_id), now)
        return True

    def list_now(self, now: float) -> None:
        if self._session is not None and self.state is RegState.REGISTERED and not self._listing:
            self._listing = True
            self._request(session_request(Method.LIST, self._session, (Attr.LIMIT, 100)), _Request("list"), now)

    def session_token(self) -> bytes | None:
        return self._session

    def send_relayed(self, peer_id: int, payload: bytes) -> bool:
        """Queue a SEND indication: the server forwards ``payload`` to
        ``peer_id`` as DATA.  False when not registered (nothing sent)."""
        if self._session is None or self.state is not RegState.REGISTERED or len(payload) > MAX_RELAY_PAYLOAD:
            return False
        message = Message(Method.SEND, MessageClass.INDICATION, self._random(12))
        message.add(Attr.SESSION, self._session).add(Attr.PEER_ID, peer_id).add(Attr.DATA, payload)
        self._outbox.append(encode(message))
        return True

    # ------------------------------------------------------------ input

    def handle_timer(self, now: float) -> None:
        result = self._table.handle_timer(now)
        for data, _ in result.resend:
            self._outbox.append(data)
        for _, request in result.timed_out:
            self._on_timeout(request, now)
        if self._wake_at is not None and self._wake_at <= now:
            self._wake_at = None
            if self.state is RegState.REGISTERED and self._session is not None:
                request = session_request(Method.REFRESH, self._session, (Attr.TTL, self.ttl))
                self._request(request, _Request("refresh"), now)
            elif self.state is RegState.BACKING_OFF:
                self._register(now)
        if self._next_list is not None and self._next_list <= now:
            self._next_list = now + self.list_interval
            self.list_now(now)

    def receive(self, message: Message, now: float) -> None:
        """A decoded STUN message from the server's address."""
        cls = message.message_class
        if cls == MessageClass.REQUEST and message.method == Method.INTRODUCE:
            self._on_introduce(message)
            return
        if cls == MessageClass.INDICATION and message.method == Method.DATA:
            peer_id, payload = message.get(Attr.PEER_ID), message.get(Attr.DATA)
            if isinstance(peer_id, int) and isinstance(payload, bytes):
                self._events.append(Relayed(peer_id, payload))
            return
        if cls not in (MessageClass.SUCCESS, MessageClass.ERROR):
            return
        request = self._table.complete(message.transaction_id)
        if request is None:
            return  # late or stray answer
        handler = getattr(self, f"_on_{request.kind}")
        handler(request, message, now)

    # ------------------------------------------------------------ internals

    def _request(self, message: Message, context: _Request, now: float) -> None:
        message.transaction_id = self._random(12)
        self._outbox.append(self._table.start(message.transaction_id, encode(message), context, now))

    def _register(self, now: float, challenge: bytes | None = None) -> None:
        signature = None
        if challenge is not None:
            details = registration_details(self.nickname, self.local, self.ttl)
            signature = self.identity.sign(registration_payload(challenge, self.identity.public_key, details))
        request = register_request(
            self.identity.public_key, nickname=self.nickname, local=self.local, ttl=self.ttl,
            challenge=challenge, signature=signature,
        )
        self.state = RegState.REGISTERING if challenge else RegState.CHALLENGING
        self._request(request, _Request("register"), now)

    def _error(self, message: Message) -> tuple[int, str] | None:
        if message.message_class != MessageClass.ERROR:
            return None
        value = message.get(Attr.ERROR_CODE)
        return (value.code, value.reason) if value is not None else (500, "error without ERROR-CODE")

    def _on_register(self, request: _Request, message: Message, now: float) -> None:
        error = self._error(message)
        if error is not None:
            challenge = message.get(Attr.CHALLENGE)
            if error[0] == 401 and challenge is not None and self.state is RegState.CHALLENGING:
                self._register(now, challenge)
                return
            self._back_off(now, f"registration refused: {error[0]} {error[1]}")
            return
        peer_id, observed, ttl, session = (
            message.get(Attr.PEER_ID), message.get(Attr.XOR_MAPPED_ADDRESS),
            message.get(Attr.TTL), message.get(Attr.SESSION),
        )
        if not isinstance(peer_id, int) or observed is None or not isinstance(ttl, int) or session is None:
            self._back_off(now, "registration answer is missing attributes")
            return
        self.state = RegState.REGISTERED
        self.peer_id, self.observed, self.granted_ttl, self._session = peer_id, observed, ttl, session
        self._backoff = 1.0
        self._wake_at = now + max(1.0, ttl * REFRESH_FRACTION)
        self._next_list = now  # list right away, then every list_interval
        self._events.append(Registered(peer_id, observed, ttl))

    def _on_refresh(self, request: _Request, message: Message, now: float) -> None:
        error = self._error(message)
        if error is not None:
            # 401: the server forgot us (restart, expiry) or we moved: register again.
            self._lost(now, f"refresh refused: {error[0]} {error[1]}")
            self._register(now)
            return
        observed = message.get(Attr.XOR_MAPPED_ADDRESS)
        ttl = message.get(Attr.TTL)
        if isinstance(ttl, int):
            self.granted_ttl = ttl
        if observed is not None and observed != self.observed:
            # Our NAT mapping changed: the session is bound to the old address.
            self.observed = observed
            self._lost(now, "public address changed")
            self._register(now)
            return
        self._wake_at = now + max(1.0, self.granted_ttl * REFRESH_FRACTION)

    def _on_unregister(self, request: _Request, message: Message, now: float) -> None:
        self._stopped()

    def _on_list(self, request: _Request, message: Message, now: float) -> None:
        if self._error(message) is not None or self._session is None:
            self._listing = False
            return
        request.pages.extend(message.get_all(Attr.PEER_ENTRY))
        cursor = message.get(Attr.CURSOR)
        if cursor is not None and len(request.pages) < 10_000:
            follow = session_request(Method.LIST, self._session, (Attr.LIMIT, 100), (Attr.CURSOR, cursor))
            self._request(follow, request, now)
            return
        self._listing = False
        self._events.append(PeersListed(tuple(request.pages)))

    def _on_connect(self, request: _Request, message: Message, now: float) -> None:
        error = self._error(message)
        if error is not None:
            self._events.append(ConnectAnswered(request.peer_id, None, f"{error[0]} {error[1]}"))
            if error[0] == 401:
                self._lost(now, "session refused")
                self._register(now)
            return
        info = PeerInfo.from_message(message)
        if info.peer_id != request.peer_id or not isinstance(info.public_key, bytes):
            self._events.append(ConnectAnswered(request.peer_id, None, "malformed answer"))
            return
        self._events.append(ConnectAnswered(request.peer_id, info, None))

    def _on_introduce(self, message: Message) -> None:
        ack = Message(Method.INTRODUCE, MessageClass.SUCCESS, message.transaction_id)
        self._outbox.append(encode(ack))
        if message.transaction_id in self._seen_introductions:
            return  # our ack was lost and the server sent it again
        self._seen_introductions[message.transaction_id] = None
        if len(self._seen_introductions) > 256:
            del self._seen_introductions[next(iter(self._seen_introductions))]
        info = PeerInfo.from_message(message)
        if isinstance(info.peer_id, int) and isinstance(info.public_key, bytes):
            self._events.append(Introduced(info))

    def _on_timeout(self, request: _Request, now: float) -> None:
        if request.kind == "unregister":
            self._stopped()
        elif request.kind == "list":
            self._listing = False
        elif request.kind == "connect":
            self._events.append(ConnectAnswered(request.peer_id, None, "the server did not answer"))
        elif request.kind in ("register", "refresh"):
            self._lost(now, "the server did not answer")
            self._back_off(now, "the server did not answer")

    def _lost(self, now: float, reason: str) -> None:
        if self.state is RegState.REGISTERED:
            self._events.append(RegistrationLost(reason))
        self._session = None
        self._next_list = None

    def _back_off(self, now: float, reason: str) -> None:
        self.state = RegState.BACKING_OFF
        self._session = None
        self._wake_at = now + self._backoff
        self._backoff = min(MAX_BACKOFF, self._backoff * 2)

    def _stopped(self) -> None:
        if self.state is not RegState.STOPPED:
            self.state = RegState.STOPPED
            self._session = None
            self._events.append(Stopped())

    def describe(self) -> dict[str, Any]:
        return {"state": self.state.value, "peer_id": self.peer_id, "observed": self.observed}
