"""The SQL backend: one SQLAlchemy Core (asyncio) repository for SQLite, PostgreSQL and
MySQL/MariaDB.

The per-database modules (:mod:`pyncette.sqlite`, :mod:`pyncette.postgres`,
:mod:`pyncette.mysql`) only turn options into a URL and a table name and call
:func:`open_sql_repository`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import MetaData
from sqlalchemy.engine import URL

from pyncette.sql.engine import (
    Capabilities,
    create_engine,
    detect_capabilities,
    mask,
    normalize_url,
    translate_errors,
)
from pyncette.sql.migrations import alembic_ini, ensure_table
from pyncette.sql.repository import SqlRepository
from pyncette.sql.schema import make_table, validate_table_name

__all__ = [
    "Capabilities",
    "SqlRepository",
    "alembic_ini",
    "make_table",
    "mask",
    "normalize_url",
    "open_sql_repository",
    "validate_table_name",
]


@asynccontextmanager
async def open_sql_repository(
    url: URL,
    *,
    table_name: str,
    skip_table_create: bool,
    pool_size: int,
    option_prefix: str,
) -> AsyncIterator[SqlRepository]:
    """Connect, bring the table to the newest migration (unless ``skip_table_create``),
    yield the repository, and close the pool on exit."""
    where = mask(url)
    engine = create_engine(url, pool_size=pool_size)
    try:
        async with translate_errors(where):
            async with engine.connect() as conn:
                caps = detect_capabilities(conn.dialect)
            await ensure_table(
                engine,
                table_name,
                skip_table_create=skip_table_create,
                option=f"{option_prefix}skip_table_create",
            )
        yield SqlRepository(engine, make_table(MetaData(), table_name), caps, where=where)
    finally:
        await engine.dispose()
