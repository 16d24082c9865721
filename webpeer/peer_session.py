"""One remote peer as this peer sees it: what the registry last said of it,
the link that carries our traffic to it, and the per-peer rules (pure).

A :class:`PeerSession` owns the per-peer decisions that used to be spread
over the engine: which of two links to one peer survives, when a connection
attempt has timed out, when an idle link closes or gets a keepalive, when a
relayed link tries for a direct path again, and when a listing shows that the
peer restarted.  The engine acts on what these methods answer; nothing here
touches a socket, a clock or the store.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .link import LinkState, PeerLink, Role
from .path import Direct

JSON = dict[str, Any]

CONNECT_TIMEOUT = 8.0  # CONNECT + QUIC handshake + authentication
# A ready link pings this often when nothing else goes out: it keeps NAT
# mappings open (they often die after ~30 s of silence), and its answers keep
# QUIC's idle timer (engine.QUIC_IDLE_TIMEOUT, 8 s) from closing a live path,
# so a silent one is a dead peer, noticed within 10 s (a ping, then 8 s).
KEEPALIVE_INTERVAL = 2.0
# Connection attempts for undelivered messages start again after this, then
# twice as long each time the attempt fails, up to RETRY_MAX.
RETRY_FIRST = 1.0
RETRY_MAX = 30.0
UPGRADE_INTERVAL = 30.0  # while relayed, look for a direct path this often
SIMULTANEOUS_WINDOW = 5.0  # two links to one peer ready within this: a race, not a restart
NONCE_LIFETIME = 60.0  # a check answer's nonce may be signed in a hello this long


class Due(enum.Enum):
    """What a session's timer asks of the engine."""

    CONNECT_TIMED_OUT = "connect timed out"
    CLOSE_IDLE = "close idle link"
    KEEPALIVE = "keepalive"
    TRY_UPGRADE = "try for a direct path"
    RETRY = "try to connect again"


@dataclass(frozen=True, slots=True)
class ListingChange:
    """What one entry of a LIST answer changed about a session."""

    changed: bool  # the page's peer list should be sent again
    came_online: bool
    restarted: bool  # it registered anew: its old process is gone


def choose_link(existing: PeerLink, new: PeerLink, now: float) -> tuple[PeerLink, PeerLink]:
    """Two ready links to one peer: (keep, drop).  Both sides must come to
    the same answer without talking, or each would close the other's pick."""
    if existing.relayed != new.relayed:
        # A direct path opened beside a relayed one: direct wins.
        return (existing, new) if new.relayed else (new, existing)
    if existing.role is new.role or (existing.ready_at is not None and now - existing.ready_at > SIMULTANEOUS_WINDOW):
        # The same side opened both (it reconnected, e.g. to a restarted
        # peer), or the old one has been up a while: the old one is stale.
        return new, existing

    # Both sides connected at once: keep the connection the lower id opened.
    def connector_id(link: PeerLink) -> int:
        return link.my_id if link.role is Role.CONNECTOR else (link.peer_id or 0)

    keep, drop = sorted((existing, new), key=connector_id)
    return keep, drop


