"""The peer process's asyncio wrapper around the pure :class:`PeerEngine`
(like aioquic's ``QuicConnectionProtocol`` around ``QuicConnection``).

It owns what the engine must not touch: the UDP sockets (the main one and
many-port probing's spares), the one loop timer, the clock, the history
store's commit around each flush, the futures of the page's sends, and the
websocket subscribers' queues.  It implements webpeer.api.PeerApi for the
web layer.  Every decision is the engine's (webpeer/engine.py).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from rendezvous.stun import Address
from rendezvous.udp import UdpEndpoint, normalise

from . import last_id, validate
from .api import JSON, ApiError
from .engine import EngineConfig, PeerEngine, address_text
from .events import MessageAdded, PageEvent, Resync
from .file_store import FileStore
from .file_transfer import DEFAULT_MIME, MAX_FILE_SIZE, MAX_NAME_CHARS, too_large
from .group_codec import OpKind
from .identity import Identity
from .mailbox_flow import DEFAULT_AFTER as MAILBOX_AFTER
from .message_flow import Draft, unknown_peer
from .pathfinder import CloseSpare, OpenSpare
from .peer_session import PeerSession
from .portmap import Mapping
from .portmapper import PortMapper, worth_mapping
from .quota import QuotaConfig
from .registration import RegistrationMachine, RegState
from .store import FileRecord, Store, StoreError
from .trust import Action

logger = logging.getLogger("webpeer")

SUBSCRIBER_QUEUE = 1000
RETENTION = 7 * 24 * 3600.0  # queued messages for an offline peer are kept this long
EXPIRY_INTERVAL = 60.0
STOP_WAIT = 1.0  # how long stop() waits for the server to confirm the unregistration
PORT_MAPPING_STOP_WAIT = 2.0  # how long stop() waits for the router to delete the mapping (UPnP: HTTP)
DUAL_STACK = "::"  # with IPV6_V6ONLY off (UdpEndpoint.bind): IPv6, and IPv4 as IPv4-mapped addresses
IPV4_ANY = "0.0.0.0"


class ServerNameError(OSError):
    """The rendezvous server's name does not resolve to an address our socket can reach."""


@dataclass(frozen=True)
class NodeConfig:
    server: Address = ("127.0.0.1", 3478)  # the host may be a name: the node resolves it
    # More servers to fall back on, in order (--server a,b,c): the first that answers is used.
    fallback_servers: tuple[Address, ...] = ()
    data_dir: Path = Path(".")
    name: str = ""
    udp_host: str = ""  # empty: dual-stack "::" where the host has IPv6, else 0.0.0.0
    udp_port: int = 0
    ttl: int = 60
    list_interval: float = 2.0
    idle_timeout: float = 120.0  # a link unused this long is closed (keepalives stop before)
    relay_only: bool = False  # never try a direct path (diagnostics, and tests of the relay)
    retention: float = RETENTION
    max_file_size: int = MAX_FILE_SIZE  # --max-file-size: larger files are neither sent nor accepted
    quota: QuotaConfig = QuotaConfig()  # what each sender may make us store (webpeer/quota.py)
    port_mapping: bool = True  # ask the router to map our port (never for a server on loopback)
    mailbox: bool = True  # --no-mailbox: neither deposit at nor fetch from the server's mailbox
    mailbox_after: float = MAILBOX_AFTER  # --mailbox-after: a message waits queued this long first

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            server=self.server,
            name=self.name,
            ttl=self.ttl,
            list_interval=self.list_interval,
            idle_timeout=self.idle_timeout,
            relay_only=self.relay_only,
            max_file_size=self.max_file_size,
            quota=self.quota,
            mailbox=self.mailbox,
            mailbox_after=self.mailbox_after,
        )


