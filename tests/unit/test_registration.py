"""The peer's registration machine against the real server core, in memory, with literal times."""

from __future__ import annotations

import itertools

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rendezvous.core import ServerConfig, ServerCore
from rendezvous.stun import Attr, ErrorCode, Message, MessageClass, Method, decode
from rendezvous.tokens import Tokens
from webpeer.identity import Identity
from webpeer.registration import (
    ConnectAnswered,
    Introduced,
    PeersListed,
    Registered,
    RegistrationLost,
    RegistrationMachine,
    RegState,
    ServerAnswered,
    ServerSilent,
    ServerState,
    Stopped,
)

SERVER = ("198.51.100.1", 3478)


class Harness:
    """Machines and a server core exchanging datagrams by hand; ids handed out in order."""

    def __init__(self) -> None:
        self.core = ServerCore(ServerConfig(), Tokens(b"k" * 32))
        self.ids = itertools.count(1)
        self.by_identity: dict[bytes, int] = {}
        self.deaf = False
        self.ids_for_transactions = itertools.count(1)

    def machine(self, name: str) -> RegistrationMachine:
        return RegistrationMachine(
            Identity(Ed25519PrivateKey.generate()),
            nickname=name,
            ttl=60,
            list_interval=5,
            random_bytes=self.random_bytes,
        )

    def random_bytes(self, n: int) -> bytes:
        """Unique transaction ids; the longest retry wait (the worst case) for the jitter."""
        return next(self.ids_for_transactions).to_bytes(n, "big") if n > 2 else b"\xff" * n

    def pump(self, machines: dict[tuple[str, int], RegistrationMachine], now: float) -> dict:
        events: dict = {addr: [] for addr in machines}
        for _ in range(10):
            moved = False
            for addr, machine in machines.items():
                for data in machine.datagrams_to_send():
                    moved = True
                    if not self.deaf:
                        self.core.receive_datagram(data, addr, now)
            for pending in self.core.pending_registrations():
                peer_id = self.by_identity.setdefault(pending.identity, next(self.ids))
                self.core.complete_registration(pending, peer_id, None, now)
            for data, addr in self.core.datagrams_to_send():
                if addr in machines:
                    moved = True
                    machines[addr].receive(decode(data), now)
            for addr, machine in machines.items():
                while (event := machine.next_event()) is not None:
                    events[addr].append(event)
            if not moved:
                break
        return events


A = ("203.0.113.10", 40000)
B = ("203.0.113.20", 50000)


def test_registers_with_a_signed_challenge_and_refreshes_in_time() -> None:
    h = Harness()
    alice = h.machine("alice")
    alice.start(1000.0)
    events = h.pump({A: alice}, 1000.0)[A]
    assert Registered(1, A, 60) in events
    assert alice.state is RegState.REGISTERED
    # Its WATCH (no contacts yet: it asks whether the server knows WATCH)
    # went at once and was answered; the heartbeat (first the directory
    # view's page) is due at once too, then every list_interval.
    assert alice.watch_supported is True
    assert alice.get_timer() == 1000.0
    # The refresh is due at 35% of the TTL: 21 s.
    alice.handle_timer(1000.0)
    h.pump({A: alice}, 1000.0)
    assert alice._wake_at == 1021.0
    alice.handle_timer(1021.0)
    h.pump({A: alice}, 1021.0)
    assert h.core.directory.get(1).expires_at == 1081.0
    assert alice._wake_at == 1042.0


def test_registers_again_when_the_server_forgot_it() -> None:
    h = Harness()
    alice = h.machine("alice")
    alice.start(1000.0)
    h.pump({A: alice}, 1000.0)
    h.core.directory = type(h.core.directory)()  # a server restart that lost its memory
    alice.handle_timer(1021.0)
    events = h.pump({A: alice}, 1021.0)[A]
    assert any(isinstance(e, RegistrationLost) for e in events)
    assert Registered(1, A, 60) in events
    assert 1 in h.core.directory


