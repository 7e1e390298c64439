"""SQLite backend, and the default: without a database file it is the in-memory one."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyncette.memory import InMemoryRepository
from pyncette.repository import Repository, check_options
from pyncette.sql.names import DEFAULT_TABLE, validate_table_name

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

MEMORY = ":memory:"
OPTIONS = frozenset({"sqlite_database", "sqlite_table_name"})
POOL_SIZE = 5
"""Connections to a database file; SQLite has one writer at a time anyway."""


@dataclass(frozen=True, slots=True)
class SqliteSettings:
    """The ``sqlite_*`` options, validated (``ValueError`` naming any bad one)."""

    database: str = MEMORY
    """A file path, or ``:memory:`` for the in-process repository."""
    table_name: str = DEFAULT_TABLE

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SqliteSettings:
        check_options("sqlite_", options, OPTIONS)
        database = options.get("sqlite_database", MEMORY)
        if database is None:
            database = MEMORY
        if isinstance(database, os.PathLike):
            database = os.fspath(database)
        if not isinstance(database, str) or not database:
            raise ValueError(f"sqlite_database must be a file path or {MEMORY!r}, got {database!r}")
        table = validate_table_name(
            "sqlite_table_name", options.get("sqlite_table_name", DEFAULT_TABLE)
        )
        return cls(database, table)

    @property
    def url(self) -> URL:
        """The database file's SQLAlchemy URL (importing SQLAlchemy only now)."""
        from sqlalchemy.engine import URL

        return URL.create("sqlite+aiosqlite", database=self.database)


@asynccontextmanager
async def sqlite_repository(**options: Any) -> AsyncIterator[Repository]:
    """A repository in the SQLite file ``sqlite_database`` (table ``sqlite_table_name``).

    With no file (``:memory:``, the default) nothing would outlive the process or be
    shared with another one, so this yields the faster
    :class:`~pyncette.memory.InMemoryRepository`, which has the same semantics. A file
    may be shared by several apps and processes: it runs in WAL mode, and writers queue
    on SQLite's lock (busy timeout) rather than fail.
    """
    settings = SqliteSettings.from_options(options)
    if settings.database == MEMORY:
        yield InMemoryRepository()
        return
    # SQLAlchemy and Alembic are imported only when a file is used: the in-memory
    # default stays light, which also keeps the garbage collector's full passes short.
    from pyncette.sql.connect import open_sql_repository

    async with open_sql_repository(
        settings.url,
        table_name=settings.table_name,
        skip_table_create=False,
        pool_size=POOL_SIZE,
        option_prefix="sqlite_",
    ) as repository:
        yield repository
