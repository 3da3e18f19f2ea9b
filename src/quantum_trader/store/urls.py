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
    """``sqlite+aiosqlite:///<absolute path>``. Names the file only: whoever creates the
    database creates its directory (``ensure_sqlite_dir``), so naming a store writes nothing."""
    p = Path(path).expanduser().resolve()
    return f"sqlite+aiosqlite:///{p}"


def sqlite_file(url: str | URL) -> Path | None:
    """The file of a SQLite URL (``None`` for other databases and in-memory SQLite)."""
    parsed = make_url(url) if isinstance(url, str) else url
    if not parsed.drivername.startswith("sqlite") or not parsed.database \
            or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def ensure_sqlite_dir(url: str | URL) -> None:
    """Create the directory a SQLite database file is to be created in."""
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def async_url(url: str) -> URL:
    """Parse ``url`` and swap a sync driver for its async twin (``sqlite://`` -> aiosqlite,
    ``postgresql://`` -> asyncpg); async URLs pass through unchanged."""
    parsed = make_url(url)
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver) if driver else parsed


def redact(url: str | URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)