def test_backs_off_while_the_server_is_silent_then_recovers() -> None:
    h = Harness()
    h.deaf = True
    alice = h.machine("alice")
    alice.start(1000.0)
    h.pump({A: alice}, 1000.0)
    # Retransmissions at 0.25, 0.75, 1.75, 3.75 s; gives up 1 s after the last.
    sent = 0
    now = 1000.0
    while alice.state is not RegState.BACKING_OFF and now < 1010:
        now = alice.get_timer()
        alice.handle_timer(now)
        sent += len(alice.datagrams_to_send())
    assert sent == 4
    assert alice.state is RegState.BACKING_OFF
    h.deaf = False
    alice.handle_timer(alice.get_timer())
    events = h.pump({A: alice}, now + 1)[A]
    assert any(isinstance(e, Registered) for e in events)


def test_lists_connects_and_acknowledges_introductions() -> None:
    h = Harness()
    alice, bob = h.machine("alice"), h.machine("bob")
    machines = {A: alice, B: bob}
    alice.start(1000.0)
    bob.start(1000.0)
    h.pump(machines, 1000.0)
    alice.list_now(1000.5)
    events = h.pump(machines, 1000.5)
    listed = [e for e in events[A] if isinstance(e, PeersListed)]
    assert [(p.peer_id, p.nickname) for p in listed[-1].entries] == [(2, "bob")]
    assert alice.connect(2, 1001.0)
    events = h.pump(machines, 1001.0)
    answer = next(e for e in events[A] if isinstance(e, ConnectAnswered))
    assert answer.info.public_key == bob.identity.public_key
    intro = next(e for e in events[B] if isinstance(e, Introduced))
    assert intro.info.peer_id == 1 and intro.info.public_key == alice.identity.public_key
    assert h.core.stats["introductions_acknowledged"] == 1


def test_unregisters_on_stop() -> None:
    h = Harness()
    alice = h.machine("alice")
    alice.start(1000.0)
    h.pump({A: alice}, 1000.0)
    alice.stop(1001.0)
    events = h.pump({A: alice}, 1001.0)[A]
    assert Stopped() in events
    assert 1 not in h.core.directory


# ------------------------------------------------------------ first contact, outages and recovery

OTHER = ("198.51.100.2", 3478)


def run(h: Harness, machines: dict, until: float, now: float) -> tuple[float, dict]:
    """Drive the machines' timers from ``now`` to ``until`` through the harness."""
    seen: dict = {addr: [] for addr in machines}
    while True:
        timers = [t for m in machines.values() if (t := m.get_timer()) is not None]
        step = min(timers, default=until)
        if step > until:
            return until, seen
        now = max(now, step)
        for machine in machines.values():
            if (t := machine.get_timer()) is not None and t <= now:
                machine.handle_timer(now)
        for addr, events in h.pump(machines, now).items():
            seen[addr] += events


def registered_at(h: Harness, machine: RegistrationMachine, addr, now: float, limit: float) -> float:
    """The first time after ``now`` at which the machine is registered and the server lists it."""
    while now <= limit:
        if machine.state is RegState.REGISTERED and machine.peer_id in h.core.directory:
            return now
        timer = machine.get_timer()
        assert timer is not None
        now = max(now, timer)
        machine.handle_timer(now)
        h.pump({addr: machine}, now)
    raise AssertionError(f"not registered by {limit}")


def test_a_silent_server_is_said_to_be_unreachable_after_3_s_and_its_answer_noticed() -> None:
    h = Harness()
    h.deaf = True
    alice = h.machine("alice")
    alice.start(1000.0)
    assert alice.server_state is ServerState.CONNECTING
    now, events = run(h, {A: alice}, 1002.9, 1000.0)
    assert alice.server_state is ServerState.CONNECTING and not events[A]
    now, events = run(h, {A: alice}, 1003.0, now)
    assert events[A] == [ServerSilent(ever_answered=False)]
    assert alice.server_state is ServerState.UNREACHABLE
    now, events = run(h, {A: alice}, 1030.0, now)
    assert not events[A]  # said once, however long it lasts
    h.deaf = False
    now, events = run(h, {A: alice}, 1032.0, now)
    assert events[A][0] == ServerAnswered()
    assert any(isinstance(e, Registered) for e in events[A])
    assert alice.server_state is ServerState.REGISTERED


