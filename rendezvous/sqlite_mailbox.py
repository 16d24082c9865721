"""The offline mailbox in the registry's SQLite file (docs/PROTOCOL.md 5.11).

One table, ``mailbox``, beside the registry's; each DEPOSIT and FETCH is one
``BEGIN IMMEDIATE`` transaction on the registry's connection, so the quota
check and the write cannot interleave with another's (the registry's file
belongs to one server process).  Made by :meth:`SqliteRegistry.mailbox`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager

from .mailbox import MAILBOX_FULL, SENDER_QUOTA, Mail, MailboxFull, MailLimits

SCHEMA = """
CREATE TABLE IF NOT EXISTS mailbox (
    recipient    INTEGER NOT NULL,
    mail_id      BLOB NOT NULL,
    sender       INTEGER NOT NULL,
    deposited_at REAL NOT NULL,
    sealed       BLOB NOT NULL,
    PRIMARY KEY (recipient, mail_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS mailbox_order ON mailbox (recipient, deposited_at, mail_id);
CREATE INDEX IF NOT EXISTS mailbox_sender ON mailbox (sender, deposited_at);
CREATE INDEX IF NOT EXISTS mailbox_age ON mailbox (deposited_at);
"""

Connection = Callable[[], AbstractContextManager[sqlite3.Connection]]


class SqliteMailbox:
    """:class:`rendezvous.mailbox.Mailbox` on the registry's connection.
    ``reading`` and ``writing`` are the registry's: the open connection
    (errors become RegistryError), and one write transaction on it."""

    def __init__(self, reading: Connection, writing: Connection) -> None:
        self._reading = reading
        self._writing = writing

    async def deposit(self, mail: Mail, limits: MailLimits) -> bool:
        since = mail.deposited_at - limits.max_age
        size = len(mail.sealed)
        with self._writing() as conn:
            if conn.execute(
                "SELECT 1 FROM mailbox WHERE recipient = ? AND mail_id = ?", (mail.recipient, mail.mail_id)
            ).fetchone():
                return False
            count, stored = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(sealed)), 0) FROM mailbox"
                " WHERE recipient = ? AND deposited_at >= ?",
                (mail.recipient, since),
            ).fetchone()
            if count + 1 > limits.max_messages or stored + size > limits.max_bytes:
                raise MailboxFull(MAILBOX_FULL)
            count, stored = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(sealed)), 0) FROM mailbox WHERE sender = ? AND deposited_at >= ?",
                (mail.sender, since),
            ).fetchone()
            if count + 1 > limits.sender_max_messages or stored + size > limits.sender_max_bytes:
                raise MailboxFull(SENDER_QUOTA)
            conn.execute(
                "INSERT INTO mailbox (recipient, mail_id, sender, deposited_at, sealed) VALUES (?, ?, ?, ?, ?)",
                (mail.recipient, mail.mail_id, mail.sender, mail.deposited_at, mail.sealed),
            )
        return True

    async def fetch(self, recipient: int, delete: bytes | None, now: float, max_age: float) -> tuple[Mail | None, int]:
        with self._writing() as conn:
            if delete is not None:
                conn.execute("DELETE FROM mailbox WHERE recipient = ? AND mail_id = ?", (recipient, delete))
            conn.execute("DELETE FROM mailbox WHERE recipient = ? AND deposited_at < ?", (recipient, now - max_age))
            row = conn.execute(
                "SELECT mail_id, sender, deposited_at, sealed FROM mailbox WHERE recipient = ?"
                " ORDER BY deposited_at, mail_id LIMIT 1",
                (recipient,),
            ).fetchone()
            (count,) = conn.execute("SELECT COUNT(*) FROM mailbox WHERE recipient = ?", (recipient,)).fetchone()
        if row is None:
            return None, 0
        mail_id, sender, deposited_at, sealed = row
        return Mail(recipient, int(sender), bytes(mail_id), bytes(sealed), float(deposited_at)), int(count)

    async def purge(self, before: float, limit: int = 1000) -> int:
        with self._writing() as conn:
            cursor = conn.execute(
                "DELETE FROM mailbox WHERE (recipient, mail_id) IN"
                " (SELECT recipient, mail_id FROM mailbox WHERE deposited_at < ? LIMIT ?)",
                (before, limit),
            )
            return max(cursor.rowcount, 0)
