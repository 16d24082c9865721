"""The peer process's engine: one UDP socket, the registration machine, the
QUIC links to other peers, the history store, and the events for the page.

It is the adapter around the sans-IO pieces (registration.py, link.py,
punch.py, natprobe.py): it moves datagrams between the sockets and them,
re-arms one timer, and turns their events into store updates and page
events.  Two mixins of this class hold the rest: traversal.py finds a path
through NATs (checks, relay, many-port probing), messaging.py moves messages
(sends, receipts, the offline queue).  It implements webpeer.api.PeerApi for
the web layer.

Demultiplexing on the one socket (RFC 7983 / RFC 9443): a first byte below
0x40 is STUN (the rendezvous server, later punch probes), anything else is
QUIC, routed by destination connection id.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from aioquic.buffer import Buffer
from aioquic.quic.packet import PACKET_TYPE_INITIAL, pull_quic_header

from rendezvous.client import PeerInfo
from rendezvous.stun import Address, Message, StunProtocolError, decode, looks_like_stun
from rendezvous.udp import UdpEndpoint

from .api import JSON, ApiError
from .identity import Identity, fingerprint
from .link import (
    ConnectionIdsChanged,
    FrameReceived,
    HelloReceived,
    LinkClosed,
    LinkReady,
    LinkState,
    PeerLink,
    Role,
    quic_configuration,
)
from .messaging import MessagingMixin
from .natprobe import NatProbe
from .punch import PunchSession
from .traversal import (
    KEEPALIVE_INTERVAL,
    QUIC_IDLE_TIMEOUT,
    RELAY_HOST,
    UPGRADE_INTERVAL,
    TraversalMixin,
)
from .registration import (
    ConnectAnswered,
    Introduced,
    PeersListed,
    Registered,
    RegistrationLost,
    RegistrationMachine,
    Relayed,
    Stopped,
)
from .store import NewMessage, Status, Store, TrustResult

logger = logging.getLogger("webpeer")

CONNECT_TIMEOUT = 8.0  # CONNECT + QUIC handshake + authentication
MAX_UNAUTHENTICATED_LINKS = 32
SUBSCRIBER_QUEUE = 1000
NONCE_LIFETIME = 60.0  # a check answer's nonce may be signed in a hello this long
SIMULTANEOUS_WINDOW = 5.0  # two links to one peer ready within this: a race, not a restart
RETENTION = 7 * 24 * 3600.0  # queued messages for an offline peer are kept this long


@dataclass(frozen=True)
class NodeConfig:
    server: Address = ("127.0.0.1", 3478)
    data_dir: Path = Path(".")
    name: str = ""
    udp_host: str = "0.0.0.0"
    udp_port: int = 0
    ttl: int = 60
    list_interval: float = 2.0
    idle_timeout: float = 120.0  # a link unused this long is closed (keepalives stop before)
    relay_only: bool = False  # never try a direct path (diagnostics, and tests of the relay)
    retention: float = RETENTION


@dataclass
class PeerState:
    """What this node knows about one other peer right now."""

    peer_id: int
    name: str = ""
    public_key: bytes | None = None  # as the registry gives it
    online: bool = False
    online_since: int = 0
    link: PeerLink | None = None
    connecting_since: float | None = None
    last_error: str | None = None
    upgrade_at: float | None = None  # while relayed: when to try for a direct path again
    candidates: tuple[Address, ...] = ()  # its addresses, as the registry last gave them
    birthday_at: float | None = None  # when to try many-port probing (we are symmetric, it is relayed)
    birthday_attempts: int = 0
    # Its NAT's mapping, as it told us ("nat" frame): many-port probing only
    # helps against an endpoint-independent one.
    remote_mapping: str = "unknown"
    # Nonces we put in our answers to its checks, and when: its QUIC hello
    # may sign one of them instead of asking for a challenge (link.py).
    issued_nonces: dict[bytes, float] = field(default_factory=dict)

    def issue_nonce(self, nonce: bytes, now: float) -> None:
        for old, when in list(self.issued_nonces.items()):
            if now - when > NONCE_LIFETIME:
                del self.issued_nonces[old]
        self.issued_nonces[nonce] = now

    def connection(self) -> JSON | None:
        link = self.link
        if link is None:
            return {"state": "connecting", "address": None} if self.connecting_since is not None else None
        if link.state is LinkState.READY:
            if link.address[0] == RELAY_HOST:
                return {"state": "relayed", "address": None}
            return {"state": "direct", "address": f"{link.address[0]}:{link.address[1]}"}
        if link.state is LinkState.CLOSED:
            return None
        return {"state": "connecting", "address": f"{link.address[0]}:{link.address[1]}"}


class PeerNode(MessagingMixin, TraversalMixin):
    def __init__(self, config: NodeConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.identity = Identity.load_or_create(config.data_dir)
        self.store = Store(config.data_dir / "history.sqlite3")
        self.stats: Counter[str] = Counter()
        self.registration = RegistrationMachine(
            self.identity, nickname=config.name, ttl=config.ttl, list_interval=config.list_interval
        )
        self.peer_states: dict[int, PeerState] = {}
        self._cids: dict[bytes, PeerLink] = {}
        self._accepting: set[PeerLink] = set()  # acceptor links not yet authenticated
        self._awaiting_key: dict[int, list[PeerLink]] = {}  # acceptor links waiting on CONNECT for the key
        self._closing: list[PeerLink] = []  # closed links whose last datagrams (CONNECTION_CLOSE) are not out yet
        self._punches: dict[int, PunchSession] = {}  # peer id -> connectivity checks under way
        self._upgrades: set[PeerLink] = set()  # direct links being set up beside a relayed one
        self._nat: NatProbe | None = None
        # Many-port probing: spare sockets by index (0 is the main socket), the
        # checks each one runs, and the sprays toward symmetric peers.
        self._spares: dict[int, UdpEndpoint] = {}
        self._spare_sessions: dict[int, PunchSession] = {}
        self._spare_expiry: dict[int, float] = {}
        self._next_spare = 1
        self._sprays: dict[int, PunchSession] = {}
        # peer id -> probes that came before we had a session (and key) for it
        self._early_probes: dict[int, list[tuple[Message, Address, float]]] = {}
        self._nat_observed: Address | None = None
        self._acceptor_config = quic_configuration(self.identity, Role.ACCEPTOR, QUIC_IDLE_TIMEOUT)
        self._endpoint: UdpEndpoint | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._subscribers: set[asyncio.Queue[JSON]] = set()
        self._stopped = asyncio.Event()
        self._housekeeping: asyncio.Task[None] | None = None
        self._flush_scheduled = False
        self._id_prefix = f"{secrets.randbits(32):08x}"
        self._id_counter = itertools.count()
        # Messages from submit_message waiting for the next flush to store them.
        self._outbox: list[tuple[JSON, asyncio.Future[JSON], asyncio.Queue[JSON] | None]] = []
        # What the links' frames brought in this flush, stored before its commit.
        self._incoming: list[NewMessage] = []
        self._acks: dict[PeerLink, list[JSON]] = {}  # for those messages
        self._receipts: dict[int, list[str]] = {}
        # Frames that may leave only once the flush's commit is done: acks
        # for stored messages, and the new messages stored as sent.
        self._after_commit: dict[PeerLink, list[JSON]] = {}
        # Events published while a flush's transaction is open wait here for its commit.
        self._held_events: list[tuple[JSON, asyncio.Queue[JSON] | None]] | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.store.open()
        for known in self.store.known_peers():
            self.peer_states[known.peer_id] = PeerState(known.peer_id, known.name, None)
        self._endpoint = UdpEndpoint.bind(
            self.config.udp_host, self.config.udp_port, self._on_datagram, self._flush, self.stats
        )
        self._endpoint.start()
        self.registration.local = self._local_candidates()
        self.registration.start(self.clock())
        self._housekeeping = asyncio.create_task(self._expire_queued_periodically())
        self._flush()

    async def stop(self) -> None:
        """Unregister (waiting briefly for the answer), close links and the store."""
        if self._endpoint is None:
            return
        self.registration.stop(self.clock())
        self._flush()
        try:
            await asyncio.wait_for(self._stopped.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
        for peer in self.peer_states.values():
            if peer.link is not None:
                peer.link.close("peer shutting down")
        for link in list(self._accepting):
            link.close("peer shutting down")
        self._flush()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self._timer is not None:
            self._timer.cancel()
        self._endpoint.close()
        self._endpoint = None
        self.store.close()

    @property
    def udp_address(self) -> Address:
        assert self._endpoint is not None
        return self._endpoint.address

    def _local_candidates(self) -> tuple[Address, ...]:
        """The address of the interface that routes to the server, with our port."""
        port = self.udp_address[1]
        host = self.config.udp_host
        if host in ("0.0.0.0", "::"):
            family = socket.AF_INET6 if ":" in self.config.server[0] else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                try:
                    probe.connect(self.config.server)  # no packet is sent
                    host = probe.getsockname()[0]
                except OSError:
                    return ()
        return ((host, port),)

    # ------------------------------------------------------------ PeerApi

    def me(self) -> JSON:
        observed = self.registration.observed
        return {
            "id": self.registration.peer_id,
            "name": self.config.name,
            "fingerprint": self.identity.fingerprint,
            "public_address": f"{observed[0]}:{observed[1]}" if observed else None,
            "server": f"{self.config.server[0]}:{self.config.server[1]}",
            "registered": self.registration.state.value == "registered",
            "nat": self._nat.result() if self._nat is not None else {"type": "unknown", "mapping": "unknown",
                                                                     "filtering": "unknown", "note": ""},
        }

    def peers_json(self) -> list[JSON]:
        unread = self.store.unread_counts()
        out = []
        for peer in sorted(self.peer_states.values(), key=lambda p: p.peer_id):
            if peer.peer_id == self.registration.peer_id:
                continue
            known = self.store.known_peer(peer.peer_id)
            key = peer.public_key or (known.public_key if known else None)
            out.append({
                "id": peer.peer_id,
                "name": peer.name or (known.name if known else ""),
                "fingerprint": fingerprint(key) if key else None,
                "online": peer.online,
                "unread": unread.get(peer.peer_id, 0),
                "key_changed": bool(known and known.key_changed),
                "connection": peer.connection(),
                "error": peer.last_error,
            })
        return out

    def peers(self) -> list[JSON]:
        return self.peers_json()

    def messages(self, peer_id: int, limit: int = 500) -> list[JSON]:
        return self.store.conversation(peer_id, limit)

    def subscribe(self) -> asyncio.Queue[JSON]:
        queue: asyncio.Queue[JSON] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[JSON]) -> None:
        self._subscribers.discard(queue)

    def _publish(self, event: JSON, *, skip: asyncio.Queue[JSON] | None = None) -> None:
        if self._held_events is not None:
            self._held_events.append((event, skip))
            return
        for queue in list(self._subscribers):
            if queue is skip:
                continue
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # A page that stopped reading: drop its backlog and tell it to
                # reload everything, rather than grow without bound.
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait({"type": "resync"})

    def _publish_peers(self) -> None:
        self._publish({"type": "peers", "peers": self.peers_json()})

    # ------------------------------------------------------------ datagrams

    def _on_datagram(self, data: bytes, address: Address) -> None:
        now = self.clock()
        if looks_like_stun(data):
            try:
                message = decode(data, require_fingerprint=True)
            except StunProtocolError:
                self.stats["bad_stun"] += 1
                return
            if self._nat is not None and self._nat.owns(message.transaction_id):
                # Our NAT check; its filtering step is answered from the server's other address.
                self._nat.receive(message, address, now)
                if self._nat.done:
                    self._nat_learned(now)
            elif address == self.config.server:
                self.registration.receive(message, now)
            else:
                self._on_probe(message, address, now)
            return
        self._on_quic(data, address, now)

    def _on_quic(self, data: bytes, address: Address, now: float, endpoint: int = 0) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
        except ValueError:
            self.stats["bad_quic"] += 1
            return
        link = self._cids.get(header.destination_cid)
        if link is None:
            if (
                header.packet_type != PACKET_TYPE_INITIAL
                or len(data) < 1200
                or len(self._accepting) >= MAX_UNAUTHENTICATED_LINKS
                or self.registration.peer_id is None
            ):
                self.stats["quic_dropped"] += 1
                return
            link = PeerLink.accept(
                self.identity, self.registration.peer_id, address, header.destination_cid, self._acceptor_config
            )
            link.endpoint = endpoint
            self._accepting.add(link)
            self._cids[header.destination_cid] = link
            self._cids[link.quic.host_cid] = link
        link.receive_datagram(data, address, now)

    def _schedule_flush(self) -> None:
        """Flush once at the end of this loop turn: many sends in one turn
        share one commit and go out in as few QUIC packets as possible."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Process events, send what is due, re-arm the timer."""
        endpoint = self._endpoint
        if endpoint is None:
            return
        now = self.clock()
        self._flush_scheduled = False
        # One commit for everything this wake-up stores (a burst of messages
        # and receipts, the page's new messages), instead of one per message.
        # The page hears of it (events, answers) only after that commit.
        outbox, self._outbox = self._outbox, []
        self._held_events = []
        try:
            with self.store.batch():
                for _ in range(10):  # events can cause more events; bounded
                    busy = self._drain_registration(now)
                    busy |= self._drain_links(now)
                    self._store_incoming(now)
                    busy |= self._check_punches(now)
                    if not busy:
                        break
                self._store_outbox(outbox)
        except BaseException as error:
            # Rolled back: what the held events announced is not on disk, and
            # nothing may be acknowledged (the senders will send it again).
            self._held_events = None
            self._incoming, self._acks, self._receipts, self._after_commit = [], {}, {}, {}
            for _, future, _ in outbox:
                if not future.done():
                    future.set_exception(ApiError(500, f"could not store the message: {error}"))
            self._publish({"type": "resync"})
            raise
        held, self._held_events = self._held_events, None
        after_commit, self._after_commit = self._after_commit, {}
        for link, frames in after_commit.items():
            if link.state is LinkState.READY:
                link.send_frames(frames, now)
        # Answers first: the page's writer then finds them and these events
        # queued together, and sends them as one frame.
        for message, future, _ in outbox:
            if not future.done():
                future.set_result(message)
        for event, skip in held:
            self._publish(event, skip=skip)
        for data in self.registration.datagrams_to_send():
            endpoint.sendto(data, self.config.server)
        for session in list(self._punches.values()):
            for data, address in session.datagrams_to_send():
                endpoint.sendto(data, address)
        if self._nat is not None:
            for data, address in self._nat.datagrams_to_send():
                endpoint.sendto(data, address)
        for spray in self._sprays.values():
            for data, address in spray.datagrams_to_send():
                endpoint.sendto(data, address)
        for index, session in self._spare_sessions.items():
            spare = self._spares.get(index)
            for data, address in session.datagrams_to_send():
                if spare is not None:
                    spare.sendto(data, address)
        closing, self._closing = self._closing, []
        for link in self._all_links() + closing:
            for data, address in link.datagrams_to_send(now):
                if address[0] == RELAY_HOST:
                    # A relayed path: the rendezvous server carries it (SEND/DATA).
                    if not self.registration.send_relayed(int(address[1]), data):
                        self.stats["relay_unavailable"] += 1
                else:
                    self._spares.get(link.endpoint, endpoint).sendto(data, address)
        for data in self.registration.datagrams_to_send():
            endpoint.sendto(data, self.config.server)
        self._arm_timer(now)

    def _all_links(self) -> list[PeerLink]:
        links = [p.link for p in self.peer_states.values() if p.link is not None]
        return links + [link for link in (*self._accepting, *self._upgrades) if link not in links]

    def _arm_timer(self, now: float) -> None:
        timers = [t for t in [self.registration.get_timer()] + [link.get_timer() for link in self._all_links()] if t is not None]
        timers += [t for t in (s.get_timer() for s in self._punches.values()) if t is not None]
        if self._nat is not None and (nat_timer := self._nat.get_timer()) is not None:
            timers.append(nat_timer)
        for session in (*self._sprays.values(), *self._spare_sessions.values()):
            if (timer := session.get_timer()) is not None:
                timers.append(timer)
        timers += self._spare_expiry.values()
        timers += [p.birthday_at for p in self.peer_states.values() if p.birthday_at is not None]
        for peer in self.peer_states.values():
            if peer.connecting_since is not None:
                timers.append(peer.connecting_since + CONNECT_TIMEOUT)
            if peer.link is not None and peer.link.state is LinkState.READY:
                timers.append(min(peer.link.last_activity + self.config.idle_timeout,
                                  peer.link.last_sent + KEEPALIVE_INTERVAL))
                if peer.link.address[0] == RELAY_HOST and peer.upgrade_at is not None:
                    timers.append(peer.upgrade_at)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not timers:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + max(0.0, min(timers) - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self.clock()
        if (timer := self.registration.get_timer()) is not None and timer <= now:
            self.registration.handle_timer(now)
        for link in self._all_links():
            if (timer := link.get_timer()) is not None and timer <= now:
                link.handle_timer(now)
        for session in (*self._punches.values(), *self._sprays.values(), *self._spare_sessions.values()):
            if (timer := session.get_timer()) is not None and timer <= now:
                session.handle_timer(now)
        self._birthday_timers(now)
        if self._nat is not None and (nat_timer := self._nat.get_timer()) is not None and nat_timer <= now:
            self._nat.handle_timer(now)
            if self._nat.done:
                self._nat_learned(now)
        for peer in list(self.peer_states.values()):
            if peer.connecting_since is not None and peer.connecting_since + CONNECT_TIMEOUT <= now:
                self._connect_failed(peer, "could not reach the peer")
            link = peer.link
            if link is not None and link.state is LinkState.READY:
                if now - link.last_activity >= self.config.idle_timeout:
                    link.close("idle")  # opens again when there is something to send
                elif now - link.last_sent >= KEEPALIVE_INTERVAL:
                    link.keepalive(now)  # keeps the NAT mappings of this path open
                elif link.address[0] == RELAY_HOST and peer.upgrade_at is not None and peer.upgrade_at <= now:
                    # Relayed for a while: try for a direct path again.
                    peer.upgrade_at = now + UPGRADE_INTERVAL
                    self.registration.connect(peer.peer_id, now)
        self._flush()

    # ------------------------------------------------------------ registration events

    def _drain_registration(self, now: float) -> bool:
        busy = False
        while (event := self.registration.next_event()) is not None:
            busy = True
            if isinstance(event, Registered):
                logger.info("registered as peer %d, seen as %s:%d", event.peer_id, *event.observed)
                if self._nat is None or self._nat_observed != event.observed:
                    # Learn (again, if our public address moved) what NAT we are behind.
                    self._nat_observed = event.observed
                    self._nat = NatProbe(self.config.server, self.registration.local)
                    self._nat.start(now)
                self._publish({"type": "me", "me": self.me()})
            elif isinstance(event, RegistrationLost):
                logger.info("registration lost: %s", event.reason)
                self._publish({"type": "me", "me": self.me()})
            elif isinstance(event, PeersListed):
                self._on_peers_listed(event, now)
            elif isinstance(event, Introduced):
                self._learn(event.info, now)
                if self.registration.peer_id is not None and event.info.punch_key is not None:
                    # Probe back at once: both NATs must see outgoing packets.
                    self._start_punch(event.info, now, connect=False)
            elif isinstance(event, ConnectAnswered):
                self._on_connect_answered(event, now)
            elif isinstance(event, Relayed):
                if event.payload and event.payload[0] >= 0x40:
                    self._on_quic(event.payload, (RELAY_HOST, event.peer_id), now)
                else:
                    self.stats["relayed_dropped"] += 1
            elif isinstance(event, Stopped):
                self._stopped.set()
        return busy

    def _on_peers_listed(self, event: PeersListed, now: float) -> None:
        online = {}
        for entry in event.entries:
            online[entry.peer_id] = entry
        changed = False
        for peer_id, entry in online.items():
            peer = self.peer_states.get(peer_id)
            if peer is None:
                peer = self.peer_states[peer_id] = PeerState(peer_id)
                changed = True
            # A new online-since means it registered anew (a restart): a link
            # to its previous incarnation is dead even if it looks fine.
            restarted = bool(peer.online_since) and entry.online_since != peer.online_since
            if not peer.online or restarted or peer.name != entry.nickname or peer.public_key != entry.public_key:
                changed = True
            came_online = not peer.online
            peer.online, peer.name, peer.public_key, peer.online_since = True, entry.nickname, entry.public_key, entry.online_since
            self._remember_key(peer, now)
            if restarted and peer.link is not None and peer.link.state is LinkState.READY:
                # Registered anew: its old process (and our link to it) is gone.
                # (A link still being set up was aimed by a fresh CONNECT: keep it.)
                peer.link.close("peer restarted")
            if came_online or restarted:
                # Including messages sent on a link that died before their receipt.
                self._pump_peer(peer, force_connect=True)
        for peer in self.peer_states.values():
            if peer.online and peer.peer_id not in online:
                peer.online = False
                changed = True
                for message in self.store.pending_outgoing(peer.peer_id):
                    if message["status"] == Status.SENDING and (peer.link is None or peer.link.state is not LinkState.READY):
                        self._set_status(message["id"], Status.QUEUED)
        if changed:
            self._publish_peers()

    def _learn(self, info: PeerInfo, now: float) -> None:
        """An introduction or CONNECT answer: the registry's word on a peer's key."""
        peer = self.peer_states.setdefault(info.peer_id, PeerState(info.peer_id))
        peer.public_key = info.public_key
        peer.candidates = tuple(c.address for c in info.candidates)
        if info.nickname:
            peer.name = info.nickname
        peer.online = True
        self._remember_key(peer, now)
        for link in self._awaiting_key.pop(info.peer_id, []):
            link.confirm_hello(info.public_key, peer.issued_nonces)

    def _remember_key(self, peer: PeerState, now: float) -> None:
        if peer.public_key is None:
            return
        result = self.store.remember_peer(peer.peer_id, peer.public_key, peer.name, now)
        if result is TrustResult.CHANGED:
            logger.warning("peer %d now has a different key (fingerprint %s)", peer.peer_id, fingerprint(peer.public_key))
            self._publish_peers()

    # ------------------------------------------------------------ connecting and sending

    def _on_connect_answered(self, event: ConnectAnswered, now: float) -> None:
        peer = self.peer_states.setdefault(event.peer_id, PeerState(event.peer_id))
        if event.info is None:
            if event.error and event.error.startswith("404"):
                peer.online = False
                peer.connecting_since = None
                self._pump_peer(peer)  # back to queued
                self._publish_peers()
            else:
                self._connect_failed(peer, f"rendezvous: {event.error}")
            return
        self._learn(event.info, now)
        if peer.connecting_since is None and any(
            link.peer_id == peer.peer_id and link.state is not LinkState.CLOSED for link in self._accepting
        ):
            # This CONNECT only asked for the key of a peer that is connecting
            # to us (_on_hello): that connection is the one; open no other.
            return
        relayed = peer.link is not None and peer.link.address[0] == RELAY_HOST
        if peer.link is not None and peer.link.state is not LinkState.CLOSED and not relayed:
            return  # already connected (or the other side connected to us meanwhile)
        if self.registration.peer_id is None or not event.info.candidates:
            self._connect_failed(peer, "the server gave no address for the peer")
            return
        self._start_punch(event.info, now, connect=True)
        self._open_early(peer, event.info, now)
        self._publish({"type": "connection", "peer": peer.peer_id, "connection": peer.connection()})

    def _open_link(self, peer: PeerState, address: Address, now: float, nonce: bytes | None = None,
                   replace: bool = False) -> None:
        """QUIC to ``address``.  ``replace``: a link still handshaking (opened
        early, on a guess) gives way to this one."""
        if peer.public_key is None or self.registration.peer_id is None:
            self._connect_failed(peer, "no key for the peer")
            return
        link = PeerLink.connect(self.identity, self.registration.peer_id, address, peer.peer_id, peer.public_key, now)
        link.check_nonce = nonce
        previous = peer.link
        if previous is None or previous.state is LinkState.CLOSED:
            peer.link = link
        elif replace and previous.state is not LinkState.READY:
            peer.link = link
            self._retire(previous, "another path was chosen", now)
        else:
            self._upgrades.add(link)  # a direct path beside a relayed link: switch when it is ready
        self._cids[link.quic.host_cid] = link
        self._publish({"type": "connection", "peer": peer.peer_id, "connection": peer.connection()})

    def _connect_failed(self, peer: PeerState, reason: str) -> None:
        peer.connecting_since = None
        peer.last_error = reason
        if peer.link is not None and peer.link.state is not LinkState.READY:
            peer.link.close(reason)
        # Everything without a receipt fails (the user can retry), which also
        # stops the closing link from starting another attempt.
        for message in self._undelivered(peer.peer_id):
            self._set_status(message["id"], Status.FAILED, reason)
        self._publish({"type": "connection", "peer": peer.peer_id, "connection": None})
        self._publish_peers()

    # ------------------------------------------------------------ link events

    def _drain_links(self, now: float) -> bool:
        busy = False
        for link in self._all_links():
            while (event := link.next_event()) is not None:
                busy = True
                if isinstance(event, ConnectionIdsChanged):
                    for cid in event.issued:
                        self._cids[cid] = link
                    for cid in event.retired:
                        self._cids.pop(cid, None)
                elif isinstance(event, HelloReceived):
                    self._on_hello(link, event, now)
                elif isinstance(event, LinkReady):
                    self._store_incoming(now)  # receipts that came first count first
                    self._on_link_ready(link, event, now)
                elif isinstance(event, FrameReceived):
                    self._on_frame(link, event.frame, now)
                elif isinstance(event, LinkClosed):
                    self._store_incoming(now)
                    self._on_link_closed(link, event, now)
        return busy

    def _on_hello(self, link: PeerLink, event: HelloReceived, now: float) -> None:
        peer = self.peer_states.get(event.peer_id)
        if peer is not None and peer.public_key is not None:
            link.confirm_hello(peer.public_key, peer.issued_nonces)
            return
        # We have not heard of this id from the registry yet (its introduction
        # may still be on its way): ask the server, and decide on its answer.
        self._awaiting_key.setdefault(event.peer_id, []).append(link)
        if not self.registration.connect(event.peer_id, now):
            link.confirm_hello(None)

    def _on_link_ready(self, link: PeerLink, event: LinkReady, now: float) -> None:
        self._accepting.discard(link)
        self._upgrades.discard(link)
        peer = self.peer_states.setdefault(event.peer_id, PeerState(event.peer_id))
        existing = peer.link
        if existing is not None and existing is not link and existing.state is LinkState.READY:
            # Two links to one peer: both connected at once, it restarted, or
            # a direct path opened beside a relayed one.
            existing_relayed = existing.address[0] == RELAY_HOST
            if existing_relayed != (link.address[0] == RELAY_HOST):
                keep, drop = (link, existing) if existing_relayed else (existing, link)
            elif existing.role is link.role or (
                existing.ready_at is not None and now - existing.ready_at > SIMULTANEOUS_WINDOW
            ):
                # The same side opened both (it reconnected, e.g. to a restarted
                # peer), or the old one has been up a while: the old one is stale.
                keep, drop = link, existing
            else:
                # Both sides must keep the same one: the lower id's connection.
                def connector_id(candidate: PeerLink) -> int:
                    return candidate.my_id if candidate.role is Role.CONNECTOR else (candidate.peer_id or 0)

                keep, drop = sorted((existing, link), key=connector_id)
            peer.link = keep
            self._retire(drop, "duplicate connection", now)
        else:
            peer.link = link
        peer.connecting_since = None
        peer.online = True
        peer.last_error = None
        if peer.link.address[0] != RELAY_HOST:
            peer.upgrade_at = None
            peer.birthday_at = None
        else:
            if peer.upgrade_at is None:
                peer.upgrade_at = now + UPGRADE_INTERVAL
            self._tell_nat(peer.link)
            self._consider_birthday(peer, now)
        logger.info("connected to peer %d at %s:%s (%s)", event.peer_id, *link.address, link.role.value)
        self._publish({"type": "connection", "peer": peer.peer_id, "connection": peer.connection()})
        self._pump_peer(peer, resend_sent=True)

    def _on_link_closed(self, link: PeerLink, event: LinkClosed, now: float) -> None:
        self._closing.append(link)
        if link.endpoint and link.endpoint not in self._spare_expiry and not any(
            other.endpoint == link.endpoint for other in self._all_links() if other is not link
        ):
            # A spare socket from many-port probing whose connection is over
            # (after this flush sends its CONNECTION_CLOSE).
            spare = self._spares.pop(link.endpoint, None)
            if spare is not None:
                asyncio.get_running_loop().call_later(1.0, spare.close)
        self._accepting.discard(link)
        self._upgrades.discard(link)
        for cid in [cid for cid, owner in self._cids.items() if owner is link]:
            del self._cids[cid]
        for links in self._awaiting_key.values():
            if link in links:
                links.remove(link)
        peer = self.peer_states.get(link.peer_id) if link.peer_id is not None else None
        if peer is None or peer.link is not link:
            return
        peer.link = None
        peer.connecting_since = None  # whatever attempt this link was, it is over
        logger.info("link to peer %s closed: %s", link.peer_id, event.reason)
        if "different key" in event.reason or "registry does not give" in event.reason:
            self._connect_failed(peer, event.reason)
            return
        self._publish({"type": "connection", "peer": peer.peer_id, "connection": None})
        # Messages sent but not acknowledged stay "sent" and go again on the
        # next link (the receiver stores by id, so a repeat is harmless).
        if peer.connecting_since is None and self._undelivered(peer.peer_id):
            self._pump_peer(peer, force_connect=True)

    def peer_state(self, peer_id: int) -> PeerState:
        return self.peer_states.setdefault(peer_id, PeerState(peer_id))
