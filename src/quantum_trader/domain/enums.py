"""Closed vocabularies of the trading domain."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class Direction(StrEnum):
    """What a signal asks for: be long, be short, or be flat."""

    LONG = "LONG"
    SHORT = "SHORT"
    FLAT = "FLAT"

    @property
    def sign(self) -> int:
        return {"LONG": 1, "SHORT": -1, "FLAT": 0}[self.value]


class OrderType(StrEnum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"
    STOP_MARKET = "STOP_MARKET"


class OrderStatus(StrEnum):
    NEW = "NEW"  # created and persisted, not yet sent
    SUBMITTED = "SUBMITTED"  # sent, no answer yet
    ACCEPTED = "ACCEPTED"  # the exchange has it on its book
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def is_open(self) -> bool:
        return not self.is_terminal


_TERMINAL = frozenset({OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED,
                       OrderStatus.EXPIRED})


class Liquidity(StrEnum):
    MAKER = "MAKER"
    TAKER = "TAKER"


class TradingState(IntEnum):
    """Ordered by severity so that the worse of two states is ``max(a, b)``."""

    ACTIVE = 0  # entries and exits
    REDUCING = 1  # exits only
    HALTED = 2  # nothing new except reduce-only exits


class IntentPurpose(StrEnum):
    ENTRY = "ENTRY"
    EXIT = "EXIT"
