"""``webpeer --server a,b``: the registration machine against two real server
cores sharing one id table and one secret (one registry), in memory, with
literal times: the first that answers, the next when it goes silent, and
back to the first when it answers again."""

from __future__ import annotations

import itertools

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rendezvous.core import ServerConfig, ServerCore
from rendezvous.stun import Address, decode
from rendezvous.tokens import Tokens
from webpeer.identity import Identity
from webpeer.registration import (
    PRIMARY_RECHECK,
    RegEvent,
    Registered,
    RegistrationLost,
    RegistrationMachine,
    RegState,
)

FIRST = ("198.51.100.1", 3478)
SECOND = ("198.51.100.2", 3478)
PEER = ("203.0.113.10", 40000)
T0 = 1000.0


class TwoServers:
    """Two cores on one registry; a core that is down hears and says nothing."""

    def __init__(self) -> None:
        self.cores = {address: ServerCore(ServerConfig(), Tokens(b"k" * 32)) for address in (FIRST, SECOND)}
        self.down: set[Address] = set()
        self.ids = itertools.count(1)
        self.by_identity: dict[bytes, int] = {}
        self.transaction_ids = itertools.count(1)
        self.machine = RegistrationMachine(
            Identity(Ed25519PrivateKey.generate()),
            servers=(FIRST, SECOND),
            ttl=60,
            list_interval=5,
            random_bytes=self.random_bytes,
        )
        self.machine.use_servers((FIRST, SECOND), ("first:3478", "second:3478"))
        self.events: list[RegEvent] = []

    def random_bytes(self, n: int) -> bytes:
        return next(self.transaction_ids).to_bytes(n, "big") if n > 2 else b"\xff" * n

    def pump(self, now: float) -> None:
        machine = self.machine
        for _ in range(10):
            outgoing = [(data, machine.server) for data in machine.datagrams_to_send()]
            outgoing += machine.probes_to_send()
            moved = False
            for data, server in outgoing:
                if server not in self.down:
                    self.cores[server].receive_datagram(data, PEER, now)
            for server, core in self.cores.items():
                for pending in core.pending_registrations():
                    peer_id = self.by_identity.setdefault(pending.identity, next(self.ids))
                    core.complete_registration(pending, peer_id, None, now)
                for data, _ in core.datagrams_to_send():
                    if server in self.down:
                        continue
                    moved = True
                    if server == machine.server:
                        machine.receive(decode(data), now)
                    else:
                        machine.receive_from_other_server(decode(data), server, now)
            while (event := machine.next_event()) is not None:
                self.events.append(event)
            if not moved and not outgoing:
                break

    def run_until(self, end: float, now: float) -> float:
        """Drive the machine's timers from ``now`` to ``end``."""
        self.pump(now)
        while (timer := self.machine.get_timer()) is not None and timer <= end:
            now = max(now, timer)
            self.machine.handle_timer(now)
            self.pump(now)
        return end

    def registered(self) -> list[Registered]:
        return [e for e in self.events if isinstance(e, Registered)]


def test_registers_with_the_first_that_answers() -> None:
    net = TwoServers()
    net.down.add(FIRST)
    net.machine.start(T0)
    net.run_until(T0 + 20, T0)
    assert net.machine.state is RegState.REGISTERED
    assert net.machine.server == SECOND and net.machine.server_name == "second:3478"
    assert [e.peer_id for e in net.registered()] == [1]


def test_moves_to_the_next_when_its_server_goes_silent_and_keeps_its_id() -> None:
    net = TwoServers()
    net.machine.start(T0)
    now = net.run_until(T0 + 1, T0)
    assert net.machine.server == FIRST and net.registered()[-1].peer_id == 1
    net.down.add(FIRST)
    # The heartbeat (every 5 s) goes unanswered through its retransmissions:
    # well before the next REFRESH would have noticed, it is on the second.
    now = net.run_until(now + 15, now)
    assert net.machine.state is RegState.REGISTERED
    assert net.machine.server == SECOND and net.machine.server_name == "second:3478"
    assert [e.peer_id for e in net.registered()] == [1, 1]
    assert [e.reason for e in net.events if isinstance(e, RegistrationLost)] == ["the server did not answer"]
    assert 1 in net.cores[SECOND].directory


def test_comes_back_to_the_first_when_it_answers_again() -> None:
    net = TwoServers()
    net.machine.start(T0)
    now = net.run_until(T0 + 1, T0)
    net.down.add(FIRST)
    now = net.run_until(now + 15, now)
    assert net.machine.server == SECOND
    switched = now
    # Still down at the first probe: it stays where it is.
    now = net.run_until(switched + PRIMARY_RECHECK + 1, now)
    assert net.machine.server == SECOND and net.machine.state is RegState.REGISTERED
    net.down.discard(FIRST)
    now = net.run_until(switched + 2 * PRIMARY_RECHECK + 1, now)
    assert net.machine.server == FIRST and net.machine.state is RegState.REGISTERED
    assert net.machine.server_name == "first:3478"
    assert [e.peer_id for e in net.registered()] == [1, 1, 1]
    assert RegistrationLost("the first server is back") in net.events
    # Back on the first, it probes no more.
    assert net.machine._next_probe is None
    net.run_until(now + 3 * PRIMARY_RECHECK, now)
    assert net.machine.probes_to_send() == []
    assert net.machine.server == FIRST


def test_with_both_silent_it_keeps_trying_them_in_turn() -> None:
    net = TwoServers()
    net.down.update((FIRST, SECOND))
    net.machine.start(T0)
    tried: list[Address] = [net.machine.server]
    now = T0
    while len(tried) < 4:
        timer = net.machine.get_timer()
        assert timer is not None and timer < T0 + 120
        now = timer
        net.machine.handle_timer(now)
        net.pump(now)
        if net.machine.server != tried[-1]:
            tried.append(net.machine.server)
    assert tried == [FIRST, SECOND, FIRST, SECOND]
    assert net.registered() == []
    net.down.clear()
    net.run_until(now + 15, now)
    assert net.machine.state is RegState.REGISTERED
