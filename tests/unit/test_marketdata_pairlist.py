"""The volume-ranked pair list's rule, on hand-made tickers."""

from __future__ import annotations

import pytest

from quantum_trader.domain.venue import Ticker24h
from quantum_trader.marketdata.pairlist import rank_by_volume


def _t(sym: str, qv: float) -> Ticker24h:
    return Ticker24h(sym, 1.0, qv, qv, 0.0, 10)


TICKERS = [_t("BTCUSDT", 900.0), _t("ETHUSDT", 500.0), _t("XRPUSDT", 500.0),
           _t("LTCUSDT", 20.0), _t("DOGEBUSD", 999.0), _t("OLDUSDT", 800.0)]
TRADABLE = ["BTCUSDT", "ETHUSDT", "XRPUSDT", "LTCUSDT", "DOGEBUSD"]  # OLDUSDT delisted


def test_most_traded_first_ties_by_symbol_only_tradable_quote_pairs() -> None:
    ranked = rank_by_volume(TICKERS, TRADABLE, top=3)
    assert [(p.rank, p.ticker.symbol) for p in ranked] == [
        (1, "BTCUSDT"), (2, "ETHUSDT"), (3, "XRPUSDT")]


def test_minimum_volume_exclusions_and_kept_positions() -> None:
    ranked = rank_by_volume(TICKERS, TRADABLE, top=5, min_quote_volume=100.0,
                            exclude=["BTCUSDT"], keep=["LTCUSDT", "ETHUSDT", "GONEUSDT"])
    assert [(p.rank, p.ticker.symbol) for p in ranked] == [
        (1, "ETHUSDT"), (2, "XRPUSDT"), (0, "LTCUSDT"), (0, "GONEUSDT")]
    assert ranked[-1].ticker.quote_volume == 0.0  # held, though the venue lists it no more
    assert rank_by_volume(TICKERS, TRADABLE, top=2, quote="BUSD")[0].ticker.symbol == \
        "DOGEBUSD"


def test_top_must_be_positive() -> None:
    with pytest.raises(ValueError, match="top must be at least 1"):
        rank_by_volume(TICKERS, TRADABLE, top=0)
