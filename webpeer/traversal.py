"""How a node finds a path to another peer through NATs: connectivity checks,
the relay fallback, and many-port probing (docs/PROTOCOL.md, 11.4 and 11.5).

A mixin of :class:`webpeer.node.PeerNode`: these methods use the node's
state (peers, links, sockets, the registration machine) and are split out
only so that each file has one job: node.py moves messages, this file
moves toward a path.  The state machines themselves are sans-IO
(punch.py, natprobe.py).
"""

from __future__ import annotations

import functools
import logging
import os
import random
from typing import TYPE_CHECKING

from rendezvous.client import PeerInfo
from rendezvous.stun import Address, Attr, CandidateKind, Message, MessageClass, Method, StunProtocolError, decode, looks_like_stun
from rendezvous.udp import UdpEndpoint

from .api import JSON
from .link import LinkClosed, LinkState, PeerLink
from .natprobe import DEPENDENT, INDEPENDENT, UNKNOWN
from .punch import PunchSession, PunchState
from .wire import FrameError, require

if TYPE_CHECKING:
    from .node import PeerNode, PeerState

    _Base = PeerNode
else:
    _Base = object

logger = logging.getLogger("webpeer")

# A relayed link's "address": the discard-only prefix (RFC 6666) and the peer's
# id.  Never a real destination; datagrams for it go to the server as SEND.
RELAY_HOST = "100::"
QUIC_IDLE_TIMEOUT = 30.0  # no packet at all for this long: the path is dead
KEEPALIVE_INTERVAL = 10.0  # NAT UDP mappings often die after ~30 s of silence
UPGRADE_INTERVAL = 30.0  # while relayed, look for a direct path this often
PUNCH_LINGER = 5.0  # keep answering probes this long after our checks end
# Many-port ("birthday") probing, for a symmetric NAT facing a port-restricted
# one: the symmetric side probes from SPARE_SOCKETS extra sockets (each gets
# its own random public port), the other side probes SPRAY_PROBES random ports
# of the symmetric side's address; with 256 and 1,200 a hit is ~99% likely.
SPARE_SOCKETS = 256
SPRAY_PROBES = 1200
BIRTHDAY_WINDOW = 6.0  # how long spare sockets live unless a link uses one
BIRTHDAY_RETRY = 12.0  # still relayed this long after an attempt: try again
BIRTHDAY_ATTEMPTS = 3


