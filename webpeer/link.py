"""One QUIC connection to another peer, with mutual authentication (sans-IO).

aioquic's QuicConnection is itself sans-IO; a PeerLink wraps it with the
authentication state machine and frame codec:

    connector (QUIC client)                      acceptor (QUIC server)
    ClientHello ->                               picks a fresh nonce; with its first
                                                 flight, on stream 3 (its own, one-way):
                                                 <- challenge {nonce}
    handshake done; checks the acceptor's
      certificate holds exactly the key the
      registry gave; signs the nonce:
    -> hello {id, key, nonce, sig: Ed25519(ctx|nonce|acceptor key|connector key)}
    -> msg ... (right behind it)                 checks the key is the registry's for id,
                                                 the nonce is its own, the signature
                                                 <- ok
    READY: both sides exchange frames (msg, ack ...) on stream 0

The challenge travels in the acceptor's first flight (0.5-RTT data), so it is
there when the connector's handshake completes: the key proof costs no round
trip of its own.  The connector is READY as soon as it has sent its hello: it
already knows the acceptor is who it wanted (its certificate key), and the
acceptor reads the stream in order, holding frames behind the hello (bounded)
until it has checked the key, so they are only taken if the proof holds
(otherwise the link closes and they go again later).

A connector that has no challenge yet when its handshake completes (the
acceptor's first flight lost a packet) may sign the nonce that the
acceptor's answer to a connectivity check carried (docs/PROTOCOL.md 11.4);
the acceptor accepts a nonce it issued to that peer recently too.  Without
either, the connector waits for the challenge.

Before READY, a frame is taken only if ``_TRANSITIONS`` has a row for it in
the current state (or it is held behind a hello, as above); any other closes
the link and names the frame and the state.  Time comes in as ``now``.
"""

from __future__ import annotations

import enum
import os
import ssl
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from rendezvous.stun import Address

from .identity import Identity, auth_payload, raw_public_key, verify
from .path import Direct, Path, Relayed
from .wire import Frame, FrameDecoder, FrameError, encode_frame, require

ALPN = "peerlink/1"
CONTROL_STREAM = 0
CHALLENGE_STREAM = 3  # the acceptor's first (server-initiated, unidirectional) stream
NONCE_LENGTH = 32
MAX_HELD_FRAMES = 4096
MAX_HELD_BYTES = 4 * 1024 * 1024


class Role(enum.Enum):
    CONNECTOR = "connector"
    ACCEPTOR = "acceptor"


class LinkState(enum.Enum):
    HANDSHAKING = "handshaking"
    WAITING_HELLO = "waiting-hello"  # acceptor: handshake done, no hello yet
    CHECKING_HELLO = "checking-hello"  # acceptor: asked its owner whether the key is right
    WAITING_CHALLENGE = "waiting-challenge"  # connector: handshake done, no nonce to sign yet
    READY = "ready"
    CLOSED = "closed"


# (state, frame type) -> handler name.  Anything else is a protocol violation.
_TRANSITIONS: dict[tuple[LinkState, str], str] = {
    (LinkState.WAITING_HELLO, "hello"): "_on_hello",
}


@dataclass(frozen=True)
class LinkEvent:
    """Base of what a link reports to its owner."""


@dataclass(frozen=True)
class HelloReceived(LinkEvent):
    """Acceptor: the connector claims this id and key; the owner must answer
    with :meth:`PeerLink.confirm_hello`."""

    peer_id: int
    public_key: bytes


@dataclass(frozen=True)
class LinkReady(LinkEvent):
    peer_id: int
    public_key: bytes


@dataclass(frozen=True)
class FrameReceived(LinkEvent):
    frame: Frame


@dataclass(frozen=True)
class StreamReceived(LinkEvent):
    """Bytes on one of the other side's one-way data streams (files,
    docs/PROTOCOL.md 11.6), in stream order; ``end``: the stream is over
    (finished, or reset by the sender)."""

    stream_id: int
    data: bytes
    end: bool


@dataclass(frozen=True)
class LinkClosed(LinkEvent):
    reason: str


@dataclass(frozen=True)
class ConnectionIdsChanged(LinkEvent):
    issued: tuple[bytes, ...]
    retired: tuple[bytes, ...]


