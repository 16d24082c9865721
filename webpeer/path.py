"""Where a link's datagrams go: straight to an address, or through the
rendezvous server's relay (docs/PROTOCOL.md, SEND/DATA).

A relayed path has no address of its own: the server carries its
datagrams to the peer by id.  Code that sends asks which kind it holds
instead of comparing against a made-up address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from rendezvous.stun import Address


@dataclass(frozen=True, slots=True)
class Direct:
    """Datagrams go to ``address`` over our own socket."""

    address: Address

    def __str__(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Relayed:
    """Datagrams go to the rendezvous server, which hands them to ``peer_id``."""

    peer_id: int

    def __str__(self) -> str:
        return f"relay to peer {self.peer_id}"


Path = Direct | Relayed


class Transmit(NamedTuple):
    """A datagram for the node to send: on which socket (0: the main one;
    others are many-port probing's spares) to which address."""

    data: bytes
    address: Address
    socket: int = 0
