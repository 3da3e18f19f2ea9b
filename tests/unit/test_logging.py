"""Structured logging: JSON fields, trace ids, stdlib routing, and secrets never in the output."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from quantum_trader.observability.logging import (
    bind_trace,
    configure_logging,
    current_trace_id,
    get_logger,
    new_trace_id,
    redact,
    register_secret,
    trace_context,
)


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """Configure JSON logging into a buffer; restore global logging state afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buf = io.StringIO()
    configure_logging(level="DEBUG", json=True, stream=buf, service="test-svc")
    yield buf
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_json_line_has_the_standard_fields(out: io.StringIO) -> None:
    get_logger("qt.test").info("order.placed", symbol="BTCUSDT", qty=0.01)
    [line] = lines(out)
    assert line["event"] == "order.placed"
    assert line["level"] == "info"
    assert line["logger"] == "qt.test"
    assert line["service"] == "test-svc"
    assert line["symbol"] == "BTCUSDT"
    assert line["qty"] == 0.01
    assert line["timestamp"].endswith("Z")  # ISO 8601, UTC
    assert "trace_id" not in line  # no trace bound


def test_trace_context_adds_trace_id_and_restores(out: io.StringIO) -> None:
    log = get_logger("qt.test")
    trace = new_trace_id()
    with trace_context(trace):
        assert current_trace_id() == trace
        log.info("inside")
        with trace_context("inner"):
            log.info("nested")
        log.info("back")
    log.info("outside")
    got = [(line["event"], line.get("trace_id")) for line in lines(out)
           if line["logger"] == "qt.test"]  # not a thread an earlier test left behind
    assert got == [("inside", trace), ("nested", "inner"), ("back", trace), ("outside", None)]


async def test_bind_trace_is_per_task(out: io.StringIO) -> None:
    log = get_logger("qt.test")

    async def work(trace: str) -> None:
        bind_trace(trace)
        await asyncio.sleep(0)
        log.info("step", who=trace)

    await asyncio.gather(work("t-a"), work("t-b"))
    mine = [line for line in lines(out) if line["logger"] == "qt.test"]  # not asyncio's debug
    assert {(line["who"], line["trace_id"]) for line in mine} == {("t-a", "t-a"), ("t-b", "t-b")}
    assert current_trace_id() is None  # tasks ran in copies of the context


def test_stdlib_logging_goes_through_the_same_formatter(out: io.StringIO) -> None:
    with trace_context("abc"):
        logging.getLogger("some.library").warning("retrying %s in %ds", "fetch", 3)
    [line] = lines(out)
    assert line["event"] == "retrying fetch in 3s"
    assert line["level"] == "warning"
    assert line["logger"] == "some.library"
    assert line["trace_id"] == "abc"
    assert line["service"] == "test-svc"


def test_level_filters(out: io.StringIO) -> None:
    configure_logging(level="WARNING", stream=out)
    get_logger("x").info("hidden")
    logging.getLogger("y").info("hidden too")
    get_logger("x").warning("shown")
    assert [line["event"] for line in lines(out)] == ["shown"]


def test_reconfiguring_does_not_duplicate_lines(out: io.StringIO) -> None:
    configure_logging(level="INFO", stream=out)
    configure_logging(level="INFO", stream=out)
    get_logger("x").info("once")
    assert len(lines(out)) == 1


def test_registered_secret_never_appears(out: io.StringIO) -> None:
    secret = "s3cr3t-Binance-API-value-1234"
    register_secret(secret)
    log = get_logger("qt.test")

    class Creds:
        def __repr__(self) -> str:
            return f"Creds({secret})"

    log.info(f"connecting with {secret}")
    log.info("ctx", value=secret, nested={"list": [secret, {"deep": secret}]}, obj=Creds())
    logging.getLogger("ccxt").error("auth failed for %s", secret)
    try:
        raise ValueError(f"bad key {secret}")
    except ValueError:
        log.exception("boom")
    text = out.getvalue()
    assert secret not in text
    assert text.count("***") >= 6
    assert len(lines(out)) == 4  # still valid JSON after redaction


def test_secret_with_json_escaped_characters_is_redacted(out: io.StringIO) -> None:
    secret = 'pa"ss\\wörd-Ünïcode'
    register_secret(secret)
    get_logger("x").info("e", v=secret)
    text = out.getvalue()
    assert secret not in text
    assert json.dumps(secret) not in text
    assert lines(out)[0]["v"] == "***"


def test_key_like_values_are_redacted_but_ids_are_not(out: io.StringIO) -> None:
    api_key = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
    hex_secret = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    trace = new_trace_id()  # 32 hex chars: must stay readable
    log = get_logger("qt.test")
    with trace_context(trace):
        log.info(f"headers X-MBX-APIKEY: {api_key}")
        log.info(f"secret={hex_secret} token {api_key}")
        log.info("dsn postgresql://qt:password=hunter2@db")
        log.info("fields", api_key="short", password="hunter2", max_qty=3, message_id=trace)
    text = out.getvalue()
    for leaked in (api_key, hex_secret, "hunter2", "short"):
        assert leaked not in text
    got = lines(out)
    assert all(line["trace_id"] == trace for line in got)
    assert got[3]["message_id"] == trace
    assert got[3]["max_qty"] == 3
    assert got[3]["api_key"] == "***"


def test_redact_function() -> None:
    assert redact("apiKey=" + "A" * 40) == "apiKey=***"
    assert redact('"secret": "' + "b" * 48 + '"') == '"secret": "***"'
    assert redact("nothing to hide " + "c" * 40) == "nothing to hide " + "c" * 40
    register_secret("abc")  # too short to be a secret: ignored rather than garbling logs
    assert redact("abc") == "abc"


def test_console_renderer_for_humans() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buf = io.StringIO()
    try:
        configure_logging(level="INFO", json=False, stream=buf, service="cli")
        register_secret("console-secret-value")
        with trace_context("t-123"):
            get_logger("qt.cli").info("backtest.done", trades=12, key="console-secret-value")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()
    text = buf.getvalue()
    assert "backtest.done" in text
    assert "trades=12" in text
    assert "t-123" in text
    assert "console-secret-value" not in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])
