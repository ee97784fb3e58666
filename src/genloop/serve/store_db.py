"""The store's database plumbing: URLs, SQLite connection settings (WAL, FULL sync, a busy timeout,
BEGIN IMMEDIATE for writers), Alembic's configuration, and a clock that never repeats a timestamp.
Kept apart from `Store`, whose methods are the records themselves."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from genloop.home import db_path

BUSY_TIMEOUT_S = 30.0
MIGRATIONS = Path(__file__).with_name("migrations")


def default_url() -> str:
    return f"sqlite:///{db_path()}"


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for in-memory SQLite and other databases."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return None
    return Path(u.database).expanduser()


def safe_url(url: str) -> str:
    """The URL with any password masked, fit for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def alembic_config(url: str, connection: Any = None) -> Any:
    """Alembic configured in code (no alembic.ini to ship or find): migrations live beside this module."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


_clock_lock = threading.Lock()
_last_now = datetime.min.replace(tzinfo=UTC)


def utcnow() -> datetime:
    """UTC now, strictly increasing within the process, so creation order survives equal clock readings."""
    global _last_now
    with _clock_lock:
        now = datetime.now(UTC)
        _last_now = now if now > _last_now else _last_now + timedelta(microseconds=1)
        return _last_now


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection SQLite settings; the driver's own transaction handling is off (we BEGIN ourselves)."""
    dbapi_connection.isolation_level = None
    cur = dbapi_connection.cursor()
    cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    cur.execute("PRAGMA journal_mode = WAL")
    cur.execute("PRAGMA synchronous = FULL")  # WAL + FULL: a returned commit is on disk
    cur.execute("PRAGMA foreign_keys = ON")
    cur.close()


def sqlite_engine(url: str, begin: str, **kw: Any) -> Engine:
    """`begin` is BEGIN IMMEDIATE for writers: they take the lock up front and wait on the busy timeout,
    instead of failing with SQLITE_BUSY when a read transaction tries to upgrade to a write."""
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_S}, **kw)
    event.listen(engine, "connect", _on_connect)
    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin))
    return engine
