"""The rendezvous server's protocol core: sans-IO.

Datagrams, their source address and ``now`` go in; datagrams to send, events
to log and registrations to persist come out.  Nothing here touches a socket,
the clock or the disk.  The wire format is in docs/PROTOCOL.md; in short:

    -> Binding request                      <- XOR-MAPPED-ADDRESS, SOFTWARE
    -> REGISTER (PUBLIC-KEY, [NICKNAME], [CANDIDATE local]*, [TTL])
                                            <- 401 + CHALLENGE
    -> REGISTER (... + CHALLENGE, SIGNATURE) <- PEER-ID, TTL, XOR-MAPPED-ADDRESS, SESSION
    -> REFRESH (SESSION, [TTL])             <- TTL, XOR-MAPPED-ADDRESS   (401 Register Again: do REGISTER)
    -> UNREGISTER (SESSION)                 <- success
    -> LIST (SESSION, [LIMIT], [CURSOR])    <- PEER-ENTRY*, [CURSOR]
    -> CONNECT (SESSION, PEER-ID target)    <- PEER-ID, PUBLIC-KEY, NICKNAME, CANDIDATE*
                                               (404 Unknown Peer: not online; 410 No Such Peer: never assigned)
                         and to the target: INTRODUCE request (PEER-ID, PUBLIC-KEY, NICKNAME, CANDIDATE*),
                                            retransmitted until the target answers it
    -> WATCH (SESSION, [UNWATCH-IDS], [WATCH-IDS])  <- PEER-ENTRY* (WATCH-IDS online), [OFFLINE-IDS] (the others)
                         and later, to the watcher: PRESENCE request (the same) when a watched
                                            id comes online, goes offline or registers anew,
                                            retransmitted until the watcher answers it
    -> SEND indication (SESSION, PEER-ID dest, DATA)
                         and to the dest:   DATA indication (PEER-ID source, DATA)

The course project's plain-text protocol is answered by a
:class:`~rendezvous.legacy_handling.LegacyTextHandler` that the core holds;
it reaches the core only through the narrow context at the end of this file.

REGISTER is the one request that needs the (async) registry: the core hands
it out as a :class:`PendingRegistration`; the adapter gets the id from the
registry and calls :meth:`ServerCore.complete_registration`, so the reply
goes out only once the id is durable.

Several instances on one registry (docs/ARCHITECTURE.md): the adapter feeds
the other instances' peers in with :meth:`ServerCore.mirror`; LIST and
CONNECT answer for them as for local peers, but an INTRODUCE to a mirrored
target comes out of :meth:`ServerCore.introductions_to_forward` for its home
instance, which hands it back to its own core with
:meth:`ServerCore.deliver_forwarded` (the target's NAT knows that
instance's address, not ours).  A SEND to a mirrored peer goes the same way:
this instance checks the sender and its rate, builds the DATA indication and
forwards it; the home only sends it on.  Workers of one ``--workers`` group
share one socket address, so between them the DATA leaves from here directly.
"""

from __future__ import annotations

import binascii
import hashlib
import os
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from . import legacy as legacy_text
from .directory import Directory
from .events import (
    AMPLIFICATION_FACTOR,
    MAX_REPLY_BYTES,
    Dropped,
    Event,
    PeerOffline,
    PeerOnline,
    PendingRegistration,
    RequestReceived,
    ServerConfig,
)
from .legacy_handling import LegacyTextHandler
from .mail_handling import MailHandler, MailRequest
from .mailbox import Mail
from .presence import Subscriptions
from .ratelimit import KeyedLimiter
from .registry import PeerRecord, is_legacy_identity
from .stun import (
    FINGERPRINT_XOR,
    MAGIC_COOKIE_BYTES,
    MAX_RELAY_PAYLOAD,
    MAX_WATCH_IDS,
    PUNCH_KEY_LENGTH,
    REASONS,
    Address,
    Attr,
    Candidate,
    CandidateKind,
    ErrorCode,
    ErrorValue,
    Message,
    MessageClass,
    Method,
    PeerEntry,
    StunProtocolError,
    binding_body,
    binding_success_with_body,
    decode,
    encode,
    encode_attribute,
    fast_binding_success,
    looks_like_stun,
    pack_type,
    refresh_success,
)
from .tokens import Tokens, registration_details, registration_payload, session_peer_id, verify_signature
from .transactions import TransactionTable

# The events and config are defined in events.py; they are named here too
# because callers (the adapter, the tests) think of them as the core's.
__all__ = [
    "IN_PROGRESS",
    "SessionCache",
    "Dropped",
    "Event",
    "PeerOffline",
    "PeerOnline",
    "PendingRegistration",
    "RequestReceived",
    "ServerConfig",
    "ServerCore",
]


# 503 reason phrases of a REGISTER refused for a cap (docs/PROTOCOL.md 6).
SERVER_FULL = "Server Full"
TOO_MANY_FROM_ADDRESS = "Too Many From Address"
REGISTRY_FULL = "Registry Full"


class _InProgress:
    """Marks a transaction whose reply is not ready yet (REGISTER waiting on the registry)."""


IN_PROGRESS = _InProgress()
# Wheel entries one handle_timer looks at for expired peers, at most.
EXPIRE_BATCH = 1000


def _reply_counter(reply: Message) -> str:
    """The stats key a reply sent by the generic path counts under:
    ``replied: METHOD RESULT``, RESULT ``success`` or the error code
    (rendezvous/metrics.py makes the replies family of them)."""
    try:
        method = Method(reply.method).name.lower()
    except ValueError:
        method = f"0x{reply.method:03x}"
    if reply.message_class == MessageClass.SUCCESS:
        return f"replied: {method} success"
    error = reply.get(Attr.ERROR_CODE)
    return f"replied: {method} {error.code if isinstance(error, ErrorValue) else 'error'}"


class SessionCache(Protocol):
    """Where the core puts the SESSION tokens it has checked, so that a
    faster answerer (the compiled fast path, rendezvous/fastpath.py) can
    answer their REFRESHes; told to forget one when its peer's record is
    replaced or removed."""

    def add(self, peer_id: int, address: Address, token: bytes) -> None: ...

    def discard(self, peer_id: int) -> None: ...


