"""The trade log: overlapping "latest 50" pushes → every distinct trade once, in order."""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from app.domain.decode import Trade
from app.domain.tradelog import TradeLog, overlap
from tests.support import examples

A = Trade("1.00", "0.5", "buy", 1_600_000_000_000)
B = Trade("1.01", "0.5", "sell", 1_600_000_000_001)
C = Trade("1.02", "0.1", "buy", 1_600_000_000_002)


def test_a_repeated_push_is_not_new() -> None:
    log = TradeLog()
    assert log.apply([A, B]) == [A, B]
    assert log.apply([A, B]) == []
    assert log.apply([B, C]) == [C]


def test_equal_trades_in_one_push_are_two_trades() -> None:
    log = TradeLog()
    assert log.apply([A, A]) == [A, A]
    assert log.apply([A, A, A]) == [A]  # one more equal trade came


def test_a_window_with_no_overlap_is_all_new() -> None:
    log = TradeLog()
    log.apply([A])
    assert log.apply([B, C]) == [B, C]


def test_an_empty_push_changes_nothing() -> None:
    log = TradeLog()
    log.apply([A, B])
    assert log.apply([]) == []
    assert log.apply([A, B, C]) == [C]


def test_trades_older_than_the_log_are_dropped() -> None:
    log = TradeLog()
    log.apply([B, C])
    assert log.apply([A]) == []
    assert log.out_of_order == 1


# Trades drawn from a tiny alphabet so that equal trades are common; timestamps
# never go back, as on the exchange.
@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Trade], list[int], int]:
    window = draw(st.integers(3, 50))
    n = draw(st.integers(1, 120))
    trades = []
    ts = 1_600_000_000_000
    for _ in range(n):
        ts += draw(st.sampled_from([0, 0, 1, 5]))
        trades.append(Trade(draw(st.sampled_from(["1.0", "1.1"])), draw(st.sampled_from(["0.1", "0.2"])),
                            draw(st.sampled_from(["buy", "sell"])), ts))
    # Push i shows the latest `window` trades of the first ends[i]; consecutive
    # pushes overlap (the exchange pushes every 1–2 s, far more often than 50 trades).
    ends = [draw(st.integers(1, min(n, window)))]
    while ends[-1] < n:
        ends.append(ends[-1] + draw(st.integers(0, window - 1)))
    ends[-1] = min(ends[-1], n)
    return trades, ends, window


def determinable(trades: list[Trade], ends: list[int], window: int) -> bool:
    """True when no push could be read two ways: the true overlap between
    consecutive pushes is also the longest alignment. (A run of identical
    same-millisecond trades shifting a full window by its period cannot be told
    from a repeated push by anyone; see app/domain/tradelog.py.)"""
    previous: list[Trade] = []
    previous_end = 0
    for end in ends:
        shown = trades[max(0, end - window) : end]
        true_overlap = max(0, previous_end - max(0, end - window))
        if overlap(previous, shown) != min(true_overlap, len(previous)):
            return False
        previous, previous_end = shown, end
    return True


@settings(max_examples=examples(500), suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_overlapping_pushes_yield_every_distinct_trade_once_in_order(case: tuple[list[Trade], list[int], int]) -> None:
    trades, ends, window = case
    assume(determinable(trades, ends, window))
    log = TradeLog()
    seen: list[Trade] = []
    for end in ends:
        shown = trades[max(0, end - window) : end]
        seen.extend(log.apply(shown))
    assert seen == trades[: ends[-1]]


@settings(max_examples=examples(300), suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_distinct_trades_are_never_lost_with_distinct_timestamps(case: tuple[list[Trade], list[int], int]) -> None:
    trades, ends, window = case
    trades = [Trade(t.price, t.quantity, t.side, 1_600_000_000_000 + i) for i, t in enumerate(trades)]
    log = TradeLog()
    seen: list[Trade] = []
    for end in ends:
        seen.extend(log.apply(trades[max(0, end - window) : end]))
    assert seen == trades[: ends[-1]]


@settings(max_examples=examples(300), suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_equal_trades_are_all_kept_while_windows_are_not_full(case: tuple[list[Trade], list[int], int]) -> None:
    trades, ends, _ = case
    window = 50  # every history here has fewer trades than the window holds...
    trades = trades[:50]
    ends = sorted({min(end, len(trades)) for end in ends})
    log = TradeLog()
    seen: list[Trade] = []
    for end in ends:
        seen.extend(log.apply(trades[max(0, end - window) : end]))
    # ...so no push can be read two ways, however many equal trades there are.
    assert seen == trades[: ends[-1]]
