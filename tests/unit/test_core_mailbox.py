"""DEPOSIT and FETCH in the pure ServerCore (docs/PROTOCOL.md 5.11, 5.12):
the core checks and hands the request out; the test plays the adapter,
answering each with the store's outcome, as literal values."""

from __future__ import annotations

import dataclasses
import os

from test_core import T0, Harness, error_code, key

from rendezvous.client import session_request
from rendezvous.core import ServerConfig
from rendezvous.mail_handling import MailRequest
from rendezvous.mailbox import MAILBOX_FULL, SENDER_QUOTA, Mail
from rendezvous.stun import (
    MAX_SEALED,
    Address,
    Attr,
    MailItem,
    Message,
    MessageClass,
    Method,
    decode,
    encode,
)

ALICE: Address = ("192.0.2.10", 40001)
BOB: Address = ("198.51.100.20", 50002)
MAIL_ID = bytes(range(16))


def online_pair() -> Harness:
    h = Harness()
    h.register(key(1), ALICE, T0)  # id 1
    h.register(key(2), BOB, T0)  # id 2
    return h


def deposit(
    h: Harness, recipient: int | None, sealed: bytes | None = b"sealed", mail_id: bytes | None = MAIL_ID
) -> Message:
    attributes: list[tuple[int, object]] = []
    if recipient is not None:
        attributes.append((Attr.PEER_ID, recipient))
    if mail_id is not None:
        attributes.append((Attr.MAIL_ID, mail_id))
    if sealed is not None:
        attributes.append((Attr.SEALED, sealed))
    return session_request(Method.DEPOSIT, h.sessions[ALICE], *attributes)


def only_request(h: Harness) -> MailRequest:
    requests = h.core.mail_requests()
    assert len(requests) == 1
    return requests[0]


def reply_to(h: Harness, request: Message, address: Address) -> Message:
    return decode(raw_reply_to(h, request, address), require_fingerprint=True)


def raw_reply_to(h: Harness, request: Message, address: Address) -> bytes:
    out = [d for d, a in h.core.datagrams_to_send() if a == address]
    assert len(out) == 1
    assert decode(out[0]).transaction_id == request.transaction_id
    return out[0]


def test_a_deposit_is_answered_only_once_the_store_took_it() -> None:
    h = online_pair()
    request = deposit(h, 2, b"x" * MAX_SEALED)
    assert h.feed(request, ALICE, T0 + 1) == []  # nothing until the store answers
    pending = only_request(h)
    assert pending.deposit == Mail(2, 1, MAIL_ID, b"x" * MAX_SEALED, T0 + 1)
    # A retransmission meanwhile is ignored, not stored twice.
    assert h.feed(request, ALICE, T0 + 1.5) == []
    assert h.core.mail_requests() == []
    h.core.mail_deposited(pending, True, T0 + 2)
    data = raw_reply_to(h, request, ALICE)
    assert decode(data).message_class == MessageClass.SUCCESS
    assert len(data) <= 60  # a deposit's answer is small, whatever it stored
    # Later retransmissions get the same bytes from the reply cache.
    assert h.feed(request, ALICE, T0 + 3) == [(data, ALICE)]
    assert h.core.stats["mail_deposited"] == 1


def test_deposit_errors_in_order() -> None:
    h = online_pair()
    assert error_code(h.ask(deposit(h, None), ALICE, T0)) == 400
    assert h.ask(deposit(h, 2, mail_id=None), ALICE, T0).get(Attr.ERROR_CODE).reason == "MAIL-ID missing"
    assert h.ask(deposit(h, 2, sealed=None), ALICE, T0).get(Attr.ERROR_CODE).reason == "SEALED missing"
    assert h.ask(deposit(h, 1), ALICE, T0).get(Attr.ERROR_CODE).reason == "Cannot mail yourself"
    assert error_code(h.ask(deposit(h, 3), ALICE, T0)) == 410  # never assigned
    assert error_code(h.ask(deposit(h, 0), ALICE, T0)) == 410
    no_session = Message(Method.DEPOSIT, MessageClass.REQUEST, os.urandom(12)).add(Attr.PEER_ID, 2)
    assert h.ask(no_session, ALICE, T0).get(Attr.ERROR_CODE).reason == "SESSION missing"
    # From another address, the SESSION is no good.
    assert h.ask(deposit(h, 2), BOB, T0).get(Attr.ERROR_CODE).reason == "Register Again"
    assert h.core.mail_requests() == []


