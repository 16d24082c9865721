"""RFC 8489 section 6.2.1 retransmissions, pure, with literal times."""

from __future__ import annotations

import pytest

from rendezvous.client import FAST_POLICY
from rendezvous.transactions import RetransmitPolicy, TransactionTable

T0 = 1000.0


def run_to_the_end(table: TransactionTable[str]) -> tuple[list[float], list[float]]:
    """Fire every timer when it is due; returns (resend times, timeout times) relative to T0."""
    resends: list[float] = []
    timeouts: list[float] = []
    while (at := table.get_timer()) is not None:
        assert table.handle_timer(at - 0.001).resend == []  # nothing fires early
        result = table.handle_timer(at)
        resends += [at - T0 for _ in result.resend]
        timeouts += [at - T0 for _ in result.timed_out]
    return resends, timeouts


def test_rfc_schedule_rto_500ms_rc_7_rm_16() -> None:
    policy = RetransmitPolicy(rto=0.5, max_sends=7, last_wait_factor=16)
    assert policy.schedule() == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 39.5]
    assert RetransmitPolicy() == policy  # the RFC's numbers are the defaults


def test_a_lost_request_is_sent_7_times_then_times_out_at_39_5() -> None:
    table: TransactionTable[str] = TransactionTable(RetransmitPolicy())
    assert table.start(b"t" * 12, b"request", "server", T0) == b"request"  # the send at 0
    assert table.get_timer() == 1000.5
    resends, timeouts = run_to_the_end(table)
    assert [0.0] + resends == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert timeouts == [39.5]
    assert len(table) == 0 and table.get_timer() is None


def test_resends_and_timeouts_carry_data_and_context() -> None:
    table: TransactionTable[str] = TransactionTable(RetransmitPolicy(rto=1.0, max_sends=2, last_wait_factor=2))
    table.start(b"a" * 12, b"A", "to-a", T0)
    assert table.handle_timer(1001.0).resend == [(b"A", "to-a")]
    result = table.handle_timer(1003.0)
    assert result.resend == [] and result.timed_out == [(b"A", "to-a")]
    assert b"a" * 12 not in table


def test_interactive_policy_gives_up_within_5_seconds() -> None:
    assert FAST_POLICY.schedule() == [0.25, 0.75, 1.75, 3.75, 4.75]


def test_a_late_timer_sends_one_copy_not_a_burst() -> None:
    table: TransactionTable[str] = TransactionTable()
    table.start(b"t" * 12, b"request", "server", T0)
    # Woken at 4.0 s: deadlines 0.5, 1.5 and 3.5 have all passed.
    result = table.handle_timer(1004.0)
    assert result.resend == [(b"request", "server")]
    assert table.get_timer() == 1007.5
    # Woken after the final deadline: a timeout, and no resend first.
    result = table.handle_timer(1100.0)
    assert result.resend == [] and len(result.timed_out) == 1


def test_an_answer_stops_retransmission() -> None:
    table: TransactionTable[str] = TransactionTable()
    table.start(b"1" * 12, b"one", "ctx1", T0)
    table.start(b"2" * 12, b"two", "ctx2", T0 + 0.2)
    assert table.get_timer() == 1000.5
    assert table.context(b"1" * 12) == "ctx1"
    assert table.complete(b"1" * 12) == "ctx1"
    assert table.complete(b"1" * 12) is None  # a duplicate answer
    assert table.complete(b"x" * 12) is None  # a stray one
    assert table.get_timer() == 1000.7
    resends, timeouts = run_to_the_end(table)
    assert resends == pytest.approx([0.7, 1.7, 3.7, 7.7, 15.7, 31.7])
    assert timeouts == pytest.approx([39.7])


def test_cancel_forgets_quietly() -> None:
    table: TransactionTable[str] = TransactionTable()
    table.start(b"1" * 12, b"one", "ctx", T0)
    table.cancel(b"1" * 12)
    table.cancel(b"1" * 12)
    assert len(table) == 0 and table.get_timer() is None
    assert table.handle_timer(2000.0).timed_out == []


def test_interleaved_transactions_keep_their_own_schedules() -> None:
    table: TransactionTable[str] = TransactionTable(RetransmitPolicy(rto=1.0, max_sends=3, last_wait_factor=1))
    table.start(b"a" * 12, b"A", "a", T0)  # resend 1001, 1003; timeout 1004
    table.start(b"b" * 12, b"B", "b", T0 + 1.5)  # resend 1002.5, 1004.5; timeout 1005.5
    events = []
    while (at := table.get_timer()) is not None:
        result = table.handle_timer(at)
        events += [(at, "resend", c) for _, c in result.resend]
        events += [(at, "timeout", c) for _, c in result.timed_out]
    assert events == [
        (1001.0, "resend", "a"),
        (1002.5, "resend", "b"),
        (1003.0, "resend", "a"),
        (1004.0, "timeout", "a"),
        (1004.5, "resend", "b"),
        (1005.5, "timeout", "b"),
    ]
