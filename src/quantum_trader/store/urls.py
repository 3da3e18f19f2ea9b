"""Database URL helpers: the store always talks through an async driver."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, make_url

# Sync or bare driver names people write in configs -> the async driver the store uses.
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
}


def sqlite_url(path: str | Path) -> str:
    """``sqlite+aiosqlite:///<absolute path>``, creating the parent directories."""
    p = Path(path).expanduser().resolve()
    p.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{p}"


def async_url(url: str) -> URL:
    """Parse ``url`` and swap a sync driver for its async twin (``sqlite://`` -> aiosqlite,
    ``postgresql://`` -> asyncpg); async URLs pass through unchanged."""
    parsed = make_url(url)
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver) if driver else parsed


def redact(url: str | URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)
