"""One service's view of the store's outbox: the messages it committed, oldest first.

Every service writes its outbound messages into the shared ``outbox`` table in the transaction
that causes them; each publishes only its own (``source``), so two services never race to
publish and delete the same rows."""

from __future__ import annotations

from collections.abc import Sequence

from quantum_trader.domain.records import OutboundMessage
from quantum_trader.store.protocol import TradeStore


class ServiceOutbox:
    def __init__(self, store: TradeStore, source: str) -> None:
        self.store = store
        self.source = source

    async def outbox_pending(self, limit: int) -> list[tuple[int, OutboundMessage]]:
        return await self.store.outbox_pending(limit, source=self.source)

    async def outbox_done(self, seqs: Sequence[int]) -> None:
        await self.store.outbox_done(seqs)
