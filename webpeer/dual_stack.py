"""IPv4 and IPv6 side by side (pure): which addresses are worth probing, and
learning our address in the family we did not register over
(docs/PROTOCOL.md 11.10).

The peer registers over one of the server's addresses.  When the server has
an address of the other family too (a name with A and AAAA records, or
``--server`` listing both), :class:`OtherFamilyProbe` sends it a Binding
from the main socket: its XOR-MAPPED-ADDRESS is our address in that family
as the internet sees it (for IPv6 usually the interface's own global
address, since homes do not NAT IPv6).  The registration offers it to other
peers as one more local CANDIDATE, so the wire does not change.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable

from rendezvous.stun import Address, Attr, Message, MessageClass, Method, encode

# Sends of one Binding to the server's other address (seconds after the
# start); unanswered after the last wait: the family is not reachable now.
PROBE_SENDS = (0.0, 0.5, 1.5)
PROBE_GIVE_UP = 3.5


def family(address: Address) -> int:
    """6 for an IPv6 host, 4 for IPv4 (names never get here: the node resolves them)."""
    return 6 if ":" in address[0] else 4


def probeable(address: Address, mine: Address | None) -> bool:
    """Whether a candidate from the server or a peer may be sent probes and
    QUIC: a unicast address with a port.  Never the unspecified address,
    multicast, broadcast or reserved space, a link-local address (its zone
    is not carried, so it names no one in particular), or an IPv4-mapped or
    IPv4-compatible IPv6 form (it would smuggle an IPv4 address past the
    IPv4 rules); loopback only when the server sees us on loopback too (peers
    and server on one host)."""
    try:
        ip = ipaddress.ip_address(address[0])
    except ValueError:
        return False
    if not 0 < address[1] < 65536 or ip.is_unspecified or ip.is_multicast or ip.is_link_local:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None or ip.sixtofour is not None or ip.teredo is not None:
            return False
        if (ip in _IPV4_COMPATIBLE and not ip.is_loopback) or ip.is_site_local:
            return False
    elif ip.is_reserved or ip == _BROADCAST or ip in _THIS_NETWORK:
        return False
    if ip.is_loopback:
        return mine is not None and _is_loopback(mine[0])
    return True


_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def other_family_server(servers: tuple[Address, ...], in_use: Address) -> Address | None:
    """The first of the server's addresses in the family we do not register over."""
    return next((server for server in servers if family(server) != family(in_use)), None)


class OtherFamilyProbe:
    """A Binding to the server's address of the other family, sent again on
    :data:`PROBE_SENDS` until answered; :meth:`receive` returns the address
    it reports, once checked."""

    def __init__(self, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self._random = random_bytes
        self.server: Address | None = None
        self._transaction: bytes | None = None
        self._sends: list[float] = []  # when the next sends are due
        self._give_up: float | None = None
        self._outbox: list[tuple[bytes, Address]] = []
        self.gave_up = False  # the last probe had no answer

    def start(self, server: Address | None, now: float) -> None:
        """Ask ``server`` (None: the server has no address of the other family: stop)."""
        self.server = server
        self.gave_up = False
        if server is None:
            self._transaction, self._sends, self._give_up = None, [], None
            return
        self._transaction = self._random(12)
        self._sends = [now + delay for delay in PROBE_SENDS]
        self._give_up = now + PROBE_GIVE_UP
        self.handle_timer(now)

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        if self._transaction is None:
            return None
        return self._sends[0] if self._sends else self._give_up

    def handle_timer(self, now: float) -> None:
        if self._transaction is None or self.server is None:
            return
        while self._sends and self._sends[0] <= now:
            self._sends.pop(0)
            message = Message(Method.BINDING, MessageClass.REQUEST, self._transaction)
            self._outbox.append((encode(message), self.server))
        if not self._sends and self._give_up is not None and self._give_up <= now:
            self._transaction, self._give_up = None, None
            self.gave_up = True

    def owns(self, message: Message, address: Address) -> bool:
        return self._transaction is not None and address == self.server and message.transaction_id == self._transaction

    def receive(self, message: Message, address: Address) -> Address | None:
        """Our address in the other family, from the answer to our Binding;
        None if this is not that answer or it names nothing usable."""
        if not self.owns(message, address) or message.method != Method.BINDING:
            return None
        self._transaction, self._sends, self._give_up = None, [], None
        mapped = message.get(Attr.XOR_MAPPED_ADDRESS) if message.message_class == MessageClass.SUCCESS else None
        if not isinstance(mapped, tuple) or family(mapped) != family(address) or not probeable(mapped, address):
            return None
        return mapped
