"""The Mailbox contract (rendezvous/mailbox.py) on both stores: the
registry's SQLite file, and a real ``redis-server`` (skipped when it is not
installed)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rendezvous.mailbox import MAILBOX_FULL, SENDER_QUOTA, Mail, Mailbox, MailboxFull, MailLimits
from rendezvous.redis_registry import RedisRegistry
from rendezvous.sqlite_registry import SqliteRegistry

T0 = 1_800_000_000.0
LIMITS = MailLimits(max_messages=3, max_bytes=100, sender_max_messages=4, sender_max_bytes=150, max_age=1000.0)


def mail(recipient: int, sender: int, n: int, size: int = 10, at: float = T0) -> Mail:
    return Mail(recipient, sender, n.to_bytes(16, "big"), bytes([n % 256]) * size, at)


@pytest.fixture(params=["sqlite", "redis"])
async def box(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Mailbox]:
    registry: SqliteRegistry | RedisRegistry
    if request.param == "sqlite":
        registry = SqliteRegistry(tmp_path / "registry.sqlite3")
    else:
        registry = RedisRegistry(request.getfixturevalue("redis_server").url, prefix="mailtest:")
    await registry.open()
    checked: Mailbox = registry.mailbox()  # mypy checks the port is implemented
    yield checked
    await registry.close()


async def test_fetch_hands_out_oldest_first_and_deletes_what_it_is_told(box: Mailbox) -> None:
    assert await box.fetch(2, None, T0, 1000.0) == (None, 0)
    second = mail(2, 1, 7, at=T0 + 1)
    first = mail(2, 3, 9, at=T0)
    assert await box.deposit(second, LIMITS)
    assert await box.deposit(first, LIMITS)
    assert await box.deposit(mail(5, 1, 1), LIMITS)  # someone else's
    assert await box.fetch(2, None, T0 + 2, 1000.0) == (first, 2)
    # Fetching again without deleting hands out the same one.
    assert await box.fetch(2, None, T0 + 2, 1000.0) == (first, 2)
    assert await box.fetch(2, first.mail_id, T0 + 2, 1000.0) == (second, 1)
    # A MAIL-ID not waiting (any more) deletes nothing.
    assert await box.fetch(2, first.mail_id, T0 + 2, 1000.0) == (second, 1)
    assert await box.fetch(2, second.mail_id, T0 + 2, 1000.0) == (None, 0)
    assert (await box.fetch(5, None, T0 + 2, 1000.0))[1] == 1


async def test_a_repeated_deposit_stores_once(box: Mailbox) -> None:
    one = mail(2, 1, 1)
    assert await box.deposit(one, LIMITS)
    assert not await box.deposit(Mail(2, 1, one.mail_id, b"other bytes", T0 + 5), LIMITS)
    assert await box.fetch(2, None, T0, 1000.0) == (one, 1)


async def test_recipient_quota_counts_messages_and_bytes_and_loses_nothing(box: Mailbox) -> None:
    kept = [mail(2, 10 + n, n) for n in range(3)]
    for item in kept:
        assert await box.deposit(item, LIMITS)
    with pytest.raises(MailboxFull) as full:
        await box.deposit(mail(2, 20, 3), LIMITS)
    assert full.value.reason == MAILBOX_FULL
    # Bytes: another recipient, one message of 60 then one of 41 passes 100.
    assert await box.deposit(mail(4, 30, 4, size=60), LIMITS)
    with pytest.raises(MailboxFull):
        await box.deposit(mail(4, 31, 5, size=41), LIMITS)
    assert await box.deposit(mail(4, 31, 6, size=40), LIMITS)  # exactly 100
    # What was stored is all there, in order.
    got = []
    delete = None
    while True:
        item, _ = await box.fetch(2, delete, T0, 1000.0)
        if item is None:
            break
        got.append(item)
        delete = item.mail_id
    assert got == sorted(kept, key=lambda m: m.mail_id)
    # Fetched and deleted: room again.
    assert await box.deposit(mail(2, 20, 3), LIMITS)


async def test_sender_quota_spans_recipients_and_frees_as_they_fetch(box: Mailbox) -> None:
    for n in range(4):
        assert await box.deposit(mail(10 + n, 1, n), LIMITS)
    with pytest.raises(MailboxFull) as full:
        await box.deposit(mail(20, 1, 9), LIMITS)
    assert full.value.reason == SENDER_QUOTA
    first, _ = await box.fetch(10, None, T0, 1000.0)
    assert first is not None
    await box.fetch(10, first.mail_id, T0, 1000.0)
    assert await box.deposit(mail(20, 1, 9), LIMITS)
    with pytest.raises(MailboxFull):
        await box.deposit(mail(21, 1, 10, size=200), MailLimits(sender_max_bytes=150))


async def test_old_messages_go_and_stop_counting(box: Mailbox) -> None:
    old = mail(2, 1, 1, at=T0 - 2000)
    new = mail(2, 1, 2, at=T0)
    for n in range(3):
        assert await box.deposit(mail(3, 1, 10 + n, at=T0 - 2000), LIMITS)
    assert await box.deposit(old, LIMITS)
    # Four from sender 1 are stored, but three are past the age limit at T0.
    assert await box.deposit(new, LIMITS)
    assert await box.fetch(2, None, T0, 1000.0) == (new, 1)
    # The purge takes the others' old ones.
    assert await box.purge(T0 - 1000.0) == 3
    assert await box.fetch(3, None, T0 - 1500, 1000.0) == (None, 0)
    assert await box.purge(T0 - 1000.0) == 0


async def test_sqlite_keeps_only_sealed_bytes_and_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    async with SqliteRegistry(path) as registry:
        assert await registry.mailbox().deposit(mail(2, 1, 1), LIMITS)
    async with SqliteRegistry(path) as registry:
        assert await registry.mailbox().fetch(2, None, T0, 1000.0) == (mail(2, 1, 1), 1)
    columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(mailbox)")]
    assert columns == ["recipient", "mail_id", "sender", "deposited_at", "sealed"]
