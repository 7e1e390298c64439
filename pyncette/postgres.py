"""PostgreSQL backend (asyncpg)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pyncette.repository import Repository, check_options
from pyncette.sql.connect import SqlSettings
from pyncette.sql.engine import normalize_url

_KNOWN = {"postgres_url", "postgres_table_name", "postgres_skip_table_create", "postgres_pool_size"}


def parse_options(options: dict[str, Any]) -> SqlSettings:
    """Validate the ``postgres_*`` options (``ValueError`` naming any bad one)."""
    check_options("postgres_", options, _KNOWN)
    url = normalize_url(
        options.get("postgres_url", "postgresql://localhost/pyncette"), "postgres_url"
    )
    if url.get_backend_name() != "postgresql":
        raise ValueError("postgres_url must be a postgres:// or postgresql:// URL")
    return SqlSettings.parse(url, "postgres_", options)


@asynccontextmanager
async def postgres_repository(**options: Any) -> AsyncIterator[Repository]:
    """A repository in the PostgreSQL table ``postgres_table_name`` at ``postgres_url``.

    The table is created or upgraded (Alembic, under an advisory lock) on entry unless
    ``postgres_skip_table_create`` is true.
    """
    async with parse_options(options).open() as repository:
        yield repository


def __getattr__(name: str) -> Any:
    # ``from pyncette.postgres import mysql_repository`` appears in the 1.x docs; keep it
    # working without importing the MySQL module for PostgreSQL users.
    if name == "mysql_repository":
        from pyncette.mysql import mysql_repository

        return mysql_repository
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
