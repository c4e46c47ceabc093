"""Turning overlapping "latest 50 trades" pushes into a log of distinct trades.

Theory of operation: each push of the trade topic repeats the newest trades
(up to 50). Trades carry no id and two distinct trades may be equal in every
field, so a trade cannot be recognised by value alone. The pushes are instead
aligned as sequences: the new window (oldest first) starts with some suffix of
the previous window, and everything after that overlap is new. The overlap
taken is the longest suffix of the previous window that is also a prefix of
the new one, so equal trades are counted as often as they occur: two equal
trades in one push are two trades, and a trade seen again is not new.

One case cannot be told apart by anyone: a run of identical trades in the same
millisecond, at the edge of a full window, that shifts the window by exactly its
own length looks the same as a repeated push. The longest alignment reads it as
a repeat (the exchange repeats its window every 1–2 s, so that reading is by far
the likelier one).

After the alignment, a "new" trade older than the newest one already logged can
only be an inconsistent push; such trades are dropped and counted.

A push that shares no trade with a full previous window (the exchange's 50)
may come after trades nobody saw (a reconnect, a burst faster than the pushes):
``gap`` says so, for the store to tell the clients.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.domain.values import TRADE_WINDOW_MAX, Trade


def overlap(previous: Sequence[Trade], window: Sequence[Trade]) -> int:
    """Length of the longest suffix of ``previous`` that is a prefix of ``window``."""
    for k in range(min(len(previous), len(window)), 0, -1):
        if previous[len(previous) - k] == window[0] and list(previous[-k:]) == list(window[:k]):
            return k
    return 0


class TradeLog:
    """Aligns one symbol's pushes; the trades themselves are kept by the store."""

    def __init__(self) -> None:
        self.window: tuple[Trade, ...] = ()
        self.out_of_order = 0  # trades dropped as older than the newest logged
        self.gap = False  # the last push may have missed trades (see the module docstring)

    def apply(self, window: Sequence[Trade]) -> list[Trade]:
        """Take one push (oldest first) and return its trades that are new, in order."""
        if not window:
            # "If the return type is an array, an empty array will be returned"
            # when there is no data: it says nothing about trades that were seen.
            self.gap = False
            return []
        shared = overlap(self.window, window)
        self.gap = shared == 0 and len(self.window) >= TRADE_WINDOW_MAX
        fresh = list(window[shared:])
        if self.window and fresh:
            newest_ts = self.window[-1].ts
            kept = [trade for trade in fresh if trade.ts >= newest_ts]
            self.out_of_order += len(fresh) - len(kept)
            fresh = kept
        self.window = tuple(window)
        return fresh