@dataclass
class ServerCore:
    """All the server's protocol logic; see the module docstring."""

    config: ServerConfig
    tokens: Tokens
    directory: Directory = field(default_factory=Directory)
    stats: Counter[str] = field(default_factory=Counter)
    # Randomness comes in from outside too, so tests can fix it.
    _random: Callable[[int], bytes] = os.urandom
    # The highest id the registry ever assigned (the adapter loads it at
    # start; complete_registration raises it).  Ids are reused only below it, so a
    # CONNECT to an id above it names nobody, ever yet: 410, not 404.
    highest_id: int = 0
    # Instances whose names start with this share our socket's address and
    # port (``--workers`` siblings): their peers' NATs accept what we send.
    sibling_prefix: str = ""

    def __post_init__(self) -> None:
        self._outbox: list[tuple[bytes, Address]] = []
        self._outbox_other: list[tuple[bytes, Address]] = []
        self._events: list[Event] = []
        self._registrations: list[PendingRegistration] = []
        # (home instance, target id, INTRODUCE or DATA datagram) for targets registered elsewhere.
        self._forwards: list[tuple[str, int, bytes]] = []
        # (address, transaction id) -> (expires at, reply bytes or IN_PROGRESS)
        # An OrderedDict, not a dict: evicting the oldest entry of a plain dict
        # (next(iter(d))) gets slower with every deletion at its front.
        self._replies: OrderedDict[tuple[Address, bytes], tuple[float, bytes | _InProgress]] = OrderedDict()
        self._introductions: TransactionTable[Address] = TransactionTable(self.config.introduction_policy)
        # (requester, target) -> (its INTRODUCE's transaction id, punch key)
        self._introducing: dict[tuple[int, int], tuple[bytes, bytes]] = {}
        c = self.config
        self._register_limit = KeyedLimiter(c.register_per_second, c.register_burst)
        self._request_limit = KeyedLimiter(c.requests_per_second, c.requests_burst)
        self._relay_packets = KeyedLimiter(
            c.relay_packets_per_second, c.relay_packets_per_second * c.relay_burst_seconds
        )
        self._relay_bytes = KeyedLimiter(c.relay_bytes_per_second, c.relay_bytes_per_second * c.relay_burst_seconds)
        self._software_tlv = encode_attribute(Attr.SOFTWARE, self.config.software)
        # IPv4 source -> pre-built Binding response body (its XOR-MAPPED-ADDRESS
        # does not depend on the transaction id for IPv4).
        self._binding_bodies: dict[Address, bytes] = {}
        # The fast path's copy of the checked sessions, when one answers beside us.
        self._session_cache: SessionCache | None = None
        self._legacy = LegacyTextHandler(_LegacyPort(self))
        self._subscriptions = Subscriptions(c.max_watched_per_peer)
        # PRESENCE requests in flight: transaction id -> (watcher, its address).
        self._notifications: TransactionTable[tuple[int, Address]] = TransactionTable(c.presence_policy)
        # Watchers owed a PRESENCE that could not start (too many in flight).
        self._presence_waiting: set[int] = set()
        self.directory.take_presence_changes()  # and keep them from now on
        self._handlers: dict[int, Callable[[Message, Address, float, int], Message | None]] = {
            Method.REFRESH: self._refresh,
            Method.UNREGISTER: self._unregister,
            Method.LIST: self._list,
            Method.CONNECT: self._connect,
            Method.WATCH: self._watch,
        }
        # The offline mailbox (mail_handling.py), when the server has one.
        self._mail = MailHandler(_MailPort(self), c.mailbox) if c.mailbox is not None else None
        if self._mail is not None:
            self._handlers[Method.DEPOSIT] = self._mail.deposit
            self._handlers[Method.FETCH] = self._mail.fetch

    # ------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self._outbox = self._outbox, []
        return out

    def datagrams_to_send_from_other(self) -> list[tuple[bytes, Address]]:
        """Replies that must leave from the other socket (RFC 5780 CHANGE-REQUEST,
        or requests that arrived there)."""
        out, self._outbox_other = self._outbox_other, []
        return out

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def pending_registrations(self) -> list[PendingRegistration]:
        out, self._registrations = self._registrations, []
        return out

    def introductions_to_forward(self) -> list[tuple[str, int, bytes]]:
        """INTRODUCEs and relayed DATA indications for mirrored targets:
        (home instance, target id, datagram), for :meth:`deliver_forwarded` there."""
        out, self._forwards = self._forwards, []
        return out

    def mail_requests(self) -> list[MailRequest]:
        """DEPOSITs and FETCHes checked and waiting for the mailbox store;
        answer each with :meth:`mail_deposited`, :meth:`mail_refused`,
        :meth:`mail_fetched` or :meth:`mail_failed`."""
        return self._mail.take_requests() if self._mail is not None else []

    def mail_deposited(self, pending: MailRequest, stored: bool, now: float) -> None:
        assert self._mail is not None
        self._mail.deposited(pending, stored, now)

    def mail_refused(self, pending: MailRequest, reason: str, now: float) -> None:
        assert self._mail is not None
        self._mail.refused(pending, reason, now)

    def mail_fetched(self, pending: MailRequest, mail: Mail | None, count: int, now: float) -> None:
        assert self._mail is not None
        self._mail.fetched(pending, mail, count, now)

    def mail_failed(self, pending: MailRequest, now: float) -> None:
        assert self._mail is not None
        self._mail.failed(pending, now)

    # ------------------------------------------------------------ other instances

    def mirror(self, records: list[PeerRecord], now: float) -> None:
        """Take in the latest state of peers registered with other instances
        (``home`` set).  A peer of ours that registered elsewhere since (a
        later ``last_seen``) has moved: its record becomes the mirror."""
        for record in records:
            if not record.home or is_legacy_identity(record.identity):
                continue
            # Another instance assigned it: it exists (a CONNECT to it is 404 when offline, not 410).
            self.highest_id = max(self.highest_id, record.peer_id)
            current = self.directory.get(record.peer_id)
            if current is not None and not current.home and record.last_seen <= current.last_seen:
                continue  # ours is newer (or the same registration)
            if record.expires_at <= now:
                if current is not None:
                    self.directory.remove(record.peer_id, now)
                continue
            if current is not None and not current.home:
                self.stats["peers_moved_away"] += 1
            self.directory.put(record)
            self.stats["mirrored"] += 1
        self._publish_presence(now)

    def deliver_forwarded(self, target_id: int, data: bytes, now: float) -> None:
        """Send on a datagram another instance built for ``target_id``, a peer
        registered here: an INTRODUCE (retransmitted until acknowledged) or a
        relayed DATA indication (sent once, like any relayed datagram)."""
        if data[:2] != _DATA_TYPE:
            self.deliver_introduction(target_id, data, now)
            return
        target = self.directory.get(target_id)
        if target is None or target.home or not 20 <= len(data) <= _MAX_DATA_INDICATION:
            self.stats["relay_undeliverable"] += 1
            return
        self.stats["relayed_from_instances"] += 1
        self.stats["relayed_from_instances_bytes"] += len(data)
        self._outbox.append((data, target.observed))

    def deliver_introduction(self, target_id: int, data: bytes, now: float) -> None:
        """Send (and retransmit until acknowledged) an INTRODUCE another
        instance built for ``target_id``, a peer registered here."""
        target = self.directory.get(target_id)
        if target is None or target.home or data[:2] != _INTRODUCE_TYPE or len(data) < 20:
            self.stats["introductions_undeliverable"] += 1
            return
        transaction_id = data[8:20]
        if transaction_id in self._introductions:
            return  # a duplicate of one being retransmitted
        if len(self._introductions) >= self.config.max_pending_introductions:
            self.stats["introductions_dropped"] += 1
            return
        self._outbox.append((self._introductions.start(transaction_id, data, target.observed, now), target.observed))
        self.stats["introductions_sent"] += 1

    def get_timer(self) -> float | None:
        timers = (self._introductions.get_timer(), self._notifications.get_timer(), self.directory.next_expiry())
        candidates = [t for t in timers if t is not None]
        return min(candidates) if candidates else None

    def handle_timer(self, now: float) -> None:
        timers = self._introductions.handle_timer(now)
        for data, address in timers.resend:
            self.stats["introductions_retransmitted"] += 1
            self._outbox.append((data, address))
        self.stats["introductions_timed_out"] += len(timers.timed_out)
        notifications = self._notifications.handle_timer(now)
        for data, (_, address) in notifications.resend:
            self.stats["presence_retransmitted"] += 1
            self._outbox.append((data, address))
        for _, (watcher, _) in notifications.timed_out:
            self.stats["presence_timed_out"] += 1
            self._subscriptions.done(watcher, delivered=False)
        # A batch per timer: the adapter's timer comes straight back while more are due.
        for record in self.directory.expire(now, EXPIRE_BATCH):
            if record.home:
                continue  # a mirror: its home reports it
            self.stats["peers_expired"] += 1
            self._events.append(PeerOffline(record.peer_id, "expired"))
        self._publish_presence(now)
        self._prune_replies(now)

    # ------------------------------------------------------------ input

    def receive_datagram(self, data: bytes, address: Address, now: float, *, via_other: bool = False) -> None:
        """Handle one datagram.  Never raises for anything a remote can send.
        ``via_other``: it arrived on the other (RFC 5780) socket, which serves
        Binding only."""
        self.stats["datagrams_received"] += 1
        if via_other:
            self._receive_on_other(data, address, now)
            return
        if looks_like_stun(data):
            self._receive_stun(data, address, now)
        elif self.config.legacy_text and legacy_text.looks_like_legacy(data):
            self._legacy.receive(data, address, now)
        else:
            self._drop("not STUN", address)
        if self.directory.has_presence_changes() or self._presence_waiting:
            self._publish_presence(now)

    def _drop(self, reason: str, address: Address) -> None:
        self.stats["dropped"] += 1
        self.stats["dropped: " + reason] += 1
        self._events.append(Dropped(reason, address))

    def answer_hot(self, data: bytes, address: Address, now: float) -> bool:
        """The hottest requests, without the generic codec: a Binding request
        with no attributes but an optional FINGERPRINT (what browsers and most
        STUN clients send), and REFRESH as the peers send it.  The same bytes
        as the generic path, several times cheaper.  False (nothing done) for
        anything else, which then takes the generic path.

        The compiled fast path (rendezvous/_fastpath.c) answers exactly these,
        with exactly these bytes, for the REFRESHes whose session this core
        checked and handed it (:meth:`attach_session_cache`)."""
        size = len(data)
        if (
            (size == 20 and data[:8] == _BARE_BINDING[False])
            or (size == 28 and data[:8] == _BARE_BINDING[True] and _fingerprint_ok(data))
        ) and self.config.other_address is None:
            # (With an RFC 5780 other address every Binding answer carries
            # OTHER-ADDRESS: the generic path adds it.)
            self.stats["binding"] += 1
            body = self._binding_bodies.get(address)
            if body is None:
                if ":" in address[0]:
                    # IPv6: the XOR mask includes the transaction id, so no caching;
                    # SOFTWARE only when it stays within 3x the request (not for 20 bytes).
                    software = self._software_tlv if size == 28 else b""
                    self._outbox.append((fast_binding_success(data[8:20], address, software), address))
                    return True
                body = binding_body(address, self._software_tlv)
                if len(self._binding_bodies) >= 4096:
                    self._binding_bodies.clear()
                self._binding_bodies[address] = body
            self._outbox.append((binding_success_with_body(data[8:20], body), address))
            return True
        if (
            data[:2] == _REFRESH_TYPE
            and data[4:8] == MAGIC_COOKIE_BYTES
            and 44 <= size <= 60
            and int.from_bytes(data[2:4], "big") == size - 20
        ):
            # REFRESH is idempotent (a retransmission just extends the TTL
            # again), so it needs no reply cache either.
            return self._fast_refresh(data, address, now)
        return False

    def fast_answered(self, bindings: int, refreshed: Sequence[int], now: float) -> None:
        """The compiled fast path answered ``bindings`` Binding requests and
        the REFRESHes of ``refreshed`` (peer id, granted TTL, flat) with
        sessions this core gave it: count them and extend those peers' TTLs,
        as :meth:`answer_hot` would have."""
        stats = self.stats
        refreshes = len(refreshed) // 2
        stats["datagrams_received"] += bindings + refreshes
        stats["answered_in_c"] += bindings + refreshes
        if bindings:
            stats["binding"] += bindings
        if not refreshes:
            return
        stats["refresh"] += refreshes
        get, touch = self.directory.get, self.directory.touch
        pairs = iter(refreshed)
        for peer_id, ttl in zip(pairs, pairs, strict=True):
            peer = get(peer_id)
            if peer is None:
                # Cannot happen: a record leaves the directory only through
                # put/remove, which take its session out of the cache first.
                stats["fast_refresh_unknown"] += 1
                continue
            previous = peer.expires_at
            peer.last_seen = now
            peer.expires_at = now + ttl
            touch(peer, previous)

    def attach_session_cache(self, cache: SessionCache) -> None:
        """Hand every session checked from now on to ``cache``; it forgets a
        peer's as soon as the directory replaces or removes its record.  Call
        before serving (sessions checked earlier are not handed over)."""
        self._session_cache = cache
        self.directory.on_forget = cache.discard

    def _receive_stun(self, data: bytes, address: Address, now: float) -> None:
        if self.answer_hot(data, address, now):
            return
        try:
            message = decode(data, allow_classic=True)
        except StunProtocolError as error:
            self._drop(f"malformed: {type(error).__name__}", address)
            return
        cls = message.message_class
        if cls == MessageClass.REQUEST:
            self._receive_request(message, len(data), address, now)
        elif cls == MessageClass.INDICATION:
            self._receive_indication(message, address, now)
        elif message.method == Method.PRESENCE and not message.classic:
            # As for INTRODUCE: only the watcher, from the address it was told at.
            context = self._notifications.context(message.transaction_id)
            if context is None or context[1] != address:
                self._drop("unexpected response", address)
            else:
                self._notifications.complete(message.transaction_id)
                self.stats["presence_acknowledged"] += 1
                if self._subscriptions.done(context[0], delivered=True):
                    self._notify(context[0], now)
        elif message.method == Method.INTRODUCE and not message.classic:
            # Only the target, from the address it was introduced at, can acknowledge.
            if self._introductions.context(message.transaction_id) != address:
                self._drop("unexpected response", address)
            else:
                self._introductions.complete(message.transaction_id)
                self.stats["introductions_acknowledged"] += 1
        else:
            self._drop("unexpected response", address)

    def _receive_request(self, message: Message, length: int, address: Address, now: float) -> None:
        if message.classic:
            self._binding_classic(message, length, address)
            return
        key = (address, message.transaction_id)
        cached = self._replies.get(key)
        if cached is not None:
            self.stats["retransmissions_answered"] += 1
            if not isinstance(cached[1], _InProgress):
                self._outbox.append((cached[1], address))
            return
        if message.unknown_required:
            reply = self._error(message, ErrorCode.UNKNOWN_ATTRIBUTE)
            # Each code once, and no more than the attribute holds (64 bytes):
            # a request can carry hundreds of unknown attributes.
            reply.add(Attr.UNKNOWN_ATTRIBUTES, tuple(dict.fromkeys(message.unknown_required))[:32])
            self._send_reply(reply, address, length, verified=False, cache_until=None)
            return
        method = message.method
        if method == Method.BINDING:
            self._binding(message, length, address, arrived_on_other=False)
            return
        if method == Method.REGISTER:
            self._register(message, length, address, now)
            return
        handler = self._handlers.get(method)
        if handler is None:
            self.stats["unknown_method"] += 1
            reply = self._error(message, ErrorCode.BAD_REQUEST, f"Unknown method 0x{method:03x}")
            self._send_reply(reply, address, length, verified=False, cache_until=None)
            return
        result = handler(message, address, now, length)
        if result is not None:
            verified = result.message_class == MessageClass.SUCCESS
            # REFRESH is idempotent: a retransmission is simply processed again.
            cache_until = None if method == Method.REFRESH else now + self.config.transaction_cache_seconds
            self._send_reply(result, address, length, verified=verified, cache_until=cache_until)

    # ------------------------------------------------------------ replies

    def _success(self, request: Message) -> Message:
        return Message(request.method, MessageClass.SUCCESS, request.transaction_id)

    def _error(self, request: Message, code: ErrorCode, reason: str | None = None) -> Message:
        self.stats[f"error {int(code)}"] += 1
        value = ErrorValue(int(code), reason or REASONS[code])
        return Message(request.method, MessageClass.ERROR, request.transaction_id, [(Attr.ERROR_CODE, value)])

    def _send_reply(
        self,
        reply: Message,
        address: Address,
        request_length: int,
        *,
        verified: bool,
        cache_until: float | None,
        from_other: bool = False,
    ) -> None:
        if not reply.classic:
            # RFC 3489 parsers (stund) reject text attributes whose length is not
            # a multiple of 4; classic replies carry none.
            reply.add(Attr.SOFTWARE, self.config.software)
        data = encode(reply)
        if not verified and len(data) > AMPLIFICATION_FACTOR * request_length:
            # Until an address has proven itself, never answer it with more than
            # three times what it sent (RFC 8489 / QUIC style anti-amplification).
            reply.attributes = [(c, v) for c, v in reply.attributes if c != Attr.SOFTWARE]
            data = encode(reply)
            if len(data) > AMPLIFICATION_FACTOR * request_length:
                self._drop("reply would amplify", address)
                return
        if cache_until is not None:
            self._remember(address, reply.transaction_id, data, cache_until)
        self.stats[_reply_counter(reply)] += 1
        (self._outbox_other if from_other else self._outbox).append((data, address))

    def _remember(self, address: Address, transaction_id: bytes, data: bytes | _InProgress, until: float) -> None:
        key = (address, transaction_id)
        self._replies.pop(key, None)
        self._replies[key] = (until, data)
        if len(self._replies) > self.config.transaction_cache_size:
            self._replies.popitem(last=False)

    def _prune_replies(self, now: float) -> None:
        # Insertion order is expiry order (same lifetime for all), so stop at the first live one.
        replies = self._replies
        while replies:
            key, (until, _) = next(iter(replies.items()))
            if until > now:
                break
            replies.popitem(last=False)

    # ------------------------------------------------------------ methods

    def _binding(self, message: Message, length: int, address: Address, *, arrived_on_other: bool) -> None:
        """Binding, with RFC 5780's NAT behaviour discovery when the server has
        a second socket: OTHER-ADDRESS says where it is, CHANGE-REQUEST asks for
        the answer to come from there (so the client learns its NAT's filtering)."""
        self.stats["binding"] += 1
        # Binding requests not counted here took the fast path (one success reply each: metrics.replies).
        self.stats["binding_generic"] += 1
        reply = self._success(message).add(Attr.XOR_MAPPED_ADDRESS, address)
        change = message.get(Attr.CHANGE_REQUEST, 0) & 0x6
        other = self.config.other_address
        if other is not None:
            from_other = arrived_on_other != bool(change)
            origin = other if from_other else self.config.primary_address
            if origin is not None:
                reply.add(Attr.RESPONSE_ORIGIN, origin)
            reply.add(Attr.OTHER_ADDRESS, other)
        elif change:
            reply = self._error(message, ErrorCode.UNKNOWN_ATTRIBUTE)
            reply.add(Attr.UNKNOWN_ATTRIBUTES, (int(Attr.CHANGE_REQUEST),))
            from_other = False
        else:
            from_other = arrived_on_other
        if from_other:
            self.stats["binding_from_other"] += 1
        self._send_reply(reply, address, length, verified=False, cache_until=None, from_other=from_other)

    def _receive_on_other(self, data: bytes, address: Address, now: float) -> None:
        if not looks_like_stun(data):
            self._drop("not STUN on the other socket", address)
            return
        try:
            message = decode(data)
        except StunProtocolError as error:
            self._drop(f"malformed: {type(error).__name__}", address)
            return
        if message.method != Method.BINDING or message.message_class != MessageClass.REQUEST or message.classic:
            self._drop("only Binding on the other socket", address)
            return
        self._binding(message, len(data), address, arrived_on_other=True)

    def _binding_classic(self, message: Message, length: int, address: Address) -> None:
        """RFC 3489 request (no magic cookie): answer with MAPPED-ADDRESS as stund and coturn do."""
        if message.method != Method.BINDING:
            self._drop("classic non-Binding request", address)
            return
        self.stats["binding_classic"] += 1
        reply = Message(Method.BINDING, MessageClass.SUCCESS, message.transaction_id, classic=True)
        reply.add(Attr.MAPPED_ADDRESS, address)
        self._send_reply(reply, address, length, verified=False, cache_until=None)

    def _clamp_ttl(self, requested: int | None) -> int:
        if requested is None:
            return self.config.default_ttl
        return max(self.config.min_ttl, min(self.config.max_ttl, requested))

    def _register(self, message: Message, length: int, address: Address, now: float) -> None:
        self.stats["register"] += 1
        public_key = message.get(Attr.PUBLIC_KEY)
        if public_key is None:
            reply = self._error(message, ErrorCode.BAD_REQUEST, "PUBLIC-KEY missing")
            self._send_reply(reply, address, length, verified=False, cache_until=None)
            return
        challenge = message.get(Attr.CHALLENGE)
        signature = message.get(Attr.SIGNATURE)
        if challenge is None or not self.tokens.check_challenge(challenge, address, public_key, now):
            self.stats["challenges_issued"] += 1
            reply = self._error(message, ErrorCode.UNAUTHORIZED)
            reply.add(Attr.CHALLENGE, self.tokens.challenge(address, public_key, now))
            self._send_reply(reply, address, length, verified=False, cache_until=None)
            return
        # Logged once per registration: the first (challenge) step is not.
        self._events.append(RequestReceived("REGISTER", address))
        if not self._register_limit.allow(address[0], now):
            reply = self._error(message, ErrorCode.RATE_LIMITED)
            self._send_reply(reply, address, length, verified=False, cache_until=None)
            return
        details = registration_details(
            message.get(Attr.NICKNAME, ""),
            [c.address for c in message.get_all(Attr.CANDIDATE) if c.kind == CandidateKind.LOCAL],
            message.get(Attr.TTL),
        )
        if signature is None or not verify_signature(
            public_key, signature, registration_payload(challenge, public_key, details)
        ):
            self.stats["bad_signatures"] += 1
            reply = self._error(message, ErrorCode.UNAUTHORIZED, "Bad Signature")
            self._send_reply(reply, address, length, verified=False, cache_until=None)
            return
        locals_ = tuple(c.address for c in message.get_all(Attr.CANDIDATE) if c.kind == CandidateKind.LOCAL)[
            : self.config.max_local_candidates
        ]
        pending = PendingRegistration(
            identity=public_key,
            address=address,
            nickname=message.get(Attr.NICKNAME, ""),
            local=locals_,
            ttl=self._clamp_ttl(message.get(Attr.TTL)),
            request=message,
            request_length=length,
        )
        self._remember(address, message.transaction_id, IN_PROGRESS, now + self.config.transaction_cache_seconds)
        self._registrations.append(pending)

    def complete_registration(
        self, pending: PendingRegistration, peer_id: int, first_seen: float | None, now: float
    ) -> None:
        """The registry bound ``pending.identity`` to ``peer_id`` (durably): go online and answer."""
        self.highest_id = max(self.highest_id, peer_id)
        record = self.directory.get(peer_id)
        if pending.request is not None and (refusal := self._online_cap(pending, record)) is not None:
            self.fail_registration(pending, now, refusal)
            return
        # A new session: the old one's subscription ends with it (the peer
        # sends WATCH again once registered).
        self._subscriptions.drop(peer_id)
        if record is not None and record.identity == pending.identity:
            record.home = ""  # registered here now, wherever it was before
            if record.observed != pending.address:
                # Its registration is still live, yet it registers anew from
                # another address: a new process (it crashed and came back
                # within its TTL), or its NAT moved it. Either way the links
                # its contacts hold are dead: a new online-since tells them
                # (PRESENCE, LIST), so they drop those links now instead of
                # at QUIC's idle timeout.
                # (Whole seconds on the wire: it must differ as one.)
                record.online_since = max(now, record.online_since + 1)
                self.directory.online_again(record)
            record.observed = pending.address
            record.nickname = pending.nickname
            record.local = pending.local
            record.last_seen = now
            previous_expiry = record.expires_at
            record.expires_at = now + pending.ttl
            self.directory.put(record)
            # put() compares the expiry with the record it holds, which is this
            # one, changed in place: without this the new expiry was never
            # filed, and a peer that registered again while online never expired.
            self.directory.touch(record, previous_expiry)
        else:
            record = PeerRecord(
                peer_id=peer_id,
                identity=pending.identity,
                nickname=pending.nickname,
                observed=pending.address,
                local=pending.local,
                first_seen=first_seen if first_seen else now,
                last_seen=now,
                expires_at=now + pending.ttl,
                online_since=now,
            )
            self.directory.put(record)
            self._events.append(PeerOnline(peer_id, pending.address))
        self.stats["registered"] += 1
        self._publish_presence(now)
        request = pending.request
        if request is None:
            self._legacy.registered(pending, peer_id)
            return
        reply = self._success(request)
        reply.add(Attr.PEER_ID, peer_id)
        reply.add(Attr.TTL, pending.ttl)
        reply.add(Attr.XOR_MAPPED_ADDRESS, pending.address)
        reply.add(Attr.SESSION, self.tokens.session(peer_id, pending.identity, pending.address))
        self._send_reply(
            reply,
            pending.address,
            pending.request_length,
            verified=True,
            cache_until=now + self.config.transaction_cache_seconds,
        )

    def _online_cap(self, pending: PendingRegistration, record: PeerRecord | None) -> str | None:
        """The reason phrase refusing a keyed peer that would go online past
        ``max_online`` or ``max_online_per_ip``; None if it may.  A peer
        already online here from the same IP only registers again."""
        host = pending.address[0]
        if record is not None and record.identity == pending.identity and not record.home:
            if record.observed[0] == host:
                return None
            if self.directory.keyed_count_at(host) >= self.config.max_online_per_ip:
                return TOO_MANY_FROM_ADDRESS
            return None
        if len(self.directory) >= self.config.max_online:
            return SERVER_FULL
        if self.directory.keyed_count_at(host) >= self.config.max_online_per_ip:
            return TOO_MANY_FROM_ADDRESS
        return None

    def fail_registration(self, pending: PendingRegistration, now: float, reason: str | None = None) -> None:
        """The registry could not assign an id (overloaded, broken, or full:
        ``reason`` is the 503's phrase then, and of the online caps)."""
        self.stats["registry_failures" if reason is None else f"registrations_refused: {reason}"] += 1
        if pending.request is None:
            self._legacy.registration_failed(pending)
            return
        self._replies.pop((pending.address, pending.request.transaction_id), None)
        reply = self._error(pending.request, ErrorCode.TRY_AGAIN_LATER, reason)
        self._send_reply(reply, pending.address, pending.request_length, verified=False, cache_until=None)

    def _authorise(self, message: Message, address: Address, now: float, limited: bool = True) -> PeerRecord | Message:
        """The registered peer behind a request, or the error reply to send."""
        token = message.get(Attr.SESSION)
        if token is None:
            return self._error(message, ErrorCode.UNAUTHORIZED, "SESSION missing")
        record = self._session_record(token, address)
        if record is None:
            # Unknown, expired, moved to another address, or forged: either way
            # the holder of the key has to register again.
            self.stats["stale_sessions"] += 1
            return self._error(message, ErrorCode.UNAUTHORIZED, "Register Again")
        # LIST and CONNECT make work and traffic; REFRESH and UNREGISTER are cheap.
        if limited and not self._request_limit.allow(record.peer_id, now):
            return self._error(message, ErrorCode.RATE_LIMITED)
        return record

    def _session_record(self, token: bytes, address: Address) -> PeerRecord | None:
        """The online peer whose SESSION ``token`` is valid from ``address``."""
        record = self.directory.get(session_peer_id(token))
        # A mirrored peer's requests go to its home: here it registers first.
        if record is None or record.home or record.observed != address:
            return None
        if record.verified_session != token:
            if not self.tokens.check_session(token, record.identity, address):
                return None
            # Tokens are bound to (id, key, address) and the address was just
            # compared: a token that checked out once stays good for this record
            # (the directory clears this when it replaces or removes the record).
            record.verified_session = token
            if self._session_cache is not None:
                self._session_cache.add(record.peer_id, address, token)
        return record

    def _fast_refresh(self, data: bytes, address: Address, now: float) -> bool:
        """REFRESH as the peers send it (SESSION, optional TTL, optional
        FINGERPRINT, in that order), without the generic codec.  Returns
        False for anything else, which then takes the generic path."""
        size = len(data)
        if data[20:24] != _SESSION_TLV:
            return False
        offset = 44
        ttl: int | None = None
        if size >= offset + 8 and data[offset : offset + 4] == _TTL_TLV:
            ttl = int.from_bytes(data[offset + 4 : offset + 8], "big")
            offset += 8
        if size == offset + 8:
            if data[offset : offset + 4] != _FINGERPRINT_TLV or int.from_bytes(
                data[offset + 4 : offset + 8], "big"
            ) != (binascii.crc32(data[:offset]) ^ FINGERPRINT_XOR):
                return False
        elif size != offset:
            return False
        peer = self._session_record(data[24:44], address)
        if peer is None:
            return False  # the generic path answers 401 (and counts it)
        self.stats["refresh"] += 1
        granted = self._clamp_ttl(ttl)
        previous = peer.expires_at
        peer.last_seen = now
        peer.expires_at = now + granted
        self.directory.touch(peer, previous)
        body = self._binding_bodies.get(address) if ":" not in address[0] else None
        if body is None:
            mapped = encode_attribute(Attr.XOR_MAPPED_ADDRESS, address, data[8:20])
            body = mapped + self._software_tlv
        self._outbox.append((refresh_success(data[8:20], granted, body), address))
        return True

    def _refresh(self, message: Message, address: Address, now: float, length: int) -> Message:
        self.stats["refresh"] += 1
        self.stats["refresh_generic"] += 1  # as binding_generic
        peer = self._authorise(message, address, now, limited=False)
        if isinstance(peer, Message):
            return peer
        ttl = self._clamp_ttl(message.get(Attr.TTL))
        previous = peer.expires_at
        peer.last_seen = now
        peer.expires_at = now + ttl
        self.directory.touch(peer, previous)
        reply = self._success(message)
        reply.add(Attr.TTL, ttl)
        reply.add(Attr.XOR_MAPPED_ADDRESS, address)
        return reply

    def _unregister(self, message: Message, address: Address, now: float, length: int) -> Message:
        self._events.append(RequestReceived("UNREGISTER", address))
        peer = self._authorise(message, address, now, limited=False)
        if isinstance(peer, Message):
            return peer
        self.directory.remove(peer.peer_id, now)
        self._events.append(PeerOffline(peer.peer_id, "unregistered"))
        return self._success(message)

    def _list(self, message: Message, address: Address, now: float, length: int) -> Message:
        self.stats["list"] += 1
        self._events.append(RequestReceived("LIST", address))
        peer = self._authorise(message, address, now)
        if isinstance(peer, Message):
            return peer
        limit = message.get(Attr.LIMIT, self.config.list_default_limit)
        limit = max(1, min(limit, self.config.list_max_limit))
        cursor = message.get(Attr.CURSOR)
        after = 0
        if cursor is not None:
            if len(cursor) != 5 or cursor[0] != 1:
                return self._error(message, ErrorCode.BAD_REQUEST, "Bad CURSOR")
            after = struct.unpack_from("!I", cursor, 1)[0]
        reply = self._success(message)
        # Header + SOFTWARE + FINGERPRINT + a CURSOR must still fit after the entries.
        budget = MAX_REPLY_BYTES - 20 - _padded(len(self.config.software.encode())) - 8 - 12
        used = 0
        last_id = after
        more = False
        for record in self.directory.page(after, limit + 2):  # +1 to see if there is more, +1 for the requester
            if record.peer_id == peer.peer_id:
                last_id = record.peer_id
                continue
            entry = PeerEntry(record.peer_id, int(record.online_since), record.identity, record.nickname)
            size = _padded(44 + len(record.nickname.encode()))
            if limit == 0 or used + size > budget:
                more = True
                break
            reply.add(Attr.PEER_ENTRY, entry)
            used += size
            limit -= 1
            last_id = record.peer_id
        if more:
            reply.add(Attr.CURSOR, b"\x01" + struct.pack("!I", last_id))
        return reply

    def _connect(self, message: Message, address: Address, now: float, length: int) -> Message:
        target_id = message.get(Attr.PEER_ID)
        self._events.append(RequestReceived("CONNECT", address, f" to peer {target_id}"))
        self.stats["connect"] += 1
        peer = self._authorise(message, address, now)
        if isinstance(peer, Message):
            return peer
        if target_id is None:
            return self._error(message, ErrorCode.BAD_REQUEST, "PEER-ID missing")
        target = self.directory.get(target_id)
        if target is None and not 0 < target_id <= self.highest_id:
            return self._error(message, ErrorCode.NO_SUCH_PEER)
        if target is None or is_legacy_identity(target.identity):
            return self._error(message, ErrorCode.UNKNOWN_PEER)
        if target.peer_id == peer.peer_id:
            return self._error(message, ErrorCode.BAD_REQUEST, "Cannot connect to yourself")
        reply = self._success(message)
        _describe(reply, target)
        # Both sides get the same fresh key: their probes to each other carry
        # MESSAGE-INTEGRITY under it, so nobody else can inject a path.
        pair = (peer.peer_id, target.peer_id)
        pending_id, pending_key = self._introducing.get(pair, (b"", b""))
        if self._introductions.context(pending_id) == target.observed:
            # This pair's introduction is still being retransmitted: one is
            # enough, and the requester must use the key the target was given.
            self.stats["introductions_coalesced"] += 1
            reply.add(Attr.PUNCH_KEY, pending_key)
            return reply
        punch_key = self._random(PUNCH_KEY_LENGTH)
        reply.add(Attr.PUNCH_KEY, punch_key)
        if len(self._introductions) >= self.config.max_pending_introductions:
            self.stats["introductions_dropped"] += 1
            return reply
        introduction = Message(Method.INTRODUCE, MessageClass.REQUEST, _introduction_id(message.transaction_id, target))
        _describe(introduction, peer)
        introduction.add(Attr.PUNCH_KEY, punch_key)
        data = encode(introduction.add(Attr.SOFTWARE, self.config.software))
        self._introducing[pair] = (introduction.transaction_id, punch_key)
        if len(self._introducing) > 2 * self.config.max_pending_introductions:
            self._introducing.clear()  # only a shortcut; the table is the truth
        if target.home:
            self._forwards.append((target.home, target.peer_id, data))
            self.stats["introductions_forwarded"] += 1
            return reply
        self._outbox.append(
            (self._introductions.start(introduction.transaction_id, data, target.observed, now), target.observed)
        )
        self.stats["introductions_sent"] += 1
        return reply

    def _watch(self, message: Message, address: Address, now: float, length: int) -> Message:
        self.stats["watch"] += 1
        peer = self._authorise(message, address, now)
        if isinstance(peer, Message):
            return peer
        # At most one WATCH-IDS of at most MAX_WATCH_IDS ids (so that the
        # answer fits); none just asks nothing, which is how a peer with no
        # contacts learns that the server knows WATCH at all.
        lists = message.get_all(Attr.WATCH_IDS)
        unwatch = message.get_all(Attr.UNWATCH_IDS)
        if len(lists) > 1 or len(unwatch) > 1:
            return self._error(message, ErrorCode.BAD_REQUEST, "One WATCH-IDS" if len(lists) > 1 else "One UNWATCH-IDS")
        ids: tuple[int, ...] = lists[0] if lists else ()
        if len(ids) > MAX_WATCH_IDS:
            return self._error(message, ErrorCode.BAD_REQUEST, "Too Many Ids")
        # Taken out before the new ones go in: a peer at the cap swaps contacts in one request.
        if unwatch:
            self._subscriptions.unwatch(peer.peer_id, unwatch[0])
        if not self._subscriptions.watch(peer.peer_id, ids):
            self.stats["watch_refused"] += 1
            return self._error(message, ErrorCode.BAD_REQUEST, "Too Many Watched")
        return self._presence_of(self._success(message), ids)

    def _presence_of(self, message: Message, ids: tuple[int, ...]) -> Message:
        """Add the presence of ``ids`` as they stand: a PEER-ENTRY (as LIST
        has it: key, nickname, online-since) for each keyed peer online, and
        the others in OFFLINE-IDS."""
        offline = []
        for peer_id in dict.fromkeys(ids):
            record = self.directory.get(peer_id)
            if record is None or is_legacy_identity(record.identity):
                offline.append(peer_id)
            else:
                message.add(
                    Attr.PEER_ENTRY,
                    PeerEntry(record.peer_id, int(record.online_since), record.identity, record.nickname),
                )
        if offline:
            message.add(Attr.OFFLINE_IDS, tuple(offline))
        return message

    def _publish_presence(self, now: float) -> None:
        """Turn the directory's presence changes into PRESENCE requests."""
        ready: set[int] = set()
        for peer_id, _ in self.directory.take_presence_changes():
            record = self.directory.get(peer_id)
            if record is None or record.home:
                # Its session here ended (offline, or it registered with
                # another instance): so does its subscription.
                self._subscriptions.drop(peer_id)
                self._presence_waiting.discard(peer_id)
            ready.update(self._subscriptions.changed(peer_id))
        if self._presence_waiting:
            ready |= self._presence_waiting
            self._presence_waiting = set()
        for watcher in ready:
            self._notify(watcher, now)

    def _notify(self, watcher: int, now: float) -> None:
        """Send ``watcher`` what it is owed, if nothing is in flight to it."""
        record = self.directory.get(watcher)
        if record is None or record.home:
            self._subscriptions.drop(watcher)
            return
        if len(self._notifications) >= self.config.max_pending_presence:
            self.stats["presence_deferred"] += 1
            self._presence_waiting.add(watcher)
            return
        batch = self._subscriptions.take(watcher, MAX_WATCH_IDS)
        if not batch:
            return
        notification = self._presence_of(Message(Method.PRESENCE, MessageClass.REQUEST, self._random(12)), batch)
        data = encode(notification)
        self._outbox.append(
            (
                self._notifications.start(notification.transaction_id, data, (watcher, record.observed), now),
                record.observed,
            )
        )
        self.stats["presence_sent"] += 1

    def _receive_indication(self, message: Message, address: Address, now: float) -> None:
        if message.method != Method.SEND or message.classic:
            self._drop("unexpected indication", address)
            return
        token = message.get(Attr.SESSION)
        dest_id = message.get(Attr.PEER_ID)
        payload = message.get(Attr.DATA)
        if token is None or dest_id is None or payload is None:
            self._drop("SEND incomplete", address)
            return
        sender = self.directory.get(session_peer_id(token))
        if (
            sender is None
            or sender.home
            or sender.observed != address
            or not self.tokens.check_session(token, sender.identity, address)
        ):
            self._drop("SEND unauthorised", address)
            return
        if message.unknown_required:
            # RFC 8489 6.3: an indication with unknown comprehension-required attributes is discarded.
            self._drop("SEND with unknown attributes", address)
            return
        dest = self.directory.get(dest_id)
        if dest is None or is_legacy_identity(dest.identity) or dest is sender:
            self._drop("SEND to unknown peer", address)
            return
        if not (
            self._relay_packets.allow(sender.peer_id, now)
            and self._relay_bytes.allow(sender.peer_id, now, len(payload))
        ):
            self._drop("relay rate limited", address)
            return
        assert len(payload) <= MAX_RELAY_PAYLOAD  # the codec's bound on DATA
        out = Message(Method.DATA, MessageClass.INDICATION, message.transaction_id)
        out.add(Attr.PEER_ID, sender.peer_id).add(Attr.DATA, payload)
        self.stats["relayed_packets"] += 1
        self.stats["relayed_bytes"] += len(payload)
        if dest.home and not (self.sibling_prefix and dest.home.startswith(self.sibling_prefix)):
            # Its NAT knows its home's address, not ours: the home sends it on.
            self.stats["relay_forwarded"] += 1
            self._forwards.append((dest.home, dest.peer_id, encode(out)))
            return
        self._outbox.append((encode(out), dest.observed))


