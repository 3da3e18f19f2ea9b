"""An ``OutboxStore`` in memory, for the outbox publisher's tests (the SQL one lives in
``SqlTradeStore``). ``commit`` is what a store transaction does: the rows get increasing seqs
and are pending until ``outbox_done`` marks them."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from quantum_trader.bus.outbox import OutboxStore
from quantum_trader.domain.records import OutboundMessage


class MemoryOutbox:
    def __init__(self) -> None:
        self.rows: dict[int, OutboundMessage] = {}
        self.done: set[int] = set()
        self.done_calls: list[list[int]] = []
        self.fail_done = 0  # the next N outbox_done calls raise (the store went away)
        self.fail_pending = 0  # the next N outbox_pending calls raise
        self._seqs = itertools.count(1)

    def commit(self, *messages: OutboundMessage) -> list[int]:
        seqs = []
        for message in messages:
            seq = next(self._seqs)
            self.rows[seq] = message
            seqs.append(seq)
        return seqs

    def pending(self) -> list[int]:
        return sorted(seq for seq in self.rows if seq not in self.done)

    async def outbox_pending(self, limit: int) -> list[tuple[int, OutboundMessage]]:
        if self.fail_pending:
            self.fail_pending -= 1
            raise ConnectionError("store unavailable")
        return [(seq, self.rows[seq]) for seq in self.pending()[:limit]]

    async def outbox_done(self, seqs: Sequence[int]) -> None:
        if self.fail_done:
            self.fail_done -= 1
            raise ConnectionError("store unavailable")
        unknown = set(seqs) - set(self.rows)
        assert not unknown, f"marked unknown seqs done: {unknown}"
        self.done_calls.append(list(seqs))
        self.done.update(seqs)


def outbound(topic: str, n: int, **payload: Any) -> OutboundMessage:
    return OutboundMessage(topic=topic, id=f"{topic}-{n}", type="test",
                           payload={"n": n, **payload}, ts=1_700_000_000_000 + n,
                           trace_id=f"trace-{n}")


def _conforms(outbox: MemoryOutbox) -> OutboxStore:
    return outbox  # mypy: the Protocol the SQL store implements too
