"""PostgreSQL backend (asyncpg)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from pyncette.repository import Repository, check_options
from pyncette.sql.connect import SqlSettings
from pyncette.sql.engine import normalize_url

DEFAULT_URL = "postgresql://localhost/pyncette"
OPTIONS = frozenset(
    {"postgres_url", "postgres_table_name", "postgres_skip_table_create", "postgres_pool_size"}
)


@dataclass(frozen=True, slots=True)
class PostgresSettings(SqlSettings):
    """The ``postgres_*`` options, validated (``ValueError`` naming any bad one)."""

    prefix: ClassVar[str] = "postgres_"

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> PostgresSettings:
        check_options(cls.prefix, options, OPTIONS)
        url = normalize_url(options.get("postgres_url", DEFAULT_URL), "postgres_url")
        if url.get_backend_name() != "postgresql":
            raise ValueError("postgres_url must be a postgres:// or postgresql:// URL")
        return cls.with_url(url, options)


@asynccontextmanager
async def postgres_repository(**options: Any) -> AsyncIterator[Repository]:
    """A repository in the PostgreSQL table ``postgres_table_name`` at ``postgres_url``.

    The table is created or upgraded (Alembic, under an advisory lock) on entry unless
    ``postgres_skip_table_create`` is true.
    """
    async with PostgresSettings.from_options(options).open() as repository:
        yield repository


def __getattr__(name: str) -> Any:
    # ``from pyncette.postgres import mysql_repository`` appears in the 1.x docs; keep it
    # working without importing the MySQL module for PostgreSQL users.
    if name == "mysql_repository":
        from pyncette.mysql import mysql_repository

        return mysql_repository
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
