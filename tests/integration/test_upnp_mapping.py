"""UPnP IGD port mapping (webpeer/upnp_mapper.py, webpeer/portmapper.py)
against a small IGD on loopback: an SSDP responder and an aiohttp site that
serves a description, an SCPD and SOAP actions, parsed by the real
async-upnp-client.  The fallback order (PCP first; UPnP only when port 5351
is closed), the calls the router gets, and what is refused."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import defusedxml.ElementTree as DET
import pytest
from aiohttp import web

from webpeer.portmap import Mapping, Phase, PortMapUnavailable
from webpeer.portmap_retry import MappingRetry
from webpeer.portmapper import PortMapper
from webpeer.upnp import MAX_HTTP_BODY
from webpeer.upnp_mapper import UpnpMapper

HOST = "127.0.0.1"
SERVICE = "urn:schemas-upnp-org:service:WANIPConnection:1"
DEADLINE = 20.0


def description(control: str = "/ctl/IPConn") -> str:
    return f"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><specVersion><major>1</major><minor>0</minor></specVersion>
<device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<friendlyName>fake router</friendlyName><manufacturer>test</manufacturer><modelName>fake</modelName>
<UDN>uuid:00000000-0000-0000-0000-000000000001</UDN><serviceList></serviceList>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
<friendlyName>wan</friendlyName><manufacturer>test</manufacturer><modelName>fake</modelName>
<UDN>uuid:00000000-0000-0000-0000-000000000002</UDN><serviceList></serviceList>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
<friendlyName>conn</friendlyName><manufacturer>test</manufacturer><modelName>fake</modelName>
<UDN>uuid:00000000-0000-0000-0000-000000000003</UDN>
<serviceList><service><serviceType>{SERVICE}</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId><SCPDURL>/WANIPCn.xml</SCPDURL>
<controlURL>{control}</controlURL><eventSubURL>/evt/IPConn</eventSubURL></service></serviceList>
</device></deviceList></device></deviceList></device></root>"""


ARGUMENTS = {
    "GetExternalIPAddress": [("NewExternalIPAddress", "out", "ExternalIPAddress")],
    "AddPortMapping": [
        ("NewRemoteHost", "in", "RemoteHost"),
        ("NewExternalPort", "in", "ExternalPort"),
        ("NewProtocol", "in", "PortMappingProtocol"),
        ("NewInternalPort", "in", "InternalPort"),
        ("NewInternalClient", "in", "InternalClient"),
        ("NewEnabled", "in", "PortMappingEnabled"),
        ("NewPortMappingDescription", "in", "PortMappingDescription"),
        ("NewLeaseDuration", "in", "PortMappingLeaseDuration"),
    ],
    "DeletePortMapping": [
        ("NewRemoteHost", "in", "RemoteHost"),
        ("NewExternalPort", "in", "ExternalPort"),
        ("NewProtocol", "in", "PortMappingProtocol"),
    ],
    "GetSpecificPortMappingEntry": [
        ("NewRemoteHost", "in", "RemoteHost"),
        ("NewExternalPort", "in", "ExternalPort"),
        ("NewProtocol", "in", "PortMappingProtocol"),
        ("NewInternalPort", "out", "InternalPort"),
        ("NewInternalClient", "out", "InternalClient"),
        ("NewEnabled", "out", "PortMappingEnabled"),
        ("NewPortMappingDescription", "out", "PortMappingDescription"),
        ("NewLeaseDuration", "out", "PortMappingLeaseDuration"),
    ],
}
VARIABLES = {
    "ExternalIPAddress": "string",
    "RemoteHost": "string",
    "ExternalPort": "ui2",
    "PortMappingProtocol": "string",
    "InternalPort": "ui2",
    "InternalClient": "string",
    "PortMappingEnabled": "boolean",
    "PortMappingDescription": "string",
    "PortMappingLeaseDuration": "ui4",
}