def test_a_registered_peer_says_when_the_server_goes_quiet_and_when_it_is_back() -> None:
    h = Harness()
    alice = h.machine("alice")
    alice.start(1000.0)
    now, _ = run(h, {A: alice}, 1010.0, 1000.0)
    h.deaf = True  # lists every 5 s go unanswered
    now, events = run(h, {A: alice}, 1020.0, now)
    assert events[A] == [ServerSilent(ever_answered=True)]
    assert alice.server_state is ServerState.UNREACHABLE and alice.state is RegState.REGISTERED
    h.deaf = False
    now, events = run(h, {A: alice}, 1023.0, now)
    assert events[A][0] == ServerAnswered()
    assert alice.server_state is ServerState.REGISTERED


def test_after_a_60_s_outage_the_peer_is_registered_within_2_s_of_the_return() -> None:
    # The server stays up but hears nothing for 60 s (a cut link, or a
    # restart that kept its memory): the refresh at 1021 times out, and the
    # peer keeps trying.  Before the cap, its backoff had grown to 16-30 s.
    for back in [1070.0 + k * 0.1 for k in range(60)]:
        h = Harness()
        alice = h.machine("alice")
        alice.start(1000.0)
        now, _ = run(h, {A: alice}, 1010.0, 1000.0)
        h.deaf = True
        now, events = run(h, {A: alice}, back, now)
        assert any(isinstance(e, RegistrationLost) for e in events[A])
        h.deaf = False
        assert registered_at(h, alice, A, now, back + 10) - back <= 2.0, back


def test_after_a_10_min_outage_and_a_restart_the_peer_is_registered_within_2_s() -> None:
    for back in [1610.0 + k * 0.25 for k in range(24)]:
        h = Harness()
        alice, bob = h.machine("alice"), h.machine("bob")
        machines = {A: alice, B: bob}
        alice.start(1000.0)
        bob.start(1000.0)
        now, _ = run(h, machines, 1010.0, 1000.0)
        h.deaf = True
        now, _ = run(h, machines, back, now)
        # The server comes back from a restart that lost every entry (they
        # expired meanwhile); the same secret, so old tokens still check out.
        h.core = ServerCore(ServerConfig(), Tokens(b"k" * 32))
        h.deaf = False
        for addr, machine in machines.items():
            assert registered_at(h, machine, addr, now, back + 10) - back <= 2.0, back
        assert (alice.peer_id, bob.peer_id) == (1, 2)  # the same keys, the same ids


def test_a_list_refused_after_the_server_forgot_us_registers_at_once() -> None:
    h = Harness()
    alice = h.machine("alice")
    alice.start(1000.0)
    now, _ = run(h, {A: alice}, 1001.0, 1000.0)
    h.core = ServerCore(ServerConfig(), Tokens(b"k" * 32))  # restarted, entries gone
    # The next list (every 5 s) gets 401: registered again then, not at the refresh (1021).
    now, events = run(h, {A: alice}, 1005.5, now)
    assert any(isinstance(e, RegistrationLost) for e in events[A])
    assert Registered(1, A, 60) in events[A]
    assert 1 in h.core.directory


def test_any_answer_from_a_silent_server_cuts_the_wait_short() -> None:
    h = Harness()
    h.deaf = True
    alice = h.machine("alice")
    alice.start(1000.0)
    now = 1000.0
    while alice.state is not RegState.BACKING_OFF:
        now = alice.get_timer()
        alice.handle_timer(now)
        alice.datagrams_to_send()
    assert alice._wake_at is not None and alice._wake_at > now + 0.4
    # Anything from the server's address (here a stray Binding answer) says it is back.
    alice.receive(Message(Method.BINDING, MessageClass.SUCCESS, b"x" * 12), now + 0.1)
    assert alice.state is RegState.CHALLENGING
    assert len(alice.datagrams_to_send()) == 1
    assert [alice.next_event(), alice.next_event()] == [ServerSilent(ever_answered=False), ServerAnswered()]


