"""The per-sender quota (webpeer/quota.py) alone, with literal times."""

from __future__ import annotations

import pytest

from webpeer.quota import MAX_TRACKED_SENDERS, RATE, STORAGE, InboundQuota, QuotaConfig, reason_text


class History:
    def __init__(self, stored: dict[int, int] | None = None) -> None:
        self.stored = stored or {}
        self.reads: list[int] = []

    def stored_bytes_from(self, sender: int) -> int:
        self.reads.append(sender)
        return self.stored.get(sender, 0)


def test_a_minutes_worth_passes_at_once_then_one_per_refill() -> None:
    quota = InboundQuota(QuotaConfig(messages_per_minute=6), History())
    assert [quota.admit(7, 1, 100.0) for _ in range(7)] == [None] * 6 + [RATE]
    assert quota.admit(7, 1, 109.9) == RATE  # one token takes 10 s
    assert quota.admit(7, 1, 110.0) is None
    assert quota.admit(7, 1, 110.0) == RATE
    # Another sender has its own bucket.
    assert quota.admit(8, 1, 110.0) is None


def test_a_clock_that_steps_back_refills_nothing() -> None:
    quota = InboundQuota(QuotaConfig(messages_per_minute=1), History())
    assert quota.admit(7, 1, 100.0) is None
    assert quota.admit(7, 1, 50.0) == RATE
    assert quota.admit(7, 1, 159.0) == RATE  # measured from 100, not from 50
    assert quota.admit(7, 1, 160.0) is None


def test_stored_bytes_start_from_the_history_and_count_what_is_admitted() -> None:
    history = History({7: 90})
    quota = InboundQuota(QuotaConfig(stored_bytes=100), history)
    assert quota.admit(7, 11, 0.0) == STORAGE  # 90 + 11 > 100
    assert quota.admit(7, 10, 0.0) is None  # exactly 100
    assert quota.admit(7, 1, 0.0) == STORAGE
    assert history.reads == [7]  # read once, then kept
    quota.refund(7, 10)  # that one was a repeat: not stored again
    assert quota.admit(7, 10, 0.0) is None
    # Forgotten: read again (the history says 95 now).
    history.stored[7] = 95
    quota.forget(7)
    assert quota.admit(7, 6, 0.0) == STORAGE
    assert quota.admit(7, 5, 0.0) is None
    assert history.reads == [7, 7]


def test_a_refused_message_costs_no_token() -> None:
    quota = InboundQuota(QuotaConfig(messages_per_minute=2, stored_bytes=10), History())
    assert quota.admit(7, 11, 0.0) == STORAGE
    assert quota.admit(7, 11, 0.0) == STORAGE
    assert quota.admit(7, 5, 0.0) is None
    assert quota.admit(7, 5, 0.0) is None
    assert quota.admit(7, 0, 0.0) == RATE


def test_the_senders_tracked_are_bounded() -> None:
    quota = InboundQuota(QuotaConfig(messages_per_minute=2), History())
    for sender in range(3 * MAX_TRACKED_SENDERS):
        assert quota.admit(sender, 1, float(sender)) is None
        assert quota.admit(sender, 1, float(sender)) is None  # empties its bucket
    assert len(quota._buckets) <= MAX_TRACKED_SENDERS
    assert len(quota._stored) <= MAX_TRACKED_SENDERS
    # The latest sender is still tracked: its empty bucket refuses.
    assert quota.admit(3 * MAX_TRACKED_SENDERS - 1, 1, float(3 * MAX_TRACKED_SENDERS - 1)) == RATE


@pytest.mark.parametrize("bad", [{"messages_per_minute": 0}, {"stored_bytes": 0}, {"stored_bytes": 2**51}])
def test_nonsense_limits_are_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        QuotaConfig(**bad)


def test_only_known_codes_become_words_on_the_page() -> None:
    assert "per minute" in reason_text(RATE)
    assert "quota" in reason_text(STORAGE)
    assert reason_text("<script>alert(1)</script>") == "refused by the peer"
    assert reason_text(None) == "refused by the peer"


def test_the_command_line_sets_the_quota_and_refuses_nonsense(tmp_path) -> None:
    from webpeer.cli import build_parser
    from webpeer.commands import node_config

    parser = build_parser()
    args = parser.parse_args(["--peer-rate", "30", "--peer-quota-mb", "2"])
    assert node_config(args, tmp_path).quota == QuotaConfig(messages_per_minute=30, stored_bytes=2 * 1_048_576)
    assert node_config(parser.parse_args([]), tmp_path).quota == QuotaConfig()
    for bad in (["--peer-rate", "0"], ["--peer-rate", "1.5"], ["--peer-quota-mb", "-1"], ["--peer-quota-mb", "²"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
