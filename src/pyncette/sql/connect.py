"""Opening the SQL repository: engine, capabilities, migration, then the repository."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import MetaData
from sqlalchemy.engine import URL

from pyncette.sql.engine import create_engine, detect_capabilities, mask, translate_errors
from pyncette.sql.migrations import ensure_table
from pyncette.sql.repository import SqlRepository
from pyncette.sql.schema import make_table


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
