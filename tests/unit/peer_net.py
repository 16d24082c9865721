"""An in-memory network for the pure engines, driven with literal times.

One rendezvous ``ServerCore`` (with an RFC 5780 second address) and any
number of ``PeerEngine``\\ s, each behind a modelled NAT, exchange datagrams
through a queue with a fixed one-way latency.  Nothing here opens a socket
or reads the clock: ``net.run(seconds)`` advances ``net.now`` from one
deadline or delivery to the next, so a test says "8 s later" and means it.

The NAT model is the usual four kinds (RFC 4787 terms):

- ``none``: the peer's address is public.
- ``full-cone``: endpoint-independent mapping and filtering.
- ``port-restricted``: endpoint-independent mapping; inbound only from an
  address:port the mapping has sent to.
- ``symmetric``: a new public port per destination; filtering as port-restricted.

``net.cut(a, b)`` drops every datagram between two peers' hosts (no direct
path at all, as between two symmetric NATs); ``net.mend(a, b)`` restores it.
``net.server_down`` drops everything sent to the rendezvous server.

IPv6 (``net.add(name, nat, v6=True)``): the peer also has a global IPv6
address, with no NAT in front of it but a home router's stateful firewall
(inbound only from an address:port the peer has sent to), and it knows the
server's IPv6 address (``SERVER6``) beside its IPv4 one.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rendezvous.core import ServerConfig, ServerCore
from rendezvous.mail_handling import MailRequest
from rendezvous.mailbox import MAILBOX_FULL, SENDER_QUOTA, Mail
from rendezvous.stun import Address
from rendezvous.tokens import Tokens
from webpeer.engine import EngineConfig, PeerEngine
from webpeer.events import PageEvent, StatusChanged
from webpeer.file_store import FileStore
from webpeer.identity import Identity
from webpeer.message_flow import Draft
from webpeer.pathfinder import CloseSpare, OpenSpare, SpareCommand
from webpeer.store import Store, StoreError

SERVER = ("203.0.113.1", 3478)
SERVER_OTHER = ("203.0.113.2", 3479)
SERVER6 = ("2001:db8:ffff::1", 3478)
SERVERS = (SERVER, SERVER_OTHER, SERVER6)
LATENCY = 0.005  # one way
MAIN_PORT = 5000
SPARE_BASE = 6000


@dataclass
class Nat:
    kind: str  # none, full-cone, port-restricted, symmetric
    public_ip: str
    _ports: Iterator[int] = field(default_factory=lambda: itertools.count(40000))
    _mapping: dict[tuple[Address, Address | None], int] = field(default_factory=dict)
    _inside: dict[int, Address] = field(default_factory=dict)
    _sent_to: set[tuple[int, Address]] = field(default_factory=set)
    # Router port mappings (PCP, NAT-PMP): external port -> inside address, open to anyone.
    forwarded: dict[int, Address] = field(default_factory=dict)
    _replies: dict[tuple[Address, Address], int] = field(default_factory=dict)  # answers leave by the mapping

    def outbound(self, source: Address, destination: Address) -> Address:
        if self.kind == "none":
            return source
        if (source, destination) in self._replies:
            return (self.public_ip, self._replies[source, destination])
        key = (source, destination if self.kind == "symmetric" else None)
        port = self._mapping.get(key)
        if port is None:
            port = self._mapping[key] = next(self._ports)
            self._inside[port] = source
        self._sent_to.add((port, destination))
        return (self.public_ip, port)

    def inbound(self, destination: Address, source: Address) -> Address | None:
        if self.kind == "none":
            return destination
        if destination[1] in self.forwarded:
            inside = self.forwarded[destination[1]]
            self._replies.setdefault((inside, source), destination[1])
            return inside
        inside = self._inside.get(destination[1])
        if inside is None:
            return None
        if self.kind != "full-cone" and (destination[1], source) not in self._sent_to:
            return None
        return inside


class Peer:
    """One engine with its store, its NAT and what it told its pages."""

    def __init__(
        self,
        net: PeerNet,
        name: str,
        identity: Identity,
        data_dir: Path,
        host: str,
        nat: Nat,
        last_id: int | None = None,
        declared: tuple[Address, ...] = (),
        v6: str | None = None,
        server6: bool = False,
        page_open: bool = True,
        **config: object,
    ) -> None:
        self.net = net
        self.v6 = v6  # a global IPv6 address, behind a stateful firewall (no NAT)
        self.firewall6: set[tuple[int, Address]] = set()  # (our port, remote) we sent to over IPv6
        self.name = name
        self.identity = identity
        self.host = host
        self.nat = nat
        self.store = Store(data_dir / "history.sqlite3")
        self.store.open()
        options: dict[str, object] = {"list_interval": 1.0, **config}
        self.files = FileStore(data_dir / "files")  # real files in the test's directory, as the store is
        self.engine = PeerEngine(EngineConfig(server=SERVER, name=name, **options), identity, self.store, self.files)  # type: ignore[arg-type]
        self.events: list[PageEvent] = []
        self.commands: list[SpareCommand] = []
        self.spares: set[int] = set()
        self.alive = True
        # As the node does: sends to an id the engine never heard of wait for
        # the server's word on it; those it never assigned are refused.
        self.held: list[Draft] = []
        self.refused: list[str] = []  # ids of drafts refused as "unknown peer"
        if server6:
            self.engine.registration.use_servers((SERVER, SERVER6))
        # ``page_open``: a page shows the directory view (the node says so
        # while a websocket is connected): its page rides the heartbeats.
        self.engine.registration.show_directory(page_open, net.now)
        # ``declared``: more local addresses it claims at registration (a liar's).
        self.engine.start(((host, MAIN_PORT), *declared), net.now, last_id=last_id)

    @property
    def peer_id(self) -> int:
        assert self.engine.my_id is not None
        return self.engine.my_id

    def socket_address(self, socket: int) -> Address:
        return (self.host, MAIN_PORT if socket == 0 else SPARE_BASE + socket)

    def send(self, to: Peer | int, text: str) -> str:
        """The page sends a message; returns its id (stored by this flush)."""
        target = to.peer_id if isinstance(to, Peer) else to
        draft = self.engine.draft(target, text, self.net.now)
        self.flush([draft])
        return str(draft.message["id"])

    def submit(self, to: Peer | int, text: str) -> str:
        """The page sends through the node's path (PeerEngine.look_up first);
        returns the draft's id, stored now, later, or refused (:attr:`refused`)."""
        target = to.peer_id if isinstance(to, Peer) else to
        draft = self.engine.draft(target, text, self.net.now)
        if self.engine.look_up(target, self.net.now):
            self.held.append(draft)
            self.flush()
        else:
            self.flush([draft])
        return str(draft.message["id"])

    def status(self, message_id: str) -> str:
        message = self.store.get_message(message_id)
        assert message is not None
        return str(message["status"])

    def statuses(self, message_id: str) -> list[str]:
        """Every status the pages were told for a message, in order."""
        return [e.status for e in self.events if isinstance(e, StatusChanged) and e.message_id == message_id]

    def connection(self, other: Peer) -> dict[str, object] | None:
        return self.engine.session(other.peer_id).connection()

    def flush(self, drafts: list | None = None) -> None:
        if not self.alive:
            return
        now = self.net.now
        try:
            with self.store.batch():
                self.engine.process(now, drafts)
        except StoreError:
            self.engine.rolled_back()  # as the node does: nothing acknowledged
        else:
            self.engine.committed(now)
        self.events += self.engine.take_events()
        settled: list[Draft] = []
        for answer in self.engine.take_lookups():
            for draft in [d for d in self.held if d.message["to"] == answer.peer_id]:
                self.held.remove(draft)
                if answer.never_assigned:
                    self.refused.append(str(draft.message["id"]))
                else:
                    settled.append(draft)
        while (command := self.engine.next_command()) is not None:
            self.commands.append(command)
            if isinstance(command, OpenSpare):
                self.spares.add(command.index)
            elif isinstance(command, CloseSpare):
                self.spares.discard(command.index)
        for data, address, socket in self.engine.datagrams_to_send(now):
            if socket and socket not in self.spares:
                continue
            if ":" in address[0]:
                if self.v6 is None:
                    self.net.dropped += 1  # no IPv6 route
                    continue
                port = self.socket_address(socket)[1]
                self.firewall6.add((port, address))
                self.net.transmit(data, (self.v6, port), address)
                continue
            source = self.nat.outbound(self.socket_address(socket), address)
            self.net.transmit(data, source, address)
        if settled:
            self.flush(settled)

    def crash(self) -> None:
        """The process dies: no unregistration, nothing more in or out."""
        self.alive = False
        self.store.close()
        self.files.close()


