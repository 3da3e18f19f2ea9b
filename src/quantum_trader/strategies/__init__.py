"""Strategies as plugins: the public API a strategy is written against (docs/strategies.md).

Import from here only; the rest of the package (the adapter, the loader, the checks) is the
platform's side of the contract.
"""

from quantum_trader.domain.models import Bar
from quantum_trader.domain.strategy import ChoiceParam, FloatParam, IntParam, Param, ParamValue
from quantum_trader.strategies.api import Direction, Signal, Strategy

__all__ = ["Bar", "ChoiceParam", "Direction", "FloatParam", "IntParam", "Param", "ParamValue",
           "Signal", "Strategy"]