# Header start (type, length, cookie) of a bare Binding request, without and with FINGERPRINT.
_BARE_BINDING = {False: b"\x00\x01\x00\x00" + MAGIC_COOKIE_BYTES, True: b"\x00\x01\x00\x08" + MAGIC_COOKIE_BYTES}
_FINGERPRINT_TLV = b"\x80\x28\x00\x04"
_SESSION_TLV = struct.pack("!HH", Attr.SESSION, 20)
_TTL_TLV = struct.pack("!HH", Attr.TTL, 4)
_REFRESH_TYPE = struct.pack("!H", pack_type(Method.REFRESH, MessageClass.REQUEST))
_INTRODUCE_TYPE = struct.pack("!H", pack_type(Method.INTRODUCE, MessageClass.REQUEST))
_DATA_TYPE = struct.pack("!H", pack_type(Method.DATA, MessageClass.INDICATION))
# Header, PEER-ID, DATA (padded) and FINGERPRINT around the largest payload.
_MAX_DATA_INDICATION = 20 + 8 + 4 + MAX_RELAY_PAYLOAD + 3 + 8


def _fingerprint_ok(data: bytes) -> bool:
    return data[20:24] == _FINGERPRINT_TLV and int.from_bytes(data[24:28], "big") == (
        binascii.crc32(data[:20]) ^ FINGERPRINT_XOR
    )