class PeerNet:
    def __init__(self, tmp_path: Path, now: float = 1000.0) -> None:
        self.tmp_path = tmp_path
        self.now = now
        config = ServerConfig(primary_address=SERVER, other_address=SERVER_OTHER)
        self.server = ServerCore(config, Tokens(b"s" * 32))
        self.peers: list[Peer] = []
        self._ids: dict[bytes, int] = {}
        self._queue: list[tuple[float, int, bytes, Address, Address]] = []
        self._order = itertools.count()
        self._cut: set[frozenset[str]] = set()
        self.dropped = 0
        self.server_down = False
        self.delivered_to: Callable[[Address], None] | None = None
        self.raw_endpoints: dict[Address, Callable[[bytes, Address], None]] = {}
        # A test's own loss: datagrams for which it returns True are dropped.
        self.lose: Callable[[bytes, Address, Address], bool] | None = None
        # What each public IP sent to the server and got from it: datagrams, bytes.
        self.to_server: Counter[tuple[str, str]] = Counter()
        self.from_server: Counter[tuple[str, str]] = Counter()
        # The server's mailbox store, in memory (the real ones are
        # tests/unit/test_mailbox_store.py's): recipient -> MAIL-ID -> message.
        self.mailbox: dict[int, dict[bytes, Mail]] = {}

    # ------------------------------------------------------------ building

    def add(
        self,
        name: str,
        nat: str = "none",
        *,
        identity: Identity | None = None,
        declared: tuple[Address, ...] = (),
        v6: bool = False,
        server6: bool | None = None,
        page_open: bool = True,
        **config: object,
    ) -> Peer:
        """``v6``: the peer has IPv6 too; ``server6`` (default: ``v6``): it
        knows the server's IPv6 address."""
        index = len(self.peers) + 1
        private = f"10.0.{index}.2" if nat != "none" else f"198.51.100.{index}"
        public = f"198.51.100.{index}"
        data_dir = self.tmp_path / name
        data_dir.mkdir(exist_ok=True)
        peer = Peer(
            self,
            name,
            identity or Identity(Ed25519PrivateKey.generate()),
            data_dir,
            private,
            Nat(nat, public),
            declared=declared,
            v6=f"2001:db8:{index}::2" if v6 else None,
            server6=v6 if server6 is None else server6,
            page_open=page_open,
            **config,
        )
        self.peers.append(peer)
        peer.flush()
        return peer

    def stop(self, peer: Peer) -> None:
        """The process stops cleanly: it unregisters and closes its links."""
        peer.engine.stop(self.now)
        peer.flush()
        self.run(0.05)
        peer.engine.close_links()
        peer.flush()
        peer.crash()

    def start_again(self, peer: Peer, last_id: int | None = None, **config: object) -> Peer:
        """The same user (key and history) starts again, on another address."""
        index = len(self.peers) + 1
        again = Peer(
            self,
            peer.name,
            peer.identity,
            self.tmp_path / peer.name,
            f"198.51.100.{index}",
            Nat("none", f"198.51.100.{index}"),
            last_id,
            **config,
        )
        self.peers.append(again)
        again.flush()
        return again

    def new_key(self, peer: Peer) -> Peer:
        """The same id at the server, a new key: ``peer`` stops, and a new
        identity (with a fresh data dir) registers and is given the old id,
        as if the user reinstalled, or someone took the id over at the server."""
        old_id = peer.peer_id
        if peer.alive:
            self.stop(peer)
        identity = Identity(Ed25519PrivateKey.generate())
        self._ids[identity.public_key] = old_id
        index = len(self.peers) + 1
        data_dir = self.tmp_path / f"{peer.name}-{index}"
        data_dir.mkdir()
        again = Peer(self, peer.name, identity, data_dir, f"198.51.100.{index}", Nat("none", f"198.51.100.{index}"))
        self.peers.append(again)
        again.flush()
        return again

    def cut(self, a: Peer, b: Peer) -> None:
        self._cut.add(frozenset((a.nat.public_ip, b.nat.public_ip)))

    def mend(self, a: Peer, b: Peer) -> None:
        self._cut.discard(frozenset((a.nat.public_ip, b.nat.public_ip)))

    # ------------------------------------------------------------ moving datagrams

    def transmit(self, data: bytes, source: Address, destination: Address) -> None:
        if frozenset((source[0], destination[0])) in self._cut or (self.server_down and destination in SERVERS):
            self.dropped += 1
            return
        if self.lose is not None and self.lose(data, source, destination):
            self.dropped += 1
            return
        if destination in SERVERS:
            self.to_server[(source[0], "datagrams")] += 1
            self.to_server[(source[0], "bytes")] += len(data)
        elif source in SERVERS:
            self.from_server[(destination[0], "datagrams")] += 1
            self.from_server[(destination[0], "bytes")] += len(data)
        heapq.heappush(self._queue, (self.now + LATENCY, next(self._order), data, source, destination))

    def _deliver(self, data: bytes, source: Address, destination: Address) -> None:
        if (raw := self.raw_endpoints.get(destination)) is not None:
            raw(data, source)  # a test's own hand-made endpoint (an attacker, say)
            return
        if destination in SERVERS:
            self.server.receive_datagram(data, source, self.now, via_other=destination == SERVER_OTHER)
            self._flush_server()
            return
        if ":" in destination[0]:
            self._deliver6(data, source, destination)
            return
        for peer in self.peers:
            if not peer.alive or peer.nat.public_ip != destination[0]:
                continue
            inside = peer.nat.inbound(destination, source)
            if inside is None:
                self.dropped += 1
                return
            if inside[1] == MAIN_PORT:
                socket = 0
            elif inside[1] - SPARE_BASE in peer.spares:
                socket = inside[1] - SPARE_BASE
            else:
                return
            peer.engine.receive_datagram(data, source, self.now, socket)
            peer.flush()
            return

    def _deliver6(self, data: bytes, source: Address, destination: Address) -> None:
        peer = next((p for p in self.peers if p.alive and p.v6 == destination[0]), None)
        if peer is None:
            return
        if (destination[1], source) not in peer.firewall6:
            self.dropped += 1  # the home firewall: inbound only where the peer has sent
            return
        if destination[1] == MAIN_PORT:
            socket = 0
        elif destination[1] - SPARE_BASE in peer.spares:
            socket = destination[1] - SPARE_BASE
        else:
            return
        peer.engine.receive_datagram(data, source, self.now, socket)
        peer.flush()

    def _flush_server(self) -> None:
        for pending in self.server.pending_registrations():
            peer_id = self._ids.setdefault(pending.identity, len(self._ids) + 1)
            self.server.complete_registration(pending, peer_id, None, self.now)
        for request in self.server.mail_requests():
            self._mail(request)
        for data, address in self.server.datagrams_to_send():
            self.transmit(data, SERVER6 if ":" in address[0] else SERVER, address)
        for data, address in self.server.datagrams_to_send_from_other():
            self.transmit(data, SERVER_OTHER, address)
        self.server.events()

    def _mail(self, request: MailRequest) -> None:
        """The mailbox store's part (rendezvous/mailbox.py's contract, without the age limit)."""
        limits = self.server.config.mailbox
        assert limits is not None
        mail = request.deposit
        if mail is None:
            box = self.mailbox.get(request.peer_id, {})
            if request.delete is not None:
                box.pop(request.delete, None)
            waiting = sorted(box.values(), key=lambda m: (m.deposited_at, m.mail_id))
            self.server.mail_fetched(request, waiting[0] if waiting else None, len(waiting), self.now)
            return
        box = self.mailbox.setdefault(mail.recipient, {})
        if mail.mail_id in box:
            self.server.mail_deposited(request, False, self.now)
            return
        sent = [m for b in self.mailbox.values() for m in b.values() if m.sender == mail.sender]
        if (
            len(box) >= limits.max_messages
            or sum(len(m.sealed) for m in box.values()) + len(mail.sealed) > limits.max_bytes
        ):
            self.server.mail_refused(request, MAILBOX_FULL, self.now)
        elif (
            len(sent) >= limits.sender_max_messages
            or sum(len(m.sealed) for m in sent) + len(mail.sealed) > limits.sender_max_bytes
        ):
            self.server.mail_refused(request, SENDER_QUOTA, self.now)
        else:
            box[mail.mail_id] = mail
            self.server.mail_deposited(request, True, self.now)

    # ------------------------------------------------------------ time

    def _next_time(self) -> float | None:
        times = [self._queue[0][0]] if self._queue else []
        if (timer := self.server.get_timer()) is not None:
            times.append(timer)
        for peer in self.peers:
            if peer.alive and (deadline := peer.engine.next_deadline()) is not None:
                times.append(deadline)
        return min(times, default=None)

    def run(self, seconds: float) -> None:
        self._advance(lambda: False, self.now + seconds)

    def run_until(self, condition: Callable[[], bool], timeout: float) -> float:
        """Advance time until ``condition()`` holds; returns how long it took.
        Fails if it does not hold within ``timeout`` (simulated) seconds."""
        start = self.now
        if not self._advance(condition, start + timeout):
            raise AssertionError(f"not within {timeout} s (simulated)")
        return self.now - start

    def _advance(self, condition: Callable[[], bool], end: float) -> bool:
        rounds_at_this_time = 0
        while not condition():
            due = self._next_time()
            if due is None or due > end:
                self.now = end
                return condition()
            rounds_at_this_time = rounds_at_this_time + 1 if due <= self.now else 0
            if rounds_at_this_time > 10_000:
                raise AssertionError(f"a deadline at {due} is never served (the engine spins)")
            self.now = max(self.now, due)
            while self._queue and self._queue[0][0] <= self.now:
                _, _, data, source, destination = heapq.heappop(self._queue)
                self._deliver(data, source, destination)
            if (timer := self.server.get_timer()) is not None and timer <= self.now:
                self.server.handle_timer(self.now)
                self._flush_server()
            for peer in list(self.peers):
                if peer.alive and (deadline := peer.engine.next_deadline()) is not None and deadline <= self.now:
                    peer.engine.handle_timer(self.now)
                    peer.flush()
        return True


def online_pair(net: PeerNet) -> tuple[Peer, Peer]:
    """alice and bob, registered and each seeing the other online (no NATs)."""
    alice = net.add("alice")
    bob = net.add("bob")
    net.run_until(lambda: alice.engine.my_id is not None and bob.engine.my_id is not None, 2)
    net.run_until(lambda: alice.engine.session(bob.peer_id).online and bob.engine.session(alice.peer_id).online, 3)
    return alice, bob
