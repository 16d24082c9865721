"""The Prometheus text the rendezvous serves (rendezvous/metrics.py), from a given counter."""

from __future__ import annotations

import re
from collections import Counter

from rendezvous.metrics import render

SAMPLE = re.compile(r'^peerlink_[a-z_]+(\{[a-z]+="(?:[^"\\\n]|\\\\|\\"|\\n)*"\})? -?[0-9.e+-]+$')


def rendered(stats: Counter[str]) -> str:
    return render(stats, peers_online=3, peers_listed=5, rates={"refresh": 12.5}, loop_lag=0.002)


def test_every_line_is_a_comment_or_a_well_formed_sample() -> None:
    stats = Counter({"binding": 7, "dropped": 2, 'dropped: bad "quote" \\ and\nnewline': 2, "error 401": 4})
    text = rendered(stats)
    assert text.endswith("\n")
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or SAMPLE.match(line), line
    assert 'peerlink_drops_total{reason="bad \\"quote\\" \\\\ and\\nnewline"} 2' in text.splitlines()


def test_each_counter_lands_in_its_family() -> None:
    stats = Counter(
        {
            "binding": 100,
            "refresh": 40,
            "registered": 6,
            "relayed_packets": 9,
            "relayed_bytes": 900,
            "relay_forwarded": 4,
            "dropped": 1,
            "dropped: SEND to unknown peer": 1,
            "error 401": 2,
            "mirrored": 3,
        }
    )
    lines = set(rendered(stats).splitlines())
    for expected in [
        'peerlink_requests_total{method="binding"} 100',
        'peerlink_requests_total{method="refresh"} 40',
        'peerlink_requests_total{method="connect"} 0',
        'peerlink_requests_per_second{method="refresh"} 12.5',
        'peerlink_requests_per_second{method="list"} 0',
        "peerlink_registrations_total 6",
        "peerlink_relay_packets_total 9",
        "peerlink_relay_bytes_total 900",
        "peerlink_relay_forwarded_total 4",
        "peerlink_relay_from_instances_total 0",
        "peerlink_peers_online 3",
        "peerlink_peers_listed 5",
        'peerlink_drops_total{reason="SEND to unknown peer"} 1',
        'peerlink_error_replies_total{code="401"} 2',
        "peerlink_event_loop_lag_seconds 0.002",
        'peerlink_server_events_total{name="mirrored"} 3',
        "# TYPE peerlink_requests_total counter",
        "# TYPE peerlink_peers_online gauge",
    ]:
        assert expected in lines, expected
    # Counted once: not again among the other events.
    assert not [line for line in lines if 'name="binding"' in line or 'name="dropped' in line]
