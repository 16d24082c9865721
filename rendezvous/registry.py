"""The registry's data model and the async interface every backend implements.

The server keeps the online peers in memory (rendezvous.directory) and uses a
backend for what must outlive the process: which identity owns which numeric
id, the last known state of each peer, and the server's secret.  The
interface is async so that a networked backend (Redis) can implement it; the
SQLite backend runs its statements inline on the loop (each is tens of
microseconds, batched), so no threads are involved.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .stun import Address

LEGACY_PREFIX = b"legacy:"


class RegistryError(Exception):
    """The registry cannot be used: a bad file or URL, a newer schema, a
    locked or read-only file, a disk or network error, or it is closed."""


class RegistryUnavailable(RegistryError):
    """A networked registry cannot be reached right now.  The backend has
    already said so in the log (once per outage), so callers need not."""


class RegistryFull(RegistryError):
    """A new identity would take the registry past its cap on ids
    (``--max-ids``); known identities still get theirs."""


def legacy_identity(address: Address) -> bytes:
    """Peers of the original plain-text protocol have no key: their address is
    their identity, so the same address gets the same id back."""
    host, port = address
    return LEGACY_PREFIX + f"{host}:{port}".encode()


def is_legacy_identity(identity: bytes) -> bool:
    return identity.startswith(LEGACY_PREFIX)


@dataclass(slots=True)
class PeerRecord:
    """Everything the registry keeps per identity.

    ``identity`` is a 32-byte Ed25519 public key, or ``legacy_identity(addr)``.
    Times are seconds since the epoch (floats).
    """

    peer_id: int
    identity: bytes
    nickname: str
    observed: Address
    local: tuple[Address, ...]
    first_seen: float
    last_seen: float
    expires_at: float
    online_since: float
    # Not stored: the SESSION token that last checked out for this peer at its
    # current address, so a REFRESH need not recompute the HMAC.
    verified_session: bytes | None = field(default=None, compare=False, repr=False)
    # Which instance the peer is registered with, when several share one
    # registry: "" for this one (the peer's home is here), else the other
    # instance's name (a mirrored record: listed and CONNECT-able here, but
    # its introductions leave from its home).  Not compared: the same peer
    # is the same record wherever it is mirrored.
    home: str = field(default="", compare=False)


class Registry(Protocol):
    """Persistent registry backend.

    Contract:
    * ``assign_id`` returns the id already bound to ``identity`` or binds the
      next free id (1, 2, 3 ...).  When it returns, the binding is durable:
      a ``kill -9`` right after cannot lose it.  Concurrent calls may be
      committed together (group commit).
    * ``save`` records the latest state of peers.  It may be called often with
      small batches; durability of that state is best effort (the server
      batches refreshes and calls it every few seconds and at shutdown).
    * ``load_online`` returns the records whose ``expires_at`` is after ``now``,
      in id order (used at start-up so a restarted server still knows who is
      online); with ``limit``, only that many, starting after ``after_id``.
    * ``highest_id`` returns the highest id ever assigned (0 if none): ids
      are reused only below it (``release_unseen``), so every id above it is
      one nobody was ever given
      (the server answers CONNECT to such an id with 410, not 404).
    * ``assign_id`` raises :class:`RegistryFull` for a new identity when the
      registry already holds its ``max_ids`` (a constructor option).
    * ``release_unseen(before, limit)`` deletes up to ``limit`` records whose
      ``last_seen`` is before ``before`` (and after 0) and whose ``expires_at``
      is before it too, and returns their ids; ``assign_id`` gives those ids
      to new identities, lowest first, before any id above ``highest_id``.
      Ids in ``keep`` (the server's online peers) are never released.
    * ``secret`` returns a 32-byte random secret created on first use and kept,
      so that challenges and session tokens survive a restart.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def assign_id(self, identity: bytes) -> int: ...

    async def lookup_id(self, identity: bytes) -> int | None: ...

    async def save(self, records: Iterable[PeerRecord]) -> None: ...

    async def load_online(self, now: float, after_id: int = 0, limit: int | None = None) -> list[PeerRecord]: ...

    async def get(self, peer_id: int) -> PeerRecord | None: ...

    async def count(self) -> int: ...

    async def release_unseen(self, before: float, limit: int = 1000, *, keep: Container[int] = ()) -> list[int]: ...

    async def highest_id(self) -> int: ...

    async def secret(self) -> bytes: ...


# Called with records another instance wrote (its peers' latest state).
RecordsHandler = Callable[[list[PeerRecord]], None]
# Called with (target peer id, INTRODUCE datagram) forwarded by another instance.
IntroductionHandler = Callable[[int, bytes], None]


class Presence(Protocol):
    """What instances sharing one registry tell each other (Redis pub/sub in
    :mod:`rendezvous.redis_registry`; docs/ARCHITECTURE.md, "Several
    instances").  The records themselves travel with ``Registry.save``."""

    @property
    def instance(self) -> str:
        """This instance's name, as other instances see it in ``PeerRecord.home``."""
        ...

    async def start(self, instance: str, on_records: RecordsHandler, on_introduction: IntroductionHandler) -> None:
        """Take the name ``instance`` and start listening; ``on_records`` also
        gets a full reload of the online peers after every reconnection."""
        ...

    async def forward_many(self, items: Sequence[tuple[str, int, bytes]]) -> None:
        """Hand datagrams (INTRODUCE, relayed DATA) for peers registered with
        other instances to those (home, target id, datagram), which send them on."""
        ...
