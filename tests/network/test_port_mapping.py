"""Router port mapping in the NAT lab: miniupnpd (NAT-PMP and PCP, or UPnP
IGD alone) on both site routers, two webpeers behind symmetric NATs, which
without a mapping end relayed (tests/network/test_nat_traversal.py).  Each
peer gets a mapping from its router, the pair goes direct through a mapped
port, and after a peer exits its mapping is gone from the router's rules.
A peer registered over IPv6 still gets its IPv4 mapping.  Every process
runs inside a lab namespace."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from netlab import Lab, NatType, unavailable_reason
from netlab.lab import LabError, tool
from test_nat_traversal import Peer, start_port_mapping, start_rendezvous

pytestmark = [pytest.mark.network]


@pytest.fixture(autouse=True)
def _need_lab() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    try:
        tool("miniupnpd")
    except LabError as error:
        pytest.fail(str(error))  # the installer's fault: scripts/system-deps.sh installs it


def wait_until(condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def mapped_rules(lab: Lab, site) -> str:
    """miniupnpd's DNAT rules on ``site``'s router (its prerouting chain)."""
    table = lab.nft_list(site.router, "inet filter")
    start = table.index("chain prerouting_miniupnpd")
    return table[start : table.index("}", start)]


def mapped_and_registered(peer: Peer) -> dict:
    # A new mapping sends a new REGISTER at once (registered turns false
    # until it is answered): registered with a mapping means the server has
    # the mapped address among the peer's candidates.
    # (60 s: on a loaded 2-core machine a webpeer's start-up alone has taken 20 s.)
    return peer.wait(lambda: (m := peer.api("me")) and m["port_mapping"] and m["registered"] and m, 60, "mapped")


# What the routers speak, and what the peers then use: miniupnpd's PCP (no
# fallback to NAT-PMP), or UPnP IGD alone (port 5351 closed: the peers fall
# back to it at once and map their ports with AddPortMapping).
@pytest.mark.parametrize("protocol", ["pcp", "upnp"])
def test_two_symmetric_nats_go_direct_through_router_port_mappings(tmp_path: Path, protocol: str) -> None:
    with Lab() as lab:
        site_a, site_b = lab.site("a", NatType.SYMMETRIC), lab.site("b", NatType.SYMMETRIC)
        server = start_rendezvous(lab, tmp_path)
        start_port_mapping(lab, tmp_path, server, upnp=protocol == "upnp")
        alice = Peer(lab, site_a, "alice", tmp_path / "alice", server)
        bob = Peer(lab, site_b, "bob", tmp_path / "bob", server)

        me_a, me_b = mapped_and_registered(alice), mapped_and_registered(bob)
        assert me_a["port_mapping"]["protocol"] == protocol, me_a
        assert me_b["port_mapping"]["protocol"] == protocol, me_b
        mapped_a, mapped_b = me_a["port_mapping"]["external"], me_b["port_mapping"]["external"]
        assert mapped_a.split(":")[0] == site_a.public_address
        assert mapped_b.split(":")[0] == site_b.public_address
        port_a = mapped_a.split(":")[1]
        assert f"dport {port_a}" in mapped_rules(lab, site_a)

        # Without the mappings this pair ends relayed (test_nat_traversal.py).
        sent = alice.api("send-wait", str(me_b["id"]), f"through the {protocol}-mapped ports")
        # Direct to bob's public address: his mapped port, or the port his NAT
        # opened when his checks reached alice's mapped one (whichever of the
        # two QUIC settled on first).
        assert sent["connection"]["state"] == "direct", sent
        assert sent["connection"]["address"].split(":")[0] == site_b.public_address, sent
        at_bob = next(p for p in bob.api("peers") if p["id"] == me_a["id"])["connection"]
        assert at_bob["state"] == "direct", at_bob

        # A clean exit deletes the mapping at the router (its delete was sent
        # before it exited; the router may act on it a little later).
        alice.process.send_signal(signal.SIGTERM)
        assert alice.process.wait(timeout=20) == 0
        wait_until(lambda: f"dport {port_a}" not in mapped_rules(lab, site_a), "alice's mapping deleted")


def test_a_peer_registered_over_ipv6_still_gets_an_ipv4_mapping(tmp_path: Path) -> None:
    # Given the server's IPv6 address only, the peer registers over IPv6,
    # yet talks IPv4 with peers: its IPv4 router is asked all the same.
    with Lab(ipv6=True) as lab:
        site_a = lab.site("a", NatType.SYMMETRIC)
        server4, server6 = start_rendezvous(lab, tmp_path, ipv6=True).split(",")
        start_port_mapping(lab, tmp_path, server4)
        alice = Peer(lab, site_a, "alice", tmp_path / "alice", server6)
        me = mapped_and_registered(alice)
        assert me["server_address"] == server6, me
        assert me["port_mapping"]["protocol"] in ("pcp", "nat-pmp"), me
        mapped = me["port_mapping"]["external"]
        assert mapped.split(":")[0] == site_a.public_address, me
        assert f"dport {mapped.split(':')[1]}" in mapped_rules(lab, site_a)
