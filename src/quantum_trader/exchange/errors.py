"""Typed exchange errors. What matters to a caller is whether the request may have taken effect.

* ``OrderRefused``: refused by us before anything was sent (bad symbol, filters, breaker).
* ``ExchangeRejected``: the venue answered no (margin, filters, reduce-only): nothing happened.
* ``NotProcessed`` (``RateLimited``, ``IpBanned``, ``ClockSkew``): the venue refused to look at the
  request; the same request may be sent again after waiting.
* ``OutcomeUnknown`` (timeout, dropped connection, 5xx): the request may or may not have taken
  effect; for an order, query by client id before sending it again.
"""

from __future__ import annotations


class ExchangeError(Exception):
    """Base of every error the exchange adapters raise."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class OrderRefused(ExchangeError):
    """Refused before sending; ``reason`` says which rule failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ExchangeRejected(ExchangeError):
    """The venue rejected the request (Binance codes -2010, -2019, -1111, -4164, ...)."""


class OrderNotFound(ExchangeError):
    """-2011 / -2013: the venue does not know this order."""


class DuplicateOrder(ExchangeError):
    """-4116: the client order id is already taken: an earlier attempt reached the venue."""


class NotProcessed(ExchangeError):
    """The venue did not process the request; it may be repeated after ``retry_after`` s."""

    def __init__(self, message: str, code: int = 0, retry_after: float = 0.0) -> None:
        super().__init__(message, code)
        self.retry_after = retry_after


class RateLimited(NotProcessed):
    """HTTP 429."""


class IpBanned(NotProcessed):
    """HTTP 418: banned for ``retry_after`` seconds for ignoring 429s."""


class ClockSkew(NotProcessed):
    """-1021: our timestamp is outside the venue's recvWindow."""


class OutcomeUnknown(ExchangeError):
    """No answer (timeout, dropped connection) or a 5xx: the request may have taken effect."""


__all__ = ["ClockSkew", "DuplicateOrder", "ExchangeError", "ExchangeRejected", "IpBanned",
           "NotProcessed", "OrderNotFound", "OrderRefused", "OutcomeUnknown", "RateLimited"]