class TraversalMixin(_Base):
    """Path finding for :class:`webpeer.node.PeerNode` (see the module docstring)."""

    def _on_probe(self, message: Message, address: Address, now: float) -> None:
        """A connectivity check (or its answer) from another peer."""
        if message.method != Method.BINDING:
            self.stats["stun_from_stranger"] += 1
            return
        if message.message_class == MessageClass.REQUEST:
            name = message.get(Attr.USERNAME)
            to_id, _, from_id = name.partition(":") if isinstance(name, str) else ("", "", "")
            session = self._punches.get(int(from_id)) if from_id.isdigit() else None
            handled = session is not None and session.receive(message, address, now)
            if len(self._early_probes) >= 64:
                self._early_probes = {k: v for k, v in self._early_probes.items() if now - v[0][2] < 2.0}
            if session is None and from_id.isdigit() and len(self._early_probes) < 64:
                # The other side's introduction reached it before ours reached
                # us: keep its probe a moment, to answer it once we have the key.
                early = self._early_probes.setdefault(int(from_id), [])
                if len(early) < 8:
                    early.append((message, address, now))
                    handled = True
        else:
            handled = any(s.owns(message.transaction_id) and s.receive(message, address, now)
                          for s in (*self._punches.values(), *self._sprays.values()))
        if not handled:
            self.stats["probes_refused"] += 1

    def _on_spare_datagram(self, index: int, data: bytes, address: Address) -> None:
        """A spare socket (many-port probing): probes for its check, or QUIC."""
        now = self.clock()
        if not looks_like_stun(data):
            self._on_quic(data, address, now, endpoint=index)
            return
        session = self._spare_sessions.get(index)
        try:
            message = decode(data, require_fingerprint=True)
        except StunProtocolError:
            self.stats["bad_stun"] += 1
            return
        if session is None or not session.receive(message, address, now):
            self.stats["probes_refused"] += 1

    def _start_punch(self, info: PeerInfo, now: float, *, connect: bool) -> None:
        """Probe every candidate of ``info`` (both sides do this at once);
        ``connect``: we asked for this peer, so we open QUIC on the first path
        that works, or through the relay if none does."""
        assert self.registration.peer_id is not None
        candidates = [c.address for c in info.candidates]
        current = self._punches.get(info.peer_id)
        if current is not None and current.key == info.punch_key and current.state is PunchState.PROBING:
            current.add_candidates(candidates, now)
            current.connect = current.connect or connect
            return
        if self.config.relay_only:
            session = PunchSession(self.registration.peer_id, info.peer_id, b"", [], now, timeout=0.0)
            session.state = PunchState.FAILED
            session.started -= PUNCH_LINGER
        elif info.punch_key is None:
            # A server without PUNCH-KEY: no checks possible; try its observed address.
            session = PunchSession(self.registration.peer_id, info.peer_id, b"", [], now, timeout=0.0)
            session.state, session.chosen = PunchState.SUCCEEDED, candidates[0]
        else:
            session = PunchSession(self.registration.peer_id, info.peer_id, info.punch_key, candidates, now)
        session.connect = connect
        self._punches[info.peer_id] = session
        self.peer_state(info.peer_id).issue_nonce(session.nonce, now)
        for message, address, when in self._early_probes.pop(info.peer_id, []):
            if now - when < 2.0:
                session.receive(message, address, now)

    def _open_early(self, peer: PeerState, info: PeerInfo, now: float) -> None:
        """Open QUIC at once, beside the checks, toward the likeliest
        candidate: where both NATs map endpoint-independently the Initial
        gets through (the other side's checks, sent at the same moment, open
        its NAT), and the handshake is a round trip ahead of waiting for the
        checks.  If the checks then find another path, that one wins
        (_check_punches); if they find none, the relay does."""
        if self.config.relay_only or info.punch_key is None or not info.candidates:
            return
        if peer.link is not None and peer.link.state is not LinkState.CLOSED:
            return
        self._open_link(peer, self._likeliest(info), now)
        self.stats["quic_opened_early"] += 1

    def _likeliest(self, info: PeerInfo) -> Address:
        observed = [c.address for c in info.candidates if c.kind is CandidateKind.OBSERVED]
        local = [c.address for c in info.candidates if c.kind is CandidateKind.LOCAL]
        mine = self.registration.observed
        if local and (not observed or (mine is not None and mine[0] == observed[0][0])):
            return local[0]  # behind the same public address: the same network, or host
        return (observed or local)[0]

    def _retire(self, link: PeerLink, reason: str, now: float) -> None:
        """Close a link that its peer no longer points to, and clean up after
        it now (nothing else would read its LinkClosed event)."""
        link.close(reason)
        while (event := link.next_event()) is not None:
            if isinstance(event, LinkClosed):
                self._on_link_closed(link, event, now)

    def _check_punches(self, now: float) -> bool:
        """Act on finished connectivity checks; True if a link was opened."""
        opened = False
        for peer_id, session in list(self._punches.items()):
            if session.state is PunchState.PROBING:
                opened |= self._follow_reflexive(peer_id, session, now)
                continue
            if now >= session.started + session.timeout + PUNCH_LINGER:
                # Long over: stop answering the other side's late probes too.
                del self._punches[peer_id]
            if not session.connect or session.handled:
                continue
            session.handled = True
            peer = self.peer_state(peer_id)
            opened = True
            link = peer.link
            early = link if link is not None and link.state is not LinkState.CLOSED else None
            if early is not None and early.address[0] == RELAY_HOST:
                early = None  # a relayed link: a direct one goes beside it (an upgrade)
            if session.state is PunchState.SUCCEEDED and session.chosen is not None:
                logger.info("direct path to peer %d: %s:%s (%d probes)", peer_id, *session.chosen, session.probes_sent)
                if early is not None and (early.heard_back or early.address == session.chosen):
                    # QUIC opened with the checks is on this path, or already
                    # answering on another.  If unanswered, the other side's NAT
                    # may have dropped our Initial before its checks opened it:
                    # send it again now rather than after QUIC's retransmit timer.
                    if early.check_nonce is None:
                        early.check_nonce = session.remote_nonce
                    if early.resend_first_flight():
                        self.stats["initial_resent"] += 1
                    continue
                if early is not None:
                    self.stats["early_link_replaced"] += 1  # the first guess was not the path
                self._open_link(peer, session.chosen, now, nonce=session.remote_nonce, replace=True)
            elif peer.link is None or peer.link.state is LinkState.CLOSED or (early is not None and not early.heard_back):
                logger.info("no direct path to peer %d after %d probes: relaying", peer_id, session.probes_sent)
                self._open_link(peer, (RELAY_HOST, peer_id), now, replace=True)
                peer.upgrade_at = now + UPGRADE_INTERVAL
        return opened

    def _follow_reflexive(self, peer_id: int, session: PunchSession, now: float) -> bool:
        """The other side's checks come from an address it was not introduced
        with (a symmetric NAT's port for us) while our early QUIC has had no
        answer: that address is open toward us right now, so move QUIC there
        at once instead of after our own check of it (a round trip later)."""
        peer = self.peer_states.get(peer_id)
        link = peer.link if peer is not None else None
        target = session.reflexive
        if (not session.connect or target is None or peer is None or link is None or link.heard_back
                or link.state is LinkState.CLOSED or link.address[0] == RELAY_HOST or link.address == target):
            return False
        session.reflexive = None  # once
        logger.info("peer %d checks us from %s:%s: QUIC moves there", peer_id, *target)
        self.stats["early_link_replaced"] += 1
        self._open_link(peer, target, now, replace=True)
        return True

    def _nat_learned(self, now: float) -> None:
        self._publish({"type": "me", "me": self.me()})
        for peer in self.peer_states.values():
            if peer.link is not None and peer.link.state is LinkState.READY and peer.link.address[0] == RELAY_HOST:
                self._tell_nat(peer.link)
                self._consider_birthday(peer, now)

    def _tell_nat(self, link: PeerLink) -> None:
        """Tell a relayed peer our NAT's mapping: if it is symmetric, it needs
        to know whether many-port probing can work (only against a mapping
        that is endpoint-independent; two symmetric NATs never meet, and the
        256 sockets would be wasted)."""
        if self._nat is not None and self._nat.mapping != UNKNOWN and link.address[0] == RELAY_HOST:
            link.send_frame({"t": "nat", "mapping": self._nat.mapping})  # not activity: no idle-timer reset

    def _on_nat_frame(self, link: PeerLink, frame: JSON, now: float) -> None:
        mapping = require(frame, "mapping", str)
        if mapping not in (INDEPENDENT, DEPENDENT, UNKNOWN):
            raise FrameError(f"nat: unknown mapping {mapping[:40]!r}")
        assert link.peer_id is not None
        peer = self.peer_state(link.peer_id)
        peer.remote_mapping = mapping
        self._consider_birthday(peer, now)

    def _consider_birthday(self, peer: PeerState, now: float) -> None:
        """Many-port probing, when it can work: we are symmetric, the other
        side is not, and the path between us is the relay (which carries
        the coordination)."""
        link = peer.link
        if (self._symmetric() and peer.remote_mapping == INDEPENDENT and link is not None
                and link.state is LinkState.READY and link.address[0] == RELAY_HOST
                and peer.birthday_at is None and peer.birthday_attempts < BIRTHDAY_ATTEMPTS):
            peer.birthday_at = now

    def _symmetric(self) -> bool:
        return self._nat is not None and self._nat.mapping == DEPENDENT

    def _birthday_timers(self, now: float) -> None:
        for peer in self.peer_states.values():
            if peer.birthday_at is not None and peer.birthday_at <= now:
                peer.birthday_at = None
                link = peer.link
                if link is not None and link.state is LinkState.READY and link.address[0] == RELAY_HOST:
                    self._start_birthday(peer, link, now)
        for index, expires in list(self._spare_expiry.items()):
            if expires <= now:
                del self._spare_expiry[index]
                self._spare_sessions.pop(index, None)
                if not any(link.endpoint == index for link in self._all_links() if link.state is not LinkState.CLOSED):
                    spare = self._spares.pop(index, None)
                    if spare is not None:
                        spare.close()
        for peer_id, spray in list(self._sprays.items()):
            if spray.state is PunchState.PROBING:
                continue
            del self._sprays[peer_id]
            peer = self.peer_states.get(peer_id)
            if spray.state is PunchState.FAILED:
                logger.info("many-port probing toward peer %d: no hit in %d probes", peer_id, spray.probes_sent)
            if spray.state is PunchState.SUCCEEDED and spray.chosen is not None and peer is not None:
                logger.info("many-port probing found %s:%s for peer %d after %d probes",
                            *spray.chosen, peer_id, spray.probes_sent)
                self._open_link(peer, spray.chosen, now, nonce=spray.remote_nonce)

    def _start_birthday(self, peer: PeerState, link: PeerLink, now: float) -> None:
        """We are behind a symmetric NAT and talk to ``peer`` through the relay:
        probe it from many fresh sockets, and ask it (over the relay, which is
        end-to-end authenticated) to spray our address with probes."""
        targets = [address for address in peer.candidates]
        observed = self.registration.observed
        if not targets or observed is None or self.registration.peer_id is None:
            return
        peer.birthday_attempts += 1
        key = os.urandom(16)
        for _ in range(SPARE_SOCKETS):
            index = self._next_spare
            self._next_spare += 1
            try:
                # Plain sockets: each carries a few probes, and 256 batched ones
                # would take ~0.4 s (and 64 MiB) to set up, stalling this loop.
                spare = UdpEndpoint.bind(self.config.udp_host, 0, functools.partial(self._on_spare_datagram, index),
                                         self._flush, self.stats, batched=False, buffer_size=None)
            except OSError:
                break
            spare.start()
            self._spares[index] = spare
            self._spare_sessions[index] = PunchSession(
                self.registration.peer_id, peer.peer_id, key, targets, now, timeout=BIRTHDAY_WINDOW, repeat=1.0
            )
            self._spare_expiry[index] = now + BIRTHDAY_WINDOW
            peer.issue_nonce(self._spare_sessions[index].nonce, now)
        link.send_frame({"t": "birthday", "key": key.hex(), "host": observed[0]}, now)
        if peer.birthday_attempts < BIRTHDAY_ATTEMPTS:
            peer.birthday_at = now + BIRTHDAY_RETRY
        logger.info("many-port probing toward peer %d from %d sockets (attempt %d)",
                    peer.peer_id, len(self._spare_sessions), peer.birthday_attempts)

    def _on_birthday_frame(self, link: PeerLink, frame: JSON, now: float) -> None:
        """The other side is symmetric and probes us from many sockets: spray
        its address with probes on random ports (unless we are symmetric too:
        then no port will ever match)."""
        try:
            key = bytes.fromhex(require(frame, "key", str))
        except ValueError:
            raise FrameError("birthday: key is not hex") from None
        host = require(frame, "host", str)
        if len(key) != 16 or self._symmetric() or self.registration.peer_id is None or link.peer_id is None:
            logger.info("peer %s asks for many-port probing; not possible from here", link.peer_id)
            return
        if link.peer_id in self._sprays or not any(host == a[0] for a in self.peer_state(link.peer_id).candidates):
            logger.info("peer %s asks for many-port probing of %s: refused", link.peer_id, host)
            return  # one at a time; and only toward the address the registry gave for it
        logger.info("many-port probing: spraying %d ports of %s for peer %d", SPRAY_PROBES, host, link.peer_id)
        rng = random.SystemRandom()
        ports = rng.sample(range(1024, 65536), SPRAY_PROBES)
        self._sprays[link.peer_id] = PunchSession(
            self.registration.peer_id, link.peer_id, key, [(host, port) for port in ports], now,
            timeout=BIRTHDAY_WINDOW - 1.0, pace=0.01, repeat=1e9, burst=SPRAY_PROBES // 300 + 1,
            max_candidates=SPRAY_PROBES + 16,
        )
