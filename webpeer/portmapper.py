"""The node's side of port mapping: find the default gateway, move the
pure :class:`~webpeer.portmap.PortMapClient`'s bytes and timer, and turn to
UPnP IGD (webpeer/upnp_mapper.py) when PCP and NAT-PMP are unavailable.

The requests go out from small sockets of their own (PCP, NAT-PMP and UPnP
all name the internal port in the request, so the mapping still points at
the main socket, the one that speaks QUIC), which keeps the router's answers
out of the engine's datagram demultiplexing.  Everything goes to the
gateway and nowhere else: PCP and NAT-PMP to its port 5351, the UPnP search
unicast to its port 1900 (never multicast), HTTP only to URLs on it.  IPv4 only: the gateway comes from
``/proc/net/route`` (Linux); elsewhere, or without a default route, the
peer simply does without a mapping.  The server may be reached over either
family (:func:`worth_mapping`): a peer registered over IPv6 still talks
IPv4 to peers, so an IPv4 mapping is worth offering.

An attempt that ends without a mapping (all three unavailable, or a
mapping lost once its renewals failed until expiry) is not the end: the
mapper searches again from scratch on the schedule of
:class:`~webpeer.portmap_retry.MappingRetry`, or at once after
:meth:`PortMapper.network_changed`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

from rendezvous.stun import Address

from .portmap import DEFAULT_LIFETIME, SERVER_PORT, Mapping, PortMapClient, PortMapLost, PortMapped, PortMapUnavailable
from .portmap_retry import MappingRetry
from .upnp import SSDP_PORT
from .upnp_mapper import UpnpMapper

logger = logging.getLogger("webpeer")

ROUTE_TABLE = Path("/proc/net/route")
RTF_UP = 0x1
RTF_GATEWAY = 0x2
# Before searching again: how long the last UPnP attempt may take to delete a
# mapping it may have made while its answer was lost (bounded: the router may be gone).
UPNP_LEFTOVER_WAIT = 1.0


def worth_mapping(servers: Iterable[Address]) -> bool:
    """Whether to ask the router at all, given the server's addresses (either
    family): not when any is on this host (loopback, or unspecified), which
    is a test or a demo on one machine: no router between, and none of its
    datagrams may leave the host.  Not without a server either."""
    hosts = [host for host, _ in servers]
    for host in hosts:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])  # a scoped IPv6 address: fe80::1%eth0
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback or ip.is_unspecified:
            return False
    return bool(hosts)


def default_gateway(route_table: str) -> str | None:
    """The IPv4 default gateway with the lowest metric in the text of
    ``/proc/net/route`` (hex addresses in host byte order: little-endian)."""
    best: tuple[int, str] | None = None
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, gateway, flags = int(fields[1], 16), int(fields[2], 16), int(fields[3], 16)
            metric, mask = int(fields[6]), int(fields[7], 16)
            if destination or mask or not flags & RTF_UP or not flags & RTF_GATEWAY or not gateway:
                continue
            address = str(ipaddress.IPv4Address(gateway.to_bytes(4, "little")))
        except (ValueError, OverflowError):
            continue
        if best is None or metric < best[0]:
            best = (metric, address)
    return best[1] if best is not None else None


def read_default_gateway(path: Path = ROUTE_TABLE) -> str | None:
    try:
        return default_gateway(path.read_text())
    except OSError:
        return None


def source_address_toward(host: str, port: int) -> str | None:
    """Our address on the interface that routes to ``host`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, port))
            return str(probe.getsockname()[0])
        except OSError:
            return None


class PortMapper:
    """Keeps one mapping of ``internal_port`` at ``gateway`` while it runs;
    ``on_change`` gets the mapping, or None when it is lost.  PCP, then
    NAT-PMP (:class:`PortMapClient`), then, when both are unavailable and
    ``upnp`` is on, UPnP IGD (:class:`~webpeer.upnp_mapper.UpnpMapper`)."""

    def __init__(
        self,
        gateway: str,
        client_ip: str,
        internal_port: int,
        on_change: Callable[[Mapping | None], None],
        *,
        clock: Callable[[], float],
        server_port: int = SERVER_PORT,
        lifetime: int = DEFAULT_LIFETIME,
        upnp: bool = True,
        ssdp_port: int = SSDP_PORT,
        retry: MappingRetry | None = None,
    ) -> None:
        self.client = PortMapClient(gateway, client_ip, internal_port, lifetime=lifetime, server_port=server_port)
        self.upnp: UpnpMapper | None = None  # once PCP and NAT-PMP gave up
        self.retry = retry if retry is not None else MappingRetry()
        self.attempts = 1  # searches from scratch so far, the first included
        self._use_upnp = upnp
        self._ssdp_port = ssdp_port
        self._on_change = on_change
        self._clock = clock
        self._sock: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._done = asyncio.Event()
        self._retry_timer: asyncio.TimerHandle | None = None
        self._restarting: asyncio.Task[None] | None = None

    @classmethod
    def for_default_gateway(
        cls, internal_port: int, on_change: Callable[[Mapping | None], None], *, clock: Callable[[], float]
    ) -> PortMapper | None:
        """A mapper for this host's default gateway, or None without one."""
        gateway = read_default_gateway()
        if gateway is None:
            logger.info("port mapping: no IPv4 default gateway")
            return None
        client_ip = source_address_toward(gateway, SERVER_PORT)
        if client_ip is None:
            return None
        return cls(gateway, client_ip, internal_port, on_change, clock=clock)

    def start(self) -> None:
        # Connected to the gateway's port 5351: the kernel then passes on
        # only its datagrams, and tells us (ECONNREFUSED) when an ICMP port
        # unreachable says it speaks neither PCP nor NAT-PMP.
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((self.client.client_ip, 0))
            sock.connect(self.client.gateway)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read_ready)
        self.client.start(self._clock())
        self._flush()

    async def stop(self, wait: float) -> None:
        """Delete the mapping, waiting up to ``wait`` seconds for the router's answer."""
        if self._sock is None:
            return
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        if self._restarting is not None:
            self._restarting.cancel()
            await asyncio.gather(self._restarting, return_exceptions=True)
            self._restarting = None
        if self.upnp is not None:
            await self.upnp.stop(wait)
        self.client.stop(self._clock())
        self._flush()
        try:
            await asyncio.wait_for(self._done.wait(), wait)
        except TimeoutError:
            pass
        if self._timer is not None:
            self._timer.cancel()
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None

    def _read_ready(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(16):  # a few per wake-up: the router sends one answer per request
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                break
            except ConnectionRefusedError:
                self.client.unreachable(self._clock())
                continue
            except OSError as error:
                logger.debug("port mapping: socket error: %s", error)
                break
            try:
                self.client.receive(data, self.client.gateway, self._clock())
            except Exception:  # a bug: the client refuses bad input by itself
                logger.exception("port mapping: internal error on a datagram from the gateway")
        self._flush()

    def _flush(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for data in self.client.datagrams_to_send():
            try:
                sock.send(data)
            except ConnectionRefusedError:  # an earlier datagram's ICMP error
                self.client.unreachable(self._clock())
            except OSError as error:
                logger.debug("port mapping: cannot send to the gateway: %s", error)
        while (event := self.client.next_event()) is not None:
            if isinstance(event, PortMapped):
                logger.info("port mapped by the router (%s): %s:%d", event.mapping.protocol, *event.mapping.external)
                self._mapping_changed(event.mapping)
            elif isinstance(event, PortMapLost):
                # The client asks again by itself (and ends in PortMapUnavailable if nobody answers).
                logger.info("port mapping lost: %s", event.reason)
                self._mapping_changed(None)
            elif isinstance(event, PortMapUnavailable) and self._use_upnp and self.upnp is None:
                logger.info("port mapping: %s; trying UPnP IGD", event.reason)
                self._start_upnp()
            else:
                logger.info("no port mapping from the router: %s", getattr(event, "reason", event))
                self._attempt_ended()
        if self.client.done:
            self._done.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.client.get_timer()
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + max(0.0, deadline - self._clock()), self._on_timer)

    def _start_upnp(self) -> None:
        client = self.client
        self.upnp = UpnpMapper(
            client.gateway[0],
            client.client_ip,
            client.internal_port,
            self._mapping_changed,
            clock=self._clock,
            ssdp_port=self._ssdp_port,
            lifetime=client.lifetime,
            on_end=self._attempt_ended,
        )
        self.upnp.start()

    def _mapping_changed(self, mapping: Mapping | None) -> None:
        if mapping is not None:
            self.retry.succeeded()
        self._on_change(mapping)

    # ------------------------------------------------------------ searching again

    def network_changed(self) -> None:
        """The node saw the network change (a new public address): while
        waiting to search again, search now."""
        if self._sock is not None and self.retry.network_changed(self._clock()):
            logger.info("port mapping: the network changed; searching again now")
            self._arm_retry()

    def _attempt_ended(self) -> None:
        """PCP, NAT-PMP and (if on) UPnP all ended without a mapping."""
        if self._sock is None or self.retry.next_at is not None:
            return
        now = self._clock()
        at = self.retry.failed(now)
        logger.info("port mapping: searching again in %.0f s", at - now)
        self._arm_retry()

    def _arm_retry(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        at = self.retry.next_at
        if at is not None:
            loop = asyncio.get_running_loop()
            self._retry_timer = loop.call_at(loop.time() + max(0.0, at - self._clock()), self._retry_due)

    def _retry_due(self) -> None:
        self._retry_timer = None
        if self._sock is None or self._restarting is not None:
            return
        if not self.retry.due(self._clock()):  # the clock ran behind the loop's
            self._arm_retry()
            return
        self.retry.started()
        self._restarting = asyncio.create_task(self._search_again())

    async def _search_again(self) -> None:
        """A fresh attempt: PCP, then NAT-PMP, then UPnP, as at start."""
        try:
            upnp, self.upnp = self.upnp, None
            if upnp is not None:
                await upnp.stop(UPNP_LEFTOVER_WAIT)  # closes its HTTP session (and deletes a half-made mapping)
            old = self.client
            self.client = PortMapClient(
                old.gateway[0], old.client_ip, old.internal_port, lifetime=old.lifetime, server_port=old.gateway[1]
            )
            self._done = asyncio.Event()
            self.attempts += 1
            logger.info("port mapping: searching again (attempt %d)", self.attempts)
            self.client.start(self._clock())
            self._flush()
        except Exception:  # a bug: it must not end the retries silently
            logger.exception("port mapping: internal error while searching again")
        finally:
            self._restarting = None

    def _on_timer(self) -> None:
        self._timer = None
        self.client.handle_timer(self._clock())
        self._flush()
