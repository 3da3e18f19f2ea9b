"""The Telegram notifier and command bot: rendered text, an outage that never blocks trading,
retries and rate limits, and commands answered only for allowed chats.

Telegram is a real HTTP server here (tests/support/fake_telegram.py) so the client, its error
handling and the token-in-the-URL path are exercised as in production.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import date

import pytest

from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.domain.enums import Side
from quantum_trader.domain.records import ClosedTrade, PositionSnapshot
from quantum_trader.observability.notifier import (
    DailySummary,
    NotifierSettings,
    TelegramNotifier,
    TradeClosed,
    TradeOpened,
    render_daily_summary,
    render_kill_switch,
    render_state_change,
    render_trade_closed,
    render_trade_opened,
)
from quantum_trader.observability.telegram import (
    Command,
    TelegramClient,
    TelegramCommandBot,
    TelegramError,
    control_commands,
    parse_command,
    store_commands,
)
from tests.support.fake_telegram import FakeTelegram

CHAT = 4242
STRANGER = 666


@pytest.fixture
def fake() -> Iterator[FakeTelegram]:
    with FakeTelegram() as f:
        yield f


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


# --- rendering ---------------------------------------------------------------------------------


def test_trade_opened_text() -> None:
    text = render_trade_opened(TradeOpened("BTCUSDT", "LONG", 0.015, 64250.5, stop=63000.0,
                                           target=66751.0, trace_id="abcdef0123456789"))
    assert text == ("📈 <b>Opened LONG BTCUSDT</b>\n"
                    "qty 0.015 @ 64,250.50\n"
                    "stop 63,000.00 · target 66,751.00\n"
                    "trace abcdef012345")


def test_trade_closed_text_win_and_loss() -> None:
    win = render_trade_closed(TradeClosed("XRPUSDT", "SHORT", 1000, 0.5123, 0.4987, 13.6,
                                          reason="take_profit"))
    assert win == ("✅ <b>Closed SHORT XRPUSDT</b> (take_profit)\n"
                   "qty 1000: 0.5123 → 0.4987\n"
                   "PnL <b>+13.60</b> (+2.65%)")
    loss = render_trade_closed(TradeClosed("ETHUSDT", "LONG", 2, 3000, 2940, -121.5,
                                           reason="stop_loss"))
    assert loss.startswith("🔻 <b>Closed LONG ETHUSDT</b> (stop_loss)\n")
    assert "PnL <b>-121.50</b> (-2.02%)" in loss


def test_state_change_and_kill_switch_text() -> None:
    assert render_state_change("ACTIVE", "HALTED", "max drawdown breached: 20.13%") == (
        "🛑 <b>Trading ACTIVE → HALTED</b>\nmax drawdown breached: 20.13%")
    assert render_state_change("HALTED", "ACTIVE") == "🟢 <b>Trading HALTED → ACTIVE</b>"
    assert render_kill_switch("telegram:@alice", "manual", cancelled_orders=3,
                              closed_positions=1) == (
        "🚨 <b>KILL SWITCH</b> by telegram:@alice\nTrading HALTED: no new entries.\nmanual\n"
        "3 order(s) cancelled, 1 position(s) closed")


def test_daily_summary_text() -> None:
    text = render_daily_summary(DailySummary(date(2026, 11, 24), trades=8, wins=5, pnl=-42.5,
                                             equity=10234.56, drawdown=0.0312,
                                             open_positions=1, state="REDUCING"))
    assert text == ("📊 <b>Daily summary 2026-11-24</b>\n"
                    "trades 8 · win rate 62%\n"
                    "PnL <b>-42.50</b>\n"
                    "equity 10,234.56 · drawdown 3.1%\n"
                    "open positions 1 · state REDUCING")


def test_user_text_is_html_escaped() -> None:
    # parse_mode HTML: an unescaped "<" in a reason would make Telegram refuse the message.
    assert render_state_change("ACTIVE", "HALTED", "equity < 0 & <b>") == (
        "🛑 <b>Trading ACTIVE → HALTED</b>\nequity &lt; 0 &amp; &lt;b&gt;")


def test_parse_command() -> None:
    assert parse_command("/pause@qt_bot now") == ("pause", ("now",))
    assert parse_command("  /STATUS ") == ("status", ())
    assert parse_command("hello") is None
    assert parse_command("/") is None


# --- delivery ------------------------------------------------------------------------------------


async def test_messages_reach_telegram(fake: FakeTelegram) -> None:
    client = TelegramClient(fake.token, api_url=fake.url)
    notifier = TelegramNotifier(client, [CHAT], NotifierSettings(per_chat_interval_s=0.0))
    notifier.start()
    notifier.trade_opened(TradeOpened("BTCUSDT", "LONG", 0.01, 60000.0))
    notifier.kill_switch("telegram:@alice")
    assert await notifier.flush(5)
    await notifier.stop()
    await client.aclose()
    (text,) = fake.texts(CHAT)  # queued together: merged into one message
    assert "Opened LONG BTCUSDT" in text
    assert "KILL SWITCH" in text
    assert fake.messages[0].parse_mode == "HTML"
    assert notifier.stats.sent == 1
    assert notifier.stats.failed == 0


@pytest.mark.parametrize("outage", ["http_500", "unreachable", "hanging"])
async def test_telegram_outage_never_blocks_trading(fake: FakeTelegram, outage: str) -> None:
    """While Telegram fails, notify calls stay O(1) and the event loop stays responsive; the
    queue stays bounded (oldest routine messages dropped and counted, urgent ones kept); when
    Telegram is back what is left is delivered."""
    if outage == "http_500":
        fake.fail_status = 500
    elif outage == "hanging":
        fake.stall_s = 1.0
    url = fake.url
    if outage == "unreachable":
        fake.stop()
    client = TelegramClient(fake.token, api_url=url, timeout_s=0.5)
    settings = NotifierSettings(max_queue=50, per_chat_interval_s=0.0, max_attempts=3,
                                retry_wait_max_s=0.05, merge_chars=200)
    notifier = TelegramNotifier(client, [CHAT], settings)
    notifier.start()

    # The "trading loop": a tick every 5 ms must never be held up.
    lags: list[float] = []
    stop = asyncio.Event()

    async def trading_loop() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - t0 - 0.005)

    loop_task = asyncio.create_task(trading_loop())
    notifier.kill_switch("risk-safety", "first")
    worst_call = 0.0
    for i in range(500):
        t0 = time.perf_counter()
        notifier.trade_opened(TradeOpened("BTCUSDT", "LONG", 0.01, 60000.0 + i))
        worst_call = max(worst_call, time.perf_counter() - t0)
        if i % 50 == 0:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    stop.set()
    await loop_task

    assert worst_call < 0.02, f"a notify call took {worst_call * 1000:.1f} ms"
    assert max(lags) < 0.1, f"the trading loop was held up {max(lags) * 1000:.0f} ms"
    assert notifier.pending <= settings.max_queue
    assert notifier.stats.dropped >= 500 - settings.max_queue - 20
    assert notifier.stats.sent == 0

    # Telegram comes back: the kill switch (urgent) survived the drops and is delivered.
    if outage == "unreachable":
        fake2 = FakeTelegram(fake.token)
        fake2.port, fake2.url = fake.port, fake.url
        fake2.start()
        fake = fake2
    fake.fail_status = None
    fake.stall_s = 0.0
    assert await notifier.flush(20), "the backlog was not delivered after the outage"
    await notifier.stop()
    await client.aclose()
    texts = fake.texts(CHAT)
    assert any("KILL SWITCH" in t for t in texts)
    assert sum(t.count("Opened LONG") for t in texts) > 0
    if outage == "unreachable":
        fake.stop()


class FlakySender:
    def __init__(self, errors: list[TelegramError]) -> None:
        self.errors = errors
        self.calls = 0
        self.sent: list[str] = []

    async def send_message(self, chat_id: int | str, text: str,
                           parse_mode: str | None = "HTML") -> object:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append(text)
        return {}


async def test_transient_errors_are_retried_with_telegram_retry_after() -> None:
    waits: list[float] = []

    async def record(s: float) -> None:
        waits.append(s)

    sender = FlakySender([TelegramError("x", 500), TelegramError("x", 429, retry_after=7.0)])
    notifier = TelegramNotifier(sender, [CHAT], NotifierSettings(per_chat_interval_s=0.0),
                                sleep=record)
    notifier.start()
    notifier.trading_state_changed("ACTIVE", "REDUCING", "operator: pause")
    assert await notifier.flush(5)
    await notifier.stop()
    assert sender.calls == 3
    assert len(sender.sent) == 1
    assert notifier.stats.retries == 2
    assert 7.0 in waits  # the 429's retry_after, not a guess


async def test_permanent_errors_are_not_retried() -> None:
    sender = FlakySender([TelegramError("chat not found", 400)])
    notifier = TelegramNotifier(sender, [CHAT], sleep=no_sleep)
    notifier.start()
    notifier.trade_closed(TradeClosed("BTCUSDT", "LONG", 1, 1, 1, 0))
    assert await notifier.flush(5)
    await notifier.stop()
    assert sender.calls == 1
    assert notifier.stats.failed == 1
    assert notifier.stats.sent == 0


async def test_rate_limit_spaces_messages() -> None:
    waits: list[float] = []

    async def record(s: float) -> None:
        waits.append(s)

    sender = FlakySender([])
    settings = NotifierSettings(per_chat_interval_s=1.0, per_minute=20, merge_chars=10)
    notifier = TelegramNotifier(sender, [CHAT], settings, sleep=record)
    notifier.start()
    for i in range(3):
        notifier.notify(f"message {i}")  # too long to merge (merge_chars=10)
    assert await notifier.flush(5)
    await notifier.stop()
    assert sender.sent == ["message 0", "message 1", "message 2"]
    assert len(waits) == 2
    assert all(0.9 < w <= 1.0 for w in waits)


# --- commands ----------------------------------------------------------------------------------


async def test_commands_answered_for_allowed_chat_only(fake: FakeTelegram) -> None:
    bus = InMemoryBus()
    await bus.ensure_group("control", "test")
    calls: list[Command] = []

    async def status(cmd: Command) -> str:
        calls.append(cmd)
        return "all services OK"

    handlers = {"status": status, **control_commands(bus)}
    client = TelegramClient(fake.token, api_url=fake.url)
    bot = TelegramCommandBot(client, [CHAT], handlers, poll_timeout_s=1)
    stop = asyncio.Event()
    task = asyncio.create_task(bot.run(stop))

    fake.push_command(STRANGER, "/kill", username="mallory")
    fake.push_command(STRANGER, "/status", username="mallory")
    fake.push_command(CHAT, "/status", username="alice")
    fake.push_command(CHAT, "/pause@qt_bot", username="alice")
    fake.push_command(CHAT, "/frobnicate", username="alice")
    await asyncio.to_thread(fake.wait_for, lambda texts: len(texts) >= 3, 10, "3 replies")
    stop.set()
    await task
    await client.aclose()

    # The stranger got nothing back, and nothing it sent reached a callback or the bus.
    assert fake.texts(STRANGER) == []
    assert bot.ignored == 2
    assert [c.user for c in calls] == ["@alice"]
    replies = fake.texts(CHAT)
    assert replies[0] == "all services OK"
    assert replies[1].startswith("Pausing: exits only")
    assert replies[2] == "Commands: /status /pause /resume /kill"
    deliveries = await bus.read("control", "test", "c", count=10, block_ms=0)
    assert [d.message.type for d in deliveries if d.message] == ["pause"]
    msg = deliveries[0].message
    assert msg is not None
    assert msg.payload["by"] == "telegram:@alice"
    assert msg.payload["via"] == "telegram"


async def test_kill_and_resume_publish_control_messages() -> None:
    bus = InMemoryBus()
    await bus.ensure_group("control", "risk-safety")
    handlers = control_commands(bus)
    reply = await handlers["kill"](Command("kill", (), CHAT, "@alice"))
    assert reply.startswith("KILL SWITCH")
    await handlers["resume"](Command("resume", (), CHAT, "@alice"))
    deliveries = await bus.read("control", "risk-safety", "c", count=10, block_ms=0)
    assert [d.message.type for d in deliveries if d.message] == ["kill", "resume"]
    assert deliveries[0].message is not None
    assert deliveries[0].message.payload["flatten"] is False


async def test_kill_flatten_asks_for_every_position_closed_and_bad_arguments_send_nothing(
) -> None:
    bus = InMemoryBus()
    await bus.ensure_group("control", "risk-safety")
    handlers = control_commands(bus)
    reply = await handlers["kill"](Command("kill", ("flatten",), CHAT, "@alice"))
    assert "closing every position" in reply
    for bad in (("flaten",), ("flatten", "now")):
        reply = await handlers["kill"](Command("kill", bad, CHAT, "@alice"))
        assert "nothing sent" in reply
    assert "nothing sent" in await handlers["pause"](Command("pause", ("x",), CHAT, "@a"))
    deliveries = await bus.read("control", "risk-safety", "c", count=10, block_ms=0)
    assert [(d.message.type, d.message.payload["flatten"]) for d in deliveries
            if d.message] == [("kill", True)]


async def test_stale_commands_are_not_executed(fake: FakeTelegram) -> None:
    """A /kill typed long before a restart is still in Telegram's queue: it must not fire."""
    called: list[str] = []

    async def kill(cmd: Command) -> str:
        called.append(cmd.name)
        return "killed"

    client = TelegramClient(fake.token, api_url=fake.url)
    bot = TelegramCommandBot(client, [CHAT], {"kill": kill}, max_age_s=120)
    assert await bot.handle_update({"update_id": 9, "message": {
        "date": int(time.time()) - 3600, "chat": {"id": CHAT}, "text": "/kill"}}) is None
    assert await bot.handle_update({"update_id": 10, "message": {
        "date": int(time.time()), "chat": {"id": CHAT}, "text": "/kill"}}) == "killed"
    await client.aclose()
    assert called == ["kill"]
    assert bot.offset == 11


