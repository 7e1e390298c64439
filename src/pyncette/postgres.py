"""PostgreSQL backend (asyncpg)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import URL

from pyncette.repository import Repository, check_options
from pyncette.sql.connect import open_sql_repository
from pyncette.sql.engine import normalize_url
from pyncette.sql.names import validate_table_name
from pyncette.sql.options import as_bool, as_int

_KNOWN = {"postgres_url", "postgres_table_name", "postgres_skip_table_create", "postgres_pool_size"}


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    url: URL
    table_name: str
    skip_table_create: bool
    pool_size: int

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> PostgresSettings:
        check_options("postgres_", options, _KNOWN)
        url = normalize_url(
            options.get("postgres_url", "postgresql://localhost/pyncette"), "postgres_url"
        )
        if url.get_backend_name() != "postgresql":
            raise ValueError("postgres_url must be a postgres:// or postgresql:// URL")
        return cls(
            url=url,
            table_name=validate_table_name(
                "postgres_table_name", options.get("postgres_table_name", "pyncette")
            ),
            skip_table_create=as_bool(
                "postgres_skip_table_create", options.get("postgres_skip_table_create", False)
            ),
            pool_size=as_int(
                "postgres_pool_size", options.get("postgres_pool_size", 10), minimum=1
            ),
        )


@asynccontextmanager
async def postgres_repository(**options: Any) -> AsyncIterator[Repository]:
    """A repository in the PostgreSQL table ``postgres_table_name`` at ``postgres_url``.

    The table is created or upgraded (Alembic, under an advisory lock) on entry unless
    ``postgres_skip_table_create`` is true.
    """
    settings = PostgresSettings.from_options(options)
    async with open_sql_repository(
        settings.url,
        table_name=settings.table_name,
        skip_table_create=settings.skip_table_create,
        pool_size=settings.pool_size,
        option_prefix="postgres_",
    ) as repository:
        yield repository


def __getattr__(name: str) -> Any:
    # ``from pyncette.postgres import mysql_repository`` appears in the 1.x docs; keep it
    # working without importing the MySQL module for PostgreSQL users.
    if name == "mysql_repository":
        from pyncette.mysql import mysql_repository

        return mysql_repository
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
