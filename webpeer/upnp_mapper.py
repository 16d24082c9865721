"""UPnP IGD port mapping, the asyncio side (what is checked: webpeer/upnp.py).

Discovery is one small UDP socket that sends a unicast M-SEARCH to the
gateway's SSDP port and listens for answers from the gateway's address
only.  The description, the SCPDs and the SOAP actions go through
async-upnp-client (which parses XML with defusedxml) over
:class:`GatewayRequester`: HTTP to the gateway only, no redirects, bounded
time, body size and number of requests.  Every failure ends in a debug log
and :attr:`UpnpMapper.result` (a :class:`~webpeer.portmap.PortMapUnavailable`),
never an exception out of the task.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable
from collections.abc import Mapping as MappingType
from typing import Any

import aiohttp
from async_upnp_client.client import UpnpRequester, UpnpService
from async_upnp_client.client_factory import UpnpFactory
from async_upnp_client.const import HttpRequest, HttpResponse
from async_upnp_client.exceptions import (
    UpnpActionError,
    UpnpCommunicationError,
    UpnpConnectionTimeoutError,
)

from .portmap import DEFAULT_LIFETIME, Mapping, PortMapEvent, PortMapLost, PortMapped, PortMapUnavailable
from .upnp import (
    CONFLICT_IN_MAPPING_ENTRY,
    CONFLICT_TRIES,
    CONNECTION_SERVICES,
    DESCRIPTION,
    HTTP_TIMEOUT,
    MAX_HTTP_BODY,
    MAX_HTTP_REQUESTS,
    ONLY_PERMANENT_LEASES_SUPPORTED,
    SEARCH_INTERVAL,
    SEARCH_TRIES,
    SSDP_PORT,
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

logger = logging.getLogger("webpeer")


class GatewayRequester(UpnpRequester):
    """async-upnp-client's HTTP, to the gateway only and bounded."""

    def __init__(
        self,
        gateway: str,
        *,
        timeout: float = HTTP_TIMEOUT,
        max_body: int = MAX_HTTP_BODY,
        max_requests: int = MAX_HTTP_REQUESTS,
    ) -> None:
        self.gateway = gateway
        self.timeout = timeout
        self.max_body = max_body
        self.requests_left = max_requests
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def async_http_request(self, http_request: HttpRequest) -> HttpResponse:
        try:
            check_on_gateway(http_request.url, self.gateway)
        except UpnpRefused as error:
            raise UpnpCommunicationError(f"refused: {error}") from None
        if self.requests_left <= 0:
            raise UpnpCommunicationError("refused: too many requests to the router")
        self.requests_left -= 1
        if self._session is None:
            # No proxy from the environment: the router is on our link.
            self._session = aiohttp.ClientSession(trust_env=False)
        timeout = min(self.timeout, http_request.timeout or self.timeout)
        try:
            async with asyncio.timeout(timeout):
                async with self._session.request(
                    http_request.method,
                    http_request.url,
                    headers=dict(http_request.headers or {}),
                    data=http_request.body,
                    allow_redirects=False,
                ) as response:
                    if response.content_length is not None and response.content_length > self.max_body:
                        raise UpnpCommunicationError(f"a body of {response.content_length} bytes from the router")
                    body = bytearray()
                    async for chunk in response.content.iter_chunked(16384):
                        body += chunk
                        if len(body) > self.max_body:
                            raise UpnpCommunicationError(f"a body over {self.max_body} bytes from the router")
                    try:
                        text = body.decode(response.charset or "utf-8", errors="replace")
                    except LookupError:  # a charset Python does not know
                        text = body.decode("utf-8", errors="replace")
                    return HttpResponse(response.status, dict(response.headers), text)
        except TimeoutError:
            raise UpnpConnectionTimeoutError(f"no answer from the router in {timeout} s") from None
        except aiohttp.ClientError as error:
            if isinstance(error, UpnpCommunicationError):
                raise
            raise UpnpCommunicationError(f"{type(error).__name__}: {error}") from None


class _SsdpAnswers(asyncio.DatagramProtocol):
    """Search answers from the gateway's address (any port: some routers
    answer from another port than 1900); everything else is counted."""

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.locations: asyncio.Queue[str] = asyncio.Queue(maxsize=8)
        self.dropped = 0

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if addr[0] != self.gateway:
            self.dropped += 1
            return
        try:
            location = location_from_response(data, self.gateway)
        except UpnpRefused as error:
            self.dropped += 1
            logger.debug("port mapping: UPnP: dropped an SSDP answer: %s", error)
            return
        if not self.locations.full():
            self.locations.put_nowait(location)

    def error_received(self, exc: Exception) -> None:
        logger.debug("port mapping: UPnP: SSDP socket error: %s", exc)


