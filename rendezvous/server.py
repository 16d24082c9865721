"""The asyncio adapter around :class:`rendezvous.core.ServerCore`.

It only moves bytes and timers: datagrams from the socket into the core, the
core's datagrams onto the socket, REGISTERs to the registry and back, dirty
records to the registry every few seconds, and the core's events to the log.
With a shared registry (``presence``), also the other instances' records into
the core and the introductions it forwards out to them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable

from . import fastpath
from .core import REGISTRY_FULL, ServerCore
from .directory import Directory
from .events import (
    Dropped,
    PeerOffline,
    PeerOnline,
    PendingRegistration,
    RequestReceived,
    ServerConfig,
)
from .mail_handling import MailRequest
from .mailbox import Mailbox, MailboxFull
from .registry import PeerRecord, Presence, Registry, RegistryFull, RegistryUnavailable, is_legacy_identity
from .stun import Address
from .tokens import Tokens
from .udp import UdpEndpoint

logger = logging.getLogger("rendezvous")

# Registrations waiting on the registry beyond this are refused with 503
# rather than queued without bound.
MAX_PENDING_REGISTRATIONS = 10_000
# Online peers are loaded at start-up in pages of this many.
LOAD_PAGE = 10_000
# Datagrams waiting to be forwarded to other instances beyond this are dropped (counted).
MAX_PENDING_FORWARDS = 10_000
# While the registry fails, writes are retried after 2x the last wait, up to this.
MAX_FLUSH_BACKOFF = 30.0
# Changed records are written this many per registry call, the loop running
# between calls: a SQLite transaction of them all (10,000 online at TTL 60
# is ~1,000 every 2 s, plus a checkpoint now and then) held every datagram
# back while it ran.
SAVE_CHUNK = 250
# Ids of keys unseen for the retention are released this often, this many per
# registry call (so one call never holds the registry long).
RELEASE_INTERVAL = 3600.0
RELEASE_BATCH = 1000
# DEPOSITs and FETCHes waiting on the mailbox store beyond this get 503.
MAX_PENDING_MAIL = 10_000
# Mailbox messages older than the age limit are purged this often, this many per call.
MAIL_PURGE_INTERVAL = 3600.0
MAIL_PURGE_BATCH = 1000
# Requests every online page repeats every few seconds (the peer list):
# logged at debug, so that info shows arrivals, connects and departures.
ROUTINE_REQUESTS = frozenset({"LIST"})


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
        presence: Presence | None = None,
        instance: str | None = None,
        reuse_port: bool = False,
        id_retention: float | None = None,
        mailbox: Mailbox | None = None,
        fast_path: bool = True,
    ) -> None:
        # The offline mailbox's store (with the registry); without one, the
        # core serves no DEPOSIT or FETCH.
        self.mailbox = mailbox
        if mailbox is None:
            config = dataclasses.replace(config, mailbox=None)
        self._mailing: set[asyncio.Task[None]] = set()
        self._next_mail_purge = 0.0
        self.config = config
        # Ids of keys unseen this long (seconds) are released for reuse; None: kept forever.
        self.id_retention = id_retention
        self._next_release = 0.0
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
        # Other instances sharing the registry (None: this one is alone), and
        # this instance's name among them (default: host name and port).
        self.presence = presence
        self.instance = instance
        self.reuse_port = reuse_port  # one of several workers on this port
        # (home, target id, datagram) for other instances, sent in batches by one task.
        self._to_forward: list[tuple[str, int, bytes]] = []
        self._forwarder: asyncio.Task[None] | None = None
        self._early_records: list[PeerRecord] = []
        # Records the registry has not taken yet (it failed): written first next time.
        self._owed: dict[int, PeerRecord] = {}
        self._registry_failing = False
        # Told how long each write-behind save took and of how many records (metrics).
        self.save_observer: Callable[[float, int], None] | None = None
        self._flush_soon = asyncio.Event()
        self._closing = False
        # Answer bare Binding and checked REFRESHes in C when the library is
        # built here (rendezvous/fastpath.py); False: always the Python path.
        self.fast_path = fast_path
        self.fast_path_used = False

    @property
    def address(self) -> Address:
        assert self._endpoint is not None, "server not started"
        return self._endpoint.address

    async def start(self) -> None:
        await self.registry.open()
        secret = await self.registry.secret()
        stats: Counter[str] = Counter()
        # Bound (not yet read) before loading: the port names this instance.
        self._endpoint = UdpEndpoint.bind(
            self.host, self.port, self._on_datagram, self._flush, stats, reuse_port=self.reuse_port
        )
        if self.presence is not None:
            if self.instance is None:
                self.instance = f"{socket.gethostname()}:{self._endpoint.address[1]}"
            # Subscribed before loading, so nothing written meanwhile is missed.
            await self.presence.start(self.instance, self._on_records, self._on_introduction)
        directory = Directory()
        now = self.clock()
        last_id = 0
        while page := await self.registry.load_online(now, after_id=last_id, limit=LOAD_PAGE):
            for record in page:
                # Other instances' legacy peers are theirs alone (known by address).
                if not (record.home and is_legacy_identity(record.identity)):
                    directory.put(record)
            last_id = page[-1].peer_id
        directory.take_dirty()  # just loaded: nothing to write back
        # Ids above this were never given to anyone: CONNECT to one gets 410.
        highest = await self.registry.highest_id()
        self.core = ServerCore(self.config, Tokens(secret), directory, stats, highest_id=highest)
        if self.reuse_port and self.instance is not None and "/" in self.instance:
            # Workers named HOST:PORT/wI share this socket address: relay between them directly.
            self.core.sibling_prefix = self.instance.rsplit("/", 1)[0] + "/"
        if self._early_records:
            self.core.mirror(self._early_records, now)
            self._early_records = []
        self._endpoint.start()
        if self.other is not None:
            self._other_endpoint = UdpEndpoint.bind(
                self.other[0],
                self.other[1],
                self._on_other_datagram,
                self._flush,
                self.core.stats,
                reuse_port=self.reuse_port,
            )
            self._other_endpoint.start()
            primary = self.address if self.host not in ("0.0.0.0", "::") else None
            self.core.config = dataclasses.replace(
                self.core.config, other_address=self._other_endpoint.address, primary_address=primary
            )
            logger.info("RFC 5780 NAT discovery: second address %s:%s", *self._other_endpoint.address)
        self._start_fast_path()
        self._flusher = asyncio.create_task(self._flush_registry_periodically())
        host, port = self.address
        logger.info("Running STUN Server on %s:%s...", host, port)
        if self.presence is not None:
            logger.info("Instance %s sharing the registry with the others", self.instance)
        if len(directory):
            logger.info("%d peers still online from before the restart", len(directory))
        self._arm_timer()

    def _start_fast_path(self) -> None:
        """Before the first read (no await since the endpoint started)."""
        assert self.core is not None and self._endpoint is not None
        library = fastpath.load() if self.fast_path else None
        if library is None:
            logger.debug("fast path: off, the Python path answers everything%s", "" if self.fast_path else " (asked)")
            return
        try:
            fast = fastpath.FastPath.for_config(library, self.core.config)
        except ValueError as error:
            logger.warning("fast path: %s; the Python path answers everything", error)
            return
        core, clock = self.core, self.clock
        if not self._endpoint.use_fast_path(
            fast, lambda bindings, refreshed: core.fast_answered(bindings, refreshed, clock())
        ):
            fast.close()
            logger.debug("fast path: off, the socket is read one datagram at a time")
            return
        core.attach_session_cache(fast)
        self.fast_path_used = True
        logger.debug("fast path: compiled (%s) answers bare Binding and checked REFRESHes", fastpath.LIBRARY.name)

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
            # Let a save in progress finish (its socket timeouts bound it) rather than cancel it.
            self._closing = True
            self._flush_soon.set()
            await self._flusher
        if self._registering:
            await asyncio.gather(*self._registering, return_exceptions=True)
        if self._mailing:
            await asyncio.gather(*self._mailing, return_exceptions=True)
        if self._forwarder is not None:
            await asyncio.gather(self._forwarder, return_exceptions=True)
        if self.core is not None and not await self.flush_registry():
            logger.warning("%d peer records not written: the registry is unavailable", len(self._owed))
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
            if self.presence is not None and isinstance(event, PeerOnline | PeerOffline):
                # Other instances learn of arrivals and departures at once, not in 2 s.
                if not self._registry_failing:
                    self._flush_soon.set()
            self._log(event)
        forwards = core.introductions_to_forward()
        if forwards:
            room = MAX_PENDING_FORWARDS - len(self._to_forward)
            if len(forwards) > room:
                core.stats["forwards_dropped"] += len(forwards) - max(room, 0)
                forwards = forwards[: max(room, 0)]
            self._to_forward.extend(forwards)
            if self._forwarder is None or self._forwarder.done():
                self._forwarder = asyncio.create_task(self._forward_pending())
        for pending in core.pending_registrations():
            if len(self._registering) >= MAX_PENDING_REGISTRATIONS:
                core.fail_registration(pending, self.clock())
                continue
            task = asyncio.create_task(self._register(pending))
            self._registering.add(task)
            task.add_done_callback(self._registering.discard)
        for mail in core.mail_requests():
            if len(self._mailing) >= MAX_PENDING_MAIL:
                core.mail_failed(mail, self.clock())
                continue
            mail_task = asyncio.create_task(self._mail(mail))
            self._mailing.add(mail_task)
            mail_task.add_done_callback(self._mailing.discard)
        self._arm_timer()

    async def _mail(self, pending: MailRequest) -> None:
        """Run one DEPOSIT or FETCH on the mailbox store, then answer it."""
        assert self.core is not None and self.mailbox is not None
        limits = self.core.config.mailbox
        assert limits is not None
        try:
            if pending.deposit is not None:
                stored = await self.mailbox.deposit(pending.deposit, limits)
            else:
                mail, count = await self.mailbox.fetch(pending.peer_id, pending.delete, self.clock(), limits.max_age)
        except MailboxFull as full:
            self.core.mail_refused(pending, full.reason, self.clock())
        except RegistryUnavailable:
            self.core.mail_failed(pending, self.clock())  # the registry said so in the log
        except Exception:
            logger.exception("the mailbox store failed")
            self.core.mail_failed(pending, self.clock())
        else:
            if pending.deposit is not None:
                self.core.mail_deposited(pending, stored, self.clock())
            else:
                self.core.mail_fetched(pending, mail, count, self.clock())
        self._flush()

    async def purge_mail(self) -> int:
        """Delete mailbox messages past the age limit; how many."""
        assert self.core is not None and self.mailbox is not None
        limits = self.core.config.mailbox
        assert limits is not None
        now = self.clock()
        self._next_mail_purge = now + MAIL_PURGE_INTERVAL
        purged = 0
        try:
            while (batch := await self.mailbox.purge(now - limits.max_age, MAIL_PURGE_BATCH)) > 0:
                purged += batch
                if batch < MAIL_PURGE_BATCH or self._closing:
                    break
        except RegistryUnavailable:
            pass  # said in the log; tried again at the next interval
        except Exception:
            logger.exception("could not purge old mailbox messages")
        self.core.stats["mail_expired"] += purged
        return purged

    async def _register(self, pending: PendingRegistration) -> None:
        assert self.core is not None
        try:
            peer_id = await self.registry.assign_id(pending.identity)
            first_seen = None
            if peer_id not in self.core.directory:
                known = await self.registry.get(peer_id)
                if known is not None and known.first_seen > 0:
                    first_seen = known.first_seen
        except RegistryUnavailable:
            self.core.fail_registration(pending, self.clock())  # the registry said so in the log
        except RegistryFull:
            self.core.fail_registration(pending, self.clock(), REGISTRY_FULL)
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

    async def _forward_pending(self) -> None:
        """Hand what waits for other instances to the registry, all of it per
        round trip (relayed datagrams come in bursts)."""
        assert self.presence is not None and self.core is not None
        while self._to_forward:
            batch, self._to_forward = self._to_forward, []
            try:
                await self.presence.forward_many(batch)
            except RegistryUnavailable:
                self.core.stats["forwards_not_sent"] += len(batch)
            except Exception:
                logger.exception("could not forward %d datagrams to other instances", len(batch))
                self.core.stats["forwards_not_sent"] += len(batch)

    def _on_records(self, records: list[PeerRecord]) -> None:
        """Another instance's peers changed (or a reload after a reconnection)."""
        if self.core is None:
            self._early_records.extend(records)
            return
        self.core.mirror(records, self.clock())
        self._flush()

    def _on_introduction(self, target_id: int, data: bytes) -> None:
        if self.core is None:
            return
        self.core.deliver_forwarded(target_id, data, self.clock())
        self._flush()

    async def _flush_registry_periodically(self) -> None:
        """Refreshes only touch memory; their state reaches the registry here,
        in batches; while it fails, with a growing wait between tries."""
        wait = self.flush_interval
        loop = asyncio.get_running_loop()
        while True:
            # Not asyncio.wait_for: on 3.11 it can swallow the cancellation
            # of a stop that lands as the event is set.
            timer = loop.call_later(wait, self._flush_soon.set)
            await self._flush_soon.wait()
            timer.cancel()
            self._flush_soon.clear()
            if self._closing:
                return
            if await self.flush_registry():
                wait = self.flush_interval
                if self.id_retention is not None and self.clock() >= self._next_release:
                    await self.release_unseen_ids()
                if self.mailbox is not None and self.clock() >= self._next_mail_purge:
                    await self.purge_mail()
            else:
                wait = min(2 * wait, MAX_FLUSH_BACKOFF)

    async def release_unseen_ids(self) -> int:
        """Release the ids of keys unseen for ``id_retention`` (after a flush,
        so every peer online here has been written as seen); how many."""
        assert self.id_retention is not None
        now = self.clock()
        self._next_release = now + RELEASE_INTERVAL
        released = 0
        try:
            online = self.core.directory if self.core is not None else ()
            while batch := await self.registry.release_unseen(now - self.id_retention, RELEASE_BATCH, keep=online):
                released += len(batch)
                if len(batch) < RELEASE_BATCH or self._closing:
                    break
        except RegistryUnavailable:
            pass  # said in the log; tried again at the next interval
        except Exception:
            logger.exception("could not release the ids of keys unseen for long")
        if released:
            logger.info("released %d ids of keys unseen for %.0f days", released, self.id_retention / 86400)
            if self.core is not None:
                self.core.stats["ids_released"] += released
        return released

    def owed_count(self) -> int:
        """Changed records the registry has not taken yet: waiting for the
        next flush, or owed since a failed one (they pile up while it fails)."""
        dirty = self.core.directory.dirty_count() if self.core is not None else 0
        return dirty + len(self._owed)

    async def flush_registry(self) -> bool:
        """Write the changed records, and any a failed write left owed.
        False if the registry failed (they stay owed)."""
        assert self.core is not None
        for record in self.core.directory.take_dirty():
            self._owed[record.peer_id] = record
        if not self._owed:
            return True
        owed, self._owed = self._owed, {}
        records = list(owed.values())
        saved = 0
        try:
            while saved < len(records):
                if saved:
                    await asyncio.sleep(0)  # datagrams waiting are served between chunks
                chunk = records[saved : saved + SAVE_CHUNK]
                started = time.perf_counter()
                await self.registry.save(chunk)
                if self.save_observer is not None:
                    self.save_observer(time.perf_counter() - started, len(chunk))
                saved += SAVE_CHUNK
        except Exception as error:
            for record in records[saved:]:
                self._owed.setdefault(record.peer_id, record)
            if not self._registry_failing:
                self._registry_failing = True
                if not isinstance(error, RegistryUnavailable):  # that one logged itself
                    logger.error("could not save %d peer records (%s); retrying with backoff", len(owed), error)
            return False
        if self._registry_failing:
            self._registry_failing = False
            logger.info("Registry writes caught up: %d peer records", len(owed))
        return True

    def _log(self, event: object) -> None:
        if isinstance(event, RequestReceived):
            level = logging.DEBUG if event.kind in ROUTINE_REQUESTS else logging.INFO
            logger.log(level, "Received %s Request From Client: %r%s", event.kind, event.client, event.detail)
        elif isinstance(event, PeerOnline):
            logger.info("Peer %d online at %r", event.peer_id, event.address)
        elif isinstance(event, PeerOffline):
            logger.info("Peer %d offline (%s)", event.peer_id, event.reason)
        elif isinstance(event, Dropped):
            logger.debug("Dropped a datagram from %r: %s", event.client, event.reason)
