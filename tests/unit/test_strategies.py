"""The public Strategy API, its adapter, its loader and its checks (docs/strategies.md)."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from quantum_trader.ai.production import choose_signal_source
from quantum_trader.config import ConfigError, Settings, load_settings
from quantum_trader.domain.enums import Direction
from quantum_trader.domain.strategy import EmaCrossStrategy, ParamError, resolve_params
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.strategies import (
    Bar,
    ChoiceParam,
    FloatParam,
    IntParam,
    Signal,
    Strategy,
)
from quantum_trader.strategies.adapter import StrategyError, StrategySource
from quantum_trader.strategies.checks import check_source
from quantum_trader.strategies.loader import StrategyLoadError, load_strategy

BAR = Bar("XRPUSDT", "30m", 1_506_816_000_000, 0.2, 0.21, 0.19, 0.205, 1_000.0)


class Always(Strategy):
    """Says the same thing on every bar (what it says is set per test)."""

    answer: ClassVar[object] = None
    level = FloatParam(0.7, low=0.0, high=1.0)

    def on_bar(self, bar: Bar) -> Signal | None:
        return self.answer  # type: ignore[return-value]


def _always(answer: object) -> StrategySource:
    cls = type("Always", (Always,), {"answer": answer})
    return StrategySource(cls, {}, 60_000)


# --- parameters -----------------------------------------------------------------------------
def test_parameters_are_collected_read_as_values_and_cannot_be_changed() -> None:
    class Two(Strategy):
        fast = IntParam(5, low=1, high=50)
        slow = IntParam(20, low=2, high=200, help="slow")
        mode = ChoiceParam("close", ("close", "typical"))

        def on_bar(self, bar: Bar) -> Signal | None:
            return None

    class Three(Two):
        name = "three"
        atr = FloatParam(2.0, low=0.5, high=5)

    assert list(Three.parameters) == ["fast", "slow", "mode", "atr"]
    assert Three.parameters["slow"] == IntParam(20, low=2, high=200, help="slow")
    s = Three(fast=7, atr="3.5")
    assert (s.fast, s.slow, s.mode, s.atr) == (7, 20, "close", 3.5)
    assert dict(s.params) == {"fast": 7, "slow": 20, "mode": "close", "atr": 3.5}
    assert (Two.name, Three.name) == ("Two", "three")
    with pytest.raises(AttributeError, match="parameter fast is read-only"):
        s.fast = 3  # type: ignore[misc]


def test_a_strategy_that_skips_the_base_init_is_told_how_to_fix_it() -> None:
    class OwnInit(Strategy):
        n = IntParam(3, low=1, high=5)

        def __init__(self, **params: object) -> None:
            self.state = 0  # no super().__init__

        def warmup(self) -> int:
            return self.n

    with pytest.raises(StrategyLoadError, match=r"OwnInit\(n=3\) could not be made: "
                       r"AttributeError: parameter n is not set yet: a strategy's __init__ "
                       r"must call super\(\).__init__\(\*\*params\)"):
        _load_class(OwnInit)


def _load_class(cls: type[Strategy]) -> object:
    """``load_strategy`` for a class defined here (through a module of its own)."""
    import types

    module = types.ModuleType("qt_test_strategies_inline")
    setattr(module, cls.__name__, cls)
    cls.__module__ = module.__name__
    sys.modules[module.__name__] = module
    try:
        return load_strategy(f"{module.__name__}:{cls.__name__}", origin="test")
    finally:
        del sys.modules[module.__name__]


@pytest.mark.parametrize(("param", "value", "message"), [
    (IntParam(5, low=1, high=10), 11, "11 is not an integer in [1, 10]"),
    (IntParam(5, low=1, high=10), "abc", "abc is not an integer in [1, 10]"),
    (IntParam(5, low=1, high=10), 2.5, "2.5 is not an integer in [1, 10]"),
    (IntParam(5, low=1, high=10), True, "True is not an integer in [1, 10]"),
    (FloatParam(0.5, low=0, high=1), "nan", "nan is not a number in [0, 1]"),
    (FloatParam(0.5, low=0, high=1), -0.1, "-0.1 is not a number in [0, 1]"),
    (ChoiceParam(True, (True, False)), 1, "1 is not one of true, false"),
    (ChoiceParam("a", ("a", "b")), "c", "c is not one of a, b"),
])
def test_a_value_outside_its_declared_range_is_refused(param: object, value: object,
                                                      message: str) -> None:
    with pytest.raises(ParamError) as exc:
        resolve_params({"p": param}, {"p": value})  # type: ignore[dict-item]
    assert str(exc.value) == f"p: {message}"


def test_values_from_the_command_line_are_parsed_by_their_type() -> None:
    declared = {"n": IntParam(5, low=1, high=10), "x": FloatParam(0.5, low=0, high=1),
                "short": ChoiceParam(True, (True, False)), "k": ChoiceParam(2, (2, 3))}
    assert resolve_params(declared, {"n": " 7", "x": "0.25", "short": "False", "k": "3"}) == {
        "n": 7, "x": 0.25, "short": False, "k": 3}


def test_a_parameter_declared_badly_fails_where_it_is_declared() -> None:
    with pytest.raises(ValueError, match="default 300 is outside"):
        IntParam(300, low=1, high=200)
    with pytest.raises(TypeError, match="must be an integer"):
        IntParam(5, low=1.5, high=200)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not one of its choices"):
        ChoiceParam("x", ("a", "b"))


def test_the_baseline_declares_its_parameters_and_the_config_is_checked_against_them() -> None:
    assert set(EmaCrossStrategy.parameters) == {"fast", "slow", "atr_period", "atr_mult",
                                                "allow_short"}
    assert EmaCrossStrategy.parameters["slow"].default == Settings().strategy.slow
    for key, value, message in [
            ("strategy.fast", 300, "300 is not an integer in [1, 200]"),
            ("strategy.atr_mult", 0, "0 is not a number in [0.1, 20]"),
            ("strategy.slow", 10, "fast (12) must be less than slow (10)")]:
        with pytest.raises(ConfigError) as exc:
            load_settings(env={}, overrides={key: value})
        assert message in str(exc.value)


def test_the_config_refuses_a_path_with_another_kind_and_params_without_a_path() -> None:
    with pytest.raises(ConfigError, match=r"strategy\.kind must be auto, not model"):
        load_settings(env={}, overrides={"strategy.path": "x.py", "strategy.kind": "model"})
    with pytest.raises(ConfigError, match=r"set strategy\.path too"):
        load_settings(env={}, overrides={"strategy.params": {"fast": 3}})


# --- the adapter ----------------------------------------------------------------------------
def test_what_a_strategy_returns_becomes_a_full_signal() -> None:
    source = _always(Signal.long(0.8, stop_distance=0.03))
    sig = source.on_bar(BAR)
    assert sig is not None
    assert sig.id == sig.trace_id == "XRPUSDT-1506817800000-Always"
    assert (sig.direction, sig.confidence, sig.stop_distance) == (Direction.LONG, 0.8, 0.03)
    assert (sig.ts, sig.expires_at) == (BAR.close_ts, BAR.close_ts + 60_000)
    assert (sig.price, sig.source, sig.timeframe) == (BAR.close, "Always", "30m")
    flat = _always(Signal.flat()).on_bar(BAR)
    assert flat is not None
    assert flat.direction is Direction.FLAT
    assert _always(None).on_bar(BAR) is None


def test_one_instance_per_symbol() -> None:
    class Count(Strategy):
        def setup(self) -> None:
            self.n = 0

        def on_bar(self, bar: Bar) -> Signal | None:
            self.n += 1
            return None

    source = StrategySource(Count, {}, 1)
    for sym in ("XRPUSDT", "BTCUSDT", "XRPUSDT"):
        source.on_bar(Bar(sym, "30m", 0, 1, 1, 1, 1, 1))
    assert {s: i.n for s, i in source.instances.items()} == {"XRPUSDT": 2, "BTCUSDT": 1}  # type: ignore[attr-defined]


@pytest.mark.parametrize(("answer", "message"), [
    (0.7, "returned float 0.7 on XRPUSDT bar 2017-10-01T00:00:00Z: return a "
          "quantum_trader.strategies.Signal, or None for no signal"),
    ("long", "returned str 'long' on XRPUSDT bar 2017-10-01T00:00:00Z: return a "
             "quantum_trader.strategies.Signal, or None for no signal"),
    (Signal("up", 0.7), "returned direction 'up' on XRPUSDT bar 2017-10-01T00:00:00Z: "  # type: ignore[arg-type]
                        "direction must be long, short or flat"),
    (Signal.long(math.nan), "returned confidence nan on XRPUSDT bar 2017-10-01T00:00:00Z: "
                            "confidence must be a number in [0, 1]"),
    (Signal.short(1.5), "returned confidence 1.5 on XRPUSDT bar 2017-10-01T00:00:00Z: "
                        "confidence must be a number in [0, 1]"),
    (Signal.long("0.9"), "returned confidence '0.9' on XRPUSDT bar 2017-10-01T00:00:00Z: "  # type: ignore[arg-type]
                         "confidence must be a number in [0, 1]"),
    (Signal.long(0.9, stop_distance=2.0), "returned stop_distance 2.0 on XRPUSDT bar "
                                          "2017-10-01T00:00:00Z: stop_distance must be None "
                                          "or a fraction of the price in (0, 1)"),
])
def test_garbage_is_refused_naming_the_strategy_and_the_bar(answer: object,
                                                            message: str) -> None:
    source = _always(answer)
    with pytest.raises(StrategyError) as exc:
        source.on_bar(BAR)
    assert str(exc.value) == f"strategy Always {message}"
    with pytest.raises(StrategyError) as again:  # and it stays refused
        source.on_bar(BAR)
    assert again.value is exc.value


def test_a_strategy_that_raises_is_refused_with_the_line_it_raised_at(tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text(
        "from quantum_trader.strategies import Strategy\n"
        "\n"
        "\n"
        "class Boom(Strategy):\n"
        "    def on_bar(self, bar):\n"
        "        return {}['missing']\n")
    source = load_strategy(str(tmp_path / "boom.py")).source(60_000)
    with pytest.raises(StrategyError) as exc:
        source.on_bar(BAR)
    assert str(exc.value) == ("strategy Boom raised KeyError: 'missing' on XRPUSDT bar "
                              "2017-10-01T00:00:00Z (boom.py:6)")


# --- the loader -----------------------------------------------------------------------------
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "strategies"


def test_a_file_a_module_and_an_installed_name_load_the_same_way(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_file = load_strategy(f"{EXAMPLES}/ema_cross.py:EmaCross", {"fast": "10"})
    assert (by_file.cls.name, by_file.params["fast"], by_file.params["slow"]) == (
        "EmaCross", 10, 26)
    assert load_strategy(f"{EXAMPLES}/ema_cross.py").cls.name == "EmaCross"  # the only one
    assert not (EXAMPLES / "__pycache__").exists()
    pkg = tmp_path / "mystrats"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "trend.py").write_text((EXAMPLES / "donchian_breakout.py").read_text())
    dist = tmp_path / "mystrats-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mystrats\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[quantum_trader.strategies]\nturtle = mystrats.trend:DonchianBreakout\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    by_module = load_strategy("mystrats.trend:DonchianBreakout", {"entry": 30})
    by_name = load_strategy("turtle", {"entry": 30})
    assert by_module.cls is by_name.cls
    assert by_name.describe() == ("DonchianBreakout(entry=30, atr_period=20, "
                                  "atr_mult=2, allow_short=true) from "
                                  "mystrats.trend:DonchianBreakout (mystrats)")
    with pytest.raises(StrategyLoadError) as exc:
        load_strategy("turtl", origin="--strategy")
    assert str(exc.value).startswith("--strategy turtl: no installed strategy of that name "
                                     "(installed: turtle")


@pytest.mark.parametrize(("spec", "params", "message"), [
    ("@/ema_cross.py:Nope", {}, "strategy.path @/ema_cross.py:Nope: @/ema_cross.py has no "
                                "Nope (strategies in it: EmaCross)"),
    ("@/ema_cross.py:math", {}, "strategy.path @/ema_cross.py:math: math is not a Strategy "
                                "subclass (quantum_trader.strategies.Strategy)"),
    ("@/ema_cross.py", {"fast": 0}, "strategy.params.fast: 0 is not an integer in [1, 200]"),
    ("@/ema_cross.py", {"fastt": 3}, "strategy.params.fastt: EmaCross has no parameter "
                                     "'fastt' (did you mean 'fast'?)"),
    ("@/ema_cross.py", {"fast": 30}, "strategy.path @/ema_cross.py: EmaCross(fast=30, slow=26, "
                                     "atr_period=14, atr_mult=2, allow_short=true) could not "
                                     "be made: ValueError: fast (30) must be less than slow "
                                     "(26)"),
    ("@/missing.py", {}, "strategy.path @/missing.py: no such file"),
    ("", {}, "strategy.path: empty; give FILE.py[:Class], package.module:Class or an "
             "installed strategy's name"),
])
def test_what_cannot_be_loaded_is_named(spec: str, params: dict[str, object],
                                        message: str) -> None:
    spec, message = spec.replace("@", str(EXAMPLES)), message.replace("@", str(EXAMPLES))
    with pytest.raises(StrategyLoadError) as exc:
        load_strategy(spec, params)
    assert str(exc.value) == message


def test_a_file_that_fails_to_import_is_named_and_leaves_nothing_behind(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import nosuchmodule_qt\n")
    with pytest.raises(StrategyLoadError) as exc:
        load_strategy(str(bad), origin="--strategy")
    assert str(exc.value) == (f"--strategy {bad}: importing {bad} failed: "
                              "ModuleNotFoundError: No module named 'nosuchmodule_qt'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.py"]
    assert str(tmp_path) not in sys.path


def test_strategy_path_in_the_config_chooses_the_source() -> None:
    cfg = load_settings(env={}, overrides={"strategy.path": f"{EXAMPLES}/ema_cross.py",
                                           "strategy.params": {"slow": 30},
                                           "strategy.signal_ttl_ms": 5_000})
    source, why = choose_signal_source(cfg)
    assert isinstance(source, StrategySource)
    assert why == (f"strategy EmaCross(fast=12, slow=30, atr_period=14, atr_mult=2, "
                   f"allow_short=true) from {EXAMPLES}/ema_cross.py (strategy.path)")
    assert source._ttl == 5_000


# --- the checks -----------------------------------------------------------------------------
BARS = load_sample("XRP").slice(0, 3_000)


class Peeks(Strategy):
    """Keeps every bar it sees in a class-level dict (shared by every instance, so by every
    run in the process) and trades on the next bar's close when it finds it there."""

    seen: ClassVar[dict[int, float]] = {}

    def on_bar(self, bar: Bar) -> Signal | None:
        self.seen[bar.ts] = bar.close
        nxt = self.seen.get(bar.ts + 1_800_000)
        if nxt is None:
            return None
        return Signal.long(0.9) if nxt > bar.close else Signal.short(0.9)


