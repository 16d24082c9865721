"""Client side of the rendezvous protocol.

``requests`` builds the request messages (pure); :class:`RendezvousClient`
is a small asyncio client over its own UDP socket, with RFC 8489
retransmissions, used by the tests, the benchmark and the command line.
The webpeer drives the same messages from its own sans-IO state machine.
"""

from __future__ import annotations

import asyncio
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .stun import (
    Address,
    Attr,
    Candidate,
    CandidateKind,
    Message,
    MessageClass,
    Method,
    PeerEntry,
    StunProtocolError,
    decode,
    encode,
)
from .tokens import registration_details, registration_payload
from .transactions import RetransmitPolicy, TransactionTable
from .udp import UdpEndpoint

# Interactive default: give up after ~3 s instead of the RFC's 39.5 s.
FAST_POLICY = RetransmitPolicy(rto=0.25, max_sends=5, last_wait_factor=4)


def public_key_bytes(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class RendezvousError(Exception):
    """The server answered with an error response."""

    def __init__(self, code: int, reason: str, response: Message) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason
        self.response = response


class TransactionTimeout(Exception):
    """No answer after all retransmissions."""


def new_request(method: Method) -> Message:
    return Message(method, MessageClass.REQUEST, os.urandom(12))


def register_request(
    public_key: bytes,
    *,
    nickname: str = "",
    local: tuple[Address, ...] = (),
    ttl: int | None = None,
    challenge: bytes | None = None,
    signature: bytes | None = None,
) -> Message:
    message = new_request(Method.REGISTER).add(Attr.PUBLIC_KEY, public_key)
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


def session_request(method: Method, session: bytes, *attributes: tuple[int, Any]) -> Message:
    message = new_request(method).add(Attr.SESSION, session)
    for code, value in attributes:
        message.add(code, value)
    return message


@dataclass(frozen=True)
class Registration:
    peer_id: int
    ttl: int
    observed: Address
    session: bytes


@dataclass(frozen=True)
class PeerInfo:
    """What CONNECT and INTRODUCE say about the other side."""

    peer_id: int
    public_key: bytes
    nickname: str
    candidates: tuple[Candidate, ...]
    punch_key: bytes | None = None  # shared by both sides of one introduction

    @classmethod
    def from_message(cls, message: Message) -> "PeerInfo":
        return cls(
            peer_id=message.get(Attr.PEER_ID),
            public_key=message.get(Attr.PUBLIC_KEY),
            nickname=message.get(Attr.NICKNAME, ""),
            candidates=tuple(message.get_all(Attr.CANDIDATE)),
            punch_key=message.get(Attr.PUNCH_KEY),
        )


@dataclass
class RendezvousClient:
    """One peer's conversation with the server over one UDP socket."""

    server: Address
    private_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    nickname: str = ""
    local: tuple[Address, ...] = ()
    policy: RetransmitPolicy = FAST_POLICY
    registration: Registration | None = None

    def __post_init__(self) -> None:
        self.public_key = public_key_bytes(self.private_key)
        self._endpoint: UdpEndpoint | None = None
        self._table: TransactionTable[asyncio.Future[Message]] = TransactionTable(self.policy)
        self._timer: asyncio.TimerHandle | None = None
        self.introductions: asyncio.Queue[PeerInfo] = asyncio.Queue()
        self.relayed: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self.other: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue()
        self._seen_introductions: dict[bytes, None] = {}

    # ------------------------------------------------------------ socket

    async def open(self, host: str = "127.0.0.1", port: int = 0) -> "RendezvousClient":
        self._endpoint = UdpEndpoint.bind(host, port, self._on_datagram, lambda: None)
        self._endpoint.start()
        return self

    @property
    def address(self) -> Address:
        assert self._endpoint is not None
        return self._endpoint.address

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None

    def send_raw(self, data: bytes, address: Address | None = None) -> None:
        assert self._endpoint is not None
        self._endpoint.sendto(data, address or self.server)

    def _on_datagram(self, data: bytes, address: Address) -> None:
        if address != self.server:
            # Datagrams from anyone else are kept for the caller, up to a bound:
            # a stranger must not be able to fill our memory.
            if self.other.qsize() < 1024:
                self.other.put_nowait((data, address))
            return
        try:
            message = decode(data, require_fingerprint=True)
        except StunProtocolError:
            return
        if message.message_class in (MessageClass.SUCCESS, MessageClass.ERROR):
            future = self._table.complete(message.transaction_id)
            if future is not None and not future.done():
                future.set_result(message)
        elif message.message_class == MessageClass.REQUEST and message.method == Method.INTRODUCE:
            ack = Message(Method.INTRODUCE, MessageClass.SUCCESS, message.transaction_id)
            self.send_raw(encode(ack))
            # A retransmission (our ack was lost) is acknowledged again but reported once.
            if message.transaction_id not in self._seen_introductions:
                self._seen_introductions[message.transaction_id] = None
                if len(self._seen_introductions) > 256:
                    del self._seen_introductions[next(iter(self._seen_introductions))]
                self.introductions.put_nowait(PeerInfo.from_message(message))
        elif message.message_class == MessageClass.INDICATION and message.method == Method.DATA:
            self.relayed.put_nowait((message.get(Attr.PEER_ID), message.get(Attr.DATA)))

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        at = self._table.get_timer()
        if at is None:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        loop = asyncio.get_running_loop()
        result = self._table.handle_timer(loop.time())
        for data, _ in result.resend:
            self.send_raw(data)
        for _, future in result.timed_out:
            if not future.done():
                future.set_exception(TransactionTimeout("no answer from the rendezvous server"))
        self._arm()

    async def request(self, message: Message, *, check: bool = True) -> Message:
        """Send a request, retransmitting, and return the response."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        data = encode(message)
        self.send_raw(self._table.start(message.transaction_id, data, future, loop.time()))
        self._arm()
        try:
            response = await future
        finally:
            self._table.cancel(message.transaction_id)
        if check and response.message_class == MessageClass.ERROR:
            code, reason = response.get(Attr.ERROR_CODE)
            raise RendezvousError(code, reason, response)
        return response

    # ------------------------------------------------------------ methods

    async def binding(self) -> Address:
        response = await self.request(new_request(Method.BINDING))
        observed: Address = response.get(Attr.XOR_MAPPED_ADDRESS)
        return observed

    async def register(self, ttl: int | None = None) -> Registration:
        first = register_request(self.public_key, nickname=self.nickname, local=self.local, ttl=ttl)
        response = await self.request(first, check=False)
        if response.message_class == MessageClass.ERROR:
            challenge = response.get(Attr.CHALLENGE)
            if challenge is None:
                code, reason = response.get(Attr.ERROR_CODE)
                raise RendezvousError(code, reason, response)
            details = registration_details(self.nickname, self.local, ttl)
            signature = self.private_key.sign(registration_payload(challenge, self.public_key, details))
            signed = register_request(
                self.public_key, nickname=self.nickname, local=self.local, ttl=ttl,
                challenge=challenge, signature=signature,
            )
            response = await self.request(signed)
        self.registration = Registration(
            peer_id=response.get(Attr.PEER_ID),
            ttl=response.get(Attr.TTL),
            observed=response.get(Attr.XOR_MAPPED_ADDRESS),
            session=response.get(Attr.SESSION),
        )
        return self.registration

    def _session(self) -> bytes:
        if self.registration is None:
            raise RuntimeError("register first")
        return self.registration.session

    async def refresh(self, ttl: int | None = None) -> int:
        extra = [(Attr.TTL, ttl)] if ttl is not None else []
        response = await self.request(session_request(Method.REFRESH, self._session(), *extra))
        granted: int = response.get(Attr.TTL)
        return granted

    async def unregister(self) -> None:
        await self.request(session_request(Method.UNREGISTER, self._session()))
        self.registration = None

    async def list_page(self, limit: int | None = None, cursor: bytes | None = None) -> tuple[list[PeerEntry], bytes | None]:
        extra: list[tuple[int, Any]] = []
        if limit is not None:
            extra.append((Attr.LIMIT, limit))
        if cursor is not None:
            extra.append((Attr.CURSOR, cursor))
        response = await self.request(session_request(Method.LIST, self._session(), *extra))
        return response.get_all(Attr.PEER_ENTRY), response.get(Attr.CURSOR)

    async def list_all(self, limit: int | None = None) -> list[PeerEntry]:
        entries: list[PeerEntry] = []
        cursor = None
        while True:
            page, cursor = await self.list_page(limit, cursor)
            entries.extend(page)
            if cursor is None:
                return entries

    async def connect(self, peer_id: int) -> PeerInfo:
        response = await self.request(session_request(Method.CONNECT, self._session(), (Attr.PEER_ID, peer_id)))
        return PeerInfo.from_message(response)

    def send_relayed(self, peer_id: int, payload: bytes) -> None:
        message = Message(Method.SEND, MessageClass.INDICATION, os.urandom(12))
        message.add(Attr.SESSION, self._session()).add(Attr.PEER_ID, peer_id).add(Attr.DATA, payload)
        self.send_raw(encode(message))


def cursor_after(peer_id: int) -> bytes:
    """The CURSOR the server would hand out after ``peer_id`` (tests and tools)."""
    return b"\x01" + struct.pack("!I", peer_id)
