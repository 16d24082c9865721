"""The peer's registration machine against the real server core, in memory, with literal times."""

from __future__ import annotations

import itertools

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rendezvous.core import ServerConfig, ServerCore
from rendezvous.stun import decode
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

    def machine(self, name: str) -> RegistrationMachine:
        return RegistrationMachine(Identity(Ed25519PrivateKey.generate()), nickname=name, ttl=60, list_interval=5)

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
    assert alice.get_timer() == 1000.0  # lists right away
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
