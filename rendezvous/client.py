"""An asyncio client of the rendezvous server over its own UDP socket.

:class:`RendezvousClient` is used by the tests, the benchmarks and the
command-line tool.  It only moves bytes and timers: building and signing
requests, retransmission, matching answers and acknowledging introductions
are :mod:`rendezvous.client_protocol`'s, which the webpeer's sans-IO
registration machine uses too.  The names tests and tools import from here
(``register_request``, ``PeerInfo`` ...) are re-exported from there.
"""

from __future__ import annotations

import asyncio
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .client_protocol import (
    INTERACTIVE_POLICY,
    Answer,
    Introduction,
    PeerInfo,
    RegisterHandshake,
    RegisterRefused,
    Registration,
    RelayData,
    ServerConversation,
    error_of,
    new_request,
    register_request,
    relay_indication,
    session_request,
)
from .stun import (
    Address,
    Attr,
    Message,
    Method,
    PeerEntry,
    StunProtocolError,
    decode,
)
from .transactions import RetransmitPolicy
from .udp import UdpEndpoint

__all__ = [
    "FAST_POLICY",
    "MalformedAnswer",
    "PeerInfo",
    "Registration",
    "RendezvousClient",
    "RendezvousError",
    "TransactionTimeout",
    "cursor_after",
    "new_request",
    "public_key_bytes",
    "register_request",
    "session_request",
]

# The interactive policy under the name callers know.
FAST_POLICY = INTERACTIVE_POLICY


def public_key_bytes(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class RendezvousError(Exception):
    """The server answered with an error response."""

    def __init__(self, code: int, reason: str, response: Message) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason
        self.response = response


class MalformedAnswer(Exception):
    """The server's success answer lacks what the protocol requires."""


class TransactionTimeout(Exception):
    """No answer after all retransmissions."""


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
        self._conversation: ServerConversation[asyncio.Future[Message]] = ServerConversation(self.policy)
        self._timer: asyncio.TimerHandle | None = None
        self.introductions: asyncio.Queue[PeerInfo] = asyncio.Queue()
        self.relayed: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self.other: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue()

    # ------------------------------------------------------------ socket

    async def open(self, host: str = "127.0.0.1", port: int = 0) -> RendezvousClient:
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
        received = self._conversation.receive(message)
        if isinstance(received, Answer):
            if not received.context.done():
                received.context.set_result(message)
        elif isinstance(received, Introduction):
            self.introductions.put_nowait(received.info)
        elif isinstance(received, RelayData):
            self.relayed.put_nowait((received.peer_id, received.payload))
        self._send_queued()  # INTRODUCE acks

    def _send_queued(self) -> None:
        for data in self._conversation.datagrams_to_send():
            self.send_raw(data)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        at = self._conversation.get_timer()
        if at is None:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        loop = asyncio.get_running_loop()
        for future in self._conversation.handle_timer(loop.time()):
            if not future.done():
                future.set_exception(TransactionTimeout("no answer from the rendezvous server"))
        self._send_queued()
        self._arm()

    async def request(self, message: Message, *, check: bool = True) -> Message:
        """Send a request, retransmitting, and return the response."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        self._conversation.request(message, future, loop.time())
        self._send_queued()
        self._arm()
        try:
            response = await future
        finally:
            self._conversation.cancel(message.transaction_id)
        error = error_of(response) if check else None
        if error is not None:
            raise RendezvousError(error.code, error.reason, response)
        return response

    # ------------------------------------------------------------ methods

    async def binding(self) -> Address:
        response = await self.request(new_request(Method.BINDING))
        observed: Address = response.get(Attr.XOR_MAPPED_ADDRESS)
        return observed

    async def register(self, ttl: int | None = None) -> Registration:
        handshake = RegisterHandshake(
            self.private_key, self.public_key, nickname=self.nickname, local=self.local, ttl=ttl
        )
        step: Message | Registration | RegisterRefused = handshake.first_request()
        while isinstance(step, Message):
            step = handshake.answer(await self.request(step, check=False))
        if isinstance(step, RegisterRefused):
            if step.error is None:
                raise MalformedAnswer(step.reason)
            raise RendezvousError(step.error.code, step.error.reason, step.response)
        self.registration = step
        return step

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

    async def list_page(
        self, limit: int | None = None, cursor: bytes | None = None
    ) -> tuple[list[PeerEntry], bytes | None]:
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
        self._conversation.indicate(relay_indication(self._session(), peer_id, payload, os.urandom(12)))
        self._send_queued()


def cursor_after(peer_id: int) -> bytes:
    """The CURSOR the server would hand out after ``peer_id`` (tests and tools)."""
    return b"\x01" + struct.pack("!I", peer_id)
