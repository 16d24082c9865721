"""The peer's protocol engine: sans-IO, the peer's counterpart of the
server's ``ServerCore`` (in the style of aioquic's ``QuicConnection``).

Datagrams, the page's requests and ``now`` go in; datagrams to send
(:class:`~webpeer.path.Transmit`), page events (webpeer/events.py), spare
socket commands and the next deadline come out.  Nothing here touches a
socket, reads the clock or commits: the node (webpeer/node.py) does those,
and wraps each :meth:`PeerEngine.process` in one history transaction, then
calls :meth:`PeerEngine.committed` (or :meth:`PeerEngine.rolled_back`).

The engine owns the registration machine (registration.py), the QUIC links
by connection id, and one :class:`~webpeer.peer_session.PeerSession` per
remote peer; its components own the rest: :class:`~webpeer.pathfinder.PathFinder`
(checks, relay, NAT type, many-port probing) and
:class:`~webpeer.message_flow.MessageFlow` (sends, receipts, the offline queue)
and :class:`~webpeer.trust.Trust` (the key-change gate and verification).

Demultiplexing on the one socket (RFC 7983 / RFC 9443): a first byte below
0x40 is STUN (the rendezvous server, our NAT checks, other peers' probes),
anything else is QUIC, routed by destination connection id.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

# aioquic.buffer re-exports this without __all__; the extension module is where it lives.
from aioquic._buffer import Buffer
from aioquic.quic.packet import PACKET_TYPE_INITIAL, pull_quic_header
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rendezvous.client import PeerInfo
from rendezvous.stun import Address, CandidateKind, ErrorCode, PeerEntry, StunProtocolError, decode, looks_like_stun

from .api import JSON
from .events import ConnectionChanged, MeChanged, PageEvent, PeersChanged, Resync
from .file_transfer import MAX_FILE_SIZE, FileStorage, FileTransfers, NoFileStorage
from .groups import Groups
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
    StreamReceived,
    quic_configuration,
)
from .mailbox_flow import DEFAULT_AFTER as MAILBOX_AFTER
from .mailbox_flow import MailboxFlow
from .message_flow import Draft, MessageFlow, unknown_peer
from .path import Direct, Path, Relayed, Transmit
from .pathfinder import PathFinder, SpareCommand
from .peer_session import UPGRADE_INTERVAL, Due, PeerSession
from .portmap import Mapping
from .quota import QuotaConfig
from .registration import (
    MAX_WATCHED,
    WATCH_REPAIR,
    ConnectAnswered,
    DirectoryListed,
    Introduced,
    MailDeposited,
    MailFetched,
    PeersListed,
    PresenceChanged,
    Registered,
    RegistrationLost,
    RegistrationMachine,
    ServerAnswered,
    ServerSilent,
    Stopped,
)
from .registration import (
    Relayed as RelayedDatagram,
)
from .store import Status, Store
from .targets import LookupAnswer, Targets
from .trust import Action, Trust, TrustState, link_verdict
from .wire import Frame, FrameError

logger = logging.getLogger("webpeer")

# Strangers' keys kept (webpeer/store.py prune_strangers): those a directory
# page showed, never a contact.  The page shows the safety number of one it
# shows now; the rest are forgotten past these bounds.
MAX_STRANGERS = 1000
STRANGER_TTL = 7 * 86400.0
STRANGER_PRUNE_EVERY = 600.0

# No packet at all for this long: the path (or the peer) is dead.  Ready
# links ping every peer_session.KEEPALIVE_INTERVAL, so a live one never idles
# out, and a dead peer is noticed within this.
QUIC_IDLE_TIMEOUT = 8.0
# QUIC's reason when the idle timer closes a connection: the other side went silent.
SILENT = "Idle timeout"
# Inbound connections that have not proved their key yet: at most this
# many, at most MAX_UNAUTHENTICATED_PER_SOURCE from one IP (one host cannot
# hold them all), and each only for HELLO_DEADLINE (silent handshakes cannot
# squat).  When all are taken, the oldest makes room.
MAX_UNAUTHENTICATED_LINKS = 32
MAX_UNAUTHENTICATED_PER_SOURCE = 4
HELLO_DEADLINE = 3.0
# A closed link's connection ids are kept this long: a late packet for it (the
# answer to a relay attempt closed because a direct path won) is dropped, not
# taken for a new connection.
CLOSED_CID_LINGER = QUIC_IDLE_TIMEOUT
MAX_FLUSH_ROUNDS = 10  # events can cause more events; bounded


@dataclass(frozen=True)
class EngineConfig:
    server: Address = ("127.0.0.1", 3478)
    name: str = ""
    ttl: int = 60
    list_interval: float = 2.0
    idle_timeout: float = 120.0  # a link unused this long is closed (keepalives stop before)
    relay_only: bool = False  # never try a direct path (diagnostics, and tests of the relay)
    max_file_size: int = MAX_FILE_SIZE  # larger offers are refused (file_transfer.py)
    quota: QuotaConfig = QuotaConfig()  # what each sender may make us store (webpeer/quota.py)
    # The offline mailbox at the rendezvous (mailbox_flow.py): whether to use
    # it, and how long a message waits queued for an offline peer before it is deposited.
    mailbox: bool = True
    mailbox_after: float = MAILBOX_AFTER


def mapping_json(mapping: Mapping) -> JSON:
    """/api/me's ``port_mapping``: how the router maps our socket, until when (Unix time)."""
    return {"protocol": mapping.protocol, "external": address_text(mapping.external), "expires": mapping.expires_at}


