"""How the server core answers the course project's plain-text protocol
(``--legacy-text``; the text format itself is in legacy.py).

A mixin of :class:`rendezvous.core.ServerCore`: it uses the core's
directory, limits and outbox, and lives here so that core.py is about the
STUN protocol.  Plain text cannot prove an address, so only addresses that
registered get LIST and CONNECT answers, rate limited and under a per-IP
byte budget, and an unverified reply is never larger than 3x its request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import legacy as legacy_text
from .events import AMPLIFICATION_FACTOR, MAX_REPLY_BYTES, PeerOffline, PendingRegistration, RequestReceived
from .registry import is_legacy_identity, legacy_identity
from .stun import Address

if TYPE_CHECKING:
    from .core import ServerCore

    _Base = ServerCore
else:
    _Base = object


class LegacyTextMixin(_Base):
    """The text protocol for :class:`rendezvous.core.ServerCore` (see the module docstring)."""

    def _receive_legacy(self, data: bytes, address: Address, now: float) -> None:
        me = self.directory.legacy_peer_at(address)
        try:
            request = legacy_text.parse_request(data)
        except legacy_text.LegacyProtocolError as error:
            self.stats["legacy_errors"] += 1
            self._legacy_reply(error.reply, address, len(data), me is not None)
            return
        self.stats["legacy_requests"] += 1
        if isinstance(request, legacy_text.LegacyRegister):
            self._events.append(RequestReceived("REGISTER", address))
            if not self._register_limit.allow(address[0], now):
                self._legacy_reply(legacy_text.format_error("rate limited"), address, len(data), False)
                return
            self._registrations.append(
                PendingRegistration(legacy_identity(address), address, "", (), self.config.default_ttl, None, len(data))
            )
            return
        kind = {legacy_text.LegacyList: "LIST", legacy_text.LegacyConnect: "CONNECT", legacy_text.LegacyExit: "EXIT"}
        detail = f" to peer {request.target_id}" if isinstance(request, legacy_text.LegacyConnect) else ""
        self._events.append(RequestReceived(kind[type(request)], address, detail))
        if me is None:
            # The plain-text protocol cannot prove an address; answering LIST or
            # CONNECT to anyone would make the server an amplifier.  Only
            # addresses that registered get answers (and those are rate limited).
            self._legacy_reply(legacy_text.format_error("register first"), address, len(data), False)
            return
        if not self._request_limit.allow(me.peer_id, now):
            self._drop("legacy rate limited", address)
            return
        if not self._legacy_bytes.allow(address[0], now, MAX_REPLY_BYTES):
            # A legacy REGISTER proves nothing, so a spoofed one could make this
            # address a target; the per-IP byte budget caps what any one IP
            # (whatever its ports) can be sent, i.e. the worst amplification.
            self._drop("legacy byte budget", address)
            return
        # The original client never refreshes: any request counts as one.
        me.last_seen = now
        me.expires_at = now + self.config.default_ttl
        self.directory.touch(me)
        if isinstance(request, legacy_text.LegacyList):
            entries = [
                (r.peer_id, r.observed)
                for r in self.directory.page(0, self.config.list_max_limit, legacy=True)
                if r.peer_id != me.peer_id
            ]
            self._outbox.append((legacy_text.format_list_ack(entries), address))
        elif isinstance(request, legacy_text.LegacyConnect):
            target = self.directory.get(request.target_id)
            if target is None or not is_legacy_identity(target.identity):
                self._outbox.append((legacy_text.format_error(f"unknown peer {request.target_id}"), address))
            else:
                self._outbox.append((legacy_text.format_connect_ack(target.observed), address))
        else:
            self.directory.remove(me.peer_id, now)
            self._events.append(PeerOffline(me.peer_id, "unregistered"))
            self._outbox.append((legacy_text.format_exit_ack(), address))

    def _legacy_reply(self, data: bytes, address: Address, request_length: int, verified: bool) -> None:
        if not verified and len(data) > AMPLIFICATION_FACTOR * request_length:
            self._drop("legacy reply would amplify", address)
            return
        self._outbox.append((data, address))
