"""Redis Streams bus throughput: publish + consume + ack, messages/s, against the
``redis-benchmark`` XADD ceiling of the same server, in the same run.

Scenarios (each moves N bar-sized messages end to end, producer and consumer concurrently):

* ``batched``    publish_many (100 per round trip) | read(count=500) | one XACK per batch
* ``concurrent`` publish() one message per call, 32 publishers in flight | read | batch ack
* ``consumer``   publish_many | the ``Consumer`` runner services use (one ack per message)

The ceiling is ``redis-benchmark -n 100000 XADD <key> * d x`` (50 clients, no pipelining) and
the same with ``-P 16``. A bus message costs at least three commands (XADD, XREADGROUP, XACK)
plus JSON encode/decode in Python, so the ratio is bus messages/s per raw XADD/s.

Run: .venv/bin/python bench/bench_bus.py [--url redis://127.0.0.1:6379/0] [--n 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import time
import uuid
from urllib.parse import urlparse

from quantum_trader.bus.consumer import Consumer
from quantum_trader.bus.protocol import Message
from quantum_trader.bus.redis_streams import RedisStreamBus


def bar_message(i: int) -> Message:
    # About the size of a real market.bars message (~250 bytes encoded).
    return Message(type="bar", ts=1_700_000_000_000 + i, trace_id=f"trace-{i}", payload={
        "symbol": "BTCUSDT", "timeframe": "1m", "open_ts": 1_700_000_000_000 + i * 60_000,
        "open": 43_000.5, "high": 43_120.0, "low": 42_950.25, "close": 43_050.75,
        "volume": 123.456, "seq": i})


async def drain(bus: RedisStreamBus, n: int, group: str) -> None:
    """Read and ack until ``n`` messages have been handled."""
    seen = 0
    while seen < n:
        got = await bus.read("market.bars", group, "bench-1", count=500, block_ms=200)
        if got:
            await bus.ack("market.bars", group, [d.entry_id for d in got])
            seen += len(got)


async def scenario(url: str, n: int, name: str) -> float:
    namespace = f"qt-bench:{uuid.uuid4().hex[:8]}:"
    bus = RedisStreamBus(url, namespace=namespace, maxlen=max(100_000, n))
    messages = [bar_message(i) for i in range(n)]
    group = "bench"
    await bus.ensure_group("market.bars", group)
    try:
        started = time.perf_counter()
        if name == "batched":
            async def produce() -> None:
                for i in range(0, n, 100):
                    await bus.publish_many("market.bars", messages[i:i + 100])
            await asyncio.gather(produce(), drain(bus, n, group))
        elif name == "concurrent":
            async def publisher(k: int) -> None:
                for m in messages[k::32]:
                    await bus.publish("market.bars", m)
            await asyncio.gather(*(publisher(k) for k in range(32)), drain(bus, n, group))
        else:
            done = asyncio.Event()
            count = 0

            async def handler(_: Message) -> None:
                nonlocal count
                count += 1
                if count == n:
                    done.set()

            consumer = Consumer(bus, "market.bars", group, "bench-1", handler, batch=500,
                                block_ms=200)
            task = asyncio.create_task(consumer.run())

            async def produce() -> None:
                for i in range(0, n, 100):
                    await bus.publish_many("market.bars", messages[i:i + 100])
            await asyncio.gather(produce(), done.wait())
            await consumer.stop()
            await task
        elapsed = time.perf_counter() - started
        assert await bus.lag("market.bars", group) == 0
        return n / elapsed
    finally:
        await bus.client.delete(bus.key("market.bars"), bus.key("deadletter"))
        await bus.close()


def redis_benchmark(url: str, pipeline: int) -> float:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise SystemExit("redis-benchmark not found (apt-get install redis-tools)")
    parsed = urlparse(url)
    key = f"qt-bench:{uuid.uuid4().hex[:8]}:xadd"
    cmd = [binary, "-h", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 6379),
           "-q", "-n", "100000", "-P", str(pipeline), "XADD", key, "*", "d", "x"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    finally:
        subprocess.run([shutil.which("redis-cli") or "redis-cli", "-h",
                        parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 6379),
                        "DEL", key], capture_output=True, check=False)
    # -q prints "XADD ...: 123456.79 requests per second, p50=0.199 msec" (after \r updates)
    match = re.findall(r"([\d.]+) requests per second", out.stdout)
    if not match:
        raise SystemExit(f"cannot parse redis-benchmark output: {out.stdout!r}")
    return float(match[-1])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3, help="best of RUNS per figure")
    args = parser.parse_args()
    n = args.n

    # Best of several runs, the ceiling measured before and after the bus runs: on a shared
    # machine the figures move with the load, and the ratio should compare like with like.
    ceiling = [redis_benchmark(args.url, pipeline=1)]
    ceiling_p16 = [redis_benchmark(args.url, pipeline=16)]
    await scenario(args.url, min(n, 5_000), "batched")  # warm-up: connections, script load
    results: dict[str, float] = {}
    for name in ("batched", "concurrent", "consumer"):
        size = n if name != "consumer" else n // 2
        results[name] = max([await scenario(args.url, size, name) for _ in range(args.runs)])
    ceiling.append(redis_benchmark(args.url, pipeline=1))
    ceiling_p16.append(redis_benchmark(args.url, pipeline=16))
    top, top_p16 = max(ceiling), max(ceiling_p16)

    print(f"Redis Streams bus, publish + consume + ack of ~250 B messages, best of {args.runs} "
          f"({args.url}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    for name, rate in results.items():
        print(f"  {name:<11} {rate:>9,.0f} msg/s   {rate / top:5.2f} x XADD ceiling   "
              f"{rate / top_p16:5.2f} x pipelined XADD ceiling")
    print(f"  redis-benchmark XADD, 50 clients:        {top:>9,.0f} req/s  "
          f"(before/after: {ceiling[0]:,.0f} / {ceiling[1]:,.0f})")
    print(f"  redis-benchmark XADD, 50 clients, -P 16: {top_p16:>9,.0f} req/s  "
          f"(before/after: {ceiling_p16[0]:,.0f} / {ceiling_p16[1]:,.0f})")


if __name__ == "__main__":
    asyncio.run(main())
