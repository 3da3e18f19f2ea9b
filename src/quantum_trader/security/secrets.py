"""Register every configured secret with the log redactor, at service start.

Covers ``settings.secrets`` and passwords embedded in connection URLs (Redis, PostgreSQL),
which are not SecretStr but are just as sensitive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

from quantum_trader.observability.logging import register_secret

if TYPE_CHECKING:
    from quantum_trader.config import Settings

__all__ = ["configured_secrets", "register_configured_secrets"]


def _url_password(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def configured_secrets(settings: Settings) -> dict[str, str]:
    """Every secret value the settings hold, by name (for redaction and for leak tests)."""
    out: dict[str, str] = {}
    for name, value in settings.secrets:
        if isinstance(value, SecretStr):
            out[f"secrets.{name}"] = value.get_secret_value()
    for name, url in (("store.url", settings.store.url),
                      ("services.redis_url", settings.services.redis_url)):
        password = _url_password(url) if url else None
        if password:
            out[name] = password
    return out


def register_configured_secrets(settings: Settings) -> None:
    for value in configured_secrets(settings).values():
        register_secret(value)
