"""Consumer groups that vanished: create them again, count it, and carry on.

A group disappears when Redis restarts without its data (no AOF, or a lost volume) or when
someone deletes it. Reads then raise ``UnknownGroup`` forever unless the reader creates the
group again. Every read path (``Consumer``, the heartbeat watcher, the ``redis`` health check)
does that through ``recreate_group``, which starts the new group at the beginning of what the
stream still holds (so entries published since the loss are read), logs a warning and counts
``bus_groups_recreated_total{stream,group}``: whatever the old group had not acked is gone, and
that counter is how the loss is reported.
"""

from __future__ import annotations

from quantum_trader.bus.protocol import Bus, stream_name
from quantum_trader.bus.topics import topic_of
from quantum_trader.observability.logging import get_logger
from quantum_trader.observability.metrics import BUS_GROUPS_RECREATED

__all__ = ["recreate_group"]

log = get_logger(__name__)


async def recreate_group(bus: Bus, topic: str, group: str, reader: str = "") -> bool:
    """Create ``group`` on ``topic`` again after ``UnknownGroup``. True if this call created
    it (False: another reader of the group was first; counted once, by that one)."""
    created = await bus.ensure_group(topic, group)
    if created:
        BUS_GROUPS_RECREATED.labels(topic_of(topic), group).inc()
        log.warning("bus.group_recreated", stream=stream_name(topic), group=group,
                    reader=reader, lost="entries the group had not acked before it vanished")
    return created
