"""Happy Eyeballs at registration (RFC 8305): the registration machine against
two real server cores on one registry, one per family of one server name, in
memory, with literal times and a literal round trip per family."""

from __future__ import annotations

import itertools

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rendezvous.core import ServerConfig, ServerCore
from rendezvous.stun import Address, Attr, Message, Method, decode
from rendezvous.tokens import Tokens
from webpeer.identity import Identity
from webpeer.registration import (
    CONNECTION_ATTEMPT_DELAY,
    RegEvent,
    Registered,
    RegistrationLost,
    RegistrationMachine,
    RegState,
)

V6 = ("2001:db8::1", 3478)
V4 = ("198.51.100.1", 3478)
OTHER_V4 = ("198.51.100.2", 3478)
PEER = {6: ("2001:db8:1::10", 40000), 4: ("203.0.113.10", 40000)}
T0 = 1000.0
RTT = 0.04


def family(address: Address) -> int:
    return 6 if ":" in address[0] else 4


class Net:
    """Server cores on one registry; each address has a round trip (None:
    silent, it hears and says nothing); answers arrive a round trip after
    the request left."""

    def __init__(self, servers: tuple[Address, ...], names: tuple[str, ...] = ()) -> None:
        self.cores = {address: ServerCore(ServerConfig(), Tokens(b"k" * 32)) for address in servers}
        self.rtt: dict[Address, float | None] = dict.fromkeys(servers, RTT)
        self.ids = itertools.count(1)
        self.by_identity: dict[bytes, int] = {}
        self.transaction_ids = itertools.count(1)
        self.machine = RegistrationMachine(
            Identity(Ed25519PrivateKey.generate()), ttl=60, list_interval=5, random_bytes=self.random_bytes
        )
        self.machine.use_servers(servers, names)
        self.in_flight: list[tuple[float, Address, bytes]] = []  # answers on their way back
        self.sent: list[tuple[float, Address, Message]] = []
        self.events: list[RegEvent] = []
        self.registered_at: float | None = None

    def random_bytes(self, n: int) -> bytes:
        return next(self.transaction_ids).to_bytes(n, "big") if n > 2 else b"\xff" * n

    def _send_out(self, now: float) -> None:
        machine = self.machine
        outgoing = [(data, machine.server) for data in machine.datagrams_to_send()] + machine.probes_to_send()
        for data, server in outgoing:
            self.sent.append((now, server, decode(data)))
            rtt = self.rtt[server]
            if rtt is None:
                continue
            core = self.cores[server]
            core.receive_datagram(data, PEER[family(server)], now)
            for pending in core.pending_registrations():
                peer_id = self.by_identity.setdefault(pending.identity, next(self.ids))
                core.complete_registration(pending, peer_id, None, now)
            self.in_flight += [(now + rtt, server, answer) for answer, _ in core.datagrams_to_send()]

    def _collect(self, now: float) -> None:
        while (event := self.machine.next_event()) is not None:
            self.events.append(event)
            if isinstance(event, Registered) and self.registered_at is None:
                self.registered_at = now

    def run_until(self, end: float, now: float = T0) -> float:
        machine = self.machine
        self._send_out(now)
        while True:
            due = [t for t, _, _ in self.in_flight]
            timer = machine.get_timer()
            if timer is not None:
                due.append(timer)
            if not due or min(due) > end:
                return end
            now = max(now, min(due))
            if timer is not None and timer <= now:
                machine.handle_timer(now)
            arriving = [item for item in self.in_flight if item[0] <= now]
            self.in_flight = [item for item in self.in_flight if item[0] > now]
            for _, server, data in arriving:
                if server == machine.server:
                    machine.receive(decode(data), now)
                else:
                    machine.receive_from_other_server(decode(data), server, now)
            self._collect(now)
            self._send_out(now)

    def registers_to(self, server: Address) -> list[float]:
        return [when for when, to, message in self.sent if to == server and message.method == Method.REGISTER]

    def signed_registers_to(self, server: Address) -> int:
        return sum(
            1
            for _, to, message in self.sent
            if to == server and message.method == Method.REGISTER and message.get(Attr.SIGNATURE) is not None
        )

    def registered(self) -> list[Registered]:
        return [e for e in self.events if isinstance(e, Registered)]


