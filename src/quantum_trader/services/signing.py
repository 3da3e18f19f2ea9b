"""Signed approvals: risk-safety signs every approved intent; execution verifies.

The signature is HMAC-SHA256 over the canonical JSON of the intent payload. A message written
straight to the bus (no key), a tampered field, or an expired intent is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any


class ApprovalRefused(ValueError):
    pass


def canonical(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def sign(intent_payload: dict[str, Any], key: bytes) -> str:
    return hmac.new(key, canonical(intent_payload), hashlib.sha256).hexdigest()


def verify(message_payload: dict[str, Any], key: bytes, now_ms: int) -> dict[str, Any]:
    """Return the intent payload if the approval is authentic and current, else raise."""
    intent = message_payload.get("intent")
    signature = message_payload.get("signature")
    if not isinstance(intent, dict) or not isinstance(signature, str) or not signature:
        raise ApprovalRefused("unsigned intent")
    expected = sign(intent, key)
    if not hmac.compare_digest(expected, signature):
        raise ApprovalRefused("bad signature: intent tampered with or not from risk-safety")
    expires = intent.get("expires_at")
    if not isinstance(expires, int) or now_ms > expires:
        raise ApprovalRefused(f"intent expired at {expires}")
    return intent
