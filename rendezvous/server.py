"""The asyncio adapter around :class:`rendezvous.core.ServerCore`.

It only moves bytes and timers: datagrams from the socket into the core, the
core's datagrams onto the socket, REGISTERs to the registry and back, dirty
records to the registry every few seconds, and the core's events to the log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

from .core import ServerCore
from .directory import Directory
from .events import (
    Dropped,
    PeerOffline,
    PeerOnline,
    PendingRegistration,
    RequestReceived,
    ServerConfig,
)
from .registry import Registry
from .stun import Address
from .tokens import Tokens
from .udp import UdpEndpoint

logger = logging.getLogger("rendezvous")

# Registrations waiting on the registry beyond this are refused with 503
# rather than queued without bound.
MAX_PENDING_REGISTRATIONS = 10_000
# Online peers are loaded at start-up in pages of this many.
LOAD_PAGE = 10_000


class RendezvousServer:
    def __init__(
        self,
        config: ServerConfig,
        registry: Registry,
        host: str = "127.0.0.1",
        port: int = 3478,
        *,
        flush_interval: float = 2.0,
        clock: Callable[[], float] = time.time,
        other: Address | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.host = host
        self.port = port
        self.flush_interval = flush_interval
        self.clock = clock
        self.core: ServerCore | None = None
        self._endpoint: UdpEndpoint | None = None
        self.other = other  # RFC 5780: a second socket, on another IP and port
        self._other_endpoint: UdpEndpoint | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._registering: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> Address:
        assert self._endpoint is not None, "server not started"
        return self._endpoint.address

    async def start(self) -> None:
        await self.registry.open()
        secret = await self.registry.secret()
        directory = Directory()
        now = self.clock()
        last_id = 0
        while page := await self.registry.load_online(now, after_id=last_id, limit=LOAD_PAGE):
            for record in page:
                directory.put(record)
            last_id = page[-1].peer_id
        directory.take_dirty()  # just loaded: nothing to write back
        # Ids above this were never given to anyone: CONNECT to one gets 410.
        highest = await self.registry.highest_id()
        self.core = ServerCore(self.config, Tokens(secret), directory, highest_id=highest)
        self._endpoint = UdpEndpoint.bind(self.host, self.port, self._on_datagram, self._flush, self.core.stats)
        self._endpoint.start()
        if self.other is not None:
            self._other_endpoint = UdpEndpoint.bind(
                self.other[0], self.other[1], self._on_other_datagram, self._flush, self.core.stats
            )
            self._other_endpoint.start()
            primary = self.address if self.host not in ("0.0.0.0", "::") else None
            self.core.config = dataclasses.replace(
                self.core.config, other_address=self._other_endpoint.address, primary_address=primary
            )
            logger.info("RFC 5780 NAT discovery: second address %s:%s", *self._other_endpoint.address)
        self._flusher = asyncio.create_task(self._flush_registry_periodically())
        host, port = self.address
        logger.info("Running STUN Server on %s:%s...", host, port)
        if len(directory):
            logger.info("%d peers still online from before the restart", len(directory))
        self._arm_timer()

    async def stop(self) -> None:
        """Stop serving and write everything the registry has not seen yet."""
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None
        if self._other_endpoint is not None:
            self._other_endpoint.close()
            self._other_endpoint = None
        if self._timer is not None:
            self._timer.cancel()
        if self._flusher is not None:
            self._flusher.cancel()
            try:
                await self._flusher
            except asyncio.CancelledError:
                pass
        if self._registering:
            await asyncio.gather(*self._registering, return_exceptions=True)
        if self.core is not None:
            await self.registry.save(self.core.directory.take_dirty())
        await self.registry.close()
        logger.info("Rendezvous server stopped")

    # ------------------------------------------------------------ plumbing

    def _on_datagram(self, data: bytes, address: Address) -> None:
        assert self.core is not None
        self.core.receive_datagram(data, address, self.clock())

    def _on_other_datagram(self, data: bytes, address: Address) -> None:
        assert self.core is not None
        self.core.receive_datagram(data, address, self.clock(), via_other=True)

    def _flush(self) -> None:
        """After a batch of input: send, log, hand REGISTERs to the registry, re-arm the timer."""
        core = self.core
        endpoint = self._endpoint
        if core is None or endpoint is None:
            return
        from_other = core.datagrams_to_send_from_other()
        if from_other and self._other_endpoint is not None:
            self._other_endpoint.send_many(from_other)
        outgoing = core.datagrams_to_send()
        if outgoing:
            endpoint.send_many(outgoing)
        for event in core.events():
            self._log(event)
        for pending in core.pending_registrations():
            if len(self._registering) >= MAX_PENDING_REGISTRATIONS:
                core.fail_registration(pending, self.clock())
                continue
            task = asyncio.create_task(self._register(pending))
            self._registering.add(task)
            task.add_done_callback(self._registering.discard)
        self._arm_timer()

    async def _register(self, pending: PendingRegistration) -> None:
        assert self.core is not None
        try:
            peer_id = await self.registry.assign_id(pending.identity)
            first_seen = None
            if peer_id not in self.core.directory:
                known = await self.registry.get(peer_id)
                if known is not None and known.first_seen > 0:
                    first_seen = known.first_seen
        except Exception:
            logger.exception("registry failed to assign an id")
            self.core.fail_registration(pending, self.clock())
        else:
            self.core.complete_registration(pending, peer_id, first_seen, self.clock())
        self._flush()

    def _arm_timer(self) -> None:
        assert self.core is not None
        now = self.clock()
        # Wake at least once a second so cached replies and rate-limit state age out.
        at = min(self.core.get_timer() or now + 1.0, now + 1.0)
        if self._timer is not None and self._timer_at is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = at
        self._timer = loop.call_at(loop.time() + max(0.0, at - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.core is None:
            return
        self.core.handle_timer(self.clock())
        self._flush()

    async def _flush_registry_periodically(self) -> None:
        """Refreshes only touch memory; their state reaches the disk here, in batches."""
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush_registry()

    async def flush_registry(self) -> None:
        assert self.core is not None
        dirty = self.core.directory.take_dirty()
        if not dirty:
            return
        try:
            await self.registry.save(dirty)
        except Exception:
            logger.exception("could not save %d peer records; will retry", len(dirty))
            for record in dirty:
                if record.peer_id in self.core.directory:
                    self.core.directory.touch(record)

    def _log(self, event: object) -> None:
        if isinstance(event, RequestReceived):
            logger.info("Received %s Request From Client: %r%s", event.kind, event.client, event.detail)
        elif isinstance(event, PeerOnline):
            logger.info("Peer %d online at %r", event.peer_id, event.address)
        elif isinstance(event, PeerOffline):
            logger.info("Peer %d offline (%s)", event.peer_id, event.reason)
        elif isinstance(event, Dropped):
            logger.debug("Dropped a datagram from %r: %s", event.client, event.reason)