async def test_poll_survives_telegram_outage(fake: FakeTelegram) -> None:
    fake.fail_status = 502
    client = TelegramClient(fake.token, api_url=fake.url)
    bot = TelegramCommandBot(client, [CHAT], {}, poll_timeout_s=0)
    stop = asyncio.Event()
    task = asyncio.create_task(bot.run(stop))
    await asyncio.sleep(0.3)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 5)
    await client.aclose()


async def test_errors_never_contain_the_token(fake: FakeTelegram) -> None:
    fake.fail_status = 500
    client = TelegramClient(fake.token, api_url=fake.url)
    with pytest.raises(TelegramError) as exc:
        await client.send_message(CHAT, "x")
    assert fake.token not in str(exc.value)
    await client.aclose()
    bad = TelegramClient(fake.token, api_url="http://127.0.0.1:1")
    with pytest.raises(TelegramError) as exc2:
        await bad.send_message(CHAT, "x")
    assert fake.token not in str(exc2.value)
    assert exc2.value.status is None
    await bad.aclose()


class FakeStore:
    """Just what store_commands reads (positions, trades) from the TradeStore port."""

    def __init__(self, positions: list[PositionSnapshot], trades: list[ClosedTrade]) -> None:
        self._positions = positions
        self._trades = trades

    async def positions(self) -> list[PositionSnapshot]:
        return self._positions

    async def trades(self, limit: int = 100, symbol: str | None = None) -> list[ClosedTrade]:
        return self._trades[:limit]