def _padded(length: int) -> int:
    return 4 + length + (-length % 4)


def _describe(message: Message, record: PeerRecord) -> None:
    """Who a peer is and where it can be reached: for CONNECT replies and introductions."""
    message.add(Attr.PEER_ID, record.peer_id)
    message.add(Attr.PUBLIC_KEY, record.identity)
    if record.nickname:
        message.add(Attr.NICKNAME, record.nickname)
    message.add(Attr.CANDIDATE, Candidate(CandidateKind.OBSERVED, record.observed))
    for local in record.local:
        message.add(Attr.CANDIDATE, Candidate(CandidateKind.LOCAL, local))


def _introduction_id(request_id: bytes, target: PeerRecord) -> bytes:
    """Derived from the CONNECT's id so that a retransmitted CONNECT whose reply was
    cached does not start a second introduction; unguessable since the request's is."""
    return hashlib.sha256(b"introduce" + request_id + struct.pack("!I", target.peer_id)).digest()[:12]


class _LegacyPort:
    """The core as the legacy handler sees it (:class:`~rendezvous.legacy_handling.LegacyContext`):
    its outputs, its drop counter and the rate limits both protocols share."""

    def __init__(self, core: ServerCore) -> None:
        self._core = core

    @property
    def config(self) -> ServerConfig:
        return self._core.config

    @property
    def directory(self) -> Directory:
        return self._core.directory

    @property
    def stats(self) -> Counter[str]:
        return self._core.stats

    def send(self, data: bytes, address: Address) -> None:
        self._core._outbox.append((data, address))

    def report(self, event: Event) -> None:
        self._core._events.append(event)

    def drop(self, reason: str, address: Address) -> None:
        self._core._drop(reason, address)

    def queue_registration(self, pending: PendingRegistration) -> None:
        self._core._registrations.append(pending)

    def allow_register(self, address: Address, now: float) -> bool:
        return self._core._register_limit.allow(address[0], now)

    def allow_request(self, peer_id: int, now: float) -> bool:
        return self._core._request_limit.allow(peer_id, now)


class _MailPort:
    """The core as :class:`~rendezvous.mail_handling.MailContext` sees it."""

    def __init__(self, core: ServerCore) -> None:
        self._core = core

    @property
    def stats(self) -> Counter[str]:
        return self._core.stats

    @property
    def highest_id(self) -> int:
        return self._core.highest_id

    def authorise(self, message: Message, address: Address, now: float) -> PeerRecord | Message:
        return self._core._authorise(message, address, now)

    def error(self, request: Message, code: ErrorCode, reason: str | None = None) -> Message:
        return self._core._error(request, code, reason)

    def success(self, request: Message) -> Message:
        return self._core._success(request)

    def in_progress(self, address: Address, transaction_id: bytes, now: float) -> None:
        self._core._remember(address, transaction_id, IN_PROGRESS, now + self._core.config.transaction_cache_seconds)

    def answer(self, reply: Message, address: Address, request_length: int, now: float, *, cache: bool) -> None:
        core = self._core
        if not cache:
            core._replies.pop((address, reply.transaction_id), None)
        core._send_reply(
            reply,
            address,
            request_length,
            verified=reply.message_class == MessageClass.SUCCESS,
            cache_until=now + core.config.transaction_cache_seconds if cache else None,
        )
