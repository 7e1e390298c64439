"""Opening the SQL repository: engine, capabilities, migration, then the repository."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import MetaData
from sqlalchemy.engine import URL

from pyncette.sql.engine import (
    create_engine,
    detect_capabilities,
    enable_wal,
    mask,
    translate_errors,
)
from pyncette.sql.migrations import ensure_table
from pyncette.sql.names import validate_table_name
from pyncette.sql.options import as_bool, as_int
from pyncette.sql.repository import SqlRepository
from pyncette.sql.schema import make_table


@dataclass(frozen=True, slots=True)
class SqlSettings:
    """What the PostgreSQL and MySQL modules share once their options are parsed."""

    url: URL
    prefix: str
    """The options' prefix (``postgres_``, ``mysql_``), for naming them in errors."""
    table_name: str
    skip_table_create: bool
    pool_size: int

    @classmethod
    def parse(cls, url: URL, prefix: str, options: dict[str, Any]) -> SqlSettings:
        """Read ``<prefix>table_name``, ``<prefix>skip_table_create`` and
        ``<prefix>pool_size`` from ``options``."""
        return cls(
            url=url,
            prefix=prefix,
            table_name=validate_table_name(
                f"{prefix}table_name", options.get(f"{prefix}table_name", "pyncette")
            ),
            skip_table_create=as_bool(
                f"{prefix}skip_table_create", options.get(f"{prefix}skip_table_create", False)
            ),
            pool_size=as_int(
                f"{prefix}pool_size", options.get(f"{prefix}pool_size", 10), minimum=1
            ),
        )

    def open(self) -> AbstractAsyncContextManager[SqlRepository]:
        return open_sql_repository(
            self.url,
            table_name=self.table_name,
            skip_table_create=self.skip_table_create,
            pool_size=self.pool_size,
            option_prefix=self.prefix,
        )


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
            if engine.dialect.name == "sqlite":
                await enable_wal(engine)
            await ensure_table(
                engine,
                table_name,
                skip_table_create=skip_table_create,
                option=f"{option_prefix}skip_table_create",
            )
        yield SqlRepository(engine, make_table(MetaData(), table_name), caps, where=where)
    finally:
        await engine.dispose()