class Cumulative(Strategy):
    """Long above the average close since its first bar: that average never forgets."""

    def setup(self) -> None:
        self.total, self.n, self.above = 0.0, 0, False

    def warmup(self) -> int:
        return 100

    def on_bar(self, bar: Bar) -> Signal | None:
        self.total += bar.close
        self.n += 1
        above = bar.close > self.total / self.n
        crossed, self.above = above != self.above, above
        return (Signal.long(0.7) if above else Signal.flat()) if crossed else None


class Dice(Strategy):
    def on_bar(self, bar: Bar) -> Signal | None:
        return Signal.long(0.7) if random.random() < 0.05 else None


def _results(cls: type[Strategy]) -> dict[str, str]:
    loaded = StrategySource(cls, {}, 60_000)
    results = check_source(lambda: StrategySource(cls, {}, 60_000), BARS, loaded.warmup())
    return {f"{r.check}@{r.condition}": "same" if r.passed else r.explain(cls.name)
            for r in results}


def test_an_honest_strategy_passes_every_check() -> None:
    cfg = Settings()
    results = check_source(lambda: choose_signal_source(cfg)[0], BARS,
                           EmaCrossStrategy().warmup())
    assert [r.check for r in results] == ["lookahead"] * 3 + ["recursive", "deterministic"]
    assert all(r.passed for r in results)
    assert all(r.signals > 20 for r in results)


def test_a_strategy_that_sees_the_future_is_caught_at_the_first_bar_it_differs() -> None:
    Peeks.seen.clear()
    found = _results(Peeks)
    assert found["lookahead@only the bars from 2017-10-16T15:00:00Z on changed"] == (
        "Peeks looks ahead: with only the bars from 2017-10-16T15:00:00Z on changed, its "
        "signal on XRPUSDT bar 2017-10-01T00:00:00Z changed from none to long 0.9")


def test_an_indicator_that_never_forgets_its_start_fails_the_recursive_check() -> None:
    found = _results(Cumulative)
    assert all(v == "same" for k, v in found.items() if not k.startswith("recursive"))
    (recursive,) = (v for k, v in found.items() if k.startswith("recursive"))
    assert recursive.startswith("Cumulative's signals depend on where the history starts: "
                                "started at 2017-10-16T15:00:00Z with a warm-up of 100 bars, "
                                "its signal on XRPUSDT bar ")


def test_randomness_fails_the_determinism_check() -> None:
    random.seed(3)
    found = _results(Dice)
    assert not all(v == "same" for v in found.values())
    (det,) = (v for k, v in found.items() if k.startswith("deterministic"))
    assert det.startswith("Dice is not a function of its bars: run twice on the same bars")