class UpnpMapper:
    """Keeps one UDP mapping of ``internal_port`` at an IGD on ``gateway``
    while it runs; ``on_change`` gets the mapping, or None when it is lost."""

    def __init__(
        self,
        gateway: str,
        client_ip: str,
        internal_port: int,
        on_change: Callable[[Mapping | None], None],
        *,
        clock: Callable[[], float],
        ssdp_port: int = SSDP_PORT,
        lifetime: int = DEFAULT_LIFETIME,
        search_interval: float = SEARCH_INTERVAL,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self.gateway = gateway
        self.client_ip = client_ip
        self.internal_port = internal_port
        self.ssdp_port = ssdp_port
        self.lifetime = lifetime
        self.search_interval = search_interval
        self.mapping: Mapping | None = None
        self.result: PortMapEvent | None = None  # the last PortMapped / PortMapLost / PortMapUnavailable
        self.searches_sent = 0
        self._on_change = on_change
        self._on_end = on_end  # told when the task ends without a mapping (given up, or lost)
        self._clock = clock
        self._requester = GatewayRequester(gateway)
        self._service: UpnpService | None = None
        self._task: asyncio.Task[None] | None = None
        self._asked = lifetime  # the lease we ask for: 0 after a router said permanent only
        self._trying_port: int | None = None  # an AddPortMapping sent, not yet known to have worked
        self._renew_at = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self, wait: float) -> None:
        """Delete the mapping, waiting up to ``wait`` seconds for the router."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        mapping, self.mapping = self.mapping, None
        # Stopped while an AddPortMapping was on its way: the router may have
        # made it, so it is deleted all the same.
        port = mapping.external[1] if mapping is not None else self._trying_port
        if port is not None and self._service is not None:
            self._requester.requests_left = MAX_HTTP_REQUESTS
            try:
                async with asyncio.timeout(wait):
                    await self._call("DeletePortMapping", NewRemoteHost="", NewExternalPort=port, NewProtocol="UDP")
                logger.info("port mapping: UPnP mapping of external port %d deleted", port)
            except Exception as error:  # noqa: BLE001 - any failure: the lease ends it anyway
                logger.info("port mapping: UPnP delete failed: %s", _describe(error))
        await self._requester.close()

    # ------------------------------------------------------------ the steps

    async def _run(self) -> None:
        try:
            location = await self._discover()
            self._service = await self._connection_service(location)
            await self._map_and_renew()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - the router's mistakes must not reach the node
            reason = f"UPnP: {_describe(error)}"
            logger.debug("port mapping: %s", reason, exc_info=not isinstance(error, _EXPECTED))
            if self.mapping is not None:
                self.mapping = None
                self.result = PortMapLost(reason)
                self._on_change(None)
            else:
                self.result = PortMapUnavailable(reason)
            logger.info("no port mapping from the router: %s", reason)
            if self._on_end is not None:
                self._on_end()

    async def _discover(self) -> str:
        """The description URL the gateway answers a unicast M-SEARCH with."""
        check_gateway(self.gateway)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.client_ip, 0))
        except OSError:
            sock.close()
            raise
        transport, protocol = await loop.create_datagram_endpoint(lambda: _SsdpAnswers(self.gateway), sock=sock)
        try:
            request = search_request(self.gateway, self.ssdp_port)
            for _ in range(SEARCH_TRIES):
                transport.sendto(request, (self.gateway, self.ssdp_port))
                self.searches_sent += 1
                try:
                    return await asyncio.wait_for(protocol.locations.get(), self.search_interval)
                except TimeoutError:
                    continue
            dropped = f" ({protocol.dropped} unusable answers)" if protocol.dropped else ""
            raise UpnpRefused(f"no SSDP answer from {self.gateway}:{self.ssdp_port}{dropped}")
        finally:
            transport.close()

    async def _connection_service(self, location: str) -> UpnpService:
        device = await UpnpFactory(self._requester).async_create_device(location)
        for service_type in CONNECTION_SERVICES:
            service = device.find_service(service_type)
            if service is not None and {"AddPortMapping", "GetExternalIPAddress"} <= set(service.actions):
                check_on_gateway(service.control_url, self.gateway)
                return service
        raise UpnpRefused("the router has no WANIPConnection or WANPPPConnection service")

    async def _map_and_renew(self) -> None:
        external_port = await self._map_first()
        while True:
            assert self.mapping is not None
            await asyncio.sleep(max(0.0, self._renew_at - self._clock()))
            try:
                await self._add(external_port)
            except Exception as error:  # noqa: BLE001 - keep the mapping until it expires
                now = self._clock()
                if now >= self.mapping.expires_at:
                    raise
                logger.info("port mapping: UPnP renewal failed: %s", _describe(error))
                self._renew_at = retry_at(now, self.mapping.expires_at)

    async def _map_first(self) -> int:
        """Add the mapping: our port as the external one, another if taken."""
        ports = [self.internal_port] + [random.randint(1024, 65535) for _ in range(CONFLICT_TRIES - 1)]
        for port in ports:
            try:
                await self._add(port)
                return port
            except UpnpActionError as error:
                if error.error_code != CONFLICT_IN_MAPPING_ENTRY:
                    raise
                logger.debug("port mapping: UPnP: external port %d is taken", port)
        raise UpnpRefused(f"external ports {ports} all taken")

    async def _add(self, external_port: int) -> None:
        """AddPortMapping (again), then read back what the router made of it."""
        assert self._service is not None
        self._requester.requests_left = MAX_HTTP_REQUESTS  # the bound is per step, not for the mapper's life
        external_ip = external_address((await self._call("GetExternalIPAddress")).get("NewExternalIPAddress"))
        self._trying_port = external_port
        try:
            try:
                await self._add_once(external_port)
            except UpnpActionError as error:
                if error.error_code != ONLY_PERMANENT_LEASES_SUPPORTED or self._asked == 0:
                    raise
                logger.debug("port mapping: UPnP: the router allows permanent leases only")
                self._asked = 0
                await self._add_once(external_port)
            reported = await self._reported_lease(external_port)
        except (UpnpActionError, UpnpRefused):
            # Refused (the port is someone else's, or the router maps it to
            # another host): nothing of ours to delete there.
            self._trying_port = None
            raise
        lease = granted_lease(self._asked, reported)
        now = self._clock()
        mapping = Mapping("upnp", (external_ip, external_port), lease.seconds, expires_at(now, lease))
        self._renew_at = renew_at(now, lease)
        previous, self.mapping = self.mapping, mapping
        if previous is None or previous.external != mapping.external:
            logger.info("port mapped by the router (upnp): %s:%d", *mapping.external)
            self.result = PortMapped(mapping)
            self._on_change(mapping)

    async def _add_once(self, external_port: int) -> None:
        await self._call(
            "AddPortMapping",
            NewRemoteHost="",
            NewExternalPort=external_port,
            NewProtocol="UDP",
            NewInternalPort=self.internal_port,
            NewInternalClient=self.client_ip,
            NewEnabled=True,
            NewPortMappingDescription=DESCRIPTION,
            NewLeaseDuration=self._asked,
        )

    async def _reported_lease(self, external_port: int) -> object:
        """The remaining lease the router reports for our mapping, None if
        it cannot say; refused if the mapping is not ours."""
        assert self._service is not None
        if "GetSpecificPortMappingEntry" not in self._service.actions:
            return None
        try:
            entry = await self._call(
                "GetSpecificPortMappingEntry", NewRemoteHost="", NewExternalPort=external_port, NewProtocol="UDP"
            )
        except (UpnpActionError, UpnpCommunicationError) as error:
            logger.debug("port mapping: UPnP: no entry read back: %s", _describe(error))
            return None
        client, port = entry.get("NewInternalClient"), entry.get("NewInternalPort")
        if client != self.client_ip or port != self.internal_port:
            raise UpnpRefused(f"the router maps port {external_port} to {client}:{port}, not to us")
        return entry.get("NewLeaseDuration")

    async def _call(self, action: str, **arguments: Any) -> MappingType[str, Any]:
        assert self._service is not None
        return await self._service.async_call_action(action, **arguments)


_EXPECTED = (UpnpRefused, UpnpActionError, UpnpCommunicationError, OSError)


def _describe(error: BaseException) -> str:
    if isinstance(error, UpnpActionError):
        return f"UPnP error {error.error_code} ({error.error_desc})"
    return str(error) or type(error).__name__
