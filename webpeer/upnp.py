"""UPnP IGD port mapping, the pure part: what we send, what we accept. Sans-IO.

The third choice after PCP and NAT-PMP (webpeer/portmap.py); the asyncio
side, which fetches the router's description and calls its actions through
async-upnp-client, is webpeer/upnp_mapper.py.

    -> SSDP M-SEARCH, UNICAST to the default gateway's port 1900 (never
       multicast: nothing leaves for any host but the gateway)
    <- HTTP/1.1 200 OK with LOCATION: the device description's URL, accepted
       only when its host is the gateway itself
    GET LOCATION, then each service's SCPD (async-upnp-client, defusedxml),
    every URL on the gateway, every body at most :data:`MAX_HTTP_BODY` bytes
    -> WANIPConnection:2/:1 (or WANPPPConnection:1) GetExternalIPAddress
    -> AddPortMapping(UDP, external port = our QUIC port, internal client and
       port = our socket, lease)        (renewed at half the lease)
    -> DeletePortMapping                (on stop)

What the router says is checked here: a LOCATION elsewhere is dropped (and
the search goes on), an external address that is not IPv4 is refused, and
so is one that is not public (RFC 1918, the carrier-grade NAT range RFC
6598, loopback, link-local, multicast, reserved): the router is then itself
behind another NAT, and its mapping would be reachable from nowhere a peer
is.  The peer then does without a mapping.  A lease the router reports that
is negative, not a number or longer than we asked for is taken as the one we
asked for; a router that allows only permanent leases (UPnP error 725) gets
lease 0, which we still re-add every :data:`PERMANENT_RECHECK` seconds (a
rebooted router forgets) and delete on stop.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

SSDP_PORT: Final = 1900
SEARCH_TARGET: Final = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
SEARCH_TRIES: Final = 3  # M-SEARCH sends, SEARCH_INTERVAL apart (UDP may drop one)
SEARCH_INTERVAL: Final = 1.0
MAX_SSDP_RESPONSE: Final = 2048  # a search response is a few hundred bytes
MAX_LOCATION: Final = 512
MAX_HTTP_BODY: Final = 256 * 1024  # a router's description or SCPD is a few KiB
MAX_HTTP_REQUESTS: Final = 24  # description + SCPDs of one discovery (a router has a handful)
HTTP_TIMEOUT: Final = 5.0  # each request to the router
PERMANENT_RECHECK: Final = 3600  # lease 0 ("permanent"): re-added this often
MIN_LEASE: Final = 60  # a shorter reported lease is not believed (see granted_lease)
MIN_RENEW_DELAY: Final = 30.0  # never renew (or retry) more often than this
DESCRIPTION: Final = "peerlink"

# WAN connection services, best first (IGD:2 then IGD:1; PPP for DSL routers).
CONNECTION_SERVICES: Final = (
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
)

# UPnP IGD error codes we act on (WANIPConnection:2 spec, 2.4.16).
CONFLICT_IN_MAPPING_ENTRY: Final = 718
SAME_PORT_VALUES_REQUIRED: Final = 724
ONLY_PERMANENT_LEASES_SUPPORTED: Final = 725
CONFLICT_TRIES: Final = 3  # external ports tried when ours is taken

# Not public: the router has another NAT between it and the internet.
NOT_PUBLIC: Final = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",  # RFC 6598, carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)


class UpnpRefused(ValueError):
    """What the router said is unusable (the wording says why)."""


def check_gateway(gateway: str) -> str:
    """The gateway as a unicast IPv4 address: the search goes to it alone,
    never to a multicast or broadcast group (nothing may leave for other hosts)."""
    try:
        address = ipaddress.IPv4Address(gateway)
    except ValueError:
        raise UpnpRefused(f"gateway {gateway!r} is not an IPv4 address") from None
    if address.is_multicast or address.is_unspecified or address == ipaddress.IPv4Address("255.255.255.255"):
        raise UpnpRefused(f"gateway {gateway} is not a unicast address")
    return str(address)


def search_request(gateway: str, port: int = SSDP_PORT) -> bytes:
    """An M-SEARCH for an Internet Gateway Device, addressed to the gateway
    alone (UDA 1.1 1.3.2's unicast search: HOST is the gateway, no MX)."""
    return (
        f'M-SEARCH * HTTP/1.1\r\nHOST: {gateway}:{port}\r\nMAN: "ssdp:discover"\r\nST: {SEARCH_TARGET}\r\n\r\n'
    ).encode("ascii")


def location_from_response(data: bytes, gateway: str) -> str:
    """The LOCATION of an M-SEARCH answer, if it is on ``gateway`` (the
    caller has already checked that the datagram came from it)."""
    if len(data) > MAX_SSDP_RESPONSE:
        raise UpnpRefused(f"SSDP response of {len(data)} bytes (at most {MAX_SSDP_RESPONSE})")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise UpnpRefused("SSDP response is not ASCII") from None
    lines = text.split("\r\n") if "\r\n" in text else text.split("\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/1.") or status[1] != "200":
        raise UpnpRefused(f"not an SSDP search response: {lines[0][:60]!r}")
    location = None
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == "location":
            location = value.strip()
    if not location:
        raise UpnpRefused("SSDP response without LOCATION")
    if len(location) > MAX_LOCATION:
        raise UpnpRefused(f"LOCATION of {len(location)} characters (at most {MAX_LOCATION})")
    check_on_gateway(location, gateway)
    return location


def check_on_gateway(url: str, gateway: str) -> None:
    """Refuse any URL but plain HTTP to the gateway's own address: the
    router's answers must not send us to any other host."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise UpnpRefused(f"malformed URL {url[:80]!r}") from None
    # No user info or backslash: other URL parsers (the HTTP client's) may
    # read a host out of them differently from this one.
    odd = "@" in parts.netloc or "\\" in url
    if parts.scheme != "http" or host != gateway or odd or (port is not None and not 0 < port < 65536):
        raise UpnpRefused(f"{url[:80]!r} is not on the gateway {gateway}")


def external_address(value: object) -> str:
    """GetExternalIPAddress's answer, if it is a public IPv4 address."""
    if not isinstance(value, str) or len(value) > 64:
        raise UpnpRefused(f"external address {str(value)[:64]!r} is not IPv4")
    try:
        address = ipaddress.IPv4Address(value.strip())
    except ValueError:
        raise UpnpRefused(f"external address {value!r} is not IPv4") from None
    if address == ipaddress.IPv4Address("255.255.255.255") or any(address in net for net in NOT_PUBLIC):
        raise UpnpRefused(f"external address {address} is not public (another NAT behind the router?)")
    return str(address)


@dataclass(frozen=True)
class Lease:
    """What the router granted: ``seconds`` 0 is permanent."""

    seconds: int

    @property
    def permanent(self) -> bool:
        return self.seconds == 0


def granted_lease(asked: int, reported: object) -> Lease:
    """The lease to plan with, from what we asked and what the router
    reports for the mapping (GetSpecificPortMappingEntry's remaining lease,
    or None if it did not say).  0 is permanent; a number from
    :data:`MIN_LEASE` to ``asked`` is believed; anything else (negative, not
    an integer, longer than asked, a few seconds) counts as ``asked``."""
    if asked == 0 or reported == 0:
        return Lease(0)
    if isinstance(reported, int) and not isinstance(reported, bool) and MIN_LEASE <= reported <= asked:
        return Lease(reported)
    return Lease(asked)


def renew_at(now: float, lease: Lease) -> float:
    """When to add the mapping again: at half the lease (as PCP and
    NAT-PMP), every :data:`PERMANENT_RECHECK` for a permanent one."""
    seconds = PERMANENT_RECHECK if lease.permanent else lease.seconds / 2
    return now + max(MIN_RENEW_DELAY, seconds)


def expires_at(now: float, lease: Lease) -> float:
    """Until when the mapping holds unrenewed (a permanent one: until the
    next recheck, as far as we know)."""
    return now + (PERMANENT_RECHECK if lease.permanent else lease.seconds)


def retry_at(now: float, expires: float) -> float:
    """After a failed renewal: half-way to the expiry, at least
    :data:`MIN_RENEW_DELAY` later (so a dead router costs few requests)."""
    return now + max(MIN_RENEW_DELAY, (expires - now) / 2)
