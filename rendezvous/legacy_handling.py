"""How the server answers the course project's plain-text protocol
(``--legacy-text``; the text format itself is in legacy.py).

:class:`LegacyTextHandler` owns the text protocol's own state (the per-IP
reply byte budget) and reaches the server core only through
:class:`LegacyContext`: the directory and config, the core's outputs, its
drop counter and the two rate limits it shares with the STUN side.  Plain
text cannot prove an address, so only addresses that registered get LIST and
CONNECT answers, rate limited and under a per-IP byte budget, and an
unverified reply is never larger than 3x its request.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from . import legacy as legacy_text
from .directory import Directory
from .events import (
    AMPLIFICATION_FACTOR,
    MAX_REPLY_BYTES,
    Event,
    PeerOffline,
    PendingRegistration,
    RequestReceived,
    ServerConfig,
)
from .ratelimit import KeyedLimiter
from .registry import is_legacy_identity, legacy_identity
from .stun import Address


class LegacyContext(Protocol):
    """What the handler may use of the server core.

    ``config`` and ``directory`` are read on every use: the adapter and the
    tests may replace either on the core while it runs.
    """

    @property
    def config(self) -> ServerConfig: ...

    @property
    def directory(self) -> Directory: ...

    @property
    def stats(self) -> Counter[str]: ...

    def send(self, data: bytes, address: Address) -> None:
        """Queue a datagram for ``address``."""

    def report(self, event: Event) -> None:
        """Hand an event to the adapter (logging)."""

    def drop(self, reason: str, address: Address) -> None:
        """Count (and report) a datagram that gets no answer."""

    def queue_registration(self, pending: PendingRegistration) -> None:
        """Hand a REGISTER to the adapter, which asks the registry for the id."""

    def allow_register(self, address: Address, now: float) -> bool:
        """The REGISTER budget of the source IP, shared with STUN REGISTERs."""

    def allow_request(self, peer_id: int, now: float) -> bool:
        """The request budget of a registered peer, shared with STUN LIST and CONNECT."""


_KINDS: dict[type[legacy_text.LegacyRequest], str] = {
    legacy_text.LegacyList: "LIST",
    legacy_text.LegacyConnect: "CONNECT",
    legacy_text.LegacyExit: "EXIT",
}


class LegacyTextHandler:
    """The text protocol's answers (see the module docstring)."""

    def __init__(self, context: LegacyContext) -> None:
        self._context = context
        rate = context.config.legacy_bytes_per_second
        self._bytes = KeyedLimiter(rate, rate * 2)
        # REGISTERs handed to the registry and not answered yet, per IP: they
        # count against the per-IP id cap before they are online.
        self._assigning: Counter[str] = Counter()

    def receive(self, data: bytes, address: Address, now: float) -> None:
        """One datagram that looks like text.  Never raises for anything a remote can send."""
        ctx = self._context
        me = ctx.directory.legacy_peer_at(address)
        try:
            request = legacy_text.parse_request(data)
        except legacy_text.LegacyProtocolError as error:
            ctx.stats["legacy_errors"] += 1
            self._reply(error.reply, address, len(data), me is not None)
            return
        ctx.stats["legacy_requests"] += 1
        if isinstance(request, legacy_text.LegacyRegister):
            ctx.report(RequestReceived("REGISTER", address))
            if not ctx.allow_register(address, now):
                self._reply(legacy_text.format_error("rate limited"), address, len(data), False)
                return
            host = address[0]
            if (
                me is None
                and ctx.directory.legacy_count_at(host) + self._assigning[host] >= ctx.config.legacy_ids_per_ip
            ):
                ctx.stats["legacy_ip_cap"] += 1
                self._reply(legacy_text.format_error("ip limit"), address, len(data), False)
                return
            self._assigning[host] += 1
            ctx.queue_registration(
                PendingRegistration(legacy_identity(address), address, "", (), ctx.config.default_ttl, None, len(data))
            )
            return
        detail = f" to peer {request.target_id}" if isinstance(request, legacy_text.LegacyConnect) else ""
        ctx.report(RequestReceived(_KINDS[type(request)], address, detail))
        if me is None:
            # The plain-text protocol cannot prove an address; answering LIST or
            # CONNECT to anyone would make the server an amplifier.  Only
            # addresses that registered get answers (and those are rate limited).
            self._reply(legacy_text.format_error("register first"), address, len(data), False)
            return
        if not ctx.allow_request(me.peer_id, now):
            ctx.drop("legacy rate limited", address)
            return
        if not self._bytes.allow(address[0], now, MAX_REPLY_BYTES):
            # A legacy REGISTER proves nothing, so a spoofed one could make this
            # address a target; the per-IP byte budget caps what any one IP
            # (whatever its ports) can be sent, i.e. the worst amplification.
            ctx.drop("legacy byte budget", address)
            return
        # The original client never refreshes: any request counts as one.
        me.last_seen = now
        me.expires_at = now + ctx.config.default_ttl
        ctx.directory.touch(me)
        if isinstance(request, legacy_text.LegacyList):
            entries = [
                (r.peer_id, r.observed)
                for r in ctx.directory.page(0, ctx.config.list_max_limit, legacy=True)
                if r.peer_id != me.peer_id
            ]
            ctx.send(legacy_text.format_list_ack(entries), address)
        elif isinstance(request, legacy_text.LegacyConnect):
            target = ctx.directory.get(request.target_id)
            if target is None or not is_legacy_identity(target.identity):
                ctx.send(legacy_text.format_error(f"unknown peer {request.target_id}"), address)
            else:
                ctx.send(legacy_text.format_connect_ack(target.observed), address)
        else:
            ctx.directory.remove(me.peer_id, now)
            ctx.report(PeerOffline(me.peer_id, "unregistered"))
            ctx.send(legacy_text.format_exit_ack(), address)

    def registered(self, pending: PendingRegistration, peer_id: int) -> None:
        """The registry gave a text REGISTER its id."""
        self._assigned(pending)
        # The REGISTER proved nothing: its answer, too, stays within 3x.
        self._reply(legacy_text.format_register_ack(peer_id), pending.address, pending.request_length, False)

    def registration_failed(self, pending: PendingRegistration) -> None:
        """The registry could not give a text REGISTER an id."""
        self._assigned(pending)
        self._reply(legacy_text.format_error("try again later"), pending.address, pending.request_length, False)

    def _assigned(self, pending: PendingRegistration) -> None:
        host = pending.address[0]
        self._assigning[host] -= 1
        if self._assigning[host] <= 0:
            del self._assigning[host]

    def _reply(self, data: bytes, address: Address, request_length: int, verified: bool) -> None:
        if not verified and len(data) > AMPLIFICATION_FACTOR * request_length:
            self._context.drop("legacy reply would amplify", address)
            return
        self._context.send(data, address)