@dataclass
class PeerSession:
    """What this peer knows about one other peer right now."""

    peer_id: int
    name: str = ""
    public_key: bytes | None = None  # as the registry gives it
    online: bool = False
    online_since: int = 0
    link: PeerLink | None = None
    connecting_since: float | None = None
    last_error: str | None = None
    upgrade_at: float | None = None  # while relayed: when to try for a direct path again
    candidates: tuple[tuple[str, int], ...] = ()  # its addresses, as the registry last gave them
    observed: tuple[str, int] | None = None  # the one of them the server saw (not self-declared)
    birthday_at: float | None = None  # when to try many-port probing (we are symmetric, it is relayed)
    birthday_attempts: int = 0
    # Its NAT's mapping, as it told us ("nat" frame): many-port probing only
    # helps against an endpoint-independent one.
    remote_mapping: str = "unknown"
    # Our last connectivity checks toward it found no direct path: the next
    # connection starts the relay with its CONNECT (pathfinder.connecting).
    direct_failed: bool = False
    # Nonces we put in our answers to its checks, and when: its QUIC hello
    # may sign one of them instead of waiting for a challenge (link.py).
    issued_nonces: dict[bytes, float] = field(default_factory=dict)
    # The registry lists it, but it does not answer (a connection attempt
    # failed, or our link to it went silent): shown offline, its messages
    # wait queued, and we try again at retry_at, backing off.
    unreachable: bool = False
    retry_at: float | None = None
    retry_delay: float = RETRY_FIRST
    # What we last wrote to the history for it (its key and name): an idle
    # peer's listings then write nothing.
    remembered: tuple[bytes, str] | None = None

    # ------------------------------------------------------------ queries

    @property
    def ready_link(self) -> PeerLink | None:
        link = self.link
        return link if link is not None and link.state is LinkState.READY else None

    @property
    def live_link(self) -> PeerLink | None:
        """The link, unless it is closed."""
        link = self.link
        return link if link is not None and link.state is not LinkState.CLOSED else None

    @property
    def reachable(self) -> bool:
        """Online as far as we can tell: listed, and not known to be silent."""
        return self.online and not self.unreachable

    @property
    def relayed(self) -> bool:
        return self.link is not None and self.link.relayed

    def connection(self) -> JSON | None:
        """The page's view of the connection (api.py, "connection")."""
        link = self.link
        if link is None:
            return {"state": "connecting", "address": None} if self.connecting_since is not None else None
        if link.state is LinkState.CLOSED:
            return None
        if link.state is LinkState.READY and link.relayed:
            return {"state": "relayed", "address": None}
        address = link.address
        if address is None:
            return {"state": "connecting", "address": None}
        # Which IP family the path runs over (dual stack: IPv6 is tried first).
        state = "direct" if link.state is LinkState.READY else "connecting"
        return {"state": state, "address": str(Direct(address)), "family": "IPv6" if ":" in address[0] else "IPv4"}

    # ------------------------------------------------------------ rules

    def issue_nonce(self, nonce: bytes, now: float) -> None:
        for old, when in list(self.issued_nonces.items()):
            if now - when > NONCE_LIFETIME:
                del self.issued_nonces[old]
        self.issued_nonces[nonce] = now

    def listed(self, online_since: int, nickname: str, public_key: bytes) -> ListingChange:
        """The registry lists it as online."""
        # A new online-since means it registered anew (a restart): a link to
        # its previous incarnation is dead even if it looks fine.
        restarted = bool(self.online_since) and online_since != self.online_since
        changed = not self.online or restarted or self.name != nickname or self.public_key != public_key
        came_online = not self.online
        self.online, self.name, self.public_key, self.online_since = True, nickname, public_key, online_since
        if restarted or came_online:
            self.reachable_again()  # a new process, or back after its entry expired: worth a try at once
        return ListingChange(changed, came_online, restarted)

    def reachable_again(self) -> None:
        self.unreachable = False
        self.retry_at = None
        self.retry_delay = RETRY_FIRST

    def attempt_failed(self, now: float) -> None:
        """A connection attempt (or a link) to it failed: try again later,
        each time a little later."""
        self.unreachable = True
        self.retry_at = now + self.retry_delay
        self.retry_delay = min(self.retry_delay * 2, RETRY_MAX)

    def adopt(self, link: PeerLink, now: float) -> PeerLink | None:
        """``link`` is ready: make it the peer's link.  Returns the link that
        loses to it (to be closed), if two were ready at once."""
        existing, dropped = self.link, None
        if existing is not None and existing is not link and existing.state is LinkState.READY:
            keep, dropped = choose_link(existing, link, now)
            self.link = keep
        else:
            self.link = link
        self.connecting_since = None
        self.online = True
        self.last_error = None
        self.reachable_again()
        if self.relayed:
            if self.upgrade_at is None:
                self.upgrade_at = now + UPGRADE_INTERVAL
        else:
            self.upgrade_at = None
            self.birthday_at = None
        return dropped

    def due(self, now: float, idle_timeout: float) -> list[Due]:
        """What is due at ``now``, in the order the engine should act."""
        due = []
        if self.connecting_since is not None and self.connecting_since + CONNECT_TIMEOUT <= now:
            due.append(Due.CONNECT_TIMED_OUT)
        link = self.ready_link
        if link is not None:
            # The same sums as deadlines(): "now - last >= interval" can be
            # false at the very deadline "last + interval" (float rounding).
            if now >= link.last_activity + idle_timeout:
                due.append(Due.CLOSE_IDLE)  # opens again when there is something to send
            elif now >= link.last_sent + KEEPALIVE_INTERVAL:
                due.append(Due.KEEPALIVE)  # keeps the NAT mappings of this path open
            elif link.relayed and self.upgrade_at is not None and self.upgrade_at <= now:
                due.append(Due.TRY_UPGRADE)
        if self.retry_at is not None and self.retry_at <= now:
            due.append(Due.RETRY)
        return due

    def deadlines(self, idle_timeout: float) -> list[float]:
        """When :meth:`due` may next answer something."""
        out = []
        if self.connecting_since is not None:
            out.append(self.connecting_since + CONNECT_TIMEOUT)
        link = self.ready_link
        if link is not None:
            out.append(min(link.last_activity + idle_timeout, link.last_sent + KEEPALIVE_INTERVAL))
            if link.relayed and self.upgrade_at is not None:
                out.append(self.upgrade_at)
        if self.birthday_at is not None:
            out.append(self.birthday_at)
        if self.retry_at is not None:
            out.append(self.retry_at)
        return out
