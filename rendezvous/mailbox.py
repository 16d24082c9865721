"""The offline mailbox's data model and the async port its stores implement
(docs/PROTOCOL.md 5.11, 5.12).

The mailbox lives with the registry: :class:`rendezvous.sqlite_mailbox.SqliteMailbox`
in the registry's SQLite file, :class:`rendezvous.redis_mailbox.RedisMailbox` in
its Redis database.  A store only ever sees what the server sees: the two
ids, the sender's MAIL-ID, the sealed bytes (end-to-end encrypted by the
peers) and the deposit time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# 486 reason phrases (docs/PROTOCOL.md 6): whose quota a DEPOSIT would pass.
MAILBOX_FULL = "Mailbox Full"
SENDER_QUOTA = "Sender Quota"


class MailboxFull(Exception):
    """A DEPOSIT would take the recipient's mailbox (``MAILBOX_FULL``) or the
    sender's deposits (``SENDER_QUOTA``) past a quota; nothing was stored."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Mail:
    recipient: int
    sender: int
    mail_id: bytes
    sealed: bytes
    deposited_at: float  # Unix seconds


@dataclass(frozen=True, slots=True)
class MailLimits:
    """Quotas (count and sealed bytes waiting) per recipient and per sender,
    and how long a message may wait."""

    max_messages: int = 200
    max_bytes: int = 128 * 1024
    sender_max_messages: int = 200
    sender_max_bytes: int = 128 * 1024
    max_age: float = 14 * 86400.0


class Mailbox(Protocol):
    """Contract (tests/unit/test_mailbox_store.py runs it on both stores):

    * ``deposit`` stores ``mail`` unless a message with its (recipient,
      MAIL-ID) waits already (then it returns False and changes nothing);
      raises :class:`MailboxFull` if storing it would pass a quota of
      ``limits``, counting only messages younger than ``limits.max_age``;
      the check and the write are one atomic step.  Durable when it returns.
    * ``fetch`` first deletes ``delete`` (a MAIL-ID) from ``recipient``'s
      mailbox if it is there, and the recipient's messages deposited before
      ``now - max_age``; then returns the oldest remaining (by deposit time,
      then MAIL-ID) and how many remain (that one included).
    * ``purge`` deletes up to ``limit`` messages deposited before ``before``,
      anyone's, and returns how many it deleted.
    * Failures raise :class:`rendezvous.registry.RegistryError`.
    """

    async def deposit(self, mail: Mail, limits: MailLimits) -> bool: ...

    async def fetch(
        self, recipient: int, delete: bytes | None, now: float, max_age: float
    ) -> tuple[Mail | None, int]: ...

    async def purge(self, before: float, limit: int = 1000) -> int: ...