def test_a_deposit_for_an_offline_peer_that_exists_is_taken() -> None:
    h = online_pair()
    h.request(Method.UNREGISTER, BOB, T0 + 1)
    h.feed(deposit(h, 2), ALICE, T0 + 2)
    assert only_request(h).deposit is not None


def test_over_quota_is_486_with_whose_quota_and_cached() -> None:
    h = online_pair()
    for reason in (MAILBOX_FULL, SENDER_QUOTA):
        request = session_request(
            Method.DEPOSIT, h.sessions[ALICE], (Attr.PEER_ID, 2), (Attr.MAIL_ID, os.urandom(16)), (Attr.SEALED, b"s")
        )
        h.feed(request, ALICE, T0)
        h.core.mail_refused(only_request(h), reason, T0)
        reply = reply_to(h, request, ALICE)
        assert reply.get(Attr.ERROR_CODE) == (486, reason)
        assert h.core.stats[f"mail_refused: {reason}"] == 1


def test_a_store_failure_is_503_and_a_retransmission_tries_again() -> None:
    h = online_pair()
    request = deposit(h, 2)
    h.feed(request, ALICE, T0)
    h.core.mail_failed(only_request(h), T0)
    assert error_code(reply_to(h, request, ALICE)) == 503
    h.feed(request, ALICE, T0 + 0.5)
    assert only_request(h).deposit is not None


def test_fetch_hands_out_one_item_and_names_the_one_to_delete() -> None:
    h = online_pair()
    sealed = b"\xab" * MAX_SEALED
    first = session_request(Method.FETCH, h.sessions[BOB])
    h.feed(first, BOB, T0)
    pending = only_request(h)
    assert (pending.peer_id, pending.delete, pending.deposit) == (2, None, None)
    h.core.mail_fetched(pending, Mail(2, 1, MAIL_ID, sealed, T0 - 5.5), 3, T0)
    reply = reply_to(h, first, BOB)
    assert reply.get(Attr.MAIL_ITEM) == MailItem(1, int(T0 - 5.5), MAIL_ID, sealed)
    assert reply.get(Attr.MAIL_COUNT) == 3
    assert len(encode(reply)) <= 1200  # the largest item fits a reply
    second = session_request(Method.FETCH, h.sessions[BOB], (Attr.MAIL_ID, MAIL_ID))
    h.feed(second, BOB, T0 + 1)
    pending = only_request(h)
    assert pending.delete == MAIL_ID
    h.core.mail_fetched(pending, None, 0, T0 + 1)
    empty = reply_to(h, second, BOB)
    assert empty.get(Attr.MAIL_ITEM) is None
    assert empty.get(Attr.MAIL_COUNT) == 0


def test_fetch_needs_the_session_of_its_proven_address() -> None:
    h = online_pair()
    # Bob's SESSION from Alice's address: nothing of Bob's is fetched.
    stolen = session_request(Method.FETCH, h.sessions[BOB])
    assert h.ask(stolen, ALICE, T0).get(Attr.ERROR_CODE).reason == "Register Again"
    assert h.core.mail_requests() == []


def test_a_server_without_mailbox_does_not_know_the_methods() -> None:
    h = Harness(dataclasses.replace(ServerConfig(), mailbox=None))
    h.register(key(1), ALICE, T0)
    h.register(key(2), BOB, T0)
    reply = h.ask(deposit(h, 2), ALICE, T0)
    assert reply.get(Attr.ERROR_CODE) == (400, "Unknown method 0x80b")
    assert h.core.mail_requests() == []


def test_the_486_and_the_empty_fetch_have_the_bytes_docs_protocol_shows() -> None:
    h = online_pair()
    request = deposit(h, 2)
    request.transaction_id = bytes(range(12))
    h.feed(request, ALICE, T0)
    h.core.mail_refused(only_request(h), MAILBOX_FULL, T0)
    assert raw_reply_to(h, request, ALICE).hex() == (
        "211b0028" "2112a442" "000102030405060708090a0b"
        "00090010" "000004564d61696c626f7820" "46756c6c"
        "80220008" "706565726c696e6b"
        "80280004" "fb336070"
    )  # fmt: skip
    fetch = session_request(Method.FETCH, h.sessions[BOB])
    fetch.transaction_id = bytes(range(12))
    h.feed(fetch, BOB, T0)
    h.core.mail_fetched(only_request(h), None, 0, T0)
    assert raw_reply_to(h, fetch, BOB).hex() == (
        "210c001c" "2112a442" "000102030405060708090a0b"
        "4011000400000000"
        "80220008" "706565726c696e6b"
        "80280004" "8e9f880b"
    )  # fmt: skip
