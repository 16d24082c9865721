"""How this peer finds a path to another through NATs (pure): connectivity
checks, the early QUIC guess, the relay fallback, NAT type discovery, and
many-port probing (docs/PROTOCOL.md, 11.4 and 11.5).

:class:`PathFinder` owns the check sessions (punch.py), the probes that came
before their session, the NAT probe (natprobe.py) and many-port probing's
spare sockets, sessions and sprays.  It decides; the engine opens the links it
asks for (:class:`PathContext`), and the node binds and closes the spare
sockets it asks for (:class:`OpenSpare`, :class:`CloseSpare`).  Its datagrams
come out as :class:`~webpeer.path.Transmit` with the socket they leave from.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from rendezvous.client import PeerInfo
from rendezvous.stun import Address, Attr, Candidate, CandidateKind, Message, MessageClass, Method

from .dual_stack import family, probeable
from .link import LinkState, PeerLink
from .natprobe import DEPENDENT, INDEPENDENT, UNKNOWN, NatProbe, NatResult
from .path import Direct, Path, Relayed, Transmit
from .peer_session import UPGRADE_INTERVAL, PeerSession
from .punch import PunchSession, PunchState
from .wire import Frame, FrameError, require

logger = logging.getLogger("webpeer")

PUNCH_LINGER = 5.0  # keep answering probes this long after our checks end
EARLY_PROBE_PEERS = 64  # peers whose probes came before their introduction, kept at once
EARLY_PROBES_PER_PEER = 8
EARLY_PROBE_LIFETIME = 2.0
# Many-port ("birthday") probing, for a symmetric NAT facing a port-restricted
# one: the symmetric side probes from SPARE_SOCKETS extra sockets (each gets
# its own random public port), the other side probes SPRAY_PROBES random ports
# of the symmetric side's address; with 256 and 1,200 a hit is ~99% likely.
SPARE_SOCKETS = 256
SPRAY_PROBES = 1200
BIRTHDAY_WINDOW = 6.0  # how long spare sockets live unless a link uses one
BIRTHDAY_RETRY = 12.0  # still relayed this long after an attempt: try again
BIRTHDAY_ATTEMPTS = 3
SPRAYS_PER_WINDOW = 3  # sprays for one peer in SPRAY_BUDGET_WINDOW: its attempts, no more
SPRAY_BUDGET_WINDOW = 300.0
SPARE_CLOSE_DELAY = 1.0  # a spare whose link closed goes once its CONNECTION_CLOSE is out


@dataclass(frozen=True, slots=True)
class OpenSpare:
    """Bind spare socket ``index`` (an ephemeral port on the main socket's host)."""

    index: int


@dataclass(frozen=True, slots=True)
class CloseSpare:
    """Close spare socket ``index`` ``after`` seconds from now."""

    index: int
    after: float = 0.0


SpareCommand = OpenSpare | CloseSpare


class PathContext(Protocol):
    """What the path finder may ask of the engine."""

    @property
    def my_id(self) -> int | None: ...

    @property
    def observed(self) -> Address | None:
        """Our address as the rendezvous server sees it."""

    @property
    def local(self) -> tuple[Address, ...]:
        """Our socket's addresses on our own network."""

    def session(self, peer_id: int) -> PeerSession: ...

    def sessions(self) -> Iterable[PeerSession]: ...

    def links(self) -> list[PeerLink]: ...

    def open_link(
        self, session: PeerSession, path: Path, now: float, nonce: bytes | None = None, replace: bool = False
    ) -> None:
        """QUIC on ``path``; ``replace``: direct links still handshaking give way."""

    def peer_links(self, peer_id: int) -> list[PeerLink]:
        """The live links we hold to the peer (its session's first)."""

    def drop_attempt(self, link: PeerLink, reason: str, now: float) -> None:
        """Close a link still being set up (another attempt takes its place)."""

    def nat_learned(self) -> None:
        """Our NAT type is known (the page shows it)."""


class PathFinder:
    def __init__(self, context: PathContext, stats: Counter[str], *, relay_only: bool = False) -> None:
        self.context = context
        self.stats = stats
        self.relay_only = relay_only
        self._punches: dict[int, PunchSession] = {}  # peer id -> connectivity checks under way
        self._mapped: dict[int, set[Address]] = {}  # peer id -> its router-mapped ports (from its introduction)
        # peer id -> probes that came before we had a session (and key) for it
        self._early_probes: dict[int, list[tuple[Message, Address, float]]] = {}
        self.nat: NatProbe | None = None
        self._nat_observed: Address | None = None
        # Many-port probing: the spare sockets open (by index; 0 is the main
        # socket), the checks each one runs, and the sprays toward symmetric peers.
        self._spares: set[int] = set()
        self._spare_sessions: dict[int, PunchSession] = {}
        self._spare_expiry: dict[int, float] = {}
        self._next_spare = 1
        self._sprays: dict[int, PunchSession] = {}
        self._spray_times: dict[int, list[float]] = {}  # peer id -> when we last sprayed for it
        self._commands: list[SpareCommand] = []

    # ------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[Transmit]:
        out = []
        for session in (*self._punches.values(), *self._sprays.values()):
            out += [Transmit(data, address) for data, address in session.datagrams_to_send()]
        if self.nat is not None:
            out += [Transmit(data, address) for data, address in self.nat.datagrams_to_send()]
        for index, session in self._spare_sessions.items():
            out += [Transmit(data, address, index) for data, address in session.datagrams_to_send()]
        return out

    def next_command(self) -> SpareCommand | None:
        return self._commands.pop(0) if self._commands else None

    def deadlines(self) -> list[float]:
        timers = [
            session.get_timer()
            for session in (*self._punches.values(), *self._sprays.values(), *self._spare_sessions.values())
        ]
        if self.nat is not None:
            timers.append(self.nat.get_timer())
        out = [timer for timer in timers if timer is not None]
        return out + list(self._spare_expiry.values())

    def handle_timer(self, now: float) -> None:
        for session in (*self._punches.values(), *self._sprays.values(), *self._spare_sessions.values()):
            if (timer := session.get_timer()) is not None and timer <= now:
                session.handle_timer(now)
        self._birthday_timers(now)
        if self.nat is not None and (nat_timer := self.nat.get_timer()) is not None and nat_timer <= now:
            self.nat.handle_timer(now)
            if self.nat.done:
                self._nat_learned(now)

    # ------------------------------------------------------------ our NAT

    def registered(self, observed: Address, server: Address, local: tuple[Address, ...], now: float) -> None:
        """Learn (again, if our public address moved) what NAT we are behind."""
        if self.nat is None or self._nat_observed != observed:
            self._nat_observed = observed
            self.nat = NatProbe(server, local)
            self.nat.start(now)

    def nat_result(self) -> NatResult:
        if self.nat is None:
            return {"type": "unknown", "mapping": UNKNOWN, "filtering": UNKNOWN, "note": ""}
        return self.nat.result()

    def owns_nat_check(self, message: Message) -> bool:
        return self.nat is not None and self.nat.owns(message.transaction_id)

    def on_nat_answer(self, message: Message, address: Address, now: float) -> None:
        """Our NAT check; its filtering step is answered from the server's other address."""
        assert self.nat is not None
        self.nat.receive(message, address, now)
        if self.nat.done:
            self._nat_learned(now)

    def _nat_learned(self, now: float) -> None:
        self.context.nat_learned()
        for session in self.context.sessions():
            link = session.ready_link
            if link is not None and link.relayed:
                self.tell_nat(link)
                self.consider_birthday(session, now)

    def symmetric(self) -> bool:
        return self.nat is not None and self.nat.mapping == DEPENDENT

    def tell_nat(self, link: PeerLink) -> None:
        """Tell a relayed peer our NAT's mapping: if it is symmetric, it needs
        to know whether many-port probing can work (only against a mapping
        that is endpoint-independent; two symmetric NATs never meet, and the
        256 sockets would be wasted)."""
        if self.nat is not None and self.nat.mapping != UNKNOWN and link.relayed:
            link.send_frame({"t": "nat", "mapping": self.nat.mapping})  # not activity: no idle-timer reset

    # ------------------------------------------------------------ connectivity checks

    def on_probe(self, message: Message, address: Address, now: float) -> None:
        """A connectivity check (or its answer) from another peer."""
        if message.method != Method.BINDING:
            self.stats["stun_from_stranger"] += 1
            return
        if message.message_class == MessageClass.REQUEST:
            name = message.get(Attr.USERNAME)
            _to_id, _, from_id = name.partition(":") if isinstance(name, str) else ("", "", "")
            peer_id = int(from_id) if from_id.isascii() and from_id.isdigit() and len(from_id) <= 10 else None
            session = self._punches.get(peer_id) if peer_id is not None else None
            handled = session is not None and session.receive(message, address, now)
            if len(self._early_probes) >= EARLY_PROBE_PEERS:
                self._early_probes = {
                    k: v for k, v in self._early_probes.items() if now - v[0][2] < EARLY_PROBE_LIFETIME
                }
            if session is None and peer_id is not None and len(self._early_probes) < EARLY_PROBE_PEERS:
                # The other side's introduction reached it before ours reached
                # us: keep its probe a moment, to answer it once we have the key.
                early = self._early_probes.setdefault(peer_id, [])
                if len(early) < EARLY_PROBES_PER_PEER:
                    early.append((message, address, now))
                    handled = True
        else:
            handled = any(
                s.owns(message.transaction_id) and s.receive(message, address, now)
                for s in (*self._punches.values(), *self._sprays.values())
            )
        if not handled:
            self.stats["probes_refused"] += 1

    def on_spare_probe(self, index: int, message: Message, address: Address, now: float) -> None:
        """A probe (or answer) on a spare socket: its own check session's."""
        session = self._spare_sessions.get(index)
        if session is None or not session.receive(message, address, now):
            self.stats["probes_refused"] += 1

    def start_checks(self, info: PeerInfo, now: float, *, connect: bool) -> None:
        """Probe every candidate of ``info`` (both sides do this at once);
        ``connect``: we asked for this peer, so we open QUIC on the first path
        that works, or through the relay if none does."""
        my_id = self.context.my_id
        assert my_id is not None
        candidates = usable_candidates(info, self.context.local, self.context.observed)
        observed = [c.address for c in info.candidates if c.kind is CandidateKind.OBSERVED]
        self._mapped[info.peer_id] = {c.address for c in info.candidates if _router_mapped(c, observed)}
        current = self._punches.get(info.peer_id)
        if current is not None and current.key == info.punch_key and current.state is PunchState.PROBING:
            current.add_candidates(candidates, now)
            current.connect = current.connect or connect
            return
        if self.relay_only:
            session = PunchSession(my_id, info.peer_id, b"", [], now, timeout=0.0)
            session.state = PunchState.FAILED
            session.started -= PUNCH_LINGER
        elif info.punch_key is None or not candidates:
            # A server without PUNCH-KEY: no checks possible; try its observed
            # address.  (No usable candidate at all: the relay.)
            session = PunchSession(my_id, info.peer_id, b"", [], now, timeout=0.0)
            session.state = PunchState.SUCCEEDED if candidates else PunchState.FAILED
            session.chosen = candidates[0] if candidates else None
        else:
            session = PunchSession(my_id, info.peer_id, info.punch_key, candidates, now)
        session.connect = connect
        self._punches[info.peer_id] = session
        self.context.session(info.peer_id).issue_nonce(session.nonce, now)
        for message, address, when in self._early_probes.pop(info.peer_id, []):
            if now - when < EARLY_PROBE_LIFETIME:
                session.receive(message, address, now)

    def abandon(self, peer_id: int) -> None:
        """The connection attempt to ``peer_id`` failed: its checks go on
        answering the other side, but open nothing when they end."""
        punch = self._punches.get(peer_id)
        if punch is not None:
            punch.connect = False

    def _direct_link(self, peer_id: int) -> PeerLink | None:
        return next((link for link in self.context.peer_links(peer_id) if not link.relayed), None)

    def _relayed_link(self, peer_id: int) -> PeerLink | None:
        return next((link for link in self.context.peer_links(peer_id) if link.relayed), None)

    def direct_unlikely(self, session: PeerSession) -> bool:
        """Whether a direct path to the peer is unlikely: our NAT maps
        endpoint-dependently (symmetric: direct only works against a peer
        with no NAT or a full-cone one), the peer said its NAT does ("nat"
        frame), or our last checks toward it found nothing."""
        return self.relay_only or self.symmetric() or session.remote_mapping == DEPENDENT or session.direct_failed

    def connecting(self, session: PeerSession, now: float) -> None:
        """A CONNECT for ``session`` is on its way.  If a direct path is
        unlikely, QUIC through the relay starts now rather than at the
        answer: the relay needs no introduction (only that both are
        registered), and the first message then arrives a round trip
        sooner.  Otherwise the relay waits for the answer (open_early), a
        round trip behind the direct guess, so a direct-capable pair's
        direct link nearly always wins and the relay carries only the
        start of a handshake."""
        if (
            session.public_key is None
            or not session.online
            or self.context.my_id is None
            or not self.direct_unlikely(session)
            or self._relayed_link(session.peer_id) is not None
        ):
            return
        self.context.open_link(session, Relayed(session.peer_id), now)
        self.stats["relay_opened_with_connect"] += 1

    def open_early(self, session: PeerSession, info: PeerInfo, now: float) -> None:
        """Open QUIC at once, beside the checks, on two paths:

        - toward the likeliest candidate: where both NATs map
          endpoint-independently the Initial gets through (the other side's
          checks, sent at the same moment, open its NAT), and the handshake is
          a round trip ahead of waiting for the checks.  If the checks then
          find another path, that one wins (check_punches);
        - through the relay (unless one is under way already): no pair waits
          for the checks' timeout to send.  Whichever link is ready first
          carries the messages; a direct one that is ready later takes over
          (PeerSession.choose_link), and messages without a receipt go again
          on it (the receiver stores by id).  A relay still handshaking when
          a direct link is ready is closed (engine._on_link_ready): for a
          direct-capable pair the relay carries a first flight or two.
        """
        if session.ready_link is not None:
            return  # an upgrade attempt beside a ready relayed link: the checks alone
        if not (self.relay_only or info.punch_key is None or not info.candidates):
            if self._direct_link(session.peer_id) is None:
                guess = likeliest(info, self.context.observed, self.context.local)
                self.context.open_link(session, Direct(guess), now)
                self.stats["quic_opened_early"] += 1
                punch = self._punches.get(session.peer_id)
                if punch is not None and session.connecting_since is not None:
                    punch.initial_at, punch.connect_rtt = now, now - session.connecting_since
        if self._relayed_link(session.peer_id) is None:
            self.context.open_link(session, Relayed(session.peer_id), now)
            self.stats["relay_opened_early"] += 1

    def check_punches(self, now: float) -> bool:
        """Act on finished connectivity checks; True if a link was opened."""
        opened = False
        for peer_id, punch in list(self._punches.items()):
            if punch.state is PunchState.PROBING:
                opened |= self._follow_reflexive(peer_id, punch, now)
                self._nudge_initial(peer_id, punch, now)
                continue
            if now >= punch.started + punch.timeout + PUNCH_LINGER:
                # Long over: stop answering the other side's late probes too.
                del self._punches[peer_id]
                self._mapped.pop(peer_id, None)
            if not punch.connect or punch.handled:
                continue
            punch.handled = True
            session = self.context.session(peer_id)
            opened = True
            # The direct link (the early guess, or a ready one); a relayed
            # link is not it: a direct one goes beside that (an upgrade).
            early = self._direct_link(peer_id)
            if punch.state is PunchState.SUCCEEDED and punch.chosen is not None:
                logger.info("direct path to peer %d: %s (%d probes)", peer_id, Direct(punch.chosen), punch.probes_sent)
                if early is not None and (early.heard_back or early.address == punch.chosen):
                    # QUIC opened with the checks is on this path, or already
                    # answering on another.  If unanswered, the other side's NAT
                    # may have dropped our Initial before its checks opened it:
                    # send it again now rather than after QUIC's retransmit timer.
                    if early.check_nonce is None:
                        early.check_nonce = punch.remote_nonce
                    if early.resend_first_flight():
                        self.stats["initial_resent"] += 1
                    continue
                if early is not None:
                    self.stats["early_link_replaced"] += 1  # the first guess was not the path
                self.context.open_link(session, Direct(punch.chosen), now, nonce=punch.remote_nonce, replace=True)
            else:
                unanswered = early is not None and not early.heard_back
                session.direct_failed = punch.state is PunchState.FAILED and (early is None or unanswered)
                if self._relayed_link(peer_id) is not None:
                    # The relay started with the checks: the guess goes.
                    logger.info("no direct path to peer %d after %d probes: relayed", peer_id, punch.probes_sent)
                    if early is not None and unanswered:
                        self.context.drop_attempt(early, "no direct path", now)
                elif session.live_link is None or unanswered:
                    logger.info("no direct path to peer %d after %d probes: relaying", peer_id, punch.probes_sent)
                    self.context.open_link(session, Relayed(peer_id), now, replace=True)
                    session.upgrade_at = now + UPGRADE_INTERVAL
        return opened

    def _nudge_initial(self, peer_id: int, punch: PunchSession, now: float) -> None:
        """The other side's first check just came from where our early QUIC
        Initial went, which has had no answer.  Both sides start at the same
        moment (the server's answer and introduction), so the Initial reaches
        the other's NAT or firewall half a round trip before its checks leave
        and open it, unless the other side was late: if its check comes more
        than a round trip (our CONNECT's) after the Initial left, the Initial
        arrived before the opening and was dropped.  Then send it again at
        once, rather than a round trip later when our own check of that
        address is answered (a loaded host loses that race often).  Decided
        once, on the first check; a needless duplicate would be harmless
        (QUIC drops a packet number it has seen), but costs a first flight."""
        if not punch.connect or punch.initial_nudged or punch.initial_at is None or punch.connect_rtt is None:
            return
        link = self._direct_link(peer_id)
        if link is None or link.heard_back or link.address is None or not punch.heard_from(link.address):
            return
        punch.initial_nudged = True
        if now - punch.initial_at > punch.connect_rtt and link.resend_first_flight():
            self.stats["initial_resent_on_check"] += 1

    def _follow_reflexive(self, peer_id: int, punch: PunchSession, now: float) -> bool:
        """The other side's checks come from an address it was not introduced
        with (a symmetric NAT's port for us) while our early QUIC has had no
        answer: that address is open toward us right now, so move QUIC there
        at once instead of after our own check of it (a round trip later)."""
        target = punch.reflexive
        if not punch.connect or target is None:
            return False
        session = self.context.session(peer_id)
        link = self._direct_link(peer_id)
        if link is None or link.heard_back or link.address == target:
            return False
        if link.address is not None and family(link.address) != family(target):
            # The early Initial went to the peer's other family (IPv6, where a
            # firewall lets it in once the peer's checks leave): a port of its
            # IPv4 NAT is no better a guess.  The end of the checks decides.
            return False
        if link.address in self._mapped.get(peer_id, ()):
            # Aimed at a port the peer's router forwards to it: it gets
            # through, and moving would start the handshake again.  (If the
            # mapping is stale, the end of the checks still moves it.)
            return False
        punch.reflexive = None  # once
        logger.info("peer %d checks us from %s: QUIC moves there", peer_id, Direct(target))
        self.stats["early_link_replaced"] += 1
        self.context.open_link(session, Direct(target), now, replace=True)
        return True

    # ------------------------------------------------------------ many-port probing

    def on_frame(self, link: PeerLink, frame: Frame, now: float) -> bool:
        """A path frame ("nat", "birthday") from a peer; False if it is not one.
        Raises FrameError for a malformed one."""
        if frame["t"] == "nat":
            self._on_nat_frame(link, frame, now)
        elif frame["t"] == "birthday":
            self._on_birthday_frame(link, frame, now)
        else:
            return False
        return True

    def _on_nat_frame(self, link: PeerLink, frame: Frame, now: float) -> None:
        mapping = require(frame, "mapping", str)
        if mapping not in (INDEPENDENT, DEPENDENT, UNKNOWN):
            raise FrameError(f"nat: unknown mapping {mapping[:40]!r}")
        assert link.peer_id is not None
        session = self.context.session(link.peer_id)
        session.remote_mapping = mapping
        self.consider_birthday(session, now)

    def consider_birthday(self, session: PeerSession, now: float) -> None:
        """Many-port probing, when it can work: we are symmetric, the other
        side is not, and the path between us is the relay (which carries
        the coordination)."""
        link = session.ready_link
        if (
            self.symmetric()
            and session.remote_mapping == INDEPENDENT
            and link is not None
            and link.relayed
            and session.birthday_at is None
            and session.birthday_attempts < BIRTHDAY_ATTEMPTS
            and not self._checks_succeeded(session.peer_id)
        ):
            # Not before our checks end: the relay is ready long before them
            # (it starts with them), and they may still find a direct path
            # (against a full-cone NAT) without 256 sockets.
            session.birthday_at = max(now, self._checks_end(session.peer_id))

    def _checks_succeeded(self, peer_id: int) -> bool:
        """Our latest checks toward the peer found a direct path: its link
        is on the way (the relay only won the race), no spares needed."""
        punch = self._punches.get(peer_id)
        return punch is not None and punch.state is PunchState.SUCCEEDED

    def _checks_end(self, peer_id: int) -> float:
        """When the connectivity checks toward the peer give up, if still under way (else 0)."""
        punch = self._punches.get(peer_id)
        return punch.started + punch.timeout if punch is not None and punch.state is PunchState.PROBING else 0.0

    def _birthday_timers(self, now: float) -> None:
        for session in self.context.sessions():
            if session.birthday_at is not None and session.birthday_at <= now:
                if (end := self._checks_end(session.peer_id)) > now:
                    session.birthday_at = end  # checks under way (an upgrade attempt): after them
                    continue
                session.birthday_at = None
                link = session.ready_link
                if link is not None and link.relayed and not self._checks_succeeded(session.peer_id):
                    self._start_birthday(session, link, now)
        for index, expires in list(self._spare_expiry.items()):
            if expires <= now:
                del self._spare_expiry[index]
                self._spare_sessions.pop(index, None)
                if not any(
                    link.endpoint == index for link in self.context.links() if link.state is not LinkState.CLOSED
                ):
                    self._close_spare(index)
        for peer_id, spray in list(self._sprays.items()):
            if spray.state is PunchState.PROBING:
                continue
            del self._sprays[peer_id]
            if spray.state is PunchState.FAILED:
                logger.info("many-port probing toward peer %d: no hit in %d probes", peer_id, spray.probes_sent)
            if spray.state is PunchState.SUCCEEDED and spray.chosen is not None:
                logger.info(
                    "many-port probing found %s:%s for peer %d after %d probes",
                    *spray.chosen,
                    peer_id,
                    spray.probes_sent,
                )
                self.context.open_link(
                    self.context.session(peer_id), Direct(spray.chosen), now, nonce=spray.remote_nonce
                )

    def _start_birthday(self, session: PeerSession, link: PeerLink, now: float) -> None:
        """We are behind a symmetric NAT and talk to the peer through the
        relay: probe it from many fresh sockets, and ask it (over the relay,
        which is end-to-end authenticated) to spray our address with probes."""
        # Only the peer's address as the server observed it: its NAT's mapping
        # is what the spares must meet (and a self-declared one is no target).
        targets = [session.observed] if session.observed is not None else []
        observed = self.context.observed
        my_id = self.context.my_id
        if not targets or observed is None or my_id is None:
            return
        session.birthday_attempts += 1
        key = os.urandom(16)
        for _ in range(SPARE_SOCKETS):
            index = self._next_spare
            self._next_spare += 1
            self._spares.add(index)
            self._commands.append(OpenSpare(index))
            self._spare_sessions[index] = PunchSession(
                my_id, session.peer_id, key, targets, now, timeout=BIRTHDAY_WINDOW, repeat=1.0
            )
            self._spare_expiry[index] = now + BIRTHDAY_WINDOW
            session.issue_nonce(self._spare_sessions[index].nonce, now)
        link.send_frame({"t": "birthday", "key": key.hex(), "host": observed[0]}, now)
        if session.birthday_attempts < BIRTHDAY_ATTEMPTS:
            session.birthday_at = now + BIRTHDAY_RETRY
        logger.info(
            "many-port probing toward peer %d from %d sockets (attempt %d)",
            session.peer_id,
            SPARE_SOCKETS,
            session.birthday_attempts,
        )

    def spare_unavailable(self, index: int) -> None:
        """The node could not bind spare ``index`` (out of ports or files)."""
        self._spares.discard(index)
        self._spare_sessions.pop(index, None)
        self._spare_expiry.pop(index, None)

    def _on_birthday_frame(self, link: PeerLink, frame: Frame, now: float) -> None:
        """The other side is symmetric and probes us from many sockets: spray
        its address with probes on random ports (unless we are symmetric too:
        then no port will ever match)."""
        try:
            key = bytes.fromhex(require(frame, "key", str))
        except ValueError:
            raise FrameError("birthday: key is not hex") from None
        host = require(frame, "host", str)
        my_id = self.context.my_id
        if len(key) != 16 or self.symmetric() or my_id is None or link.peer_id is None:
            logger.info("peer %s asks for many-port probing; not possible from here", link.peer_id)
            return
        session = self.context.session(link.peer_id)
        recent = [when for when in self._spray_times.get(link.peer_id, []) if now - when < SPRAY_BUDGET_WINDOW]
        if (
            not link.relayed
            or link.peer_id in self._sprays
            or session.observed is None
            or host != session.observed[0]
            or len(recent) >= SPRAYS_PER_WINDOW
        ):
            # Only over the relay (a direct path needs none), one at a time, a
            # few per window, and only toward the peer's own public address as
            # the server saw it: never a host the peer merely names.
            self.stats["sprays_refused"] += 1
            logger.info("peer %s asks for many-port probing of %r: refused", link.peer_id, host[:64])
            return
        self._spray_times[link.peer_id] = [*recent, now]
        logger.info("many-port probing: spraying %d ports of %r for peer %d", SPRAY_PROBES, host, link.peer_id)
        rng = random.SystemRandom()
        ports = rng.sample(range(1024, 65536), SPRAY_PROBES)
        self._sprays[link.peer_id] = PunchSession(
            my_id,
            link.peer_id,
            key,
            [(host, port) for port in ports],
            now,
            timeout=BIRTHDAY_WINDOW - 1.0,
            pace=0.01,
            repeat=1e9,
            burst=SPRAY_PROBES // 300 + 1,
            max_candidates=SPRAY_PROBES + 16,
        )

    def link_closed(self, link: PeerLink, others: Iterable[PeerLink]) -> None:
        """A link is over: a spare socket it alone used goes too (after the
        flush sends its CONNECTION_CLOSE)."""
        index = link.endpoint
        if (
            index
            and index in self._spares
            and index not in self._spare_expiry
            and not any(other.endpoint == index for other in others if other is not link)
        ):
            self._close_spare(index, SPARE_CLOSE_DELAY)

    def _close_spare(self, index: int, after: float = 0.0) -> None:
        if index in self._spares:
            self._spares.discard(index)
            self._commands.append(CloseSpare(index, after))


def usable_candidates(info: PeerInfo, local: tuple[Address, ...], mine: Address | None) -> list[Address]:
    """The candidates worth probing, IPv6 first (RFC 8305: the other family a
    probe's pacing later): the address the server observed; a declared
    local one when it can be on our own network (we share a public address,
    or it is in one of our /24 (IPv4) or /64 (IPv6) networks); a port the
    peer's router maps to it; and its address in the family it did not
    register over (the first declared one of a family none of its observed
    addresses has), when we have that family too (``mine`` or ``local``).
    Any other declared address is a host the peer merely names: probing it
    would make us a reflector toward a stranger.  Nothing that is not a
    plain unicast address (dual_stack.probeable) is ever probed."""
    candidates = [c for c in info.candidates if probeable(c.address, mine)]
    observed = [c.address for c in candidates if c.kind is CandidateKind.OBSERVED]
    same_public = mine is not None and any(address[0] == mine[0] for address in observed)
    ours = _families(local, mine)
    theirs = {family(address) for address in observed}
    out = list(observed)
    other_family: Address | None = None
    for candidate in candidates:
        if candidate.kind is not CandidateKind.LOCAL or candidate.address in out:
            continue
        if same_public or _near(candidate.address, local):
            out.append(candidate.address)
        elif _router_mapped(candidate, observed):
            # Probed first: unlike the observed port, it lets anyone in.
            out.insert(0, candidate.address)
        elif other_family is None and family(candidate.address) not in theirs and family(candidate.address) in ours:
            other_family = candidate.address
            out.append(candidate.address)
    return sorted(out, key=lambda address: family(address) != 6)  # stable: IPv6 first


def _families(local: tuple[Address, ...], mine: Address | None) -> set[int]:
    """The address families we have: our interfaces' and the server's view of us."""
    return {family(address) for address in (*local, *((mine,) if mine is not None else ()))}


def _router_mapped(candidate: Candidate, observed: list[Address]) -> bool:
    """A declared candidate on the peer's own public address (as the server
    saw it) at another port: a port its router maps to it (PCP, NAT-PMP, UPnP IGD).
    Probing it reaches no one but the peer's own public address."""
    return candidate.kind is CandidateKind.LOCAL and any(
        candidate.address[0] == address[0] and candidate.address != address for address in observed
    )


def _near(address: Address, local: tuple[Address, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address[0])
        for own, _ in local:
            own_ip = ipaddress.ip_address(own)
            prefix = 24 if own_ip.version == 4 else 64
            if own_ip.version == ip.version and ip in ipaddress.ip_network(f"{own_ip}/{prefix}", strict=False):
                return True
    except ValueError:
        return False
    return False


def likeliest(info: PeerInfo, mine: Address | None, local: tuple[Address, ...] = ()) -> Address:
    """Where the early QUIC Initial goes: the other peer's IPv6 address when
    both of us have IPv6 (no NAT in the way: its firewall lets the Initial
    in once its own checks toward us have left); else its observed address,
    or its local one when we are behind the same public address (the same
    network, or host: no need to rely on the NAT hairpinning)."""
    usable = usable_candidates(info, local, mine)
    if usable and family(usable[0]) == 6 and 6 in _families(local, mine):
        return usable[0]
    observed = [c.address for c in info.candidates if c.kind is CandidateKind.OBSERVED]
    local_candidates = [c.address for c in info.candidates if c.kind is CandidateKind.LOCAL]
    if local_candidates and (not observed or (mine is not None and mine[0] == observed[0][0])):
        return local_candidates[0]
    mapped = [c.address for c in info.candidates if _router_mapped(c, observed)]
    return (mapped or observed or local_candidates)[0]
