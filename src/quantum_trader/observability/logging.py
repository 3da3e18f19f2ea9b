"""Structured logging: JSON lines for machines (Loki), a console renderer for humans.

One formatter serves structlog and stdlib ``logging`` alike, so a library's log line carries the
same fields (timestamp, level, logger, event, service, trace_id) and goes through the same
secret redaction as ours. The trace id lives in a contextvar, so it follows a message through
``await`` calls and tasks without being passed around.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any, TextIO, cast

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "REDACTED",
    "bind_trace",
    "configure_logging",
    "current_trace_id",
    "get_logger",
    "new_trace_id",
    "redact",
    "register_secret",
    "trace_context",
]

REDACTED = "***"
_MIN_SECRET_LEN = 4  # shorter "secrets" would garble every line they happen to occur in

_trace_id: ContextVar[str | None] = ContextVar("qt_trace_id", default=None)
_secrets: set[str] = set()
_service = "quantum-trader"

# A value after a word like key/secret/token: long enough to be an API key or signature.
# Deliberately keyword-anchored: bare 32-hex strings are our trace and message ids.
_KEYLIKE_RE = re.compile(
    r"(?i)((?:key|secret|token|signature|bearer|authorization)[\w-]*[\"']?\s*[:=]?\s*[\"']?)"
    r"([A-Za-z0-9+/_\-]{32,}={0,2})"
)
# Passwords are short: redact any value after password=/password: .
_PASSWORD_RE = re.compile(
    r"(?i)((?:password|passwd|passphrase)[\w-]*[\"']?\s*[:=]\s*[\"']?)([^\s\"',;&}]+)"
)
# Our own API tokens (security/tokens.py) are recognisable wherever they appear.
_API_TOKEN_RE = re.compile(r"qt_[0-9a-f]{12}_[A-Za-z0-9_\-]{20,}")
# Field names whose whole value is secret, whatever it looks like.
_SECRET_FIELD_RE = re.compile(
    r"(?i)(secret|password|passwd|passphrase|token|api_?key|private_?key|access_?key"
    r"|authorization|signature)"
)


# -- trace id ---------------------------------------------------------------------------------


def new_trace_id() -> str:
    return uuid.uuid4().hex


def current_trace_id() -> str | None:
    return _trace_id.get()


def bind_trace(trace_id: str | None) -> Token[str | None]:
    """Set the trace id for the rest of the current context (task); returns the reset token."""
    return _trace_id.set(trace_id)


@contextmanager
def trace_context(trace_id: str | None) -> Iterator[str | None]:
    """Log lines inside the block carry ``trace_id``; the previous one is restored after."""
    token = _trace_id.set(trace_id)
    try:
        yield trace_id
    finally:
        _trace_id.reset(token)


# -- redaction --------------------------------------------------------------------------------


def register_secret(value: str | None) -> None:
    """Never log ``value``: every occurrence becomes ``***``. Call it when a secret is loaded."""
    if value and len(value) >= _MIN_SECRET_LEN:
        _secrets.add(value)


def redact(text: str) -> str:
    """Replace registered secrets and key-like values in ``text``."""
    # Longest first, so a secret containing another is removed whole.
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _API_TOKEN_RE.sub(REDACTED, text)
    text = _KEYLIKE_RE.sub(lambda m: m.group(1) + REDACTED, text)
    return _PASSWORD_RE.sub(lambda m: m.group(1) + REDACTED, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and _SECRET_FIELD_RE.search(k)
                    and v not in (None, "") else _redact_value(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    return value


def _redact_processor(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    redacted = _redact_value(dict(event_dict))
    return cast(EventDict, redacted)


class _RedactingRenderer:
    """Final pass over the rendered line: catches secrets hidden in object reprs."""

    def __init__(self, renderer: Processor) -> None:
        self._renderer = renderer

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        rendered = self._renderer(logger, name, event_dict)
        return redact(rendered if isinstance(rendered, str) else str(rendered))


# -- processors -------------------------------------------------------------------------------


def _add_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict.setdefault("service", _service)
    trace_id = _trace_id.get()
    if trace_id is not None:
        event_dict.setdefault("trace_id", trace_id)
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _add_context,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.StackInfoRenderer(),
    ]


class _QtHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks our handler so reconfiguring replaces it instead of stacking duplicates."""


def configure_logging(level: str | int = "INFO", json: bool = True,
                      stream: TextIO | None = None, service: str | None = None) -> None:
    """Route structlog and stdlib logging to ``stream`` (stderr: stdout stays for command
    output) as JSON lines, or coloured console lines when ``json`` is False."""
    global _service
    _service = service or os.environ.get("QT_SERVICE", "quantum-trader")
    renderer: Processor = (structlog.processors.JSONRenderer(sort_keys=False) if json
                           else structlog.dev.ConsoleRenderer(colors=False))
    shared = _shared_processors()
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become a string before redaction, so secrets in them are caught too.
            structlog.processors.format_exc_info,
            _redact_processor,
            _RedactingRenderer(renderer),
        ],
    )
    handler = _QtHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _QtHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: tests and the CLI reconfigure, and loggers made earlier must follow.
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None, **initial: Any) -> structlog.stdlib.BoundLogger:
    """A logger that follows the configuration at call time (call ``configure_logging`` once
    at process start; before that structlog's defaults apply, without redaction)."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name, **initial)
    return logger
