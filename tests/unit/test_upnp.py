"""What the UPnP IGD client (webpeer/upnp.py) sends and accepts from the
router: the unicast search, LOCATION on the gateway only, public IPv4
external addresses only, believable leases, and renewal times (literal)."""

from __future__ import annotations

import pytest

from webpeer.upnp import (
    MAX_SSDP_RESPONSE,
    MIN_RENEW_DELAY,
    PERMANENT_RECHECK,
    Lease,
    UpnpRefused,
    check_gateway,
    check_on_gateway,
    expires_at,
    external_address,
    granted_lease,
    location_from_response,
    renew_at,
    retry_at,
    search_request,
)

GATEWAY = "192.168.1.1"


def answer(location: str, status: str = "HTTP/1.1 200 OK", newline: str = "\r\n") -> bytes:
    lines = [status, "CACHE-CONTROL: max-age=120", "ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1"]
    lines += [f"LOCATION: {location}", "USN: uuid:x::urn:schemas-upnp-org:device:InternetGatewayDevice:1", "", ""]
    return newline.join(lines).encode()


def test_search_is_addressed_to_the_gateway_alone() -> None:
    request = search_request(GATEWAY, 1900)
    assert request == (
        b'M-SEARCH * HTTP/1.1\r\nHOST: 192.168.1.1:1900\r\nMAN: "ssdp:discover"\r\n'
        b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n"
    )
    assert b"239.255.255.250" not in request


def test_the_search_goes_to_a_unicast_gateway_only() -> None:
    assert check_gateway("192.168.1.1") == "192.168.1.1"
    for group in ("239.255.255.250", "224.0.0.1", "255.255.255.255", "0.0.0.0"):
        with pytest.raises(UpnpRefused, match="not a unicast address"):
            check_gateway(group)
    with pytest.raises(UpnpRefused, match="not an IPv4 address"):
        check_gateway("fe80::1")


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
def test_location_on_the_gateway_is_taken(newline: str) -> None:
    url = "http://192.168.1.1:5000/rootDesc.xml"
    assert location_from_response(answer(url, newline=newline), GATEWAY) == url
    lower = answer(url).replace(b"LOCATION", b"location")
    assert location_from_response(lower, GATEWAY) == url


@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("http://192.168.1.2:5000/rootDesc.xml", "not on the gateway"),  # another host on the LAN
        ("http://169.254.169.254/latest/meta-data", "not on the gateway"),  # a cloud metadata service
        ("http://127.0.0.1:5000/rootDesc.xml", "not on the gateway"),  # us
        ("https://192.168.1.1/rootDesc.xml", "not on the gateway"),  # not plain HTTP
        ("http://192.168.1.1.evil.example/x", "not on the gateway"),
        ("http://user@evil.example@192.168.1.1/x", "not on the gateway"),
        ("file:///etc/passwd", "not on the gateway"),
        ("http://192.168.1.1:99999/x", "malformed URL"),
        ("http://[::1/x", "malformed URL"),
        ("http://192.168.1.1/" + "a" * 600, "LOCATION of"),
    ],
)
def test_location_elsewhere_is_refused(location: str, why: str) -> None:
    with pytest.raises(UpnpRefused, match=why):
        location_from_response(answer(location), GATEWAY)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"NOTIFY * HTTP/1.1\r\nLOCATION: http://192.168.1.1/x\r\n\r\n", "not an SSDP search response"),
        (b"HTTP/1.1 404 Not Found\r\n\r\n", "not an SSDP search response"),
        (b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n", "without LOCATION"),
        (b"HTTP/1.1 200 OK\r\nLOCATION:\r\n\r\n", "without LOCATION"),
        (b"\xff\xfe", "not ASCII"),
        (b"", "not an SSDP search response"),
        (answer("http://192.168.1.1/x") + b"X" * MAX_SSDP_RESPONSE, "bytes"),
    ],
)
def test_malformed_search_answers_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(UpnpRefused, match=why):
        location_from_response(data, GATEWAY)


def test_control_urls_are_checked_the_same_way() -> None:
    check_on_gateway("http://192.168.1.1:5000/ctl/IPConn", GATEWAY)
    with pytest.raises(UpnpRefused):
        check_on_gateway("http://10.0.0.1:5000/ctl/IPConn", GATEWAY)


def test_public_ipv4_external_address_is_taken() -> None:
    assert external_address("203.0.113.7") == "203.0.113.7"  # a documentation range: the NAT lab's
    assert external_address(" 8.8.4.4 ") == "8.8.4.4"


@pytest.mark.parametrize("value", ["", "2001:db8::1", "not an address", "1.2.3", None, 42, "1" * 100])
def test_non_ipv4_external_address_is_refused(value: object) -> None:
    with pytest.raises(UpnpRefused, match="is not IPv4"):
        external_address(value)


@pytest.mark.parametrize(
    "value", ["10.1.2.3", "172.16.0.1", "192.168.0.1", "100.64.0.1", "127.0.0.1", "169.254.1.1", "0.0.0.0", "224.0.0.1"]
)
def test_private_external_address_is_refused(value: str) -> None:
    # The router is behind another NAT: its mapping is reachable from nowhere a peer is.
    with pytest.raises(UpnpRefused, match="is not public"):
        external_address(value)


def test_lease_reports() -> None:
    assert granted_lease(7200, 7199) == Lease(7199)  # the remaining lease, as miniupnpd reports it
    assert granted_lease(7200, None) == Lease(7200)  # the router did not say
    assert granted_lease(7200, 0) == Lease(0)  # it ignores leases: permanent
    assert granted_lease(0, 7200) == Lease(0)  # we asked for permanent (a router that allows nothing else)
    assert granted_lease(7200, 7200) == Lease(7200)


@pytest.mark.parametrize("reported", [-1, 10**9, 7201, 3, "7200", 7200.5, True])
def test_absurd_leases_count_as_the_asked_one(reported: object) -> None:
    assert granted_lease(7200, reported) == Lease(7200)


def test_renewal_times() -> None:
    assert renew_at(1000.0, Lease(7200)) == 4600.0  # half the lease
    assert expires_at(1000.0, Lease(7200)) == 8200.0
    assert renew_at(1000.0, Lease(0)) == 1000.0 + PERMANENT_RECHECK
    assert expires_at(1000.0, Lease(0)) == 1000.0 + PERMANENT_RECHECK
    assert renew_at(1000.0, Lease(60)) == 1000.0 + MIN_RENEW_DELAY
    assert retry_at(5000.0, 8200.0) == 6600.0  # a failed renewal: half-way to the expiry
    assert retry_at(8190.0, 8200.0) == 8190.0 + MIN_RENEW_DELAY  # never hammers the router