def test_a_silent_ipv6_address_costs_the_attempt_delay_and_a_round_trip_not_a_fail_over() -> None:
    net = Net((V6, V4))
    net.rtt[V6] = None
    net.machine.start(T0)
    net.run_until(T0 + 10)
    assert net.machine.state is RegState.REGISTERED
    assert net.machine.server == V4
    assert net.registers_to(V4)[0] == T0 + CONNECTION_ATTEMPT_DELAY
    # Challenge and signed REGISTER: two round trips after the IPv4 attempt began.
    assert net.registered_at == pytest.approx(T0 + CONNECTION_ATTEMPT_DELAY + 2 * RTT)
    assert [e.peer_id for e in net.registered()] == [1]
    assert net.cores[V4].directory.get(1) is not None


def test_an_ipv6_answer_inside_the_delay_sends_nothing_over_ipv4_and_registers_over_ipv6() -> None:
    net = Net((V6, V4))
    net.machine.start(T0)
    net.run_until(T0 + 10)
    assert net.machine.server == V6 and net.machine.state is RegState.REGISTERED
    assert net.registered_at == pytest.approx(T0 + 2 * RTT)
    assert net.registers_to(V4) == []
    # (Registered again with the IPv4 address the Binding brought: still over IPv6.)
    assert [e.observed for e in net.registered()] == [PEER[6], PEER[6]]
    assert net.machine.registered_local == (PEER[4],)


def test_a_slow_first_family_still_wins_if_it_answers_first() -> None:
    net = Net((V6, V4))
    net.rtt[V6] = 0.3  # answers 50 ms after the IPv4 attempt began, before the IPv4 answer
    net.rtt[V4] = 0.2
    net.machine.start(T0)
    net.run_until(T0 + 10)
    assert net.registers_to(V4)[0] == T0 + CONNECTION_ATTEMPT_DELAY
    assert net.machine.server == V6 and net.machine.state is RegState.REGISTERED
    # The IPv4 challenge came later and was ignored: nothing signed went there.
    assert net.signed_registers_to(V4) == 0
    assert net.machine.late_race_answers >= 1
    assert [e.peer_id for e in net.registered()] == [1]


def test_registering_again_with_a_server_that_answers_slowly_races_nothing() -> None:
    net = Net((V6, V4))
    net.rtt[V6] = 0.3  # slower than the attempt delay, but it answers, and first
    net.rtt[V4] = 0.2
    net.machine.start(T0)
    now = net.run_until(T0 + 10)
    assert net.machine.server == V6 and net.machine.state is RegState.REGISTERED
    before = len(net.registers_to(V4))
    mapped = ("203.0.113.10", 40001)
    net.machine.offer_mapped((mapped,), now)  # a new REGISTER, to the server that answers
    net.run_until(now + 10, now)
    assert len(net.registers_to(V4)) == before
    assert net.machine.server == V6 and net.machine.state is RegState.REGISTERED
    assert mapped in net.machine.registered_local


def test_a_late_answer_of_the_loser_changes_nothing() -> None:
    net = Net((V6, V4))
    net.rtt[V6] = 0.6  # answers long after the IPv4 attempt has won
    net.machine.start(T0)
    net.run_until(T0 + 10)
    assert net.machine.server == V4 and net.machine.state is RegState.REGISTERED
    assert net.machine.late_race_answers >= 1
    assert net.signed_registers_to(V6) == 0  # only the first, unsigned REGISTER went there
    # Registered once, and once more when the Binding to IPv6 (slow, not
    # silent) brought our IPv6 address: both over IPv4, nothing lost.
    assert [e.peer_id for e in net.registered()] == [1, 1]
    assert net.machine.registered_local == (PEER[6],)
    assert not [e for e in net.events if isinstance(e, RegistrationLost)]


