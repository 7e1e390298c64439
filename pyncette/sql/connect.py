"""Opening the SQL repository: engine, capabilities, migration, then the repository."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from sqlalchemy import MetaData
from sqlalchemy.engine import URL

from pyncette.options import boolean, integer
from pyncette.sql.engine import create_engine, detect_capabilities, enable_wal, translate_errors
from pyncette.sql.migrations import ensure_table
from pyncette.sql.names import DEFAULT_TABLE, validate_table_name
from pyncette.sql.repository import SqlRepository
from pyncette.sql.schema import make_history_table, make_table
from pyncette.urls import mask_url

DEFAULT_POOL_SIZE = 10


@dataclass(frozen=True, slots=True)
class SqlSettings:
    """What the options of a server database (PostgreSQL, MySQL) become: the database
    URL, and the ``<prefix>table_name``, ``<prefix>skip_table_create`` and
    ``<prefix>pool_size`` options, which every SQL server backend reads alike
    (:meth:`with_url`). Subclasses say how their options name the database."""

    url: URL
    table_name: str = DEFAULT_TABLE
    skip_table_create: bool = False
    pool_size: int = DEFAULT_POOL_SIZE
    prefix: ClassVar[str] = ""
    """The options' prefix (``postgres_``, ``mysql_``)."""

    @classmethod
    def with_url(cls, url: URL, options: Mapping[str, Any]) -> Self:
        """Settings for the database at ``url`` with the table options in ``options``."""
        p = cls.prefix
        return cls(
            url=url,
            table_name=validate_table_name(
                f"{p}table_name", options.get(f"{p}table_name", DEFAULT_TABLE)
            ),
            skip_table_create=boolean(
                f"{p}skip_table_create", options.get(f"{p}skip_table_create", False)
            ),
            pool_size=integer(f"{p}pool_size", options.get(f"{p}pool_size", DEFAULT_POOL_SIZE)),
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
    where = mask_url(url)
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
        metadata = MetaData()
        table = make_table(metadata, table_name)
        history = make_history_table(metadata, table_name)
        repository = SqlRepository(engine, table, history, caps, where=where)
        try:
            yield repository
        finally:
            await repository.close()
    finally:
        await engine.dispose()
