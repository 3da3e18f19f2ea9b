"""AIEngine and ModelSignalSource: on_bar == generate_signal, hot reload, online accuracy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from quantum_trader.ai.engine import AIEngine, NotReady, UnknownSymbol, UnknownTimeframe
from quantum_trader.ai.registry import ModelRegistry
from quantum_trader.ai.settings import AISettings
from quantum_trader.ai.signals import ModelSignalSource
from quantum_trader.config import Settings
from quantum_trader.domain.enums import Direction
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.marketdata.series import BarSeries
from quantum_trader.runtime.backtest import run_backtest
from tests.unit.test_ai_registry import FAST_AI, register_quick

# Thresholds close to 0.5 so a short slice produces plenty of signals of both kinds.
AI = AISettings.model_validate({**FAST_AI.model_dump(), "signals": {"upper": 0.51,
                                                                   "lower": 0.49}})


@pytest.fixture(scope="module")
def bars() -> BarSeries:
    return load_sample("XRP").slice(5_000, 8_000)


@pytest.fixture
def registry(bars: BarSeries, tmp_path: Path) -> ModelRegistry:
    reg = ModelRegistry(tmp_path)
    reg.promote(register_quick(reg, bars.slice(0, 1_500), AI))
    return reg


def test_on_bar_signal_equals_generate_signal(bars: BarSeries, registry: ModelRegistry) -> None:
    engine = AIEngine(registry)
    assert engine.version == "v1"
    live = bars.slice(1_500)
    with pytest.raises(UnknownSymbol):
        engine.generate_signal(bars.symbol, bars.timeframe)
    seen = {Direction.LONG: 0, Direction.SHORT: 0}
    for i, bar in enumerate(live):
        sig = engine.on_bar(bar)
        if i < AI.features.warmup:
            assert sig is None
            with pytest.raises(NotReady):
                engine.generate_signal(bar.symbol, bar.timeframe)
            continue
        latest = engine.generate_signal(bar.symbol, bar.timeframe)
        assert latest.ts == bar.close_ts
        if sig is not None:
            assert sig == latest
            seen[sig.direction] += 1
            assert sig.source == "default@v1"
            assert sig.expires_at == sig.ts + AI.signals.ttl_ms
            assert sig.stop_distance is not None
            assert 0 < sig.stop_distance < 0.5
            assert 0.5 < sig.confidence <= 1
        else:
            assert latest.direction is Direction.FLAT
    assert seen[Direction.LONG] > 10
    assert seen[Direction.SHORT] > 10
    assert sum(engine.signals_generated.values()) == sum(seen.values())
    assert len(engine.inference_seconds) == len(live)
    with pytest.raises(UnknownSymbol):
        engine.generate_signal("DOGEUSDT", bars.timeframe)
    with pytest.raises(UnknownTimeframe):
        engine.generate_signal(bars.symbol, "7m")
    with pytest.raises(UnknownTimeframe):
        engine.generate_signal(bars.symbol, "1h")
    # online accuracy: every LONG/SHORT whose horizon passed is scored
    _right, scored = engine.accuracy["default"]
    assert scored > 0
    assert scored <= sum(seen.values())
    acc = engine.model_accuracy()
    assert acc is not None
    assert 0 <= acc <= 1


def test_online_accuracy_scores_direction_after_horizon(bars: BarSeries,
                                                        registry: ModelRegistry) -> None:
    engine = AIEngine(registry)
    live = list(bars.slice(1_500, 2_200))
    signals = [(i, engine.on_bar(b)) for i, b in enumerate(live)]
    h = AI.labels.horizon
    expect = [0, 0]
    for i, s in signals:
        if s is None or s.direction is Direction.FLAT or i + h >= len(live):
            continue
        move = live[i + h].close - live[i].close
        expect[0] += int(move > 0 if s.direction is Direction.LONG else move < 0)
        expect[1] += 1
    assert engine.accuracy["default"] == expect


def test_hot_reload_picks_up_a_newly_promoted_version(bars: BarSeries,
                                                      registry: ModelRegistry) -> None:
    engine = AIEngine(registry)
    live = list(bars.slice(1_500, 2_300))
    for bar in live[:500]:
        engine.on_bar(bar)
    ai2 = AISettings.model_validate({**AI.model_dump(), "seed": 7,
                                     "model": {"kind": "logistic"}})
    v2 = register_quick(registry, bars.slice(0, 1_500), ai2)
    engine.on_bar(live[500])
    assert engine.version == "v1"  # registered, not promoted: nothing changes
    registry.promote(v2)
    # A fresh source of v2 fed every bar from the start must agree bar for bar: no bar dropped.
    ref = ModelSignalSource(registry.load("default", v2))
    ref.warm_up(live[:500])
    ref.on_bar(live[500])
    for bar in live[501:]:
        got = engine.on_bar(bar)
        assert engine.version == v2
        want = ref.on_bar(bar)
        assert got == want
        p = engine.generate_signal(bar.symbol, bar.timeframe).confidence
        assert p == pytest.approx(max(ref.last_p[(bar.symbol, bar.timeframe)],
                                      1 - ref.last_p[(bar.symbol, bar.timeframe)]))
    assert engine.reloads == 2
    assert engine.bars_seen == len(live)
    registry.rollback()
    engine.on_bar(dataclasses.replace(live[-1], ts=live[-1].ts + 1_800_000))
    assert engine.version == "v1"


def test_hot_reload_with_different_features_rebuilds_state(bars: BarSeries,
                                                            registry: ModelRegistry) -> None:
    engine = AIEngine(registry)
    live = list(bars.slice(1_500, 2_100))
    for bar in live[:400]:
        engine.on_bar(bar)
    ai3 = AISettings.model_validate({**AI.model_dump(), "features": {
        "ema_fast": 6, "ema_slow": 30, "warmup": 60, "hour_of_day": False}})
    v3 = register_quick(registry, bars.slice(0, 1_500), ai3)
    registry.promote(v3)
    ref = ModelSignalSource(registry.load("default", v3))
    ref.warm_up(live[:400])  # the engine replays the bars it kept
    for bar in live[400:]:
        assert engine.on_bar(bar) == ref.on_bar(bar)
    assert engine.version == v3


def test_tampered_production_is_not_loaded(bars: BarSeries, registry: ModelRegistry) -> None:
    engine = AIEngine(registry)
    v2 = register_quick(registry, bars.slice(0, 1_500), AI)
    f = registry.version_dir("default", v2) / "model.txt"
    f.write_bytes(f.read_bytes() + b"\n")
    registry._set_production("default", v2, "promote")  # bypass the gate to simulate an attack
    engine.on_bar(bars.bar(2_000))
    assert engine.version == "v1"  # kept serving the verified model
    assert engine.last_reload_error is not None
    assert "sha256" in engine.last_reload_error


def test_model_signal_source_runs_in_a_backtest(bars: BarSeries,
                                                registry: ModelRegistry) -> None:
    src = ModelSignalSource(registry.load("default"), record_latency=True)
    src.warm_up(list(bars.slice(1_000, 1_500)))
    res = run_backtest([bars.slice(1_500, 2_500)], Settings(), src)
    assert res.signals > 0
    assert res.source == "default@v1"
    assert src.latencies is not None
    assert np.percentile(src.latencies, 99) < 0.005


def test_live_probabilities_match_batch_predictions(bars: BarSeries,
                                                    registry: ModelRegistry) -> None:
    from quantum_trader.ai.features import compute_features

    art = registry.load("default")
    part = bars.slice(1_500, 2_300)
    X, valid = compute_features(part, art.features)
    batch = art.model.predict_proba(X[valid])
    src = ModelSignalSource(art)
    live = [src.probability(b) for b in part]
    got = np.array([p for p in live if p is not None])
    np.testing.assert_allclose(got, batch, rtol=0, atol=1e-9)


def test_production_source_hook(bars: BarSeries, tmp_path: Path) -> None:
    from quantum_trader.ai.production import production_source

    settings = Settings.model_validate({"paths": {"registry_dir": str(tmp_path)}})
    assert production_source(settings) is None
    reg = ModelRegistry(tmp_path)
    v = register_quick(reg, bars.slice(0, 1_500), AI)
    assert production_source(settings) is None  # registered is not production
    reg.promote(v)
    src = production_source(settings)
    assert src is not None
    assert src.name == f"default@{v}"


def test_redelivered_bars_are_ignored(bars: BarSeries, registry: ModelRegistry) -> None:
    engine = AIEngine(registry)
    ref = AIEngine(registry)
    live = list(bars.slice(1_500, 1_800))
    for i, bar in enumerate(live):
        a = engine.on_bar(bar)
        if i % 7 == 0:  # at-least-once delivery: the same bar again, and an older one
            assert engine.on_bar(bar) is None
            assert engine.on_bar(live[max(0, i - 3)]) is None or i < 3
        assert a == ref.on_bar(bar)
    assert engine.bars_seen == ref.bars_seen == len(live)
    assert engine.bars_ignored >= len(live) // 7
    last = live[-1]
    assert engine.generate_signal(last.symbol, last.timeframe) == \
        ref.generate_signal(last.symbol, last.timeframe)


def test_engine_is_a_signal_source_for_the_node(bars: BarSeries,
                                                registry: ModelRegistry) -> None:
    from quantum_trader.domain.strategy import SignalSource

    engine = AIEngine(registry)
    source: SignalSource = engine
    assert source.name == "default@v1"
    res = run_backtest([bars.slice(1_500, 2_500)], Settings(), engine)
    assert res.source == "default@v1"
    assert res.signals == sum(engine.signals_generated.values()) > 0