def scpd() -> str:
    actions = "".join(
        f"<action><name>{name}</name><argumentList>"
        + "".join(
            f"<argument><name>{a}</name><direction>{d}</direction><relatedStateVariable>{v}</relatedStateVariable></argument>"
            for a, d, v in args
        )
        + "</argumentList></action>"
        for name, args in ARGUMENTS.items()
    )
    variables = "".join(
        f'<stateVariable sendEvents="no"><name>{n}</name><dataType>{t}</dataType></stateVariable>'
        for n, t in VARIABLES.items()
    )
    return (
        '<?xml version="1.0"?><scpd xmlns="urn:schemas-upnp-org:service-1-0">'
        "<specVersion><major>1</major><minor>0</minor></specVersion>"
        f"<actionList>{actions}</actionList><serviceStateTable>{variables}</serviceStateTable></scpd>"
    )


def soap(body: str) -> str:
    return (
        '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>' + body + "</s:Body></s:Envelope>"
    )


def fault(code: int, text: str) -> web.Response:
    detail = (
        "<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>"
        '<UPnPError xmlns="urn:schemas-upnp-org:control-1-0">'
        f"<errorCode>{code}</errorCode><errorDescription>{text}</errorDescription></UPnPError></detail></s:Fault>"
    )
    return web.Response(status=500, text=soap(detail), content_type="text/xml")


@dataclass
class FakeIgd:
    """The router's side; what it was asked is in ``calls``."""

    external_ip: str = "203.0.113.40"
    permanent_only: bool = False  # IGD:1 routers that refuse any lease but 0 (error 725)
    location: str | None = None  # what SSDP answers (default: our description)
    huge_description: bool = False
    missing_descriptions: int = 0  # this many description fetches get 404 (a router still booting)
    hold_add: asyncio.Event | None = None  # AddPortMapping makes the mapping, then answers once this is set
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    searches: int = 0
    mappings: dict[int, dict[str, str]] = field(default_factory=dict)
    http_port: int = 0
    ssdp_port: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/rootDesc.xml", self.on_description)
        app.router.add_get("/WANIPCn.xml", self.on_scpd)
        app.router.add_post("/ctl/IPConn", self.on_control)
        return app

    async def on_description(self, _: web.Request) -> web.Response:
        if self.missing_descriptions > 0:
            self.missing_descriptions -= 1
            return web.Response(status=404, text="not yet")
        text = description()
        if self.huge_description:
            text = text.replace("<friendlyName>fake router", "<friendlyName>" + "x" * (MAX_HTTP_BODY + 1))
        return web.Response(text=text, content_type="text/xml")

    async def on_scpd(self, _: web.Request) -> web.Response:
        return web.Response(text=scpd(), content_type="text/xml")

    async def on_control(self, request: web.Request) -> web.Response:
        action = request.headers["SOAPAction"].strip('"').split("#")[1]
        body = DET.fromstring(await request.text())
        [call] = list(body.iter(f"{{{SERVICE}}}{action}"))
        arguments = {child.tag: child.text or "" for child in call}
        self.calls.append((action, arguments))
        if action == "GetExternalIPAddress":
            out = f"<NewExternalIPAddress>{self.external_ip}</NewExternalIPAddress>"
        elif action == "AddPortMapping":
            if self.permanent_only and arguments["NewLeaseDuration"] != "0":
                return fault(725, "OnlyPermanentLeasesSupported")
            port = int(arguments["NewExternalPort"])
            if port in self.mappings and self.mappings[port]["NewInternalClient"] != arguments["NewInternalClient"]:
                return fault(718, "ConflictInMappingEntry")
            self.mappings[port] = arguments
            if self.hold_add is not None:
                await self.hold_add.wait()
            out = ""
        elif action == "DeletePortMapping":
            if self.mappings.pop(int(arguments["NewExternalPort"]), None) is None:
                return fault(714, "NoSuchEntryInArray")
            out = ""
        else:  # GetSpecificPortMappingEntry
            entry = self.mappings.get(int(arguments["NewExternalPort"]))
            if entry is None:
                return fault(714, "NoSuchEntryInArray")
            out = "".join(
                f"<{name}>{entry[name]}</{name}>"
                for name in ("NewInternalPort", "NewInternalClient", "NewEnabled", "NewPortMappingDescription")
            )
            out += f"<NewLeaseDuration>{entry['NewLeaseDuration']}</NewLeaseDuration>"
        return web.Response(
            text=soap(f'<u:{action}Response xmlns:u="{SERVICE}">{out}</u:{action}Response>'), content_type="text/xml"
        )

    def datagram_received(self, data: bytes, addr: tuple[str, int], transport: asyncio.DatagramTransport) -> None:
        if not data.startswith(b"M-SEARCH * HTTP/1.1\r\n"):
            return
        self.searches += 1
        location = self.location or f"http://{HOST}:{self.http_port}/rootDesc.xml"
        answer = (
            "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\n"
            "ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
            f"USN: uuid:00000000-0000-0000-0000-000000000001\r\nLOCATION: {location}\r\n\r\n"
        )
        transport.sendto(answer.encode(), addr)


