"""The port mapping retry schedule (webpeer/portmap_retry.py) and when the
node asks the router at all (webpeer/portmapper.py worth_mapping), with
literal times."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from webpeer.node import NodeConfig, PeerNode
from webpeer.portmap_retry import RETRY_FIRST, RETRY_JITTER, RETRY_LONGEST, MappingRetry
from webpeer.portmapper import PortMapper, worth_mapping


def no_jitter() -> float:
    return 0.0


def test_waits_double_from_a_minute_to_half_an_hour() -> None:
    retry = MappingRetry(jitter=no_jitter)
    assert retry.next_at is None and not retry.due(1000.0)
    now = 1000.0
    waits = []
    for _ in range(8):
        at = retry.failed(now)
        waits.append(at - now)
        assert not retry.due(at - 0.001) and retry.due(at)
        retry.started()
        assert retry.next_at is None
        now = at + 25.0  # the search took a while and failed again
    assert waits == [60.0, 120.0, 240.0, 480.0, 960.0, 1800.0, 1800.0, 1800.0]
    assert (RETRY_FIRST, RETRY_LONGEST) == (60.0, 1800.0)


def test_a_mapping_starts_the_doubling_again() -> None:
    retry = MappingRetry(jitter=no_jitter)
    for now in (0.0, 100.0, 300.0):
        retry.failed(now)
        retry.started()
    retry.succeeded()
    assert retry.next_at is None and retry.failures == 0
    assert retry.failed(5000.0) == 5060.0


@pytest.mark.parametrize("jitter", [-RETRY_JITTER, RETRY_JITTER])
def test_each_wait_is_jittered_within_a_tenth(jitter: float) -> None:
    retry = MappingRetry(jitter=lambda: jitter)
    assert retry.failed(0.0) == pytest.approx(60.0 * (1 + jitter))
    retry.started()
    assert retry.failed(100.0) == pytest.approx(100.0 + 120.0 * (1 + jitter))


def test_default_jitter_stays_in_bounds_and_varies() -> None:
    waits = set()
    for _ in range(50):
        at = MappingRetry().failed(0.0)
        assert 54.0 <= at <= 66.0
        waits.add(at)
    assert len(waits) > 1  # peers behind one router do not all ask at once


def test_network_change_cuts_a_wait_short_and_resets_the_doubling() -> None:
    retry = MappingRetry(jitter=no_jitter)
    retry.failed(0.0)
    retry.started()
    assert retry.failed(100.0) == 220.0
    assert retry.network_changed(150.0)
    assert retry.due(150.0) and retry.next_at == 150.0
    retry.started()
    assert retry.failed(160.0) == 220.0  # the first wait again


def test_network_change_while_searching_or_mapped_changes_nothing() -> None:
    retry = MappingRetry(jitter=no_jitter)
    assert not retry.network_changed(10.0)  # the first search runs
    retry.failed(20.0)
    retry.started()
    assert not retry.network_changed(90.0)  # the second search runs
    assert retry.next_at is None and retry.failures == 1
    retry.succeeded()
    assert not retry.network_changed(100.0)  # a mapping is held: it is renewed, not searched for
    assert retry.next_at is None


def test_very_many_failures_stay_at_the_longest_wait() -> None:
    retry = MappingRetry(jitter=no_jitter)
    for _ in range(2000):
        retry.failed(0.0)
    assert retry.failed(0.0) == RETRY_LONGEST


@pytest.mark.parametrize(("first", "longest"), [(0.0, 10.0), (-1.0, 10.0), (20.0, 10.0)])
def test_bad_waits_are_refused(first: float, longest: float) -> None:
    with pytest.raises(ValueError, match="retry waits"):
        MappingRetry(first=first, longest=longest)


@pytest.mark.parametrize(
    "servers",
    [
        [("198.51.100.7", 3478)],
        [("2001:db8::7", 3478)],  # registered over IPv6: IPv4 with peers still wants a mapping
        [("2001:db8::7", 3478), ("198.51.100.7", 3478)],
        [("::ffff:198.51.100.7", 3478)],
        [("fe80::1%eth0", 3478)],
    ],
)
def test_a_server_off_this_host_in_either_family_is_worth_mapping(servers: list[tuple[str, int]]) -> None:
    assert worth_mapping(servers)


@pytest.mark.parametrize(
    "servers",
    [
        [],
        [("127.0.0.1", 3478)],
        [("127.8.9.10", 3478)],
        [("::1", 3478)],
        [("::ffff:127.0.0.1", 3478)],
        [("0.0.0.0", 3478)],
        [("::", 3478)],
        [("2001:db8::7", 3478), ("127.0.0.1", 3478)],  # a fallback on loopback: a test on this host
        [("::1", 3478), ("198.51.100.7", 3478)],
        [("not an address", 3478)],
    ],
)
def test_a_server_on_this_host_is_never_asked_about(servers: list[tuple[str, int]]) -> None:
    assert not worth_mapping(servers)


class RecordingMapper:
    """Stands in for the node's PortMapper: counts network changes."""

    def __init__(self) -> None:
        self.changes = 0

    def network_changed(self) -> None:
        self.changes += 1


def test_node_tells_the_mapper_when_its_public_address_changes(tmp_path: Path) -> None:
    node = PeerNode(NodeConfig(server=("198.51.100.7", 3478), data_dir=tmp_path))
    mapper = RecordingMapper()
    node._port_mapper = cast(PortMapper, mapper)
    registration = node.registration
    node._note_network_change()
    assert mapper.changes == 0  # nothing seen yet
    registration.observed = ("203.0.113.9", 40000)
    node._note_network_change()
    node._note_network_change()
    assert mapper.changes == 1  # the first address: once
    registration.other_family = (("2001:db8::9", 40000),)
    node._note_network_change()
    assert mapper.changes == 2  # the other family's address counts too
    registration.observed = ("203.0.113.9", 40001)  # NAT rebinding: a new port
    node._note_network_change()
    assert mapper.changes == 3
    registration.observed = None  # registration lost: no address, nothing to search for
    node._note_network_change()
    assert mapper.changes == 3
