"""MySQL 8 / MariaDB 10.6+ backend (asyncmy)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from sqlalchemy.engine import URL

from pyncette.options import integer, optional_text, text
from pyncette.repository import Repository, check_options
from pyncette.sql.connect import SqlSettings

OPTIONS = frozenset(
    {
        "mysql_host",
        "mysql_port",
        "mysql_database",
        "mysql_user",
        "mysql_password",
        "mysql_table_name",
        "mysql_skip_table_create",
        "mysql_pool_size",
    }
)


@dataclass(frozen=True, slots=True)
class MySQLSettings(SqlSettings):
    """The ``mysql_*`` options, validated (``ValueError`` naming any bad one); the
    password stays in the URL, which never shows it."""

    prefix: ClassVar[str] = "mysql_"

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> MySQLSettings:
        check_options(cls.prefix, options, OPTIONS)
        if options.get("mysql_database") is None:
            raise ValueError("mysql_database is required by the mysql backend")
        url = URL.create(
            "mysql+asyncmy",
            username=optional_text("mysql_user", options.get("mysql_user")),
            password=optional_text("mysql_password", options.get("mysql_password")),
            host=text("mysql_host", options.get("mysql_host", "localhost")),
            port=integer("mysql_port", options.get("mysql_port", 3306), maximum=65535),
            database=text("mysql_database", options["mysql_database"]),
            query={"charset": "utf8mb4"},
        )
        return cls.with_url(url, options)


@asynccontextmanager
async def mysql_repository(**options: Any) -> AsyncIterator[Repository]:
    """A repository in the MySQL/MariaDB table ``mysql_table_name`` of ``mysql_database``.

    The table is created or upgraded (Alembic, under ``GET_LOCK``) on entry unless
    ``mysql_skip_table_create`` is true.
    """
    async with MySQLSettings.from_options(options).open() as repository:
        yield repository
