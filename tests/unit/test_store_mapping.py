"""``RowMapping``: rows derived from dataclass fields and table columns, mismatches refused at
construction (import time), not at the first write."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from sqlalchemy import JSON, BigInteger, Column, Double, MetaData, String, Table

from quantum_trader.domain.enums import OrderStatus, Side
from quantum_trader.store.mapping import RowMapping, plain


@dataclass(frozen=True, slots=True)
class Inner:
    side: Side
    qty: float = 0.0


@dataclass(slots=True)
class Thing:
    name: str
    ts: int
    inner: Inner | None = None
    history: list[tuple[OrderStatus, int]] = field(default_factory=list)
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def table(*extra: Column[Any], name: str = "things") -> Table:
    return Table(name, MetaData(), Column("name", String, primary_key=True),
                 Column("ts", BigInteger), Column("inner", JSON), Column("history", JSON),
                 Column("tags", JSON), Column("extra", JSON), *extra)


def test_row_shapes_and_round_trip() -> None:
    m = RowMapping(Thing, table())
    thing = Thing("a", 5, Inner(Side.SELL, 0.5), [(OrderStatus.NEW, 1)], ("x",), {"k": [1]})
    row = m.to_row(thing)
    assert row == {"name": "a", "ts": 5, "inner": {"side": "SELL", "qty": 0.5},
                   "history": [["NEW", 1]], "tags": ["x"], "extra": {"k": [1]}}
    back = m.from_row(row)
    assert back == thing
    assert type(back.history[0]) is tuple
    assert back.history[0][0] is OrderStatus.NEW


def test_numpy_scalars_become_python_numbers() -> None:
    m = RowMapping(Thing, table())
    row = m.to_row(Thing("a", np.int64(5), extra={"x": np.float32(0.5),  # type: ignore[arg-type]
                                                    "y": [np.int64(2), np.bool_(True)]}))
    assert type(row["ts"]) is int
    assert row["extra"] == {"x": 0.5, "y": [2, True]}
    assert [type(v) for v in row["extra"]["y"]] == [int, bool]
    assert plain({"s": Side.BUY, "t": (1, 2)}) == {"s": "BUY", "t": [1, 2]}
    assert type(plain({"s": Side.BUY})["s"]) is str


def test_nested_rows_from_other_releases_load() -> None:
    m = RowMapping(Thing, table())
    row = {**m.to_row(Thing("a", 5)), "inner": {"side": "BUY", "unknown": 1}}
    assert m.from_row(row).inner == Inner(Side.BUY)


def test_an_enum_value_that_is_no_member_is_refused() -> None:
    m = RowMapping(Thing, table())
    with pytest.raises(ValueError, match="SIDEWAYS"):
        m.to_row(Thing("a", 5, Inner("SIDEWAYS")))  # type: ignore[arg-type]


def test_a_field_without_a_column_is_refused() -> None:
    t = Table("things", MetaData(), Column("name", String, primary_key=True))
    with pytest.raises(TypeError, match=r"fields \['extra', 'history', 'inner', 'tags', 'ts'\]"):
        RowMapping(Thing, t)


def test_a_column_that_is_no_field_must_be_computed_or_generated() -> None:
    with pytest.raises(TypeError, match=r"columns \['price'\] are not Thing fields"):
        RowMapping(Thing, table(Column("price", Double)))
    m = RowMapping(Thing, table(Column("price", Double)), computed={"price": lambda t: 1.0})
    assert m.to_row(Thing("a", 5))["price"] == 1.0
    seq = Column("seq", BigInteger, autoincrement=True)
    assert "seq" not in RowMapping(Thing, table(seq)).to_row(Thing("a", 5))


def test_unsupported_field_types_are_refused() -> None:
    @dataclass
    class Bad:
        name: str
        either: int | str

    t = Table("bad", MetaData(), Column("name", String), Column("either", String))
    with pytest.raises(TypeError, match=r"only X \| None unions"):
        RowMapping(Bad, t)