class PeerNode:
    def __init__(self, config: NodeConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.identity = Identity.load_or_create(config.data_dir)
        self.store = Store(config.data_dir / "history.sqlite3")
        self.file_store = FileStore(config.data_dir / "files")
        self.engine = PeerEngine(config.engine_config(), self.identity, self.store, self.file_store)
        self._endpoint: UdpEndpoint | None = None
        self._udp_host = config.udp_host  # what the main socket is bound to (the spares bind the same)
        self._spares: dict[int, UdpEndpoint] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._subscribers: set[asyncio.Queue[JSON]] = set()
        self._stopped = asyncio.Event()
        self._housekeeping: asyncio.Task[None] | None = None
        self._flush_scheduled = False
        # The page's sends waiting for the next flush to store them, with
        # the futures their answers go to.
        self._outbox: list[tuple[Draft, asyncio.Future[JSON]]] = []
        # Sends to an id we never heard of, held until the server says whether
        # it ever assigned it (PeerEngine.look_up), by that id.
        self._looking_up: dict[int, list[tuple[Draft, asyncio.Future[JSON]]]] = {}
        # add_contact of ids never heard of: id -> futures told whether the server ever assigned it.
        self._contact_lookups: dict[int, list[asyncio.Future[bool]]] = {}
        self._saved_id: int | None = None  # the id in the data dir's last-id file
        self._reported: set[str] = set()  # internal errors already logged with their traceback
        self._refusals_logged: set[int] = set()  # errnos of refused sends already logged
        self._port_mapper: PortMapper | None = None
        self._public_seen: tuple[Address | None, tuple[Address, ...]] = (None, ())  # observed, other family's

    # ------------------------------------------------------------ what tests and the CLI look at

    @property
    def stats(self) -> Counter[str]:
        """Counters of drops and decisions, shared with the sockets."""
        return self.engine.stats

    @property
    def registration(self) -> RegistrationMachine:
        return self.engine.registration

    @property
    def peer_states(self) -> dict[int, PeerSession]:
        return self.engine.peer_states

    def peer_state(self, peer_id: int) -> PeerSession:
        # A caller's None or "7" would become a session (and a contact the
        # server is asked to WATCH) that breaks every later flush.
        if type(peer_id) is not int or peer_id < 1:
            raise ValueError(f"a peer id is a positive int, not {peer_id!r}")
        return self.engine.session(peer_id)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.store.open()
        self._endpoint = self._bind_main()
        try:
            servers: list[Address] = []
            names: list[str] = []
            for server in (self.config.server, *self.config.fallback_servers):
                for address in await self._resolve_server(server):
                    if address not in servers:
                        servers.append(address)
                        names.append(address_text(server))
        except OSError:
            self._endpoint.close()
            self._endpoint = None
            raise
        # Names are shown only when several servers were given (else the page shows the one).
        self.registration.use_servers(tuple(servers), tuple(names) if self.config.fallback_servers else ())
        self._endpoint.start()
        self._saved_id = last_id.load(self.config.data_dir, self.config.server)
        local = self._local_candidates()
        self.engine.start(local, self.clock(), last_id=self._saved_id)
        self._housekeeping = asyncio.create_task(self._expire_queued_periodically())
        self._flush()
        self._start_port_mapping()

    def _start_port_mapping(self) -> None:
        """Ask the IPv4 default gateway to map our port, unless told not to or
        a server is on this host (no router between: nothing to gain, and no
        datagram of a test on loopback leaves the host).  A server reached
        over IPv6 is no reason not to: we still talk IPv4 with peers."""
        if not self.config.port_mapping or not worth_mapping(self.registration.servers):
            return
        mapper = PortMapper.for_default_gateway(self.udp_address[1], self._port_mapped, clock=self.clock)
        if mapper is None:
            return
        try:
            mapper.start()
        except OSError as error:
            logger.info("port mapping: cannot open its socket: %s", error)
            return
        self._port_mapper = mapper

    def _port_mapped(self, mapping: Mapping | None) -> None:
        self.engine.port_mapped(mapping, self.clock())
        self._flush()

    async def stop(self) -> None:
        """Unregister (waiting briefly for the answer), close links and the store."""
        if self._endpoint is None:
            return
        mapper, self._port_mapper = self._port_mapper, None
        if mapper is not None:
            await mapper.stop(PORT_MAPPING_STOP_WAIT)
        self.engine.stop(self.clock())
        self._flush()
        try:
            await asyncio.wait_for(self._stopped.wait(), STOP_WAIT)
        except TimeoutError:
            pass
        self.engine.close_links()
        self._flush()
        for waiting in self._looking_up.values():
            for _, future in waiting:
                if not future.done():
                    future.set_exception(ApiError(503, "webpeer is stopping"))
        self._looking_up.clear()
        for contacts in self._contact_lookups.values():
            for contact in contacts:
                if not contact.done():
                    contact.set_exception(ApiError(503, "webpeer is stopping"))
        self._contact_lookups.clear()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self._timer is not None:
            self._timer.cancel()
        for spare in self._spares.values():
            spare.close()
        self._spares.clear()
        self._endpoint.close()
        self._endpoint = None
        self.file_store.close()
        self.store.close()

    @property
    def udp_address(self) -> Address:
        assert self._endpoint is not None
        return self._endpoint.address

    def _bind_main(self) -> UdpEndpoint:
        """The main socket: on the configured host, or by default dual-stack,
        so that an IPv6 server (or peer) is reachable as well as an IPv4 one;
        plain IPv4 where the host has no IPv6."""

        def bind(host: str) -> UdpEndpoint:
            return UdpEndpoint.bind(
                host,
                self.config.udp_port,
                self._on_datagram,
                self._flush,
                self.engine.stats,
                on_refused=self._send_refused,
            )

        if self.config.udp_host:
            return bind(self.config.udp_host)
        try:
            endpoint = bind(DUAL_STACK)
            self._udp_host = DUAL_STACK
        except OSError:
            endpoint = bind(IPV4_ANY)
            self._udp_host = IPV4_ANY
        return endpoint

    async def _resolve_server(self, server: Address | None = None) -> tuple[Address, ...]:
        """The server's addresses, in getaddrinfo's order, that our socket can
        send to: the registration tries each in turn until one answers.  Kept
        in the form the socket reports senders in (IPv4 as plain IPv4, even
        when written IPv4-mapped), because the engine tells the server's
        datagrams from the others by comparing addresses."""
        host, port = server or self.config.server
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP
            )
        except socket.gaierror as error:
            raise ServerNameError(f"cannot resolve the rendezvous server {host!r}: {error.strerror}") from None
        v4_only = ":" not in self._udp_host
        v6_only = ":" in self._udp_host and self._udp_host != DUAL_STACK
        found: list[Address] = []
        for family, _, _, _, sockaddr in infos:
            address = normalise(sockaddr)
            is_v6 = ":" in address[0]
            if (v4_only and is_v6) or (v6_only and not is_v6) or family not in (socket.AF_INET, socket.AF_INET6):
                continue
            if address not in found:
                found.append(address)
        if not found:
            raise ServerNameError(
                f"the rendezvous server {host!r} has no address the UDP socket on {self._udp_host} can reach"
                " (--udp-host :: reaches both IPv4 and IPv6)"
            )
        return tuple(found)

    def _local_candidates(self) -> tuple[Address, ...]:
        """The address of the interface that routes to the server, with our port."""
        port = self.udp_address[1]
        host = self._udp_host
        server = self.registration.server
        if host in (IPV4_ANY, DUAL_STACK):
            family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                try:
                    probe.connect(server)  # no packet is sent
                    host = probe.getsockname()[0]
                except OSError:
                    return ()
        return ((host, port),)

    # ------------------------------------------------------------ PeerApi

    def me(self) -> JSON:
        return self.engine.me()

    def peers_json(self) -> list[JSON]:
        return self.engine.peers_json()

    def messages(self, peer_id: int, limit: int = 500) -> list[JSON]:
        return self.engine.messages(peer_id, limit)

    def messages_page(
        self, peer_id: int, limit: int, *, before: str | None = None, after: str | None = None
    ) -> list[JSON]:
        page = self.engine.messages_page(peer_id, limit, before=before, after=after)
        if page is None:
            raise ApiError(404, f"no message {before if before is not None else after} with peer {peer_id}")
        return page

    async def send_message(self, to: int, text: str) -> JSON:
        return await self.submit_message(to, text)

    def submit_message(
        self, to: int, text: str, *, answered_on: asyncio.Queue[JSON] | None = None
    ) -> asyncio.Future[JSON]:
        """Check a message and queue it for the next flush, which stores every
        message submitted in this loop turn in one commit and then hands them
        to their links.  The future gets the stored message after that commit
        (so an answer to the page never gets ahead of the disk); bad input
        raises ApiError here.  ``answered_on``: the subscriber that gets the
        message as its answer, so not as a "message" event too."""
        text = validate.message_text(text)
        to = validate.peer_id(to, "to")
        now = self.clock()
        # Refuses our own id (400), and sending before we ever had an id (503).
        draft = self.engine.draft(to, text, now, origin=answered_on)
        future: asyncio.Future[JSON] = asyncio.get_running_loop().create_future()
        if self.engine.look_up(to, now):
            # An id we never heard of: stored only if the server ever gave it
            # out (the answer comes through _settle_lookups); 404 otherwise.
            self._looking_up.setdefault(to, []).append((draft, future))
        else:
            self._outbox.append((draft, future))
        self._schedule_flush()
        return future

    async def cancel(self, message_id: str) -> JSON:
        self.engine.cancel(message_id, self.clock())
        self._flush()
        message = self.store.get_message(message_id)
        if message is None:
            raise ApiError(404, "no such message")
        return message

    async def retry(self, message_id: str) -> JSON:
        self.engine.retry(message_id, self.clock())
        self._flush()
        message = self.store.get_message(message_id)
        if message is None:
            raise ApiError(404, "no such message")
        return message

    # ------------------------------------------------------------ files (file_transfer.py)

    async def send_file(self, to: int, name: str, mime: str, chunks: AsyncIterator[bytes]) -> JSON:
        """Copy an upload into files/ (a chunk at a time, hashing as it goes)
        and offer it to ``to``.  ApiError 413 past --max-file-size (the copy
        is removed), 400 for a bad id or name."""
        to = validate.peer_id(to, "to")
        if to == self.engine.my_id:
            raise ApiError(400, "cannot send a file to yourself")
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
            raise ApiError(400, f"a file needs a name of 1 to {MAX_NAME_CHARS} characters")
        limit = self.config.max_file_size
        try:
            path = self.file_store.create(name)
        except OSError as error:
            raise ApiError(507, f"cannot store the file: {error}") from None
        digest, size = hashlib.sha256(), 0
        try:
            async for chunk in chunks:
                if size + len(chunk) > limit:
                    raise ApiError(413, too_large(size + len(chunk), limit) + " (--max-file-size)")
                self.file_store.write(path, size, chunk)
                digest.update(chunk)
                size += len(chunk)
        except BaseException as error:
            self.file_store.release(path)
            self.file_store.local_path(path).unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise ApiError(507, f"cannot store the file: {error}") from None
            raise
        self.file_store.release(path)
        mime = mime if mime and len(mime) <= 127 else DEFAULT_MIME
        try:
            with self.store.batch():
                record = self.engine.files.offer(to, name, path, size, digest.hexdigest(), mime, self.clock())
        except BaseException:
            self.engine.rolled_back()  # the offer is written again by the next flush, then goes
            self._publish_events()
            raise
        self._flush()
        return record.to_json()

    async def accept_file(self, file_id: str) -> JSON:
        return self._file_action(self.engine.files.accept, file_id)

    async def cancel_file(self, file_id: str) -> JSON:
        return self._file_action(self.engine.files.cancel, file_id)

    async def retry_file(self, file_id: str) -> JSON:
        return self._file_action(self.engine.files.retry, file_id)

    def _file_action(self, action: Callable[[str, float], FileRecord], file_id: str) -> JSON:
        """One commit for the page's decision, then a flush sends its frames
        (file_transfer.py holds them until a commit holds the decision)."""
        try:
            with self.store.batch():
                record = action(validate_file_id(file_id), self.clock())
        except ApiError:
            raise  # refused before anything was written
        except BaseException:
            self.engine.rolled_back()  # written again by the next flush
            self._publish_events()
            raise
        self._flush()
        return record.to_json()

    def files(self, peer_id: int | None = None, limit: int = 500) -> list[JSON]:
        return [record.to_json() for record in self.store.files(peer_id, limit)]

    def file_download(self, file_id: str) -> tuple[Path, JSON]:
        """Where a file is on disk, for GET /api/files/ID: one we sent, or one
        received and verified.  ApiError 404 otherwise."""
        record = self.store.get_file(validate_file_id(file_id))
        if record is None or not record.path or (not record.outgoing and record.status != "complete"):
            raise ApiError(404, "no such file (or not complete yet)")
        return self.file_store.local_path(record.path), record.to_json()

    def mark_read(self, peer_id: int) -> None:
        self.engine.mark_read(peer_id, self.clock())
        self._publish_events()
        self._schedule_flush()  # the read receipt, if one went on a link

    async def add_contact(self, peer_id: int) -> JSON:
        """Put an id on the peer list (its presence is watched from now on)
        and return its <peer>.  An id we never heard of is asked of the server
        first: ApiError(404) if it never gave it out, 400 for our own id."""
        peer_id = validate.peer_id(peer_id, "id")
        if peer_id == self.engine.my_id:
            raise ApiError(400, "that is your own id")
        now = self.clock()
        if self.engine.look_up(peer_id, now):
            future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._contact_lookups.setdefault(peer_id, []).append(future)
            self._flush()
            if not await future:
                raise ApiError(404, unknown_peer(peer_id))
        self.engine.add_contact(peer_id, self.clock())
        self._flush()
        for peer in self.engine.peers_json():
            if peer["id"] == peer_id:
                return peer
        raise ApiError(404, unknown_peer(peer_id))  # forgotten meanwhile (the server said never assigned)

    def set_nickname(self, peer_id: int, nickname: str | None) -> None:
        self.engine.set_nickname(peer_id, nickname)
        self._publish_events()

    def set_auto_accept(self, peer_id: int, max_bytes: int) -> None:
        self.engine.set_auto_accept(peer_id, max_bytes)
        self._publish_events()

    def settings(self) -> JSON:
        return self.store.settings()

    def search(self, words: list[str], peer_id: int | None, limit: int) -> list[JSON]:
        return self.engine.search(words, peer_id, limit)

    def set_settings(self, changes: JSON) -> JSON:
        with self.store.batch():
            for key, value in changes.items():
                self.store.set_setting(key, value)
        return self.store.settings()

    def safety(self, peer_id: int) -> JSON:
        return self.engine.safety(peer_id)

    async def set_trust(self, peer_id: int, action: str) -> JSON:
        """One commit for the decision and what it moves (held messages,
        revealed ones), then a flush sends what it released."""
        chosen = Action(validate.trust_action(action))
        try:
            with self.store.batch():
                answer = self.engine.set_trust(peer_id, chosen, self.clock())
        except ApiError:
            raise  # refused before anything was written
        except BaseException:
            self.engine.rolled_back()
            self._publish_events()
            raise
        self._flush()
        return answer

    async def refresh_directory(self, timeout: float = 1.0) -> None:
        """Ask the server who is online now, unless the last directory page
        is younger than a heartbeat interval, and wait (briefly) for the
        answer: with no page open no heartbeat fetches it, and ``webpeer
        peers``, GET /api/peers and the terminal's 2.LIST show the list of now."""
        registration = self.engine.registration
        if not registration.directory_on_demand(self.clock()):
            return
        self._flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while registration.directory_pending and loop.time() < deadline:
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------ groups (webpeer/groups.py)

    def groups(self) -> list[JSON]:
        return self.engine.groups.groups_json()

    async def create_group(self, name: str, members: list[int]) -> JSON:
        answer = self.engine.groups.create(name, members, self.clock())
        self._flush()  # stored, then the op goes to the members
        return answer

    def group_messages(
        self, group_id: str, limit: int = 500, *, before: str | None = None, after: str | None = None
    ) -> list[JSON]:
        return self.engine.groups.messages_json(group_id, limit, before=before, after=after)

    def group_changes(self, group_id: str) -> list[JSON]:
        return self.engine.groups.changes_json(group_id)

    async def send_group_message(self, group_id: str, text: str) -> JSON:
        answer = self.engine.groups.post(group_id, text, self.clock())
        self._flush()
        return answer

    async def change_group(self, group_id: str, action: str, *, members: tuple[int, ...] = (), target: int = 0) -> JSON:
        now = self.clock()
        if action == "add":
            answer = self.engine.groups.change(group_id, OpKind.ADD, now, members=members)
        elif action == "remove":
            answer = self.engine.groups.change(group_id, OpKind.REMOVE, now, target=target)
        elif action == "leave":
            answer = self.engine.groups.change(group_id, OpKind.LEAVE, now)
        else:
            raise ApiError(400, f"unknown group action {action!r}")
        self._flush()
        return answer

    def subscribe(self) -> asyncio.Queue[JSON]:
        queue: asyncio.Queue[JSON] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        self._show_directory()
        return queue

    def unsubscribe(self, queue: asyncio.Queue[JSON]) -> None:
        self._subscribers.discard(queue)
        self._show_directory()

    def _show_directory(self) -> None:
        """The directory page is fetched only while a page (or the
        terminal) is connected to show it (registration.show_directory)."""
        shown = bool(self._subscribers)
        if shown != self.engine.registration.directory_shown:
            self.engine.registration.show_directory(shown, self.clock())
            self._flush()

    def _publish(self, event: PageEvent) -> None:
        skip = event.origin if isinstance(event, MessageAdded) else None
        message = event.to_json()
        for queue in list(self._subscribers):
            if queue is skip:
                continue
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                # A page that stopped reading: drop its backlog and tell it to
                # reload everything, rather than grow without bound.
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(Resync().to_json())

    def _publish_events(self) -> None:
        for event in self.engine.take_events():
            self._publish(event)

    # ------------------------------------------------------------ datagrams and timers

    def _on_datagram(self, data: bytes, address: Address) -> None:
        self._receive(data, address, 0)

    def _on_spare_datagram(self, index: int, data: bytes, address: Address) -> None:
        self._receive(data, address, index)

    def _receive(self, data: bytes, address: Address, socket: int) -> None:
        """No exception from one datagram escapes into the socket's reader (it
        would drop the rest of the batch): it is counted and, once per kind,
        logged with its traceback (it is a bug: the engine refuses bad input
        by itself)."""
        try:
            self.engine.receive_datagram(data, address, self.clock(), socket)
        except Exception as error:
            self.engine.stats["datagram_errors"] += 1
            self._report_bug_once(error, "internal error on a datagram from %r; dropped", address)

    def _send_refused(self, address: Address, code: int) -> None:
        """The kernel refused a datagram to ``address`` at once (no route to
        its network, say): if it was the first REGISTER to one of the
        server's addresses, the registration races the other family now
        rather than after CONNECTION_ATTEMPT_DELAY (RFC 8305).  Counted, and
        logged once per errno: a host without IPv6 refuses every send there."""
        self.engine.stats["sends_refused"] += 1
        if code not in self._refusals_logged:
            self._refusals_logged.add(code)
            logger.debug("sending to %s refused at once: %s", address_text(address), os.strerror(code))
        if address not in self.registration.servers:
            return  # a peer's candidate: its path's own checks give up on it
        try:
            self.registration.send_failed(address, self.clock())
        except Exception as error:
            self.engine.stats["datagram_errors"] += 1
            self._report_bug_once(error, "internal error on a refused send to %r", address)
        self._schedule_flush()  # the racing REGISTER goes out now

    def _schedule_flush(self) -> None:
        """Flush once at the end of this loop turn: many sends in one turn
        share one commit and go out in as few QUIC packets as possible."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Let the engine act in one commit, then send, publish, re-arm."""
        endpoint = self._endpoint
        if endpoint is None:
            return
        now = self.clock()
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, []
        written = self.store.rows_written
        try:
            with self.store.batch():
                self.engine.process(now, [draft for draft, _ in outbox])
        except Exception as error:
            # Rolled back: nothing it announced is on disk, nothing is
            # acknowledged (the senders send it again), and the loop goes on.
            self.engine.rolled_back()
            status = 503 if isinstance(error, StoreError) else 500
            for _, future in outbox:
                if not future.done():
                    future.set_exception(ApiError(status, f"could not store the message: {error}"))
            self._flush_failed(error)
        except BaseException:
            self.engine.rolled_back()
            raise
        else:
            self.engine.committed(now)
            # Answers first: the page's writer then finds them and these events
            # queued together, and sends them as one frame.
            for draft, future in outbox:
                if not future.done():
                    future.set_result(draft.message)
            if self.engine.storage_error is not None and self.store.rows_written > written:
                logger.warning("the history can be written again")
                self.engine.storage_recovered()
        self._publish_events()
        self._settle_lookups()
        self._remember_id()
        self._note_network_change()
        self._run_commands()
        for data, address, index in self.engine.datagrams_to_send(now):
            (self._spares.get(index, endpoint) if index else endpoint).sendto(data, address)
        if self.engine.stopped:
            self._stopped.set()
        self._arm_timer(now)

    def _note_network_change(self) -> None:
        """A new public address of ours (as the server sees it, either
        family) means the network changed: a port mapping search waiting to
        be retried is worth doing now."""
        seen = (self.registration.observed, self.registration.other_family)
        if seen != self._public_seen:
            self._public_seen = seen
            if self._port_mapper is not None and seen[0] is not None:
                self._port_mapper.network_changed()

    def _settle_lookups(self) -> None:
        """Sends held for a lookup: refused if the server never assigned the
        id, else stored by the next flush (queued if it said nothing)."""
        for answer in self.engine.take_lookups():
            for waiting in self._contact_lookups.pop(answer.peer_id, []):
                if not waiting.done():
                    waiting.set_result(not answer.never_assigned)
            for draft, future in self._looking_up.pop(answer.peer_id, []):
                if future.done():
                    continue
                if answer.never_assigned:
                    future.set_exception(ApiError(404, unknown_peer(answer.peer_id)))
                else:
                    self._outbox.append((draft, future))
                    self._schedule_flush()

    def _remember_id(self) -> None:
        """Keep the id the server gave us, for sends before the next registration."""
        peer_id = self.engine.my_id
        if peer_id is not None and peer_id != self._saved_id and self.registration.state is RegState.REGISTERED:
            self._saved_id = peer_id
            last_id.save(self.config.data_dir, self.config.server, peer_id)

    def _flush_failed(self, error: Exception) -> None:
        """One clear line when the history cannot be written (a full disk,
        a read-only or broken file), not one per datagram; the page shows it
        until a commit works again.  Anything else is a bug: its traceback,
        once per kind."""
        if isinstance(error, StoreError):
            self.engine.stats["commits_failed"] += 1
            if self.engine.storage_error is None:
                logger.error("cannot write the history (%s): nothing is acknowledged until it can; retrying", error)
            self.engine.storage_failed(str(error))
            return
        self.engine.stats["flush_errors"] += 1
        self._report_bug_once(error, "internal error while handling input; nothing of it was stored")

    def _report_bug_once(self, error: Exception, message: str, *args: object) -> None:
        """An unexpected exception is a bug: its traceback once per kind
        (type and text), not once per datagram."""
        kind = f"{type(error).__name__}: {error}"[:200]
        if kind not in self._reported:
            self._reported.add(kind)
            logger.error(message, *args, exc_info=error)

    def _run_commands(self) -> None:
        while (command := self.engine.next_command()) is not None:
            if isinstance(command, OpenSpare):
                self._open_spare(command.index)
            elif isinstance(command, CloseSpare):
                spare = self._spares.pop(command.index, None)
                if spare is not None:
                    asyncio.get_running_loop().call_later(command.after, spare.close)

    def _open_spare(self, index: int) -> None:
        try:
            # Plain sockets: each carries a few probes, and 256 batched ones
            # would take ~0.4 s (and 64 MiB) to set up, stalling this loop.
            spare = UdpEndpoint.bind(
                self._udp_host,
                0,
                functools.partial(self._on_spare_datagram, index),
                self._flush,
                self.engine.stats,
                batched=False,
                buffer_size=None,
            )
        except OSError:
            self.engine.spare_unavailable(index)
            return
        spare.start()
        self._spares[index] = spare

    def _arm_timer(self, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.engine.next_deadline()
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + max(0.0, deadline - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.engine.handle_timer(self.clock())
        self._flush()

    async def _expire_queued_periodically(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_INTERVAL)
            now = self.clock()
            self.engine.expire_queued(now - self.config.retention, now)
            self._publish_events()


def validate_file_id(file_id: object) -> str:
    if not isinstance(file_id, str) or len(file_id) != 32 or any(c not in "0123456789abcdef" for c in file_id):
        raise ApiError(404, "no such file")
    return file_id