class _Ssdp(asyncio.DatagramProtocol):
    def __init__(self, igd: FakeIgd) -> None:
        self.igd = igd
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.igd.datagram_received(data, addr, self.transport)


@pytest.fixture
async def igd() -> AsyncIterator[FakeIgd]:
    fake = FakeIgd()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    fake.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: _Ssdp(fake), local_addr=(HOST, 0))
    fake.ssdp_port = transport.get_extra_info("sockname")[1]
    yield fake
    transport.close()
    await runner.cleanup()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


async def wait_for(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def port_mapper(igd: FakeIgd, changes: list[Mapping | None], port: int = 40001, **options: Any) -> PortMapper:
    """A mapper whose gateway has port 5351 closed (PCP and NAT-PMP skipped at
    once, by the ICMP), searching the fake IGD for UPnP."""
    return PortMapper(
        HOST,
        HOST,
        port,
        changes.append,
        clock=time.time,
        server_port=closed_port(),
        ssdp_port=igd.ssdp_port,
        **options,
    )


async def test_closed_pcp_port_falls_back_to_upnp_which_maps_and_deletes(igd: FakeIgd) -> None:
    changes: list[Mapping | None] = []
    mapper = port_mapper(igd, changes)
    mapper.start()
    try:
        await wait_for(lambda: changes, "a mapping")
    finally:
        await mapper.stop(5.0)
    [mapping] = changes
    assert mapping is not None and mapping.protocol == "upnp"
    assert mapping.external == ("203.0.113.40", 40001)  # our port, at the router's external address
    assert mapping.lifetime == 7200 and mapping.expires_at > time.time() + 7000
    added = next(args for action, args in igd.calls if action == "AddPortMapping")
    assert added == {
        "NewRemoteHost": "",
        "NewExternalPort": "40001",
        "NewProtocol": "UDP",
        "NewInternalPort": "40001",
        "NewInternalClient": HOST,
        "NewEnabled": "1",
        "NewPortMappingDescription": "peerlink",
        "NewLeaseDuration": "7200",
    }
    assert [action for action, _ in igd.calls][-1] == "DeletePortMapping"
    assert igd.mappings == {}  # deleted on stop


async def test_pcp_answering_router_is_never_searched_for_upnp(igd: FakeIgd) -> None:
    pcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pcp.bind((HOST, 0))
    pcp.setblocking(False)
    loop = asyncio.get_running_loop()

    def answer() -> None:
        request, source = pcp.recvfrom(1100)
        lifetime = struct.unpack_from("!I", request, 4)[0]
        header = struct.pack("!BBxBII12x", 2, 0x81, 0, lifetime, 100)
        external = socket.inet_pton(socket.AF_INET6, "::ffff:203.0.113.41")
        body = request[24:36] + struct.pack("!B3xHH16s", 17, struct.unpack_from("!H", request, 40)[0], 50000, external)
        pcp.sendto(header + body, source)

    loop.add_reader(pcp.fileno(), answer)
    changes: list[Mapping | None] = []
    mapper = PortMapper(
        HOST, HOST, 40002, changes.append, clock=time.time, server_port=pcp.getsockname()[1], ssdp_port=igd.ssdp_port
    )
    mapper.start()
    try:
        await wait_for(lambda: changes, "a mapping")
    finally:
        await mapper.stop(5.0)
        loop.remove_reader(pcp.fileno())
        pcp.close()
    assert changes[0] is not None and changes[0].protocol == "pcp"
    assert mapper.upnp is None and igd.searches == 0 and igd.calls == []


def upnp_mapper(igd: FakeIgd, changes: list[Mapping | None], port: int = 40003) -> UpnpMapper:
    return UpnpMapper(HOST, HOST, port, changes.append, clock=time.time, ssdp_port=igd.ssdp_port, search_interval=0.3)


async def test_router_with_permanent_leases_only_gets_lease_zero(igd: FakeIgd) -> None:
    igd.permanent_only = True
    changes: list[Mapping | None] = []
    mapper = upnp_mapper(igd, changes)
    mapper.start()
    try:
        await wait_for(lambda: mapper.result is not None, "a result")
    finally:
        await mapper.stop(5.0)
    [mapping] = changes
    assert mapping is not None and mapping.lifetime == 0  # permanent at the router
    leases = [args["NewLeaseDuration"] for action, args in igd.calls if action == "AddPortMapping"]
    assert leases == ["7200", "0"]
    assert igd.mappings == {}  # a permanent mapping is deleted on stop all the same


async def test_private_external_address_is_not_mapped(igd: FakeIgd) -> None:
    igd.external_ip = "192.168.0.7"  # the router is behind another NAT
    changes: list[Mapping | None] = []
    mapper = upnp_mapper(igd, changes)
    mapper.start()
    await wait_for(lambda: mapper.result is not None, "a result")
    await mapper.stop(5.0)
    assert isinstance(mapper.result, PortMapUnavailable) and "not public" in mapper.result.reason
    assert changes == [] and [action for action, _ in igd.calls] == ["GetExternalIPAddress"]


@pytest.mark.parametrize("location", ["http://127.0.0.2:{port}/rootDesc.xml", "http://127.0.0.1.nip.io/x"])
async def test_location_elsewhere_is_never_fetched(igd: FakeIgd, location: str) -> None:
    igd.location = location.format(port=igd.http_port)
    changes: list[Mapping | None] = []
    mapper = upnp_mapper(igd, changes)
    mapper.start()
    await wait_for(lambda: mapper.result is not None, "a result")
    await mapper.stop(5.0)
    assert isinstance(mapper.result, PortMapUnavailable)
    # Never went on to fetch it (that would have failed otherwise: nothing
    # listens there).  How many of the answers came back within the search
    # is the machine's load's business, so not counted.
    assert "no SSDP answer" in mapper.result.reason
    assert mapper.searches_sent == 3 and igd.calls == []


async def test_oversized_description_is_refused(igd: FakeIgd) -> None:
    igd.huge_description = True
    changes: list[Mapping | None] = []
    mapper = upnp_mapper(igd, changes)
    mapper.start()
    await wait_for(lambda: mapper.result is not None, "a result")
    await mapper.stop(5.0)
    assert isinstance(mapper.result, PortMapUnavailable) and "body" in mapper.result.reason
    assert changes == [] and igd.calls == []


async def test_taken_port_gets_another_and_only_ours_is_deleted(igd: FakeIgd) -> None:
    someone_else = {"NewInternalClient": "10.9.9.9", "NewInternalPort": "40003"}
    igd.mappings[40003] = someone_else
    changes: list[Mapping | None] = []
    mapper = upnp_mapper(igd, changes, port=40003)
    mapper.start()
    try:
        await wait_for(lambda: mapper.result is not None, "a result")
    finally:
        await mapper.stop(5.0)
    [mapping] = changes
    assert mapping is not None and mapping.external[1] != 40003  # error 718: another external port
    assert igd.mappings == {40003: someone_else}  # ours deleted, the other host's left alone


async def test_stop_while_adding_still_deletes(igd: FakeIgd) -> None:
    igd.hold_add = asyncio.Event()
    changes: list[Mapping | None] = []
    mapper = upnp_mapper(igd, changes)
    mapper.start()
    await wait_for(lambda: 40003 in igd.mappings, "the AddPortMapping at the router")
    await mapper.stop(5.0)  # its answer never came: the mapping may exist, so it is deleted
    igd.hold_add.set()
    assert changes == [] and igd.mappings == {}
    assert [action for action, _ in igd.calls][-1] == "DeletePortMapping"


async def test_upnp_off_means_no_search(igd: FakeIgd) -> None:
    changes: list[Mapping | None] = []
    mapper = port_mapper(igd, changes, 40004, upnp=False)
    mapper.start()
    try:
        await wait_for(lambda: mapper.client.phase is Phase.UNAVAILABLE, "PCP and NAT-PMP unavailable")
    finally:
        await mapper.stop(5.0)
    assert mapper.upnp is None and igd.searches == 0 and changes == []


async def test_failed_discovery_is_retried_after_the_backoff_and_maps(igd: FakeIgd) -> None:
    igd.missing_descriptions = 1  # the first attempt finds the router but not its description
    changes: list[Mapping | None] = []
    retry = MappingRetry(first=0.05, longest=0.05, jitter=lambda: 0.0)
    mapper = port_mapper(igd, changes, retry=retry)
    mapper.start()
    try:
        await wait_for(lambda: changes, "a mapping on the second attempt")
        assert mapper.attempts == 2 and igd.searches == 2
        assert retry.failures == 0 and retry.next_at is None  # mapped: the doubling starts again next time
    finally:
        await mapper.stop(5.0)
    [mapping] = changes
    assert mapping is not None and mapping.protocol == "upnp" and mapping.external == ("203.0.113.40", 40001)
    assert igd.mappings == {}  # the second attempt's mapping is deleted on stop


async def test_network_change_searches_again_at_once(igd: FakeIgd) -> None:
    igd.missing_descriptions = 1
    changes: list[Mapping | None] = []
    retry = MappingRetry(first=3600.0, longest=3600.0, jitter=lambda: 0.0)
    mapper = port_mapper(igd, changes, retry=retry)
    mapper.start()
    try:
        await wait_for(lambda: retry.next_at is not None, "the first attempt to give up")
        assert mapper.attempts == 1 and changes == [] and retry.next_at > time.time() + 3000
        mapper.network_changed()
        await wait_for(lambda: changes, "a mapping after the network change")
        assert mapper.attempts == 2 and igd.searches == 2
        mapper.network_changed()  # mapped: nothing to search for
        assert mapper.attempts == 2 and retry.next_at is None
    finally:
        await mapper.stop(5.0)
    assert [m is not None and m.protocol for m in changes] == ["upnp"]


async def test_stop_while_waiting_to_search_again_sends_nothing_more(igd: FakeIgd) -> None:
    igd.missing_descriptions = 1
    changes: list[Mapping | None] = []
    retry = MappingRetry(first=3600.0, longest=3600.0, jitter=lambda: 0.0)
    mapper = port_mapper(igd, changes, retry=retry)
    mapper.start()
    await wait_for(lambda: retry.next_at is not None, "the first attempt to give up")
    await mapper.stop(5.0)
    mapper.network_changed()  # after stop: ignored
    await asyncio.sleep(0)
    assert mapper.attempts == 1 and igd.searches == 1 and changes == []


async def test_pcp_and_natpmp_alone_are_retried_too(igd: FakeIgd) -> None:
    changes: list[Mapping | None] = []
    retry = MappingRetry(first=0.02, longest=0.02, jitter=lambda: 0.0)
    mapper = port_mapper(igd, changes, 40004, upnp=False, retry=retry)
    mapper.start()
    try:
        await wait_for(lambda: mapper.attempts >= 3, "two more attempts")
    finally:
        await mapper.stop(5.0)
    assert retry.failures >= 2  # each attempt ended unavailable, none mapped
    assert mapper.upnp is None and igd.searches == 0 and changes == []