# aioquic wants an address for every path.  A relayed path has none, so it
# gets this placeholder (the discard-only prefix, RFC 6666) with the peer's
# id; it never leaves this module and is never a destination.
_RELAY_PLACEHOLDER = "100::"


def _quic_address(path: Path) -> Address:
    return path.address if isinstance(path, Direct) else (_RELAY_PLACEHOLDER, path.peer_id)


def _path_of(address: Any) -> Path:
    host, port = str(address[0]), int(address[1])
    return Relayed(port) if host == _RELAY_PLACEHOLDER else Direct((host, port))


def quic_configuration(identity: Identity, role: Role, idle_timeout: float) -> QuicConfiguration:
    configuration = QuicConfiguration(
        is_client=role is Role.CONNECTOR,
        alpn_protocols=[ALPN],
        idle_timeout=idle_timeout,
        max_datagram_frame_size=None,
    )
    if role is Role.ACCEPTOR:
        configuration.certificate = identity.certificate()
        configuration.private_key = identity.private_key
    else:
        # The certificate is self-signed: what is checked is the key inside,
        # against the registry (see _on_handshake_completed), not a CA chain.
        configuration.verify_mode = ssl.CERT_NONE
    return configuration


class PeerLink:
    def __init__(
        self,
        role: Role,
        quic: QuicConnection,
        identity: Identity,
        my_id: int,
        path: Path,
        *,
        expected_peer: tuple[int, bytes] | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if role is Role.CONNECTOR and expected_peer is None:
            raise ValueError("a connector must know whom it expects")
        self.role = role
        self.quic = quic
        self.identity = identity
        self.my_id = my_id
        self.path = path
        self.expected_peer = expected_peer
        self.peer_id: int | None = expected_peer[0] if expected_peer else None
        self.peer_key: bytes | None = expected_peer[1] if expected_peer else None
        self.state = LinkState.HANDSHAKING
        self.close_reason: str | None = None
        self.ready_at: float | None = None
        self.endpoint = 0  # which of the owner's sockets carries it (0: the main one)
        self.last_activity = 0.0  # last application frame in or out
        self.last_sent = 0.0  # last frame or keepalive out
        self._random_bytes = random_bytes
        self._decoder = FrameDecoder()
        self._challenge_decoder = FrameDecoder()
        # Acceptor: the nonce of our challenge.  Connector: the challenge's nonce once it came.
        self._nonce: bytes | None = None
        self._ok_seen = False
        self.check_nonce: bytes | None = None  # connector: the acceptor's nonce from a check answer
        # Connector: our first flight (the Initial), kept until the other side
        # answers, so that it can go again the moment a check shows the path
        # open (QUIC's own retransmission would wait a second or more).
        self._first_flight: list[tuple[bytes, Path]] | None = None
        self._replay: list[tuple[bytes, Path]] = []
        self.heard_back = False  # any datagram from the other side yet
        self._offered: tuple[bytes, bytes] | None = None  # acceptor: (nonce, sig) from the hello
        self._hello_at = 0.0
        self._held: list[Frame] = []  # frames that came behind a signed hello, before it was confirmed
        self._held_bytes = 0
        self._events: list[LinkEvent] = []

    @classmethod
    def connect(
        cls,
        identity: Identity,
        my_id: int,
        path: Path,
        peer_id: int,
        peer_key: bytes,
        now: float,
        idle_timeout: float = 30.0,
    ) -> PeerLink:
        quic = QuicConnection(configuration=quic_configuration(identity, Role.CONNECTOR, idle_timeout))
        link = cls(Role.CONNECTOR, quic, identity, my_id, path, expected_peer=(peer_id, peer_key))
        quic.connect(_quic_address(path), now=now)
        return link

    @classmethod
    def accept(
        cls,
        identity: Identity,
        my_id: int,
        path: Path,
        original_destination_cid: bytes,
        configuration: QuicConfiguration,
    ) -> PeerLink:
        quic = QuicConnection(configuration=configuration, original_destination_connection_id=original_destination_cid)
        return cls(Role.ACCEPTOR, quic, identity, my_id, path)

    @property
    def address(self) -> Address | None:
        """The direct path's address; None for a relayed link."""
        return self.path.address if isinstance(self.path, Direct) else None

    @property
    def relayed(self) -> bool:
        return isinstance(self.path, Relayed)

    # ------------------------------------------------------------ sans-IO surface

    def receive_datagram(self, data: bytes, path: Path, now: float) -> None:
        self.heard_back = True
        self._first_flight = None
        self.quic.receive_datagram(data, _quic_address(path), now)
        self._process_quic_events(now)

    @property
    def has_path(self) -> bool:
        """QUIC knows where to send: false for an acceptor whose first Initial
        aioquic dropped unread (an unsupported version, say)."""
        return self.quic.get_peer_address() is not None

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Path]]:
        if not self.has_path and not self._replay:
            return []  # aioquic's datagrams_to_send would raise IndexError: nowhere to send yet
        out = [(data, _path_of(addr)) for data, addr in self.quic.datagrams_to_send(now)] if self.has_path else []
        if self.role is Role.CONNECTOR and self._first_flight is None and not self.heard_back and out:
            self._first_flight = list(out)
        if self._replay:
            out = self._replay + out
            self._replay = []
        return out

    def resend_first_flight(self) -> bool:
        """Connector: send the Initial again now, if the other side has not
        answered yet (it went out before the other side's NAT was open; a
        connectivity check just showed the path works).  A duplicate is
        harmless: QUIC drops a packet number it has seen."""
        if self.heard_back or not self._first_flight or self.state is LinkState.CLOSED:
            return False
        self._replay = list(self._first_flight)
        return True

    def get_timer(self) -> float | None:
        return self.quic.get_timer()

    def handle_timer(self, now: float) -> None:
        self.quic.handle_timer(now)
        self._process_quic_events(now)

    def next_event(self) -> LinkEvent | None:
        return self._events.pop(0) if self._events else None

    def send_frame(self, frame: Frame, now: float | None = None) -> None:
        self.send_frames([frame], now)

    def send_frames(self, frames: list[Frame], now: float | None = None) -> None:
        """Several frames in one write to the stream: a busy peer sends a
        frame per message or receipt, and a write costs more than a frame."""
        if self.state is not LinkState.READY:
            raise RuntimeError(f"cannot send {len(frames)} frames on a link in state {self.state.value}")
        self.quic.send_stream_data(CONTROL_STREAM, b"".join([encode_frame(frame) for frame in frames]))
        if now is not None:
            self.last_activity = self.last_sent = now

    def open_data_stream(self, header: bytes, now: float) -> int:
        """A new one-way stream of ours (a file's data, docs/PROTOCOL.md 11.6),
        its header already queued; returns its id."""
        if self.state is not LinkState.READY:
            raise RuntimeError(f"cannot open a data stream on a link in state {self.state.value}")
        stream_id = self.quic.get_next_available_stream_id(is_unidirectional=True)
        self.quic.send_stream_data(stream_id, header)
        self.last_activity = self.last_sent = now
        return stream_id

    def send_data(self, stream_id: int, data: bytes, now: float, *, end: bool = False) -> None:
        self.quic.send_stream_data(stream_id, data, end_stream=end)
        self.last_activity = self.last_sent = now

    def stream_buffered(self, stream_id: int) -> int:
        """Bytes given to a stream of ours that the other side has not
        acknowledged yet: the sender tops a stream up only while this is
        small, so QUIC's flow and congestion control pace the file and
        memory stays flat.  (aioquic has no public accessor for it.)"""
        stream = self.quic._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return int(sender._buffer_stop - sender._buffer_start)

    def abort_stream(self, stream_id: int) -> None:
        """Stop sending on a stream of ours (a cancelled or restarted file)."""
        if self.state is LinkState.CLOSED:
            return
        stream = self.quic._streams.get(stream_id)
        if stream is not None and not stream.sender.is_finished:
            try:
                self.quic.reset_stream(stream_id, error_code=0)
            except (AssertionError, ValueError):
                pass  # already finished by the time we ask: nothing to stop

    def keepalive(self, now: float) -> None:
        """A QUIC PING: keeps the NAT mappings of this path open and shows
        (by its acknowledgement, or by the idle timeout) whether the path lives."""
        self.quic.send_ping(int(now * 1000) & 0xFFFFFFFF)
        self.last_sent = now

    def close(self, reason: str) -> None:
        if self.state is LinkState.CLOSED:
            return
        self.quic.close(error_code=0, reason_phrase=reason[:100])
        self._closed(reason)

    def confirm_hello(self, registry_key: bytes | None, issued_nonces: Collection[bytes] = ()) -> None:
        """Acceptor: ``registry_key`` is the key the registry gives for the
        claimed id (None: unknown).  Anything but an exact match is refused.
        ``issued_nonces``: the nonces we gave that peer in check answers,
        which its hello may already have signed."""
        if self.state is not LinkState.CHECKING_HELLO:
            return
        if registry_key is None or registry_key != self.peer_key:
            self.close(f"peer {self.peer_id} presented a key the registry does not give for it")
            return
        assert self._offered is not None  # _on_hello requires it
        nonce, signature = self._offered
        issued = nonce == self._nonce or nonce in issued_nonces
        if issued and verify(self.peer_key, signature, auth_payload(nonce, self.identity.public_key, self.peer_key)):
            self._send({"t": "ok"})
            self._ready(self._hello_at)
        else:
            self.close(f"peer {self.peer_id} signed a nonce we did not issue, or signed it wrongly")

    # ------------------------------------------------------------ internals

    def _send(self, frame: Frame) -> None:
        self.quic.send_stream_data(CONTROL_STREAM, encode_frame(frame))

    def _closed(self, reason: str) -> None:
        if self.state is LinkState.CLOSED:
            return
        self.state = LinkState.CLOSED
        self.close_reason = reason
        self._events.append(LinkClosed(reason))

    def _send_challenge(self) -> None:
        """Acceptor: our nonce, on our own stream, as soon as QUIC can carry
        it (it then rides with our first flight)."""
        if self._nonce is None:
            self._nonce = self._random_bytes(NONCE_LENGTH)
            frame = encode_frame({"t": "challenge", "nonce": self._nonce.hex()})
            self.quic.send_stream_data(CHALLENGE_STREAM, frame, end_stream=True)

    def _process_quic_events(self, now: float) -> None:
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, quic_events.ProtocolNegotiated) and self.role is Role.ACCEPTOR:
                # The ClientHello is in (with the transport parameters that let
                # us open a stream): the challenge can join our first flight.
                self._send_challenge()
            elif isinstance(event, quic_events.HandshakeCompleted):
                self._on_handshake_completed(now)
            elif isinstance(event, quic_events.StreamDataReceived):
                self._on_stream_data(event, now)
            elif isinstance(event, quic_events.StreamReset) and self._is_data_stream(event.stream_id):
                self._events.append(StreamReceived(event.stream_id, b"", True))
            elif isinstance(event, quic_events.ConnectionTerminated):
                self._closed(event.reason_phrase or f"connection closed (error {event.error_code})")
            elif isinstance(event, quic_events.ConnectionIdIssued):
                self._events.append(ConnectionIdsChanged((event.connection_id,), ()))
            elif isinstance(event, quic_events.ConnectionIdRetired):
                self._events.append(ConnectionIdsChanged((), (event.connection_id,)))

    def _on_handshake_completed(self, now: float) -> None:
        if self.role is Role.ACCEPTOR:
            self._send_challenge()  # normally already sent with the first flight
            self.state = LinkState.WAITING_HELLO
            return
        # aioquic keeps the peer's certificate on its TLS context; there is no
        # public accessor, and this check is the whole point of the handshake.
        certificate = self.quic.tls._peer_certificate
        presented: bytes | None = None
        if certificate is not None:
            # Only an Ed25519 key can be the registry's.  (aioquic has already
            # checked that the key signed the handshake, so it is a signing key.)
            try:
                key = certificate.public_key()
                presented = raw_public_key(key) if isinstance(key, Ed25519PublicKey) else None
            except Exception:
                presented = None
        if presented != self.peer_key:
            self.close(f"peer {self.peer_id} presented a different key than the registry gives for it")
            return
        nonce = self._nonce or self.check_nonce
        if nonce is None:
            self.state = LinkState.WAITING_CHALLENGE
            return
        self._send_hello(nonce, now)

    def _send_hello(self, nonce: bytes, now: float) -> None:
        """Connector: prove our key by signing the acceptor's nonce, and be
        READY at once (frames sent behind it are held until it checks out)."""
        assert self.peer_key is not None
        signature = self.identity.sign(auth_payload(nonce, self.peer_key, self.identity.public_key))
        self._send(
            {
                "t": "hello",
                "id": self.my_id,
                "key": self.identity.public_key.hex(),
                "nonce": nonce.hex(),
                "sig": signature.hex(),
            }
        )
        self._ready(now)

    def _on_challenge_stream(self, data: bytes, now: float) -> None:
        """Connector: the acceptor's stream 3 carries exactly one challenge."""
        for frame in self._challenge_decoder.feed(data):
            if frame["t"] != "challenge" or self._nonce is not None:
                raise FrameError(f"stream {CHALLENGE_STREAM} carries one challenge, not {frame['t']!r}")
            try:
                nonce = bytes.fromhex(require(frame, "nonce", str))
            except ValueError:
                raise FrameError("challenge: nonce is not hex") from None
            if len(nonce) != NONCE_LENGTH:
                raise FrameError("challenge: nonce must be 32 bytes")
            self._nonce = nonce
            if self.state is LinkState.WAITING_CHALLENGE:
                self._send_hello(nonce, now)

    def _on_stream_data(self, event: quic_events.StreamDataReceived, now: float) -> None:
        if event.stream_id == CHALLENGE_STREAM and self.role is Role.CONNECTOR:
            try:
                self._on_challenge_stream(event.data, now)
            except FrameError as error:
                self.close(f"bad challenge: {error}")
            return
        if event.stream_id != CONTROL_STREAM:
            if self.state is LinkState.READY and self._is_data_stream(event.stream_id):
                self.last_activity = now
                self._events.append(StreamReceived(event.stream_id, event.data, event.end_stream))
                return
            self.close(f"unexpected stream {event.stream_id}")
            return
        try:
            frames = self._decoder.feed(event.data)
            for frame in frames:
                if self.state is LinkState.CLOSED:
                    return
                self._on_frame(frame, now)
        except FrameError as error:
            self.close(f"bad frame: {error}")

    def _is_data_stream(self, stream_id: int) -> bool:
        """A one-way stream the other side opened (bit 1 set: unidirectional;
        bit 0: who opened it, 0 the connector), other than the challenge."""
        theirs = 1 if self.role is Role.CONNECTOR else 0
        return stream_id & 2 == 2 and stream_id & 1 == theirs and stream_id != CHALLENGE_STREAM

    def _on_frame(self, frame: Frame, now: float) -> None:
        if self.state is LinkState.READY:
            if frame["t"] == "ok" and self.role is Role.CONNECTOR and not self._ok_seen:
                self._ok_seen = True  # the acceptor's confirmation; we did not wait for it
                return
            self.last_activity = now
            self._events.append(FrameReceived(frame))
            return
        handler = _TRANSITIONS.get((self.state, frame["t"]))
        if handler is None and self.state is LinkState.CHECKING_HELLO and self._offered is not None:
            # A connector that signed our nonce in its hello sends right behind
            # it; hold those frames (bounded: it is not confirmed yet) until
            # the owner has checked its key.
            self._held_bytes += 64 + len(str(frame.get("text", "")))
            if len(self._held) >= MAX_HELD_FRAMES or self._held_bytes > MAX_HELD_BYTES:
                self.close("too much data before the key was confirmed")
                return
            self._held.append(frame)
            return
        if handler is None:
            self.close(f"frame {frame['t']!r} not allowed in state {self.state.value}")
            return
        getattr(self, handler)(frame, now)

    def _on_hello(self, frame: Frame, now: float) -> None:
        peer_id = require(frame, "id", int)
        try:
            key = bytes.fromhex(require(frame, "key", str))
        except ValueError:
            raise FrameError("hello: key is not hex") from None
        if len(key) != 32 or not 0 < peer_id < 2**32:
            raise FrameError("hello: bad id or key")
        self.peer_id, self.peer_key = peer_id, key
        try:
            nonce = bytes.fromhex(require(frame, "nonce", str))
            signature = bytes.fromhex(require(frame, "sig", str))
        except ValueError:
            raise FrameError("hello: nonce or sig is not hex") from None
        self._offered = (nonce, signature)
        self._hello_at = now
        self.state = LinkState.CHECKING_HELLO
        self._events.append(HelloReceived(peer_id, key))

    def _ready(self, now: float) -> None:
        assert self.peer_id is not None and self.peer_key is not None
        self.state = LinkState.READY
        self.ready_at = self.last_activity = self.last_sent = now
        self._events.append(LinkReady(self.peer_id, self.peer_key))
        held, self._held = self._held, []
        for frame in held:
            self._events.append(FrameReceived(frame))
