"""LegacyTextHandler on its own, through a fake of its narrow context (no ServerCore), with literal times.

The protocol's behaviour end to end is in test_core.py and
tests/integration/test_legacy_text.py; this shows the handler needs only
what LegacyContext gives it.
"""

from __future__ import annotations

from collections import Counter

from rendezvous.directory import Directory
from rendezvous.events import Dropped, Event, PendingRegistration, RequestReceived, ServerConfig
from rendezvous.legacy_handling import LegacyTextHandler
from rendezvous.registry import PeerRecord, legacy_identity
from rendezvous.stun import Address

T0 = 1000.0
ONE: Address = ("192.0.2.1", 4001)
TWO: Address = ("192.0.2.2", 4002)


class FakeCore:
    """Records what the handler asks of the core; budgets switched by hand."""

    def __init__(self) -> None:
        self.config = ServerConfig(legacy_text=True)
        self.directory = Directory()
        self.stats: Counter[str] = Counter()
        self.sent: list[tuple[bytes, Address]] = []
        self.events: list[Event] = []
        self.registrations: list[PendingRegistration] = []
        self.register_allowed = True
        self.request_allowed = True

    def send(self, data: bytes, address: Address) -> None:
        self.sent.append((data, address))

    def report(self, event: Event) -> None:
        self.events.append(event)

    def drop(self, reason: str, address: Address) -> None:
        self.events.append(Dropped(reason, address))

    def queue_registration(self, pending: PendingRegistration) -> None:
        self.registrations.append(pending)

    def allow_register(self, address: Address, now: float) -> bool:
        return self.register_allowed

    def allow_request(self, peer_id: int, now: float) -> bool:
        return self.request_allowed

    def online(self, peer_id: int, address: Address) -> None:
        self.directory.put(PeerRecord(peer_id, legacy_identity(address), "", address, (), T0, T0, T0 + 60, T0))


def test_register_is_handed_to_the_core_and_acknowledged_once_the_id_is_known() -> None:
    core = FakeCore()
    handler = LegacyTextHandler(core)
    handler.receive(b"REGISTER", ONE, T0)
    (pending,) = core.registrations
    assert (pending.identity, pending.address, pending.request) == (legacy_identity(ONE), ONE, None)
    assert core.events == [RequestReceived("REGISTER", ONE)]
    handler.registered(pending, 5)
    handler.registration_failed(pending)
    assert core.sent == [(b"REGISTER_ACK:5", ONE), (b"ERROR:try again later", ONE)]


def test_register_over_the_shared_budget_is_refused() -> None:
    core = FakeCore()
    core.register_allowed = False
    LegacyTextHandler(core).receive(b"REGISTER", ONE, T0)
    assert core.registrations == []
    assert core.sent == [(b"ERROR:rate limited", ONE)]


def test_list_and_connect_answer_registered_addresses_only() -> None:
    core = FakeCore()
    handler = LegacyTextHandler(core)
    handler.receive(b"LIST    ", ONE, T0)  # 8 bytes: the 20-byte error stays within 3x
    assert core.sent == [(b"ERROR:register first", ONE)]
    core.sent.clear()
    core.online(1, ONE)
    core.online(2, TWO)
    handler.receive(b"LIST", ONE, T0 + 1)
    handler.receive(b"CONNECT:2", ONE, T0 + 2)
    assert core.sent == [(b"LIST_ACK:2,('192.0.2.2', 4002)", ONE), (b"CONNECT_ACK:192.0.2.2:4002", ONE)]
    # Any request counts as a refresh.
    record = core.directory.get(1)
    assert record is not None and record.expires_at == T0 + 2 + core.config.default_ttl
    assert core.stats["legacy_requests"] == 3


def test_over_the_shared_request_budget_is_dropped() -> None:
    core = FakeCore()
    core.online(1, ONE)
    core.request_allowed = False
    LegacyTextHandler(core).receive(b"LIST", ONE, T0)
    assert core.sent == []
    assert Dropped("legacy rate limited", ONE) in core.events


def test_an_error_reply_that_would_amplify_is_dropped() -> None:
    core = FakeCore()
    handler = LegacyTextHandler(core)
    handler.receive(b"Q", ONE, T0)  # "ERROR:unknown command 'Q'" is far more than 3 bytes
    assert core.sent == []
    assert Dropped("legacy reply would amplify", ONE) in core.events
    assert core.stats["legacy_errors"] == 1


def test_register_replies_stay_within_3x_of_the_request() -> None:
    core = FakeCore()
    handler = LegacyTextHandler(core)
    handler.receive(b"REGISTER", ONE, T0)
    (pending,) = core.registrations
    handler.registered(pending, 4_294_967_295)  # the longest REGISTER_ACK: 23 bytes for 8
    assert core.sent == [(b"REGISTER_ACK:4294967295", ONE)]
    # A spoofed REGISTER names someone else's address: nothing in answer to
    # it, whatever happens next, is over 3x its size.
    for data, address in core.sent:
        assert len(data) <= 3 * len(b"REGISTER"), (data, address)


def test_legacy_ids_are_capped_per_ip() -> None:
    core = FakeCore()
    handler = LegacyTextHandler(core)
    cap = core.config.legacy_ids_per_ip
    # Being assigned counts as much as online: a burst cannot overshoot.
    for port in range(cap):
        handler.receive(b"REGISTER", ("192.0.2.1", 5000 + port), T0)
    handler.receive(b"REGISTER", ("192.0.2.1", 6000), T0)
    assert len(core.registrations) == cap
    assert core.sent == [(b"ERROR:ip limit", ("192.0.2.1", 6000))]
    assert core.stats["legacy_ip_cap"] == 1
    # Another IP is not affected.
    handler.receive(b"REGISTER", TWO, T0)
    assert len(core.registrations) == cap + 1
    # Once assigned they are online; when one goes offline (EXIT or expiry),
    # its place is free again.
    for peer_id, pending in enumerate(core.registrations[:cap], start=10):
        core.directory.put(PeerRecord(peer_id, pending.identity, "", pending.address, (), T0, T0, T0 + 60, T0))
        handler.registered(pending, peer_id)
    assert core.directory.legacy_count_at("192.0.2.1") == cap
    handler.receive(b"REGISTER", ("192.0.2.1", 6001), T0 + 1)
    assert len(core.registrations) == cap + 1
    core.directory.expire(T0 + 61)
    assert core.directory.legacy_count_at("192.0.2.1") == 0
    handler.receive(b"REGISTER", ("192.0.2.1", 6001), T0 + 62)
    assert len(core.registrations) == cap + 2
    # A registered address registering again is not a new id.
    core.directory.put(PeerRecord(20, legacy_identity(ONE), "", ONE, (), T0, T0, T0 + 200, T0))
    for _ in range(cap + 1):
        handler.receive(b"REGISTER", ONE, T0 + 63)
    assert len(core.registrations) == cap + 2 + cap + 1
