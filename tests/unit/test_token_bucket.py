"""rendezvous/ratelimit.py's TokenBucket, with literal times: the server's
per-peer limits take from it, the peer's WATCH gathering spends into it."""

from __future__ import annotations

from rendezvous.ratelimit import TokenBucket


def test_take_spends_only_what_the_bucket_holds_and_it_refills_at_the_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=3.0, now=100.0)
    assert [bucket.take(1, 100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(1, 100.05)  # half a token
    assert bucket.take(1, 100.11)  # (not 100.1: in floating point the two refills sum a hair short of 1)
    assert bucket.available(200.0) == 3.0  # never more than the burst


def test_spend_goes_into_debt_and_ready_at_says_when_it_is_paid() -> None:
    bucket = TokenBucket(rate=10.0, burst=30.0, now=0.0)
    bucket.spend(32, 0.0)
    assert bucket.available(0.0) == -2.0
    assert bucket.ready_at(1, 0.0) == 0.3  # 2 of debt and 1 more, at 10 a second
    assert not bucket.take(1, 0.2)
    assert bucket.take(1, 0.3 + 1e-9)
    assert bucket.ready_at(1, 5.0) == 5.0  # it holds one: now


def test_a_clock_that_steps_back_refills_nothing() -> None:
    bucket = TokenBucket(rate=10.0, burst=5.0, now=50.0)
    bucket.spend(5, 50.0)
    assert bucket.available(40.0) == 0.0
    assert bucket.available(50.5) == 5.0
