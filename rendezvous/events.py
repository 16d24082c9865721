"""The rendezvous server core's configuration, the protocol's reply limits,
and the events the core reports to its adapter.

Split from core.py so that the core file holds the protocol logic only.
"""

from __future__ import annotations

from dataclasses import dataclass

from .mailbox import MailLimits
from .stun import Address, Message
from .transactions import RetransmitPolicy

# Protocol limits (docs/PROTOCOL.md): every reply, a LIST page too, stays
# within MAX_REPLY_BYTES (no IP fragmentation on any path with an MTU of 1280
# or more), and none to an address that has not proven itself is larger than
# AMPLIFICATION_FACTOR times its request.
MAX_REPLY_BYTES = 1200
AMPLIFICATION_FACTOR = 3


@dataclass(frozen=True)
class ServerConfig:
    # Short on purpose: with it, the reply to a bare 20-byte IPv4 Binding request
    # stays within 3x the request (the anti-amplification rule).
    software: str = "peerlink"
    default_ttl: int = 60
    min_ttl: int = 10
    max_ttl: int = 3600
    legacy_text: bool = False
    list_default_limit: int = 20
    list_max_limit: int = 100
    max_local_candidates: int = 8
    # Relay limits per sending peer.
    relay_bytes_per_second: float = 256 * 1024
    relay_packets_per_second: float = 400
    relay_burst_seconds: float = 2.0
    # A signed REGISTER costs a signature check (~60 us): limit those per source
    # IP (a whole office behind one NAT shares it, hence the generous default).
    register_per_second: float = 200
    register_burst: float = 400
    # Requests of registered peers (LIST, CONNECT, REFRESH), per peer.
    requests_per_second: float = 50
    requests_burst: float = 100
    # Legacy LIST/CONNECT/EXIT replies per source IP (the text protocol
    # cannot prove addresses, so this bounds what a spoofer can aim at one).
    legacy_bytes_per_second: float = 16 * 1024
    # Legacy ids online (or being assigned) per source IP: a legacy REGISTER
    # proves nothing, so spoofed ones must not mint ids without bound.
    legacy_ids_per_ip: int = 4
    # Keyed peers online at once (503 "Server Full" past it) and per source IP
    # (503 "Too Many From Address"; an office NAT shares one, hence generous):
    # one host cannot fill the directory, nor the directory the memory.
    max_online: int = 2_000_000
    max_online_per_ip: int = 1024
    # Replies kept for retransmitted requests (RFC 8489: 40 s).
    transaction_cache_seconds: float = 40.0
    transaction_cache_size: int = 65_536
    introduction_policy: RetransmitPolicy = RetransmitPolicy(rto=0.5, max_sends=7, last_wait_factor=4)
    # RFC 5780: the address of the second socket (another IP and port), if the
    # server has one; Binding requests with CHANGE-REQUEST are answered from it.
    primary_address: Address | None = None
    other_address: Address | None = None
    # Introductions being retransmitted at once; beyond this CONNECT still
    # answers the requester but the target is not told (counted).
    max_pending_introductions: int = 100_000
    # Presence subscriptions (WATCH): ids one peer may watch, PRESENCE
    # requests in flight at once (one per watcher at most; beyond this the
    # changes wait, bounded by the watched sets), and their retransmission.
    max_watched_per_peer: int = 256
    max_pending_presence: int = 100_000
    presence_policy: RetransmitPolicy = RetransmitPolicy(rto=0.5, max_sends=7, last_wait_factor=4)
    # The offline mailbox's quotas (DEPOSIT, FETCH: docs/PROTOCOL.md 5.11);
    # None: no mailbox (those methods get 400 Unknown method).
    mailbox: MailLimits | None = MailLimits()


# ----------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    """Base class of everything the core reports to its adapter."""


@dataclass(frozen=True)
class RequestReceived(Event):
    kind: str  # REGISTER, LIST, CONNECT, EXIT, UNREGISTER ... as logged
    client: Address
    detail: str = ""


@dataclass(frozen=True)
class PeerOnline(Event):
    peer_id: int
    address: Address


@dataclass(frozen=True)
class PeerOffline(Event):
    peer_id: int
    reason: str  # "unregistered" or "expired"


@dataclass(frozen=True)
class Dropped(Event):
    reason: str
    client: Address


@dataclass(frozen=True)
class PendingRegistration:
    """A REGISTER whose signature checked out and that waits for its id."""

    identity: bytes
    address: Address
    nickname: str
    local: tuple[Address, ...]
    ttl: int
    # None for the legacy text protocol.
    request: Message | None
    request_length: int
