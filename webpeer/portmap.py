"""Ask the router for a port mapping: PCP (RFC 6887), then NAT-PMP (RFC 6886). Sans-IO.

(UPnP IGD, the third and last choice, is webpeer/upnp.py: the node's
:class:`~webpeer.portmapper.PortMapper` turns to it when this client reports
:class:`PortMapUnavailable`.)

A mapped port makes even a symmetric NAT easy: the router forwards one fixed
external address and port to our QUIC socket, whoever sends to it.  The
client asks the default gateway (the node finds it), offers the answer as a
candidate, renews at half the lifetime and deletes the mapping on stop.

    -> PCP MAP (60 bytes: version 2, opcode 1, lifetime, our IP, nonce, UDP,
       internal port, suggested external port and address)
    <- PCP MAP response (>= 60 bytes: result, lifetime, epoch, nonce, the
       assigned external port and address; options ignored)
    a NAT-PMP-only router answers version 2 with "unsupported version"
    (version 0, result 1): then, or when PCP gets an error or no answer,
    -> NAT-PMP map UDP (12 bytes)   <- (16 bytes: result, epoch, ports, lifetime)
    -> NAT-PMP external address (2) <- (12 bytes: result, epoch, IPv4 address)

Only datagrams from the gateway's port 5351 are looked at, and an answer
counts only when it matches what is pending (PCP: the nonce, protocol and
internal port; NAT-PMP: the opcode and internal port).  Every length is
checked before anything is read.  Retransmission follows the RFCs' initial
timeouts and doubling (PCP 3 s, NAT-PMP 250 ms, with PCP's +-10% jitter) but
is bounded (:data:`PCP_TRIES`, :data:`NATPMP_TRIES`), so a router that
speaks neither costs about 25 s of a few datagrams, then
:class:`PortMapUnavailable`.  A server epoch that goes backwards or lags the
client's clock (RFC 6887 8.5) means the router lost its state: we map
again at once.  A gateway whose port 5351 is closed (an ICMP port
unreachable, which the adapter's connected socket sees) offers neither:
:meth:`PortMapClient.unreachable` gives up on both at once instead of
waiting out the retries.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from rendezvous.stun import Address

SERVER_PORT: Final = 5351  # PCP and NAT-PMP both
DEFAULT_LIFETIME: Final = 7200  # RFC 6886's recommendation, also Tailscale's

PCP_VERSION: Final = 2
PCP_OPCODE_ANNOUNCE: Final = 0
PCP_OPCODE_MAP: Final = 1
PCP_RESPONSE_BIT: Final = 0x80
PCP_HEADER = struct.Struct("!BBHI16s")  # version, R|opcode, reserved, lifetime, client IP
PCP_MAP = struct.Struct("!12sB3xHH16s")  # nonce, protocol, internal port, external port, external IP
PCP_RESPONSE_HEADER = struct.Struct("!BBxBII12x")  # version, R|opcode, result, lifetime, epoch
PCP_MAX_SIZE: Final = 1100
PCP_IRT: Final = 3.0  # RFC 6887 8.1.1: initial retransmission time
PCP_TRIES: Final = 3  # bounded: the RFC retries forever; 3 sends cover 21 s

NATPMP_VERSION: Final = 0
NATPMP_OP_ADDRESS: Final = 0
NATPMP_OP_MAP_UDP: Final = 1
NATPMP_MAP = struct.Struct("!BBHHHI")  # version, opcode, reserved, internal, suggested external, lifetime
NATPMP_MAP_RESPONSE = struct.Struct("!BBHIHHI")  # version, opcode, result, epoch, internal, external, lifetime
NATPMP_ADDRESS_RESPONSE = struct.Struct("!BBHI4s")  # version, opcode, result, epoch, IPv4
NATPMP_IRT: Final = 0.25  # RFC 6886 3.1
NATPMP_TRIES: Final = 4  # the RFC allows 9 (64 s); 4 give up after ~3.75 s

UDP: Final = 17
RESULT_SUCCESS: Final = 0
RESULT_UNSUPPORTED_VERSION: Final = 1
IPV4_MAPPED_ANY: Final = ipaddress.IPv6Address("::ffff:0.0.0.0").packed

Protocol = Literal["pcp", "nat-pmp", "upnp"]


class PortMapError(ValueError):
    """A datagram that is not a well-formed answer (the wording says why)."""


@dataclass(frozen=True)
class Mapping:
    protocol: Protocol
    external: Address
    lifetime: int  # seconds, as granted
    expires_at: float  # client clock


class PortMapEvent:
    """Base of what the client reports."""


@dataclass(frozen=True)
class PortMapped(PortMapEvent):
    """A new or changed mapping (a renewal that changes nothing is silent)."""

    mapping: Mapping


@dataclass(frozen=True)
class PortMapLost(PortMapEvent):
    """The mapping ran out unrenewed, or the router refused to renew it."""

    reason: str


@dataclass(frozen=True)
class PortMapUnavailable(PortMapEvent):
    """Neither PCP nor NAT-PMP gave a mapping (no answer, refusals, or port 5351 closed)."""

    reason: str


class Phase(enum.Enum):
    IDLE = "idle"
    PCP = "pcp"  # mapping (or renewing) with PCP
    NATPMP_MAP = "nat-pmp map"
    NATPMP_ADDRESS = "nat-pmp address"
    MAPPED = "mapped"  # waiting for the renewal time
    UNAVAILABLE = "unavailable"
    DELETING = "deleting"
    STOPPED = "stopped"


# ------------------------------------------------------------------ codec


def _v4_in_v6(host: str) -> bytes:
    return ipaddress.IPv6Address(f"::ffff:{ipaddress.IPv4Address(host)}").packed


def _v4_from_v6(packed: bytes) -> str | None:
    mapped = ipaddress.IPv6Address(packed).ipv4_mapped
    return None if mapped is None else str(mapped)


def encode_pcp_map(
    client_ip: str, nonce: bytes, internal_port: int, lifetime: int, suggested: Address | None = None
) -> bytes:
    """A PCP MAP request for UDP (RFC 6887 11.1), IPv4 client."""
    external_ip = IPV4_MAPPED_ANY if suggested is None else _v4_in_v6(suggested[0])
    external_port = 0 if suggested is None else suggested[1]
    header = PCP_HEADER.pack(PCP_VERSION, PCP_OPCODE_MAP, 0, lifetime, _v4_in_v6(client_ip))
    return header + PCP_MAP.pack(nonce, UDP, internal_port, external_port, external_ip)


@dataclass(frozen=True)
class PcpResponse:
    opcode: int
    result: int
    lifetime: int
    epoch: int
    nonce: bytes = b""
    protocol: int = 0
    internal_port: int = 0
    external: Address | None = None  # None: not IPv4 (we only map IPv4)


def decode_pcp_response(data: bytes) -> PcpResponse:
    if len(data) < PCP_RESPONSE_HEADER.size:
        raise PortMapError(f"PCP response too short: {len(data)} bytes")
    if len(data) > PCP_MAX_SIZE or len(data) % 4:
        raise PortMapError(f"PCP response of {len(data)} bytes (must be a multiple of 4, at most {PCP_MAX_SIZE})")
    version, r_opcode, result, lifetime, epoch = PCP_RESPONSE_HEADER.unpack_from(data)
    if version != PCP_VERSION:
        raise PortMapError(f"PCP version {version}")
    if not r_opcode & PCP_RESPONSE_BIT:
        raise PortMapError("a PCP request, not a response")
    opcode = r_opcode & 0x7F
    if opcode != PCP_OPCODE_MAP:
        return PcpResponse(opcode, result, lifetime, epoch)
    if len(data) < PCP_RESPONSE_HEADER.size + PCP_MAP.size:
        raise PortMapError(f"PCP MAP response too short: {len(data)} bytes")
    nonce, protocol, internal, external_port, external_ip = PCP_MAP.unpack_from(data, PCP_RESPONSE_HEADER.size)
    host = _v4_from_v6(external_ip)
    external = None if host is None else (host, external_port)
    return PcpResponse(opcode, result, lifetime, epoch, nonce, protocol, internal, external)


def encode_natpmp_map(internal_port: int, lifetime: int, suggested_port: int = 0) -> bytes:
    return NATPMP_MAP.pack(NATPMP_VERSION, NATPMP_OP_MAP_UDP, 0, internal_port, suggested_port, lifetime)


def encode_natpmp_address() -> bytes:
    return bytes((NATPMP_VERSION, NATPMP_OP_ADDRESS))


@dataclass(frozen=True)
class NatPmpResponse:
    opcode: int  # the request's opcode (the response's minus 128)
    result: int
    epoch: int
    internal_port: int = 0
    external_port: int = 0
    lifetime: int = 0
    address: str = ""


def decode_natpmp_response(data: bytes) -> NatPmpResponse:
    """A NAT-PMP response; an error response may be just the 8-byte header."""
    if len(data) < 8:
        raise PortMapError(f"NAT-PMP response too short: {len(data)} bytes")
    version, opcode, result, epoch = struct.unpack_from("!BBHI", data)
    if version != NATPMP_VERSION:
        raise PortMapError(f"NAT-PMP version {version}")
    if opcode < 128:
        raise PortMapError("a NAT-PMP request, not a response")
    opcode -= 128
    if result != RESULT_SUCCESS:
        return NatPmpResponse(opcode, result, epoch)
    if opcode == NATPMP_OP_ADDRESS:
        if len(data) != NATPMP_ADDRESS_RESPONSE.size:
            raise PortMapError(f"NAT-PMP address response of {len(data)} bytes, not 12")
        address = str(ipaddress.IPv4Address(NATPMP_ADDRESS_RESPONSE.unpack(data)[4]))
        return NatPmpResponse(opcode, result, epoch, address=address)
    if opcode == NATPMP_OP_MAP_UDP:
        if len(data) != NATPMP_MAP_RESPONSE.size:
            raise PortMapError(f"NAT-PMP map response of {len(data)} bytes, not 16")
        _, _, _, _, internal, external, lifetime = NATPMP_MAP_RESPONSE.unpack(data)
        return NatPmpResponse(opcode, result, epoch, internal, external, lifetime)
    raise PortMapError(f"NAT-PMP opcode {opcode}")


# ------------------------------------------------------------------ client


@dataclass
class _Pending:
    """The one request in flight and its retransmission schedule."""

    request: bytes
    tries: int  # sends left after this one
    timeout: float
    next_send: float


class PortMapClient:
    """One mapping of our UDP socket's port at the gateway (see the module docstring)."""

    def __init__(
        self,
        gateway: str,
        client_ip: str,
        internal_port: int,
        *,
        lifetime: int = DEFAULT_LIFETIME,
        server_port: int = SERVER_PORT,
        random_bytes: Callable[[int], bytes] = os.urandom,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        self.gateway: Address = (str(ipaddress.IPv4Address(gateway)), server_port)
        self.client_ip = str(ipaddress.IPv4Address(client_ip))
        self.internal_port = internal_port
        self.lifetime = lifetime
        self.phase = Phase.IDLE
        self.mapping: Mapping | None = None
        self.dropped = 0  # datagrams ignored: malformed, stray or from elsewhere
        self._nonce = random_bytes(12)
        # RFC 6887 8.1.1: each timeout is multiplied by 1 + RAND, RAND in [-0.1, 0.1].
        rng = random.Random()
        self._jitter = jitter if jitter is not None else (lambda: rng.uniform(-0.1, 0.1))
        self._pending: _Pending | None = None
        self._outbox: list[bytes] = []
        self._events: list[PortMapEvent] = []
        self._renew_at: float | None = None
        self._natpmp_port = 0  # the external port NAT-PMP granted, until its address is known
        self._natpmp_lifetime = 0
        self._epoch: tuple[int, float] | None = None  # the server's last epoch, our clock then
        self._lost_reason = ""

    # ------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[bytes]:
        """Datagrams for :attr:`gateway`."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> PortMapEvent | None:
        return self._events.pop(0) if self._events else None

    def get_timer(self) -> float | None:
        times = [t for t in (self._renew_at,) if t is not None]
        if self._pending is not None:
            times.append(self._pending.next_send)
        if self.mapping is not None and self.phase is not Phase.DELETING:
            times.append(self.mapping.expires_at)
        return min(times) if times else None

    @property
    def done(self) -> bool:
        """Stopped, and nothing more to send or wait for."""
        return self.phase is Phase.STOPPED

    # ------------------------------------------------------------ commands

    def start(self, now: float) -> None:
        if self.phase is Phase.IDLE:
            self._ask_pcp(now)

    def stop(self, now: float) -> None:
        """Delete the mapping (lifetime 0, a few tries) or just stop."""
        mapping = self.mapping
        self.mapping = None
        self._renew_at = None
        if mapping is None:
            self._pending = None
            self.phase = Phase.STOPPED
            return
        self.phase = Phase.DELETING
        if mapping.protocol == "pcp":
            request = encode_pcp_map(self.client_ip, self._nonce, self.internal_port, 0)
            self._send(request, now, tries=2, timeout=0.5)
        else:
            self._send(encode_natpmp_map(self.internal_port, 0), now, tries=2, timeout=NATPMP_IRT)

    def handle_timer(self, now: float) -> None:
        if self.mapping is not None and now >= self.mapping.expires_at and self.phase is not Phase.DELETING:
            self.mapping = None
            self._events.append(PortMapLost(self._lost_reason or "the mapping expired unrenewed"))
        pending = self._pending
        if pending is not None and now >= pending.next_send:
            if pending.tries > 0:
                pending.tries -= 1
                pending.timeout *= 2
                pending.next_send = now + pending.timeout * (1 + self._jitter())
                self._outbox.append(pending.request)
            else:
                self._pending = None
                self._gave_up(now, "no answer")
        if self._renew_at is not None and now >= self._renew_at:
            self._renew_at = None
            self._renew(now)

    def unreachable(self, now: float) -> None:
        """The gateway said its port 5351 is closed (ICMP port unreachable):
        it speaks neither PCP nor NAT-PMP now, so waiting for more tries is
        pointless.  Mapping: unavailable at once; renewing: a failed renewal
        (the mapping is kept until it expires); deleting: done."""
        if self._pending is None:
            return
        self._pending = None
        if self.phase is Phase.DELETING:
            self.phase = Phase.STOPPED
        elif self.mapping is not None:
            self._lost_reason = "renewal failed: port 5351 unreachable"
            self.phase = Phase.MAPPED
            self._renew_at = now + max(1.0, (self.mapping.expires_at - now) / 2)
        elif self.phase in (Phase.PCP, Phase.NATPMP_MAP, Phase.NATPMP_ADDRESS):
            self.phase = Phase.UNAVAILABLE
            self._events.append(PortMapUnavailable("PCP and NAT-PMP: the gateway's port 5351 is closed"))

    def receive(self, data: bytes, source: Address, now: float) -> None:
        """A datagram the socket got; anything but an expected answer from
        the gateway is counted in :attr:`dropped` and changes nothing."""
        if _normal(source) != self.gateway or not data:
            self.dropped += 1
            return
        try:
            if data[0] == PCP_VERSION:
                self._on_pcp(decode_pcp_response(data), now)
            elif data[0] == NATPMP_VERSION:
                self._on_natpmp(decode_natpmp_response(data), now)
            else:
                self.dropped += 1
        except PortMapError:
            self.dropped += 1

    # ------------------------------------------------------------ internals

    def _send(self, request: bytes, now: float, *, tries: int, timeout: float) -> None:
        self._pending = _Pending(request, tries - 1, timeout, now + timeout * (1 + self._jitter()))
        self._outbox.append(request)

    def _ask_pcp(self, now: float) -> None:
        self.phase = Phase.PCP
        suggested = self.mapping.external if self.mapping is not None else None
        request = encode_pcp_map(self.client_ip, self._nonce, self.internal_port, self.lifetime, suggested)
        self._send(request, now, tries=PCP_TRIES, timeout=PCP_IRT)

    def _ask_natpmp(self, now: float) -> None:
        self.phase = Phase.NATPMP_MAP
        suggested = self.mapping.external[1] if self.mapping is not None else self.internal_port
        self._send(
            encode_natpmp_map(self.internal_port, self.lifetime, suggested), now, tries=NATPMP_TRIES, timeout=NATPMP_IRT
        )

    def _renew(self, now: float) -> None:
        if self.mapping is not None and self.mapping.protocol == "nat-pmp":
            self._ask_natpmp(now)
        else:
            self._ask_pcp(now)

    def _gave_up(self, now: float, reason: str) -> None:
        if self.phase is Phase.PCP and (self.mapping is None or self.mapping.protocol == "pcp"):
            self._lost_reason = f"PCP: {reason}"
            self._ask_natpmp(now)
        elif self.phase is Phase.DELETING:
            self.phase = Phase.STOPPED
        elif self.mapping is not None:
            # A renewal failed: keep the mapping until it expires, try again later.
            self._lost_reason = f"renewal failed: {reason}"
            self.phase = Phase.MAPPED
            self._renew_at = now + max(1.0, (self.mapping.expires_at - now) / 2)
        else:
            self.phase = Phase.UNAVAILABLE
            self._events.append(PortMapUnavailable(f"{self._lost_reason}; NAT-PMP: {reason}".lstrip("; ")))

    def _check_epoch(self, epoch: int, now: float) -> bool:
        """RFC 6887 8.5 / RFC 6886 3.6: False when the router lost its state."""
        previous, self._epoch = self._epoch, (epoch, now)
        if previous is None:
            return True
        server_delta = epoch - previous[0]
        client_delta = now - previous[1]
        if server_delta < -1:
            return False
        return not (
            client_delta + 2 < server_delta - server_delta / 16 or server_delta + 2 < client_delta - client_delta / 16
        )

    def _on_pcp(self, response: PcpResponse, now: float) -> None:
        if response.opcode == PCP_OPCODE_ANNOUNCE:
            # An unsolicited ANNOUNCE: a router that restarted asks us to map again.
            if self._epoch is not None and not self._check_epoch(response.epoch, now) and self.phase is Phase.MAPPED:
                self._renew_at = None
                self._ask_pcp(now)
            return
        deleting = self.phase is Phase.DELETING
        if (
            self.phase not in (Phase.PCP, Phase.DELETING)
            or self._pending is None
            or response.nonce != self._nonce
            or response.protocol != UDP
            or response.internal_port != self.internal_port
        ):
            self.dropped += 1
            return
        self._pending = None
        if deleting:
            self.phase = Phase.STOPPED
            return
        if response.result != RESULT_SUCCESS:
            self._gave_up(now, f"result {response.result}")
            return
        if response.external is None or response.external[1] == 0 or response.lifetime == 0:
            self._gave_up(now, "an unusable mapping (not IPv4, port 0 or lifetime 0)")
            return
        self._check_epoch(response.epoch, now)
        self._mapped(Mapping("pcp", response.external, response.lifetime, now + response.lifetime), now)

    def _on_natpmp(self, response: NatPmpResponse, now: float) -> None:
        if self.phase is Phase.PCP and self._pending is not None and response.result == RESULT_UNSUPPORTED_VERSION:
            # A NAT-PMP-only router answering our PCP request (RFC 6887 9).
            self._pending = None
            self._lost_reason = "PCP: the router speaks NAT-PMP only"
            self._ask_natpmp(now)
            return
        expected = {
            Phase.NATPMP_MAP: NATPMP_OP_MAP_UDP,
            Phase.NATPMP_ADDRESS: NATPMP_OP_ADDRESS,
            Phase.DELETING: NATPMP_OP_MAP_UDP,
        }.get(self.phase)
        if self._pending is None or response.opcode != expected:
            self.dropped += 1
            return
        if response.opcode == NATPMP_OP_MAP_UDP and response.result == RESULT_SUCCESS:
            if response.internal_port != self.internal_port:
                self.dropped += 1
                return
        self._pending = None
        if self.phase is Phase.DELETING:
            self.phase = Phase.STOPPED
            return
        if response.result != RESULT_SUCCESS:
            self._gave_up(now, f"result {response.result}")
            return
        restarted = not self._check_epoch(response.epoch, now)
        if response.opcode == NATPMP_OP_MAP_UDP:
            if response.external_port == 0 or response.lifetime == 0:
                self._gave_up(now, "an unusable mapping (port 0 or lifetime 0)")
                return
            self._natpmp_port, self._natpmp_lifetime = response.external_port, response.lifetime
            self.phase = Phase.NATPMP_ADDRESS
            self._send(encode_natpmp_address(), now, tries=NATPMP_TRIES, timeout=NATPMP_IRT)
            return
        if restarted and self.mapping is not None:
            self._ask_natpmp(now)  # the router forgot the mapping between our two requests
            return
        external = (response.address, self._natpmp_port)
        lifetime = self._natpmp_lifetime
        self._mapped(Mapping("nat-pmp", external, lifetime, now + lifetime), now)

    def _mapped(self, mapping: Mapping, now: float) -> None:
        previous = self.mapping
        self.mapping = mapping
        self.phase = Phase.MAPPED
        self._lost_reason = ""
        self._renew_at = now + mapping.lifetime / 2
        if previous is None or previous.external != mapping.external or previous.protocol != mapping.protocol:
            self._events.append(PortMapped(mapping))


def _normal(address: Address) -> Address:
    """An IPv4-mapped IPv6 source (a dual-stack socket) as plain IPv4."""
    try:
        ip = ipaddress.ip_address(address[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return (str(ip.ipv4_mapped), address[1])
    return (str(ip), address[1])