def test_a_refusing_server_is_asked_again_later_and_later() -> None:
    # The server answers, but its registry cannot assign an id (503): that is
    # no outage, and the peers must not hammer it.
    h = Harness()
    alice = h.machine("alice")
    alice.start(1000.0)
    waits, now = [], 1000.0
    while len(waits) < 7:
        for data in alice.datagrams_to_send():
            h.core.receive_datagram(data, A, now)
        for pending in h.core.pending_registrations():
            h.core.fail_registration(pending, now)
        for data, _ in h.core.datagrams_to_send():
            alice.receive(decode(data), now)
        if alice.state is RegState.BACKING_OFF:
            waits.append(alice.get_timer() - now)
            now = alice.get_timer()
            alice.handle_timer(now)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert alice.server_state is ServerState.CONNECTING  # it answers: not "unreachable"


def test_each_unanswered_registration_tries_the_next_address_of_the_name() -> None:
    h = Harness()
    h.deaf = True
    alice = RegistrationMachine(Identity(Ed25519PrivateKey.generate()), servers=(SERVER, OTHER))
    alice.start(1000.0)
    tried = [alice.server]
    now = 1000.0
    while len(tried) < 4:
        now = alice.get_timer()
        alice.handle_timer(now)
        alice.datagrams_to_send()
        if alice.state is RegState.CHALLENGING and alice.server != tried[-1]:
            tried.append(alice.server)
    assert tried == [SERVER, OTHER, SERVER, OTHER]


def test_a_port_mapping_is_registered_at_once_even_while_a_registration_is_under_way() -> None:
    h = Harness()
    machine = h.machine("alice")
    machine.local = (("10.0.0.2", 40000),)
    machine.start(0.0)
    first = machine.datagrams_to_send()  # the first REGISTER, without the mapping
    machine.offer_mapped((("203.0.113.10", 50000),), 0.01)  # granted meanwhile
    for data in first:
        h.core.receive_datagram(data, A, 0.02)
    h.pump({A: machine}, 0.02)
    record = h.core.directory.get(machine.peer_id)  # type: ignore[arg-type]
    assert record is not None and record.local == (("10.0.0.2", 40000), ("203.0.113.10", 50000))
    assert machine.state is RegState.REGISTERED
    machine.offer_mapped((), 5.0)  # the mapping went: registered again without it
    assert machine.state is not RegState.REGISTERED
    h.pump({A: machine}, 5.0)
    assert h.core.directory.get(machine.peer_id).local == (("10.0.0.2", 40000),)  # type: ignore[arg-type, union-attr]
    assert machine.state is RegState.REGISTERED


def test_contacts_that_drop_out_are_unwatched_and_a_server_without_unwatch_is_not_asked_again() -> None:
    h = Harness()
    alice = h.machine("alice")
    alice.watch((7, 8, 9), 1000.0)
    alice.start(1000.0)
    h.pump({A: alice}, 1000.0)
    assert h.core._subscriptions.watched_by(1) == {7, 8, 9} == alice.watched
    # 8 is no longer a contact and 10 is: one WATCH takes 8 out and puts 10 in.
    alice.watch((7, 9, 10), 1001.0)
    h.pump({A: alice}, 1001.0)
    assert h.core._subscriptions.watched_by(1) == {7, 9, 10} == alice.watched
    # A server from before UNWATCH-IDS: 420 (comprehension-required attribute).
    # The peer stops sending it; what that WATCH asked is asked again soon without it.
    newer_watch = h.core._handlers[Method.WATCH]

    def older_watch(message: Message, address: tuple[str, int], now: float, length: int) -> Message | None:
        if message.get(Attr.UNWATCH_IDS) is not None:
            return h.core._error(message, ErrorCode.UNKNOWN_ATTRIBUTE, "Unknown Attribute")
        return newer_watch(message, address, now, length)

    h.core._handlers[Method.WATCH] = older_watch
    alice.watch((7, 11), 1002.0)
    h.pump({A: alice}, 1002.0)
    assert alice.unwatch_supported is False
    alice.handle_timer(1003.0)
    h.pump({A: alice}, 1003.0)
    assert h.core._subscriptions.watched_by(1) == {7, 9, 10, 11}  # the old server's set only grows
    assert alice.watched == {7, 9, 10, 11}