def address_text(address: Address) -> str:
    """HOST:PORT, with an IPv6 host in brackets."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PeerEngine:
    """See the module docstring.  ``history``: the open store; the engine
    reads and writes it, the node commits."""

    def __init__(
        self, config: EngineConfig, identity: Identity, history: Store, file_storage: FileStorage | None = None
    ) -> None:
        self.config = config
        self.identity = identity
        self.history = history
        self.stats: Counter[str] = Counter()
        self.registration = RegistrationMachine(
            identity, servers=(config.server,), nickname=config.name, ttl=config.ttl, list_interval=config.list_interval
        )
        self.peer_states: dict[int, PeerSession] = {}
        self.pathfinder = PathFinder(self, self.stats, relay_only=config.relay_only)
        self.flow = MessageFlow(self, history, self.stats, config.quota)
        self.trust = Trust(self, history)
        self.files = FileTransfers(
            self, history, file_storage or NoFileStorage(), self.stats, max_size=config.max_file_size
        )
        self.groups = Groups(self, history, self.stats)  # group conversations (issue 12)
        self.targets = Targets()  # lookups of ids the page writes to (issue 9, bad targets)
        # The offline mailbox at the rendezvous (docs/PROTOCOL.md 11.9).
        self.mailbox = MailboxFlow(self, history, self.stats, enabled=config.mailbox, after=config.mailbox_after)
        self._cids: dict[bytes, PeerLink] = {}
        self._closed_cids: dict[bytes, float] = {}  # cid of a closed link -> until when to drop its packets
        # Acceptor links not yet authenticated: when each came, and from where
        # (an IP, or the relay and the peer id the server vouches for).
        self._accepting: dict[PeerLink, tuple[float, object]] = {}
        self._awaiting_key: dict[int, list[PeerLink]] = {}  # acceptor links waiting on CONNECT for the key
        self._closing: list[PeerLink] = []  # closed links whose last datagrams (CONNECTION_CLOSE) are not out yet
        # Links we opened that are being set up beside a peer's session link:
        # a direct one beside the relay (an upgrade, or the early guess while
        # the relay was ready first), or the relay beside a direct guess (it
        # starts with the checks: PathFinder.open_early).  One that becomes
        # ready is adopted (PeerSession.choose_link decides between two).
        self._upgrades: set[PeerLink] = set()
        self._acceptor_config = quic_configuration(identity, Role.ACCEPTOR, QUIC_IDLE_TIMEOUT)
        self._events: list[PageEvent] = []
        self._process_mark: int | None = None  # where this process()'s events start
        self.stopped = False
        # How many sessions the registration machine was last given as
        # contacts: sessions are only ever added (or, rarely, removed), so a
        # change of the count is a change of the contacts.
        self._contacts_given = -1
        self._directory_given: set[int] = set()
        # Past MAX_WATCHED contacts: when the page added each (activity, like a
        # message), the ids handed to the subscription, and when it was chosen.
        self._added_at: dict[int, float] = {}
        self._strangers_pruned_at: float | None = None
        self._watching: frozenset[int] = frozenset()
        self._watching_chosen_at: float | None = None
        self._directory_left: set[int] = set()  # strangers on the page whose PRESENCE said offline
        # The directory view: the first page of the server's online list,
        # replaced at each refresh.  Shown beside the contacts, not watched:
        # a crowd of strangers costs a bounded page, and never pushes a
        # contact out of the watched set.
        self.directory: dict[int, PeerEntry] = {}
        self.storage_error: str | None = None  # why the last commit failed, until one works
        self.port_mapping: Mapping | None = None  # what our router maps to our socket (portmap.py)

    # ------------------------------------------------------------ lifecycle

    def start(self, local: tuple[Address, ...], now: float, *, last_id: int | None = None) -> None:
        """``local``: our socket's addresses as other peers on our network reach it.
        ``last_id``: the id this identity had at its last registration with
        this server (the node keeps it in a file): the page's sends are
        queued under it until we are registered again (ids never change)."""
        # Contacts only: strangers whose keys directory pages gave are known
        # too, and would otherwise fill the watched set (MAX_WATCHED) after
        # a restart, ahead of the contacts that came later.
        for known in self.history.contacts():
            self.peer_states[known.peer_id] = PeerSession(known.peer_id, known.name, None)
        self.files.start()
        self.groups.load()
        if last_id is not None and self.registration.peer_id is None:
            self.registration.peer_id = last_id
        self.registration.local = local
        self._sync_contacts(now)
        self.registration.start(now)

    def port_mapped(self, mapping: Mapping | None, now: float) -> None:
        """The router mapped a port to our socket (or the mapping went): it
        is offered to other peers as a candidate from our next REGISTER."""
        self.port_mapping = mapping
        self.registration.offer_mapped(() if mapping is None else (mapping.external,), now)
        self.publish(MeChanged(self.me()))

    def stop(self, now: float) -> None:
        """Unregister; the node waits a little for :attr:`stopped`, then
        calls :meth:`close_links`."""
        self.registration.stop(now)

    def close_links(self) -> None:
        for session in self.peer_states.values():
            if session.link is not None:
                session.link.close("peer shutting down")
        for link in list(self._accepting):
            link.close("peer shutting down")

    # ------------------------------------------------------------ contexts for the components

    @property
    def my_id(self) -> int | None:
        return self.registration.peer_id

    @property
    def observed(self) -> Address | None:
        return self.registration.observed

    @property
    def local(self) -> tuple[Address, ...]:
        # With our address in the family we did not register over: it is ours too.
        return self.registration.local + self.registration.other_family

    def session(self, peer_id: int) -> PeerSession:
        return self.peer_states.setdefault(peer_id, PeerSession(peer_id))

    def sessions(self) -> Iterable[PeerSession]:
        return list(self.peer_states.values())

    def links(self) -> list[PeerLink]:
        links = [p.link for p in self.peer_states.values() if p.link is not None]
        return links + [link for link in (*self._accepting, *self._upgrades) if link not in links]

    def peer_links(self, peer_id: int) -> list[PeerLink]:
        """The live links we hold to ``peer_id``: its session's first, then
        those we are setting up beside it."""
        session = self.peer_states.get(peer_id)
        own = [session.link] if session is not None and session.link is not None else []
        beside = [link for link in self._upgrades if link.peer_id == peer_id and link not in own]
        return [link for link in own + beside if link.state is not LinkState.CLOSED]

    def drop_attempt(self, link: PeerLink, reason: str, now: float) -> None:
        """Close a link still being set up; if it was its session's link,
        another attempt under way for that peer (if any) takes its place, so
        the peer does not look disconnected while that one goes on."""
        session = self.peer_states.get(link.peer_id) if link.peer_id is not None else None
        if session is not None and session.link is link:
            others = [other for other in self.peer_links(session.peer_id) if other is not link]
            session.link = others[0] if others else None
            if others:
                self._upgrades.discard(others[0])
        self._retire(link, reason, now)  # (its LinkClosed also takes it out of _upgrades)
        if session is not None:
            self._publish_connection(session)

    def publish(self, event: PageEvent) -> None:
        self._events.append(event)

    def nat_learned(self) -> None:
        self.publish(MeChanged(self.me()))

    # The trust component's context (and the flow's gate hooks): trust.py decides.

    @property
    def my_public_key(self) -> bytes:
        return self.identity.public_key

    def send_gate(self, peer_id: int) -> tuple[Status, str] | None:
        return self.trust.send_gate(peer_id)

    # The mailbox component's context (mailbox_flow.py).

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        return self.identity.private_key

    def trusted_key(self, peer_id: int) -> bytes | None:
        known = self.history.known_peer(peer_id)
        return known.trusted_key if known is not None else None

    def mail_deposit(self, peer_id: int, mail: bytes, sealed: bytes, now: float) -> bool:
        return self.registration.deposit(peer_id, mail, sealed, now)

    def mail_fetch(self, delete: bytes | None, now: float) -> bool:
        return self.registration.fetch(delete, now)

    def take_mailed(self, sender: int, message_id: str, text: str, when: float, now: float, *, hidden: bool) -> bool:
        return self.flow.take_mailed(sender, message_id, text, when, now, hidden=hidden)

    def set_message_status(self, message_id: str, status: Status, now: float, error: str | None = None) -> None:
        self.flow.set_status(message_id, status, now, error)

    # The group component's context (groups.py).

    def sign(self, payload: bytes) -> bytes:
        return self.identity.sign(payload)

    def key_of(self, peer_id: int) -> bytes | None:
        known = self.history.known_peer(peer_id)
        if known is not None:
            return known.trusted_key
        session = self.peer_states.get(peer_id)
        if session is not None and session.public_key is not None:
            return session.public_key
        entry = self.directory.get(peer_id)  # a stranger the directory page shows
        return entry.public_key if entry is not None else None

    def hides_from(self, link: PeerLink) -> bool:
        return self.trust.hides(link.peer_id, link.peer_key)

    def may_send(self, peer_id: int) -> bool:
        return self.trust.send_gate(peer_id) is None

    def current_key(self, peer_id: int) -> tuple[bytes, bool] | None:
        trust = self.trust.of(peer_id)
        if trust.current_key is None or trust.state is TrustState.BLOCKED:
            return None
        return trust.current_key, trust.state is TrustState.TRUSTED

    def trust_changed(self, peer_id: int, now: float) -> None:
        """A peer's key changed or came back, or the user decided about it:
        close the links trust condemns, then hold (or fail) or release its messages."""
        trust = self.trust.of(peer_id)
        for link in self.links():
            if link.peer_id == peer_id and link.state is not LinkState.CLOSED:
                if (reason := link_verdict(trust, link.peer_key, link.role)) is not None:
                    link.close(reason)
        session = self.session(peer_id)
        if self.trust.send_gate(peer_id) is None:
            self.flow.release_held(session, now)
        else:
            # An attempt under way is over: it would open a link to the new key.
            session.connecting_since = None
            self.pathfinder.abandon(peer_id)
            self.flow.pump(session, now)
            self._publish_connection(session)
        self.groups.trust_changed(peer_id, now)
        self._publish_peers()

    def set_trust(self, peer_id: int, action: Action, now: float) -> JSON:
        """The user accepts, blocks, verifies or unverifies a peer's key (api.py)."""
        return self.trust.act(peer_id, action, now)

    def safety(self, peer_id: int) -> JSON:
        return self.trust.safety(peer_id)

    def connect(self, session: PeerSession, now: float) -> bool:
        """Ask the rendezvous to introduce us, unless an attempt is under way;
        False if none is (we are not registered: Registered starts them)."""
        if session.connecting_since is not None or session.live_link is not None:
            return True
        if not self.registration.connect(session.peer_id, now):
            return False
        session.connecting_since = now
        # Where a direct path is unlikely, QUIC through the relay starts with
        # the CONNECT, a round trip before its answer (pathfinder.py).
        self.pathfinder.connecting(session, now)
        self._publish_connection(session)
        return True

    # ------------------------------------------------------------ the page's reads

    def me(self) -> JSON:
        observed = self.registration.observed
        mapping = self.port_mapping
        # Dual stack: with our address in the other family, once the server has it.
        registration = self.registration
        public = ([observed] if observed else []) + [
            a for a in registration.other_family if a in registration.registered_local
        ]
        return {
            "id": self.registration.peer_id,
            "name": self.config.name,
            "fingerprint": self.identity.fingerprint,
            "public_address": address_text(observed) if observed else None,
            "public_addresses": [address_text(address) for address in public],
            # With several servers (--server a,b), the one in use.
            "server": self.registration.server_name or address_text(self.config.server),
            "server_address": address_text(self.registration.server),
            "registered": self.registration.state.value == "registered",
            "server_state": self.registration.server_state.value,
            "nat": self.pathfinder.nat_result(),
            "port_mapping": None if mapping is None else mapping_json(mapping),
            "storage_error": self.storage_error,
        }

    def peers_json(self) -> list[JSON]:
        """The contacts, then the directory's strangers, by id."""
        out = self._contacts_json()
        strangers = [entry for peer_id, entry in self.directory.items() if peer_id not in self.peer_states]
        nicknames = self.history.nicknames()
        read_marks = self.history.read_marks()
        auto_accepts = self.history.auto_accepts()
        for peer in out:
            peer["nickname"] = nicknames.get(peer["id"])
            peer["read_up_to"] = read_marks.get(peer["id"])
            peer["auto_accept_bytes"] = auto_accepts.get(peer["id"], 0)
        if strangers:
            for entry in strangers:
                out.append(
                    {
                        "id": entry.peer_id,
                        "name": entry.nickname,
                        "fingerprint": fingerprint(entry.public_key),
                        "online": entry.peer_id not in self._directory_left,
                        "unread": 0,
                        **self.trust.of(entry.peer_id).to_json(),
                        "connection": None,
                        "error": None,
                        "last_message": None,
                        "nickname": nicknames.get(entry.peer_id),
                        "read_up_to": None,
                        "last_seen": None,
                        "auto_accept_bytes": auto_accepts.get(entry.peer_id, 0),
                    }
                )
            out.sort(key=lambda peer: int(peer["id"]))
        return out

    def _contacts_json(self) -> list[JSON]:
        unread = self.history.unread_counts()
        out = []
        for peer in sorted(self.peer_states.values(), key=lambda p: p.peer_id):
            if peer.peer_id == self.registration.peer_id:
                continue
            known = self.history.known_peer(peer.peer_id)
            key = peer.public_key or (known.public_key if known else None)
            out.append(
                {
                    "id": peer.peer_id,
                    "name": peer.name or (known.name if known else ""),
                    "fingerprint": fingerprint(key) if key else None,
                    "online": peer.reachable,
                    "unread": unread.get(peer.peer_id, 0),
                    **self.trust.of(peer.peer_id).to_json(),  # trust, key_changed, verified ...
                    "connection": peer.connection(),
                    "error": peer.last_error,
                    "last_message": _preview(self.history.last_message(peer.peer_id)),
                    # When its key last reached us (listed, introduced, connected): the
                    # page shows it for an offline peer.
                    "last_seen": known.last_seen if known else None,
                    # False past the server's cap (MAX_WATCHED): its presence is not watched.
                    "watched": peer.peer_id in self._watching,
                }
            )
        return out

    def messages(self, peer_id: int, limit: int = 500) -> list[JSON]:
        return self.history.conversation(peer_id, limit)

    def messages_page(
        self, peer_id: int, limit: int, *, before: str | None = None, after: str | None = None
    ) -> list[JSON] | None:
        """A page of history next to a message; None if the message is not in this conversation."""
        return self.history.conversation_page(peer_id, limit, before=before, after=after)

    # ------------------------------------------------------------ the page's requests

    def draft(self, to: int, text: str, now: float, origin: object | None = None) -> Draft:
        """A message for the next :meth:`process` to store (the caller has
        validated text and id)."""
        self.trust.check_send(to)
        return self.flow.draft(to, text, now, origin)

    def retry(self, message_id: str, now: float) -> None:
        self.flow.retry(message_id, now)

    def cancel(self, message_id: str, now: float) -> None:
        """The user cancels a queued or sending message (ApiError 404, 409)."""
        self.flow.cancel(message_id, now)

    def look_up(self, peer_id: int, now: float) -> bool:
        """Before a send to ``peer_id``: True if the node should hold it
        until :meth:`take_lookups` says whether the server ever assigned that
        id (a CONNECT asks; its answer also starts the connection).  False
        for an id we know (no added round trip on the usual path), and when
        we cannot ask (not registered: the message waits queued, and fails
        if a later answer is 410)."""
        if self._known(peer_id):
            return False
        if self.targets.asking(peer_id):
            return True
        if not self.connect(self.session(peer_id), now):
            return False
        self.targets.ask(peer_id, now)
        return True

    def take_lookups(self) -> list[LookupAnswer]:
        """The lookups the server answered (or that gave up) since the last call."""
        return self.targets.take_answers()

    def mark_read(self, peer_id: int, now: float) -> None:
        """The user has read the peer's conversation; unless read receipts are
        off, the peer is told which of its messages is the latest read."""
        if self.history.mark_read(peer_id):
            self._publish_peers()
            session = self.peer_states.get(peer_id)
            if session is not None and self.history.settings()["read_receipts"]:
                self.flow.send_read(session, now)

    def search(self, words: list[str], peer_id: int | None, limit: int) -> list[JSON]:
        return self.history.search(words, peer=peer_id, limit=limit)

    def set_nickname(self, peer_id: int, nickname: str | None) -> None:
        """The user's own name for a peer (None: forget it); the peer list shows it."""
        self.history.set_nickname(peer_id, nickname)
        self._publish_peers()

    def set_auto_accept(self, peer_id: int, max_bytes: int) -> None:
        """Accept the peer's file offers up to ``max_bytes`` without the user
        (0: ask for each); the peer list shows it."""
        self.history.set_auto_accept(peer_id, max_bytes)
        self._publish_peers()

    def expire_queued(self, older_than: float, now: float) -> None:
        self.flow.expire(older_than, now)

    # ------------------------------------------------------------ outputs

    def next_event(self) -> PageEvent | None:
        return self._events.pop(0) if self._events else None

    def take_events(self) -> list[PageEvent]:
        events, self._events = self._events, []
        return events

    def next_command(self) -> SpareCommand | None:
        return self.pathfinder.next_command()

    def spare_unavailable(self, index: int) -> None:
        self.pathfinder.spare_unavailable(index)

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        server = self.registration.server
        out = [Transmit(data, server) for data in self.registration.datagrams_to_send()]
        out += self.pathfinder.datagrams_to_send()
        closing, self._closing = self._closing, []
        for link in self.links() + closing:
            for data, path in link.datagrams_to_send(now):
                if isinstance(path, Relayed):
                    # The rendezvous server carries it (SEND/DATA).
                    if not self.registration.send_relayed(path.peer_id, data):
                        self.stats["relay_unavailable"] += 1
                else:
                    out.append(Transmit(data, path.address, link.endpoint))
        out += [Transmit(data, server) for data in self.registration.datagrams_to_send()]
        out += [Transmit(data, address) for data, address in self.registration.probes_to_send()]
        return out

    def next_deadline(self) -> float | None:
        timers = [self.registration.get_timer()] + [link.get_timer() for link in self.links()]
        timers.append(self.flow.receipt_deadline())
        timers += [since + HELLO_DEADLINE for since, _ in self._accepting.values()]
        timers.append(self.targets.deadline())
        timers.append(self.groups.deadline())
        timers.append(self.mailbox.deadline())
        deadlines = [t for t in timers if t is not None] + self.pathfinder.deadlines()
        for session in self.peer_states.values():
            deadlines += session.deadlines(self.config.idle_timeout)
        return min(deadlines, default=None)

    # ------------------------------------------------------------ inputs

    def receive_datagram(self, data: bytes, address: Address, now: float, socket: int = 0) -> None:
        """A datagram on socket ``socket`` (0: the main one; others are spares)."""
        if looks_like_stun(data):
            try:
                message = decode(data, require_fingerprint=True)
            except StunProtocolError:
                self.stats["bad_stun"] += 1
                return
            if socket:
                self.pathfinder.on_spare_probe(socket, message, address, now)
            elif self.pathfinder.owns_nat_check(message):
                self.pathfinder.on_nat_answer(message, address, now)
            elif address == self.registration.server:
                self.registration.receive(message, now)
            elif address in self.registration.servers:
                self.registration.receive_from_other_server(message, address, now)
            else:
                self.pathfinder.on_probe(message, address, now)
            return
        self._on_quic(data, Direct(address), now, socket)

    def handle_timer(self, now: float) -> None:
        if (timer := self.registration.get_timer()) is not None and timer <= now:
            self.registration.handle_timer(now)
        for link in self.links():
            if (timer := link.get_timer()) is not None and timer <= now:
                link.handle_timer(now)
        self.pathfinder.handle_timer(now)
        for link, (since, _) in list(self._accepting.items()):
            if since + HELLO_DEADLINE <= now and link.state is not LinkState.READY:
                self.stats["hello_timeouts"] += 1
                self._retire(link, "no authentication in time", now)
        for session in list(self.peer_states.values()):
            for due in session.due(now, self.config.idle_timeout):
                current = session.link
                if due is Due.CONNECT_TIMED_OUT:
                    self._connect_failed(session, "could not reach the peer", now)
                elif due is Due.CLOSE_IDLE and current is not None:
                    current.close("idle")  # opens again when there is something to send
                elif due is Due.KEEPALIVE and current is not None:
                    current.keepalive(now)  # keeps the NAT mappings of this path open
                elif due is Due.TRY_UPGRADE:
                    # Relayed for a while: try for a direct path again.
                    session.upgrade_at = now + UPGRADE_INTERVAL
                    self.registration.connect(session.peer_id, now)
                elif due is Due.RETRY:
                    # It did not answer last time; messages for it still wait.
                    session.retry_at = None
                    if session.online and self.flow.undelivered(session.peer_id):
                        self.flow.pump(session, now, force_connect=True, retry=True)
        if (deadline := self.flow.receipt_deadline()) is not None and deadline <= now:
            self.flow.resend_unreceipted(now)
        if (deadline := self.targets.deadline()) is not None and deadline <= now:
            self.targets.handle_timer(now)
        if (deadline := self.groups.deadline()) is not None and deadline <= now:
            self.groups.handle_timer(now)
        if (deadline := self.mailbox.deadline()) is not None and deadline <= now:
            self.mailbox.handle_timer(now)

    def process(self, now: float, drafts: list[Draft] | None = None) -> None:
        """Act on everything that came in: the node runs this inside one
        history transaction, and then calls :meth:`committed`."""
        self._process_mark = len(self._events)
        self.files.save_again()
        for _ in range(MAX_FLUSH_ROUNDS):
            busy = self._drain_registration(now)
            busy |= self._drain_links(now)
            self.flow.store_incoming(now)
            busy |= self.pathfinder.check_punches(now)
            if not busy:
                break
        self.files.pump(now)
        self.mailbox.run(now)  # deposits due, and the FETCH after registering
        self.flow.store_drafts(drafts or [], now)
        self.groups.store()
        self._sync_contacts(now)

    def committed(self, now: float) -> None:
        """The transaction around :meth:`process` is on disk: the frames it
        held back (acks, messages stored as sent) may leave."""
        self._process_mark = None
        for link, frames in self.flow.take_after_commit().items():
            if link.state is LinkState.READY:
                link.send_frames(frames, now)
        self.files.committed(now)
        self.groups.committed(now)
        self.mailbox.committed(now)

    def rolled_back(self) -> None:
        """The transaction around :meth:`process` failed: what its events
        announced is not on disk, and nothing may be acknowledged (the
        senders will send it again).  The pages reload."""
        if self._process_mark is not None:
            del self._events[self._process_mark :]
            self._process_mark = None
        self.flow.rolled_back()
        self.files.rolled_back()
        self.trust.rolled_back()
        self.groups.rolled_back()
        self.mailbox.rolled_back()
        self.publish(Resync())

    def storage_failed(self, error: str) -> None:
        """The node could not commit: the page shows why until it can."""
        if self.storage_error != error:
            self.storage_error = error
            self.publish(MeChanged(self.me()))

    def storage_recovered(self) -> None:
        self.storage_error = None
        self.publish(MeChanged(self.me()))

    # ------------------------------------------------------------ QUIC

    def _on_quic(self, data: bytes, path: Path, now: float, socket: int = 0) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
        except ValueError:
            self.stats["bad_quic"] += 1
            return
        link = self._cids.get(header.destination_cid)
        if link is None and self._closed_cids.get(header.destination_cid, 0.0) > now:
            self.stats["quic_for_closed_link"] += 1
            return
        if link is None:
            my_id = self.registration.peer_id
            if header.packet_type != PACKET_TYPE_INITIAL or len(data) < 1200 or my_id is None:
                self.stats["quic_dropped"] += 1
                return
            source: object = path.address[0] if isinstance(path, Direct) else ("relay", path.peer_id)
            if sum(1 for _, src in self._accepting.values() if src == source) >= MAX_UNAUTHENTICATED_PER_SOURCE:
                self.stats["quic_dropped_source_full"] += 1
                return
            if len(self._accepting) >= MAX_UNAUTHENTICATED_LINKS:
                oldest = min(self._accepting, key=lambda link: self._accepting[link][0])
                self.stats["unauthenticated_evicted"] += 1
                self._retire(oldest, "too many connections waiting to authenticate", now)
            link = PeerLink.accept(self.identity, my_id, path, header.destination_cid, self._acceptor_config)
            link.endpoint = socket
            link.receive_datagram(data, path, now)
            if not link.has_path:
                # aioquic dropped the Initial before setting up a path (a QUIC
                # version it does not speak, say): no connection began, so it
                # takes no slot and no connection id (and nothing can be sent for it).
                self.stats["quic_initial_unusable"] += 1
                return
            self._accepting[link] = (now, source)
            self._cids[header.destination_cid] = link
            self._cids[link.quic.host_cid] = link
            return
        link.receive_datagram(data, path, now)

    # ------------------------------------------------------------ registration events

    def _drain_registration(self, now: float) -> bool:
        busy = False
        while (event := self.registration.next_event()) is not None:
            busy = True
            if isinstance(event, Registered):
                logger.info("registered as peer %d, seen as %s:%d", event.peer_id, *event.observed)
                self.pathfinder.registered(event.observed, self.registration.server, self.registration.local, now)
                self.publish(MeChanged(self.me()))
                # Messages written while we were not registered go now; for
                # an id we never heard of, the CONNECT asks whether it exists.
                for peer_id in self.flow.has_pending():
                    if not self._known(peer_id):
                        self.connect(self.session(peer_id), now)
                    self.flow.pump(self.session(peer_id), now, force_connect=True)
                for peer_id in self.files.peers_with_work():
                    self.connect(self.session(peer_id), now)  # unfinished files resume
                self.groups.registered(now)
                self.mailbox.registered(now, list(self.peer_states))
            elif isinstance(event, RegistrationLost):
                logger.info("registration lost: %r", event.reason)
                self.mailbox.lost()
                self.publish(MeChanged(self.me()))
            elif isinstance(event, PeersListed):
                self._on_peers_listed(event, now)
            elif isinstance(event, PresenceChanged):
                self._on_presence(event, now)
            elif isinstance(event, DirectoryListed):
                self._on_directory(event, now)
            elif isinstance(event, Introduced):
                self._learn(event.info, now)
                if (
                    self.registration.peer_id is not None
                    and event.info.punch_key is not None
                    and not self.trust.refuses(event.info.peer_id, event.info.public_key)
                ):
                    # Probe back at once: both NATs must see outgoing packets.
                    self.pathfinder.start_checks(event.info, now, connect=False)
            elif isinstance(event, ConnectAnswered):
                self._on_connect_answered(event, now)
            elif isinstance(event, MailDeposited):
                self.mailbox.on_deposited(event, now)
            elif isinstance(event, MailFetched):
                self.mailbox.on_fetched(event, now)
            elif isinstance(event, RelayedDatagram):
                if event.payload and event.payload[0] >= 0x40:
                    self._on_quic(event.payload, Relayed(event.peer_id), now)
                else:
                    self.stats["relayed_dropped"] += 1
            elif isinstance(event, Stopped):
                self.stopped = True
            elif isinstance(event, ServerSilent):
                still = "yet" if not event.ever_answered else "for a few seconds"
                logger.warning("no answer from the rendezvous at %s %s; still trying", self._server_text(), still)
                self.publish(MeChanged(self.me()))
            elif isinstance(event, ServerAnswered):
                logger.info("the rendezvous at %s answers", self._server_text())
                self.publish(MeChanged(self.me()))
        return busy

    def add_contact(self, peer_id: int, now: float) -> None:
        """The page adds an id to the peer list: its presence is watched from now on."""
        if peer_id != self.registration.peer_id and peer_id not in self.peer_states:
            self.session(peer_id)
            self._added_at[peer_id] = now
            self._publish_peers()
        self._sync_contacts(now)

    def contacts(self) -> tuple[int, ...]:
        """The ids whose presence we watch: every peer we know (from the
        store, from messages, keys and introductions, or added by the page),
        at most MAX_WATCHED of them (the server's cap).  Past the cap, the
        contacts most recently active (their latest message either way, or
        when the page added them) come first, and the rest are not watched:
        the page says so (``watched``: false) and shows them offline unless
        a link to them is up."""
        mine = self.registration.peer_id
        known = [peer_id for peer_id in self.peer_states if peer_id != mine]
        # Then the strangers the directory page shows (a handful: one page):
        # watched too, so one who leaves is gone from the page at once, not
        # at the next directory refresh.
        shown = [peer_id for peer_id in self.directory if peer_id not in self.peer_states]
        if len(known) + len(shown) <= MAX_WATCHED:
            return tuple(known + shown)
        activity = self.history.last_activity()
        for peer_id, added in self._added_at.items():
            activity[peer_id] = max(activity.get(peer_id, 0.0), added)
        # sorted() is stable: equal activity keeps the oldest contact first.
        known.sort(key=lambda peer_id: -activity.get(peer_id, 0.0))
        return tuple(known + shown)[:MAX_WATCHED]

    def _sync_contacts(self, now: float) -> None:
        for peer_id, entry in list(self.directory.items()):
            session = self.peer_states.get(peer_id)
            if session is not None and not session.online and not session.online_since:
                # A stranger on the directory page became a contact (we wrote
                # to it): it is watched already, so no fresh answer will say
                # it is online; the directory's word does, as for a contact.
                if self._listed(entry, now):
                    self._publish_peers()
        given = len(self.peer_states) + len(self.directory)
        over = given > MAX_WATCHED
        # Over the cap, who is most active changes with the messages: chosen
        # again every WATCH_REPAIR seconds.
        stale = over and self._watching_chosen_at is not None and now - self._watching_chosen_at >= WATCH_REPAIR
        if given != self._contacts_given or self.directory.keys() != self._directory_given or stale:
            self._contacts_given = given
            self._directory_given = set(self.directory)
            contacts = self.contacts()
            if over and self._watching_chosen_at is None:  # said once, when it starts
                logger.info(
                    "%d peers on the list, more than the server watches: presence of the %d most recently active",
                    given,
                    MAX_WATCHED,
                )
            self._watching = frozenset(contacts)
            self._watching_chosen_at = now if over else None
            self.registration.watch(contacts, now)

    def _on_presence(self, event: PresenceChanged, now: float) -> None:
        """The server's word on some contacts (WATCH answer, PRESENCE): the
        entries as LIST entries, the offline ones gone; the others untouched."""
        mine = self.registration.peer_id
        changed = False
        for entry in event.online:
            if entry.peer_id in self.peer_states and entry.peer_id != mine:  # only contacts
                changed |= self._listed(entry, now)
            elif entry.peer_id in self.directory:
                self.directory[entry.peer_id] = entry  # a stranger on the page: its latest entry
                self._directory_left.discard(entry.peer_id)
        for peer_id in event.offline:
            if peer_id in self.directory and peer_id not in self.peer_states:
                # A stranger on the directory page left: shown offline until
                # the next directory page (which no longer has it) replaces it.
                self._directory_left.add(peer_id)
                changed = True
            session = self.peer_states.get(peer_id)
            if session is not None and session.online:
                session.online = False
                changed = True
                self.flow.went_offline(session, now)
                self.mailbox.peer_offline(peer_id, now)
        if changed:
            self._publish_peers()

    def _listed(self, entry: PeerEntry, now: float) -> bool:
        """The server lists ``entry`` as online (LIST, WATCH, PRESENCE);
        True if the page's peer list changed."""
        changed = entry.peer_id not in self.peer_states
        session = self.session(entry.peer_id)
        change = session.listed(entry.online_since, entry.nickname, entry.public_key)
        self._remember_key(session, now)
        if change.restarted and session.ready_link is not None:
            # Registered anew: its old process (and our link to it) is gone.
            # (A link still being set up was aimed by a fresh CONNECT: keep it.)
            session.ready_link.close("peer restarted")
        if (change.came_online or change.restarted) and self.files.has_work(session.peer_id):
            self.connect(session, now)  # its unfinished files resume on the new link
        if change.came_online or change.restarted:
            # Including messages sent on a link that died before their receipt.
            self.flow.pump(session, now, force_connect=True)
        return changed or change.changed

    def _on_directory(self, event: DirectoryListed, now: float) -> None:
        directory = {e.peer_id: e for e in event.entries if e.peer_id != self.registration.peer_id}
        if directory == self.directory:
            return
        for peer_id, entry in directory.items():
            if peer_id not in self.peer_states and self.directory.get(peer_id) != entry:
                # The registry's word on its key, as the full LIST always gave
                # it: the page can show its safety number and verify it before
                # the first message.  (One page: a bounded number of writes.)
                self.trust.remember(peer_id, entry.public_key, entry.nickname, now)
        self.directory = directory
        self._directory_left.clear()
        self._prune_strangers(now)
        self._sync_contacts(now)
        self._publish_peers()

    def _prune_strangers(self, now: float) -> None:
        """Directory pages remember the keys they show; strangers (never a
        contact, never written to) unseen for STRANGER_TTL, or beyond the
        MAX_STRANGERS seen last, are forgotten, so that pages cannot grow the
        store without bound.  At most every STRANGER_PRUNE_EVERY seconds."""
        if self._strangers_pruned_at is not None and now - self._strangers_pruned_at < STRANGER_PRUNE_EVERY:
            return
        self._strangers_pruned_at = now
        keep = set(self.peer_states) | set(self.directory)
        forgotten = self.history.prune_strangers(keep, unseen_before=now - STRANGER_TTL, at_most=MAX_STRANGERS)
        if forgotten:
            self.trust.forget(forgotten)
            self.stats["strangers_forgotten"] += len(forgotten)

    def _on_peers_listed(self, event: PeersListed, now: float) -> None:
        online = {entry.peer_id: entry for entry in event.entries}
        changed = False
        for entry in online.values():
            changed |= self._listed(entry, now)
        for session in self.peer_states.values():
            if session.online and session.peer_id not in online:
                session.online = False
                changed = True
                self.flow.went_offline(session, now)
        if changed:
            self._publish_peers()

    def _learn(self, info: PeerInfo, now: float) -> None:
        """An introduction or CONNECT answer: the registry's word on a peer's key."""
        session = self.session(info.peer_id)
        session.public_key = info.public_key
        session.candidates = tuple(c.address for c in info.candidates)
        session.observed = next((c.address for c in info.candidates if c.kind is CandidateKind.OBSERVED), None)
        if info.nickname:
            session.name = info.nickname
        session.online = True
        self._remember_key(session, now)
        for link in self._awaiting_key.pop(info.peer_id, []):
            link.confirm_hello(info.public_key, session.issued_nonces)

    def _remember_key(self, session: PeerSession, now: float) -> None:
        if session.public_key is None or session.remembered == (session.public_key, session.name):
            return  # nothing new: an idle peer's listings write nothing
        session.remembered = (session.public_key, session.name)
        self.trust.remember(session.peer_id, session.public_key, session.name, now)

    def _on_connect_answered(self, event: ConnectAnswered, now: float) -> None:
        if event.code == ErrorCode.NO_SUCH_PEER:
            self._no_such_peer(event.peer_id, now)
            return
        # 404 says the id exists; other errors (and no answer) say nothing of it.
        exists = event.info is not None or event.code == ErrorCode.UNKNOWN_PEER
        self.targets.answered(event.peer_id, assigned=True if exists else None)
        if event.info is None:
            # Nobody the server knows online by that id: a hello claiming it was a lie.
            for link in self._awaiting_key.pop(event.peer_id, []):
                link.confirm_hello(None)
            if event.peer_id not in self.peer_states:
                return  # an id we never had business with (a hello's claim) gets no entry in the list
        session = self.session(event.peer_id)
        if event.info is None:
            if event.error and event.error.startswith("404"):
                session.online = False
                session.connecting_since = None
                self._close_attempts(session, "the peer is offline", now)
                self.flow.pump(session, now)  # back to queued
                self._publish_peers()
            else:
                self._connect_failed(session, f"rendezvous: {event.error}", now)
            return
        self._learn(event.info, now)
        if not self.trust.may_connect(session.peer_id):
            return  # a key change pending, or a blocked key (trust.py): no link to it
        if session.connecting_since is None and any(
            link.peer_id == session.peer_id and link.state is not LinkState.CLOSED for link in self._accepting
        ):
            # This CONNECT only asked for the key of a peer that is connecting
            # to us (_on_hello): that connection is the one; open no other.
            return
        if session.live_link is not None and not session.relayed:
            return  # already connected (or the other side connected to us meanwhile)
        if self.registration.peer_id is None or not event.info.candidates:
            self._connect_failed(session, "the server gave no address for the peer", now)
            return
        self.pathfinder.start_checks(event.info, now, connect=True)
        self.pathfinder.open_early(session, event.info, now)
        self._publish_connection(session)

    def _known(self, peer_id: int) -> bool:
        """We know ``peer_id`` exists: we have its key (listed, introduced,
        remembered), the server said it is online (WATCH, PRESENCE: an
        online-since) or that it is only offline."""
        session = self.peer_states.get(peer_id)
        if session is not None and (session.public_key is not None or session.online_since):
            return True  # the usual case, and no query
        if peer_id in self.directory:
            return True  # the server listed it
        return self.targets.exists(peer_id) or self.history.known_peer(peer_id) is not None

    def _no_such_peer(self, peer_id: int, now: float) -> None:
        """The server never assigned ``peer_id`` (410): nothing for it can
        be delivered.  What waits for it fails, and an id we only made up a
        session for leaves the peer list."""
        logger.info("the server never assigned peer id %d", peer_id)
        self.targets.answered(peer_id, assigned=False)
        self.flow.fail_unknown_peer(peer_id, now)
        self.files.fail_unknown_peer(peer_id, unknown_peer(peer_id), now)
        for link in self._awaiting_key.pop(peer_id, []):
            link.confirm_hello(None)  # nobody can hold the key of an id nobody has
        session = self.peer_states.get(peer_id)
        if session is None:
            return
        session.connecting_since = None
        session.online = False
        self.pathfinder.abandon(peer_id)
        if session.public_key is None and session.link is None:
            del self.peer_states[peer_id]
        self.publish(ConnectionChanged(peer_id, None))
        self._publish_peers()

    # ------------------------------------------------------------ links

    def open_link(
        self, session: PeerSession, path: Path, now: float, nonce: bytes | None = None, replace: bool = False
    ) -> None:
        """QUIC on ``path``.  ``replace``: a link still handshaking (opened
        early, on a guess) gives way to this one."""
        my_id = self.registration.peer_id
        if session.public_key is None or my_id is None:
            self._connect_failed(session, "no key for the peer", now)
            return
        if not self.trust.may_connect(session.peer_id):
            return  # trust.py: no link to a key the user has not accepted
        link = PeerLink.connect(
            self.identity, my_id, path, session.peer_id, session.public_key, now, idle_timeout=QUIC_IDLE_TIMEOUT
        )
        link.check_nonce = nonce
        if replace:
            # The direct guesses still handshaking give way (a relay being
            # set up does not: it goes on until a direct link is ready).
            for guess in self.peer_links(session.peer_id):
                if not guess.relayed and guess.state is not LinkState.READY:
                    self.drop_attempt(guess, "another path was chosen", now)
        previous = session.link
        if previous is None or previous.state is LinkState.CLOSED:
            session.link = link
        else:
            self._upgrades.add(link)  # beside the session's link: adopted when it is ready
        self._cids[link.quic.host_cid] = link
        self._publish_connection(session)

    def _retire(self, link: PeerLink, reason: str, now: float) -> None:
        """Close a link that its peer no longer points to, and clean up after
        it now (nothing else would read its LinkClosed event)."""
        link.close(reason)
        while (event := link.next_event()) is not None:
            if isinstance(event, LinkClosed):
                self._on_link_closed(link, event, now)

    def _connect_failed(self, session: PeerSession, reason: str, now: float) -> None:
        session.connecting_since = None
        session.last_error = reason
        # The attempt is over: checks still under way for it open no link
        # (a check toward the address that just failed would fail again).
        self.pathfinder.abandon(session.peer_id)
        # Nothing fails for this: the messages wait, queued, and we try again
        # (backing off) for as long as the registry lists the peer.
        session.attempt_failed(now)
        self._close_attempts(session, reason, now)
        self.flow.requeue(session, now)
        self.publish(ConnectionChanged(session.peer_id, None))
        self._publish_peers()

    def _close_attempts(self, session: PeerSession, reason: str, now: float) -> None:
        """The attempt to reach the peer is over: the links still being set
        up for it (the direct guess, the relay beside it) close."""
        for link in self.peer_links(session.peer_id):
            if link.state is not LinkState.READY:
                if link is session.link:
                    link.close(reason)  # its LinkClosed comes through _drain_links
                else:
                    self._retire(link, reason, now)

    def _drain_links(self, now: float) -> bool:
        busy = False
        for link in self.links():
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
                    self.flow.store_incoming(now)  # receipts that came first count first
                    self._on_link_ready(link, event, now)
                elif isinstance(event, FrameReceived):
                    self._on_frame(link, event.frame, now)
                elif isinstance(event, StreamReceived):
                    self._on_file_stream(link, event, now)
                elif isinstance(event, LinkClosed):
                    self.flow.store_incoming(now)
                    self._on_link_closed(link, event, now)
        return busy

    def _on_frame(self, link: PeerLink, frame: Frame, now: float) -> None:
        if self.trust.refuses(link.peer_id, link.peer_key):
            link.close("key blocked")  # trust.py: nothing from it is stored or acknowledged
            return
        try:
            if not (
                self.flow.on_frame(link, frame, now)
                or self.pathfinder.on_frame(link, frame, now)
                or self.files.on_frame(link, frame, now)
                or self.groups.on_frame(link, frame, now)
            ):
                self.stats["unknown_frames"] += 1
        except FrameError as error:
            link.close(f"bad frame: {error}")

    def _on_file_stream(self, link: PeerLink, event: StreamReceived, now: float) -> None:
        if self.trust.refuses(link.peer_id, link.peer_key):
            link.close("key blocked")
            return
        try:
            self.files.on_stream(link, event, now)
        except FrameError as error:
            link.close(f"bad file stream: {error}")

    def _on_hello(self, link: PeerLink, event: HelloReceived, now: float) -> None:
        if self.trust.refuses(event.peer_id, event.public_key):
            link.close("key blocked")  # trust.py
            return
        session = self.peer_states.get(event.peer_id)
        if session is not None and session.public_key is not None:
            link.confirm_hello(session.public_key, session.issued_nonces)
            return
        # We have not heard of this id from the registry yet (its introduction
        # may still be on its way): ask the server, and decide on its answer.
        self._awaiting_key.setdefault(event.peer_id, []).append(link)
        if not self.registration.connect(event.peer_id, now):
            link.confirm_hello(None)

    def _on_link_ready(self, link: PeerLink, event: LinkReady, now: float) -> None:
        self._accepting.pop(link, None)
        self._upgrades.discard(link)
        session = self.session(event.peer_id)
        previous = session.link
        dropped = session.adopt(link, now)
        if dropped is not None:
            self._retire(dropped, "duplicate connection", now)
        ready = session.link
        assert ready is not None
        if previous is not None and previous is not ready and previous is not dropped:
            if previous.state is not LinkState.CLOSED:
                # An attempt still under way (the direct guess, when the relay
                # was ready first): it goes on beside, and takes over when ready.
                self._upgrades.add(previous)
        if not ready.relayed:
            # A direct path is ready: a relay still being set up beside it is
            # not needed (the rest of its handshake would only load the relay).
            for other in self.peer_links(session.peer_id):
                if other.relayed and other.state is not LinkState.READY:
                    self.drop_attempt(other, "a direct path is ready", now)
            session.direct_failed = False
        if ready.relayed:
            self.pathfinder.tell_nat(ready)
            self.pathfinder.consider_birthday(session, now)
        logger.info("connected to peer %d over %s (%s)", event.peer_id, link.path, link.role.value)
        self._publish_connection(session)
        self.flow.pump(session, now, resend_sent=True)
        if session.link is link:
            self.files.link_ready(link, now)
        self.groups.link_ready(event.peer_id, now)
        self.flow.send_owed_read(session, now)

    def _on_link_closed(self, link: PeerLink, event: LinkClosed, now: float) -> None:
        self._closing.append(link)
        self.files.link_closed(link)
        self.pathfinder.link_closed(link, self.links())
        if link.peer_id is not None:
            self.flow.quota.forget(link.peer_id)  # trust.py may have dropped its hidden messages meanwhile
        self._accepting.pop(link, None)
        self._upgrades.discard(link)
        self._closed_cids = {cid: until for cid, until in self._closed_cids.items() if until > now}
        for cid in [cid for cid, owner in self._cids.items() if owner is link]:
            del self._cids[cid]
            self._closed_cids[cid] = now + CLOSED_CID_LINGER
        for links in self._awaiting_key.values():
            if link in links:
                links.remove(link)
        session = self.peer_states.get(link.peer_id) if link.peer_id is not None else None
        if session is None or session.link is not link:
            return
        session.link = None
        session.connecting_since = None  # whatever attempt this link was, it is over
        logger.info("link to peer %s closed: %r", link.peer_id, event.reason)  # the reason may be the peer's words
        if "different key" in event.reason or "registry does not give" in event.reason:
            self._connect_failed(session, event.reason, now)
            return
        if event.reason == SILENT and link.ready_at is not None:
            # It stopped answering (killed, paused, cut off): shown offline,
            # and its messages wait queued while we try again, backing off.
            logger.info("peer %d went silent", session.peer_id)
            session.attempt_failed(now)
            self.flow.requeue(session, now)
            self.publish(ConnectionChanged(session.peer_id, None))
            self._publish_peers()
            return
        self.publish(ConnectionChanged(session.peer_id, None))
        # Messages sent but not acknowledged stay "sent" and go again on the
        # next link (the receiver stores by id, so a repeat is harmless).
        if self.flow.undelivered(session.peer_id):
            self.flow.pump(session, now, force_connect=True)
        elif self.files.has_work(session.peer_id):
            self.connect(session, now)

    def _server_text(self) -> str:
        """The server as the user named it, and the address in use if that differs."""
        named = self.registration.server_name or address_text(self.config.server)
        used = address_text(self.registration.server)
        return named if named == used else f"{named} ({used})"

    # ------------------------------------------------------------ page events

    def _publish_peers(self) -> None:
        self.publish(PeersChanged(self.peers_json()))

    def _publish_connection(self, session: PeerSession) -> None:
        self.publish(ConnectionChanged(session.peer_id, session.connection()))


PREVIEW_CHARS = 120
"""How much of the latest text the peer list gets (it shows one line)."""


def _preview(message: JSON | None) -> JSON | None:
    """The peer list's view of a conversation's latest message: who, when, the start of the text."""
    if message is None:
        return None
    return {
        "id": message["id"],
        "from": message["from"],
        "time": message["time"],
        "text": message["text"][:PREVIEW_CHARS],
    }
