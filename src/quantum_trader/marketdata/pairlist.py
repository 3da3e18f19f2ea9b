"""Pair lists: which symbols to trade. A static list is the config's (``exchange.symbols``,
``data.symbols``); a volume-ranked one is the venue's most liquid symbols now.

``rank_by_volume`` is the whole rule, pure: USDT-quoted perpetuals the venue can trade (its
exchangeInfo), at least ``min_quote_volume`` traded in 24 h, minus the excluded ones, by quote
volume (ties by symbol, so the list is deterministic), the first ``top``. Symbols we hold a
position in are kept whatever their rank (``keep``): dropping one would orphan the position.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from quantum_trader.domain.venue import Ticker24h


@dataclass(frozen=True, slots=True)
class RankedPair:
    rank: int  # 1 = most traded; 0 = kept for its position, outside the top
    ticker: Ticker24h


def rank_by_volume(tickers: Iterable[Ticker24h], tradable: Iterable[str], top: int,
                   quote: str = "USDT", min_quote_volume: float = 0.0,
                   exclude: Sequence[str] = (), keep: Sequence[str] = ()) -> list[RankedPair]:
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    allowed = set(tradable)
    by_symbol = {t.symbol: t for t in tickers}
    eligible = sorted((t for t in by_symbol.values()
                       if t.symbol in allowed and t.symbol.endswith(quote)
                       and t.symbol not in exclude and t.quote_volume >= min_quote_volume),
                      key=lambda t: (-t.quote_volume, t.symbol))
    chosen = [RankedPair(i + 1, t) for i, t in enumerate(eligible[:top])]
    have = {p.ticker.symbol for p in chosen}
    for sym in keep:
        if sym not in have:  # even one the venue no longer lists: the position is there
            chosen.append(RankedPair(0, by_symbol.get(sym, Ticker24h(sym, 0.0, 0.0, 0.0,
                                                                    0.0, 0))))
            have.add(sym)
    return chosen


__all__ = ["RankedPair", "rank_by_volume"]
