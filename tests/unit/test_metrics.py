"""The metrics the rendezvous serves (rendezvous/metrics.py): the core's
counters as families, read back with prometheus_client's own text parser,
and the replies family counted by a real core (literal times, no sockets)."""

from __future__ import annotations

import asyncio
import math
import os
import random
from collections import Counter

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_core import ALICE, BOB, CAROL, T0, Harness, binding, key

from rendezvous.directory import Directory
from rendezvous.metrics import LoopLagMonitor, RedisMetrics, replies, server_families
from rendezvous.registry import PeerRecord, legacy_identity
from rendezvous.stun import Attr, Message, MessageClass, Method, encode


def parsed(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted labels: value}, through prometheus_client's parser
    (which raises on anything that is not valid text format)."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def rendered(stats: Counter[str], **kwargs: object) -> str:
    registry = CollectorRegistry(auto_describe=False)

    class Fixed:
        def collect(self) -> object:
            return server_families(
                stats,
                peers_online=int(kwargs.get("peers_online", 3)),  # type: ignore[call-overload]
                peers_listed=int(kwargs.get("peers_listed", 5)),  # type: ignore[call-overload]
                rates={"refresh": 12.5},
            )

    registry.register(Fixed())  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_each_counter_lands_in_its_family() -> None:
    stats = Counter(
        {
            "binding": 100,
            "binding_generic": 10,
            "refresh": 40,
            "refresh_generic": 4,
            "replied: binding success": 9,
            "replied: binding 420": 1,
            "replied: refresh 401": 4,
            "registered": 6,
            "relayed_packets": 9,
            "relayed_bytes": 900,
            "relay_forwarded": 4,
            "dropped": 1,
            "dropped: SEND to unknown peer": 1,
            "error 401": 4,
            "mirrored": 3,
        }
    )
    got = parsed(rendered(stats))
    assert got["peerlink_requests_total"][(("method", "binding"),)] == 100
    assert got["peerlink_requests_total"][(("method", "connect"),)] == 0
    assert got["peerlink_requests_per_second"][(("method", "refresh"),)] == 12.5
    # 90 fast Bindings and 9 generic ones answered with success; 36 fast REFRESHes.
    assert got["peerlink_replies_total"][(("method", "binding"), ("result", "success"))] == 99
    assert got["peerlink_replies_total"][(("method", "binding"), ("result", "420"))] == 1
    assert got["peerlink_replies_total"][(("method", "refresh"), ("result", "success"))] == 36
    assert got["peerlink_replies_total"][(("method", "refresh"), ("result", "401"))] == 4
    assert got["peerlink_error_replies_total"][(("code", "401"),)] == 4
    assert got["peerlink_registrations_total"][()] == 6
    assert got["peerlink_relay_packets_total"][()] == 9
    assert got["peerlink_relay_bytes_total"][()] == 900
    assert got["peerlink_relay_forwarded_total"][()] == 4
    assert got["peerlink_relay_from_instances_total"][()] == 0
    assert got["peerlink_peers_online"][()] == 3
    assert got["peerlink_peers_listed"][()] == 5
    assert got["peerlink_drops_total"][(("reason", "SEND to unknown peer"),)] == 1
    # Counted once: the other counters only under server_events_total.
    events = {dict(labels)["name"] for labels in got["peerlink_server_events_total"]}
    assert events == {"mirrored"}


def test_any_reason_text_survives_the_text_format() -> None:
    reason = 'bad "quote" \\ and\nnewline'
    got = parsed(rendered(Counter({"dropped: " + reason: 2, "error 401": 1})))
    assert got["peerlink_drops_total"][(("reason", reason),)] == 2


