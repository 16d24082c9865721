"""The port-mapping client (webpeer/portmap.py): PCP, NAT-PMP, renewal,
deletion and hostile answers, driven with literal times."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from webpeer.portmap import (
    NATPMP_OP_ADDRESS,
    NATPMP_OP_MAP_UDP,
    PCP_TRIES,
    Phase,
    PortMapClient,
    PortMapError,
    PortMapLost,
    PortMapped,
    PortMapUnavailable,
    decode_natpmp_response,
    decode_pcp_response,
    encode_pcp_map,
)

GATEWAY = ("192.168.1.1", 5351)
NONCE = bytes(range(12))
PORT = 40000


def client(lifetime: int = 7200) -> PortMapClient:
    return PortMapClient(
        "192.168.1.1", "192.168.1.20", PORT, lifetime=lifetime, random_bytes=lambda n: NONCE[:n], jitter=lambda: 0.0
    )


def v6(host: str) -> bytes:
    return ipaddress.IPv6Address(f"::ffff:{host}").packed


def pcp_reply(
    *,
    result: int = 0,
    lifetime: int = 7200,
    epoch: int = 100,
    nonce: bytes = NONCE,
    protocol: int = 17,
    internal: int = PORT,
    external: tuple[str, int] = ("203.0.113.5", 50000),
    opcode: int = 0x81,
    version: int = 2,
) -> bytes:
    header = struct.pack("!BBxBII12x", version, opcode, result, lifetime, epoch)
    return header + struct.pack("!12sB3xHH16s", nonce, protocol, internal, external[1], v6(external[0]))


def natpmp_map_reply(
    *, result: int = 0, epoch: int = 100, internal: int = PORT, external: int = 50001, lifetime: int = 7200
) -> bytes:
    return struct.pack("!BBHIHHI", 0, 128 + NATPMP_OP_MAP_UDP, result, epoch, internal, external, lifetime)


def natpmp_address_reply(*, result: int = 0, epoch: int = 100, address: str = "203.0.113.6") -> bytes:
    return struct.pack("!BBHI4s", 0, 128 + NATPMP_OP_ADDRESS, result, epoch, ipaddress.IPv4Address(address).packed)


def events(c: PortMapClient) -> list[object]:
    out = []
    while (event := c.next_event()) is not None:
        out.append(event)
    return out


def test_pcp_map_request_bytes() -> None:
    c = client()
    c.start(0.0)
    [request] = c.datagrams_to_send()
    assert len(request) == 60
    assert request[:4] == bytes((2, 1, 0, 0))
    assert struct.unpack_from("!I", request, 4)[0] == 7200
    assert request[8:24] == v6("192.168.1.20")
    assert request[24:36] == NONCE
    assert request[36] == 17
    assert struct.unpack_from("!HH", request, 40) == (PORT, 0)
    assert request[44:60] == v6("0.0.0.0")


def test_pcp_success_maps_and_renews_at_half_lifetime() -> None:
    c = client()
    c.start(0.0)
    c.datagrams_to_send()
    c.receive(pcp_reply(), GATEWAY, 0.01)
    [event] = events(c)
    assert isinstance(event, PortMapped)
    assert event.mapping.protocol == "pcp"
    assert event.mapping.external == ("203.0.113.5", 50000)
    assert event.mapping.expires_at == pytest.approx(7200.01)
    assert c.get_timer() == pytest.approx(3600.01)
    c.handle_timer(3600.01)
    [renewal] = c.datagrams_to_send()
    assert renewal[24:36] == NONCE  # the same nonce renews the same mapping
    assert struct.unpack_from("!H", renewal, 42)[0] == 50000  # asks for what it has
    assert renewal[44:60] == v6("203.0.113.5")
    c.receive(pcp_reply(epoch=3700), GATEWAY, 3600.02)
    assert events(c) == []  # nothing changed: no event
    assert c.mapping is not None and c.mapping.expires_at == pytest.approx(10800.02)


def test_pcp_retransmits_with_doubling_then_falls_back_to_natpmp() -> None:
    c = client()
    c.start(0.0)
    assert len(c.datagrams_to_send()) == 1
    sends = [0.0]
    now = 0.0
    while c.phase is Phase.PCP:
        timer = c.get_timer()
        assert timer is not None
        now = timer
        c.handle_timer(now)
        if c.phase is Phase.PCP:
            assert len(c.datagrams_to_send()) == 1
            sends.append(now)
    assert sends == [0.0, 3.0, 9.0][:PCP_TRIES]
    assert now == 21.0
    [natpmp] = c.datagrams_to_send()
    assert natpmp == struct.pack("!BBHHHI", 0, 1, 0, PORT, PORT, 7200)


def test_natpmp_only_router_answers_unsupported_version_then_maps() -> None:
    c = client()
    c.start(0.0)
    c.datagrams_to_send()
    c.receive(struct.pack("!BBHI", 0, 128 + 1, 1, 50), GATEWAY, 0.01)
    [map_request] = c.datagrams_to_send()
    assert map_request[:2] == bytes((0, 1))
    c.receive(natpmp_map_reply(), GATEWAY, 0.02)
    assert events(c) == []  # the external address is not known yet
    assert c.datagrams_to_send() == [bytes((0, 0))]
    c.receive(natpmp_address_reply(), GATEWAY, 0.03)
    [event] = events(c)
    assert isinstance(event, PortMapped)
    assert event.mapping.protocol == "nat-pmp"
    assert event.mapping.external == ("203.0.113.6", 50001)
    c.handle_timer(3600.03)
    [renewal] = c.datagrams_to_send()
    assert renewal == struct.pack("!BBHHHI", 0, 1, 0, PORT, 50001, 7200)


def test_nothing_answers_gives_unavailable_after_bounded_tries() -> None:
    c = client()
    c.start(0.0)
    sent = len(c.datagrams_to_send())
    now = 0.0
    while (timer := c.get_timer()) is not None:
        assert timer > now
        now = timer
        c.handle_timer(now)
        sent += len(c.datagrams_to_send())
    [event] = events(c)
    assert isinstance(event, PortMapUnavailable)
    assert "PCP: no answer" in event.reason and "NAT-PMP: no answer" in event.reason
    assert sent == 3 + 4
    assert now < 30


def test_stop_deletes_with_lifetime_zero_and_waits_for_the_answer() -> None:
    c = client()
    c.start(0.0)
    c.datagrams_to_send()
    c.receive(pcp_reply(), GATEWAY, 0.01)
    c.stop(5.0)
    [delete] = c.datagrams_to_send()
    assert delete[:8] == bytes((2, 1, 0, 0, 0, 0, 0, 0))
    assert delete[24:36] == NONCE
    assert not c.done
    c.receive(pcp_reply(lifetime=0), GATEWAY, 5.01)
    assert c.done
    assert c.mapping is None


def test_stop_gives_up_on_a_silent_router() -> None:
    c = client()
    c.start(0.0)
    c.datagrams_to_send()
    c.receive(pcp_reply(), GATEWAY, 0.01)
    c.stop(5.0)
    while not c.done:
        timer = c.get_timer()
        assert timer is not None and timer < 7
        c.handle_timer(timer)
    assert len(c.datagrams_to_send()) == 2  # the delete, one retransmission, then done


def test_stop_before_any_mapping_sends_nothing() -> None:
    c = client()
    c.start(0.0)
    c.datagrams_to_send()
    c.stop(1.0)
    assert c.done and c.datagrams_to_send() == [] and c.get_timer() is None


@pytest.mark.parametrize(
    ("data", "source"),
    [
        (pcp_reply(), ("192.168.1.66", 5351)),  # another host
        (pcp_reply(), ("192.168.1.1", 5350)),  # the gateway's other port
        (pcp_reply(nonce=b"x" * 12), GATEWAY),  # wrong nonce
        (pcp_reply(internal=PORT + 1), GATEWAY),  # another port's mapping
        (pcp_reply(protocol=6), GATEWAY),  # TCP
        (pcp_reply(opcode=0x01), GATEWAY),  # a request, not a response
        (pcp_reply()[:58], GATEWAY),  # not a multiple of 4
        (pcp_reply()[:56], GATEWAY),  # truncated
        (pcp_reply()[:40], GATEWAY),  # a MAP response without its payload
        (pcp_reply() + bytes(1100), GATEWAY),  # over 1100 bytes
        (pcp_reply(version=3), GATEWAY),
        (b"", GATEWAY),
        (natpmp_map_reply(), GATEWAY),  # NAT-PMP success while we speak PCP
    ],
    ids=[
        "other-host",
        "other-port",
        "wrong-nonce",
        "other-internal-port",
        "tcp",
        "a-request",
        "not-multiple-of-4",
        "truncated",
        "map-without-payload",
        "over-1100-bytes",
        "version-3",
        "empty",
        "nat-pmp-while-pcp",
    ],
)
def test_hostile_or_stray_answers_change_nothing(data: bytes, source: tuple[str, int]) -> None:
    c = client()
    c.start(0.0)
    c.datagrams_to_send()
    c.receive(data, source, 0.01)
    assert events(c) == [] and c.mapping is None and c.phase is Phase.PCP
    assert c.dropped == 1
    assert c.datagrams_to_send() == []
    c.receive(pcp_reply(), GATEWAY, 0.02)  # the real answer still counts
    assert c.mapping is not None


def test_ipv4_mapped_source_is_the_gateway() -> None:
    c = client()
    c.start(0.0)
    c.receive(pcp_reply(), ("::ffff:192.168.1.1", 5351), 0.01)
    assert c.mapping is not None


def test_unusable_pcp_success_falls_back_to_natpmp() -> None:
    c = client()
    c.start(0.0)
    c.datagrams_to_send()
    c.receive(pcp_reply(external=("0.0.0.0", 0)), GATEWAY, 0.01)
    assert c.mapping is None and c.phase is Phase.NATPMP_MAP


@pytest.mark.parametrize("result", [2, 3, 8, 12])
def test_pcp_error_results_fall_back_then_report_both(result: int) -> None:
    c = client()
    c.start(0.0)
    c.datagrams_to_send()
    c.receive(pcp_reply(result=result, lifetime=30), GATEWAY, 0.01)
    assert c.phase is Phase.NATPMP_MAP
    c.receive(natpmp_map_reply(result=2), GATEWAY, 0.02)
    [event] = events(c)
    assert isinstance(event, PortMapUnavailable)
    assert f"PCP: result {result}" in event.reason and "NAT-PMP: result 2" in event.reason


def test_natpmp_hostile_answers() -> None:
    c = client()
    c.start(0.0)
    c.receive(struct.pack("!BBHI", 0, 129, 1, 50), GATEWAY, 0.01)  # -> NAT-PMP
    c.datagrams_to_send()
    for bad in (
        natpmp_map_reply(internal=PORT + 1),
        natpmp_map_reply()[:15],
        natpmp_address_reply(),  # an address answer while mapping
        bytes((0, 1)) + bytes(14),  # a request
    ):
        c.receive(bad, GATEWAY, 0.02)
    assert c.dropped == 4 and c.phase is Phase.NATPMP_MAP
    c.receive(natpmp_map_reply(), ("10.9.9.9", 5351), 0.03)
    assert c.dropped == 5 and c.phase is Phase.NATPMP_MAP


def test_renewal_failure_keeps_the_mapping_until_it_expires() -> None:
    c = client(lifetime=100)
    c.start(0.0)
    c.receive(pcp_reply(lifetime=100), GATEWAY, 0.0)
    events(c)
    now = 0.0
    lost: list[object] = []
    while not lost:
        timer = c.get_timer()
        assert timer is not None and timer <= 100.0
        now = timer
        c.handle_timer(now)
        assert c.mapping is not None or now >= 100.0
        lost = events(c)
    assert now == 100.0
    [event] = lost
    assert isinstance(event, PortMapLost)
    assert c.mapping is None


def test_lost_mapping_ends_unavailable_when_the_router_stays_silent() -> None:
    """What the node's retry waits for (webpeer/portmapper.py): after the
    loss the client asks PCP and NAT-PMP once more, then reports them
    unavailable and goes quiet."""
    c = client(lifetime=100)
    c.start(0.0)
    c.receive(pcp_reply(lifetime=100), GATEWAY, 0.0)
    events(c)
    now = 0.0
    seen: list[object] = []
    while (timer := c.get_timer()) is not None:
        assert timer < 200.0, "the client never stops trying"
        now = timer
        c.handle_timer(now)
        c.datagrams_to_send()
        seen += events(c)
    assert [type(event) for event in seen] == [PortMapLost, PortMapUnavailable]
    assert c.phase is Phase.UNAVAILABLE and c.mapping is None


def test_router_restart_seen_in_epoch_maps_again_at_once() -> None:
    c = client()
    c.start(0.0)
    c.receive(pcp_reply(epoch=1000), GATEWAY, 0.0)
    c.datagrams_to_send()
    # An unsolicited ANNOUNCE whose epoch went back: the router lost our mapping.
    announce = struct.pack("!BBxBII12x", 2, 0x80, 0, 0, 3)
    c.receive(announce, GATEWAY, 60.0)
    [again] = c.datagrams_to_send()
    assert again[1] == 1 and again[24:36] == NONCE
    # An ANNOUNCE whose epoch kept pace changes nothing.
    c.receive(pcp_reply(epoch=1060, external=("203.0.113.5", 50000)), GATEWAY, 60.01)
    c.receive(struct.pack("!BBxBII12x", 2, 0x80, 0, 0, 1120), GATEWAY, 120.0)
    assert c.datagrams_to_send() == []


def test_decoders_word_their_errors() -> None:
    with pytest.raises(PortMapError, match="too short: 3 bytes"):
        decode_pcp_response(b"\x02\x81\x00")
    with pytest.raises(PortMapError, match="NAT-PMP map response of 15 bytes"):
        decode_natpmp_response(natpmp_map_reply()[:15])
    with pytest.raises(PortMapError, match="too short"):
        decode_natpmp_response(b"\x00\x80")
    assert decode_pcp_response(pcp_reply()).external == ("203.0.113.5", 50000)
    assert encode_pcp_map("10.0.0.2", NONCE, 1, 2)[8:24] == v6("10.0.0.2")


def test_closed_port_5351_gives_up_on_both_at_once() -> None:
    # An ICMP port unreachable (the adapter's connected socket sees it):
    # neither PCP nor NAT-PMP is offered, so UPnP can be asked without
    # waiting out ~25 s of retries.
    c = client()
    c.start(0.0)
    c.datagrams_to_send()
    c.unreachable(0.01)
    [event] = events(c)
    assert isinstance(event, PortMapUnavailable)
    assert "5351 is closed" in event.reason
    assert c.phase is Phase.UNAVAILABLE
    assert c.get_timer() is None
    c.unreachable(0.02)  # a second ICMP error changes nothing
    assert events(c) == []


def test_closed_port_during_renewal_keeps_the_mapping_until_it_expires() -> None:
    c = client()
    c.start(0.0)
    c.datagrams_to_send()
    c.receive(pcp_reply(), GATEWAY, 0.0)
    events(c)
    c.handle_timer(3600.0)
    c.datagrams_to_send()
    c.unreachable(3600.01)
    assert events(c) == []
    assert c.mapping is not None and c.phase is Phase.MAPPED
    assert c.get_timer() == pytest.approx(3600.01 + (7200 - 3600.01) / 2)  # tries again half-way to expiry


def test_closed_port_while_deleting_stops() -> None:
    c = client()
    c.start(0.0)
    c.datagrams_to_send()
    c.receive(pcp_reply(), GATEWAY, 0.0)
    c.stop(10.0)
    assert c.phase is Phase.DELETING
    c.unreachable(10.01)
    assert c.done