async def test_read_commands_render_store_and_health() -> None:
    day = 1_764_000_000_000 // 86_400_000 * 86_400_000  # a UTC midnight
    pos = PositionSnapshot("BTCUSDT", 0.01, 60000.0, 0.0, 0.0, 0.0, day, 61000.0, 3.0, day)
    flat = PositionSnapshot("ETHUSDT", 0.0, 0.0, 0.0, 0.0, 0.0, day, 3000.0, 3.0, day)
    trade = ClosedTrade("t1", "XRPUSDT", Side.BUY, 100, 0.5, 0.6, day + 1, day + 2, 10.0, 0.5,
                        0.0, "take_profit", "tr")
    old = ClosedTrade("t0", "XRPUSDT", Side.BUY, 100, 0.5, 0.4, day - 10, day - 5, -10.0, 0.5,
                      0.0, "stop_loss", "tr")

    async def health() -> list[dict[str, object]]:
        return [{"service": "gateway", "status": "OK", "reasons": []},
                {"service": "execution", "status": "DOWN", "reasons": ["redis: <refused>"]}]

    cmds = store_commands(FakeStore([pos, flat], [trade, old]),  # type: ignore[arg-type]
                          health, clock_ms=lambda: day + 3_600_000)
    cmd = Command("x", (), CHAT, "@alice")
    assert await cmds["positions"](cmd) == (
        "<b>Open positions</b>\nBTCUSDT LONG 0.01 @ 60,000 · last 61,000 · uPnL +10.00")
    assert await cmds["pnl"](cmd) == ("<b>PnL today (UTC)</b>\nrealized +9.50 over 1 trade(s)"
                                      " (1 won)\nunrealized +10.00")
    assert await cmds["status"](cmd) == ("<b>Services</b>\n✅ gateway OK\n"
                                         "🔴 execution DOWN: redis: &lt;refused&gt;")


async def test_a_malformed_event_never_raises_into_trading() -> None:
    sender = FlakySender([])
    notifier = TelegramNotifier(sender, [CHAT], sleep=no_sleep)
    notifier.trade_opened(TradeOpened("BTCUSDT", "LONG", 1.0, None))  # type: ignore[arg-type]
    assert notifier.pending == 0