def test_replies_come_from_a_real_core_by_method_and_result() -> None:
    h = Harness()
    h.register(key(1), ALICE, T0)  # a 401 challenge, then success
    h.ask(binding(), BOB, T0)  # the fast path
    h.ask(binding().add(Attr.CHANGE_REQUEST, 4), BOB, T0)  # no second address here: 420
    h.request(Method.REFRESH, ALICE, T0 + 1)  # the fast path
    h.request(Method.REFRESH, ALICE, T0 + 2, (Attr.TTL, 100))  # the fast path too
    h.ask(Message(Method.REFRESH, MessageClass.REQUEST, os.urandom(12)), CAROL, T0)  # no SESSION: 401
    h.request(Method.LIST, ALICE, T0 + 3)
    # A datagram that is not STUN gets no reply at all.
    h.feed(b"\x00" + encode(binding())[1:5], BOB, T0)
    assert replies(h.core.stats) == {
        ("register", "401"): 1,
        ("register", "success"): 1,
        ("binding", "success"): 1,
        ("binding", "420"): 1,
        ("refresh", "success"): 2,
        ("refresh", "401"): 1,
        ("list", "success"): 1,
    }


def test_peers_online_is_kept_as_peers_come_go_and_move_between_instances() -> None:
    """The count the metrics read (no walk) equals the walk, whatever happens."""
    directory = Directory()
    rng = random.Random(7)
    for step in range(3000):
        peer_id = rng.randrange(1, 60)
        action = rng.random()
        legacy = peer_id > 50
        address = (f"192.0.2.{rng.randrange(1, 4)}", 1000 + peer_id)
        identity = legacy_identity(address) if legacy else bytes([peer_id]) * 32
        if action < 0.5:
            home = "" if legacy or rng.random() < 0.6 else "other:3478"
            directory.put(PeerRecord(peer_id, identity, "", address, (), 0.0, step, step + 30.0, step, home=home))
        elif action < 0.7 and (record := directory.get(peer_id)) is not None:
            record.home = ""  # registered here again, in place (as the core does), then put back
            directory.put(record)
        elif action < 0.9:
            directory.remove(peer_id, float(step))
        else:
            directory.expire(float(step))
        walked = sum(1 for record in directory._by_id.values() if not record.home)
        assert directory.local_count() == walked, step


def test_redis_metrics_are_a_histogram_a_counter_and_a_gauge() -> None:
    registry = CollectorRegistry(auto_describe=False)
    redis = RedisMetrics(registry)
    redis.connected(True)
    redis.command("save", 0.0003)
    redis.command("save", 0.002)
    redis.failed("assign", ConnectionError("gone"))
    redis.connected(False)
    got = parsed(generate_latest(registry).decode())
    assert got["peerlink_redis_command_duration_seconds_count"][(("op", "save"),)] == 2
    assert got["peerlink_redis_command_duration_seconds_bucket"][(("le", "0.0005"), ("op", "save"))] == 1
    assert got["peerlink_redis_errors_total"][(("kind", "ConnectionError"), ("op", "assign"))] == 1
    assert got["peerlink_redis_connected"][()] == 0


async def test_the_loop_lag_monitor_sees_a_stall() -> None:
    registry = CollectorRegistry(auto_describe=False)
    monitor = LoopLagMonitor(registry, every=0.01)
    monitor.start()
    try:
        # A synchronous stall past the timer's due time (the kind a big flush makes).
        stall_until = asyncio.get_running_loop().time() + 0.2
        while asyncio.get_running_loop().time() < stall_until:
            pass
        deadline = asyncio.get_running_loop().time() + 20
        while registry.get_sample_value("peerlink_event_loop_lag_seconds_count") in (None, 0.0):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
    finally:
        monitor.stop()
    # The first tick came after the whole stall, so one sample lies past 0.1 s
    # (later ticks, on time or not, may have added others: not counted on).
    below = registry.get_sample_value("peerlink_event_loop_lag_seconds_bucket", {"le": "0.1"})
    total = registry.get_sample_value("peerlink_event_loop_lag_seconds_count")
    assert below is not None and total is not None and below < total
    last = registry.get_sample_value("peerlink_event_loop_lag_last_seconds")
    assert last is not None and math.isfinite(last) and last >= 0