def test_the_other_family_binding_still_happens_whichever_family_wins() -> None:
    for silent, winner, learned in ((V6, V4, ()), (None, V6, (PEER[4],))):
        net = Net((V6, V4))
        if silent is not None:
            net.rtt[silent] = None
        net.machine.start(T0)
        net.run_until(T0 + 10)
        assert net.machine.server == winner
        loser = V4 if winner == V6 else V6
        bindings = [when for when, to, message in net.sent if to == loser and message.method == Method.BINDING]
        assert bindings, f"no Binding to {loser}"
        # What the Binding learned is offered (nothing from a silent family).
        assert net.machine.other_family == learned
        assert net.machine.registered_local == learned


def test_ipv6_after_ipv4_won_answers_the_binding_and_its_address_is_registered() -> None:
    net = Net((V6, V4))
    net.rtt[V6] = 0.6  # slow, not silent: the IPv4 attempt wins, the Binding to IPv6 answers
    net.machine.start(T0)
    net.run_until(T0 + 10)
    assert net.machine.server == V4
    assert net.machine.other_family == (PEER[6],)
    assert net.machine.registered_local == (PEER[6],)
    assert net.machine._next_probe is None  # the first server's other family: no coming back to it


def test_an_immediate_send_error_starts_the_other_family_at_once() -> None:
    net = Net((V6, V4))
    net.rtt[V6] = None
    net.machine.start(T0)
    net.machine.datagrams_to_send()  # the node's send of it failed
    net.machine.send_failed(V6, T0)
    assert net.machine.races_started_by_send_error == 1
    net.machine.send_failed(V6, T0)  # its retransmissions fail too: still one race
    net.run_until(T0 + 10)
    assert net.machine.races_started_by_send_error == 1
    assert net.registers_to(V4)[0] == T0
    assert net.machine.server == V4 and net.registered_at == pytest.approx(T0 + 2 * RTT)


def test_separate_servers_are_fail_over_servers_not_raced() -> None:
    net = Net((V6, OTHER_V4), ("[2001:db8::1]:3478", "198.51.100.2:3478"))
    net.rtt[V6] = None
    net.machine.start(T0)
    net.run_until(T0 + 3)
    assert net.registers_to(OTHER_V4) == []
    net.run_until(T0 + 10, T0 + 3)
    # The old fail-over: after the first server's REGISTER timed out.
    assert net.machine.server == OTHER_V4 and net.machine.state is RegState.REGISTERED
    assert net.registers_to(OTHER_V4)[0] > T0 + 4


def test_both_silent_falls_over_as_before_and_registers_when_one_returns() -> None:
    net = Net((V6, V4))
    net.rtt[V6] = None
    net.rtt[V4] = None
    net.machine.start(T0)
    now = net.run_until(T0 + 12)
    assert net.registered() == []
    net.rtt[V4] = RTT
    net.run_until(T0 + 30, now)
    assert net.machine.server == V4 and net.machine.state is RegState.REGISTERED


def test_the_other_family_bindings_answer_from_the_racing_address_is_still_heard() -> None:
    net = Net((V4, V6))
    net.rtt[V4] = None
    net.rtt[V6] = 0.3  # the Binding sent with the first REGISTER answers after the race began
    net.machine.start(T0)
    now = net.run_until(T0 + 0.29)  # the race began at 0.25
    assert net.machine.other_family == ()
    now = net.run_until(T0 + 0.31, now)
    assert net.machine.state is RegState.CHALLENGING  # the race is on, the Binding's answer is in
    assert net.machine.other_family == (PEER[6],)
    net.run_until(T0 + 10, now)
    assert net.machine.server == V6 and net.machine.state is RegState.REGISTERED
