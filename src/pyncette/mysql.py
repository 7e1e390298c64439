"""MySQL 8 / MariaDB 10.6+ backend (asyncmy)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import URL

from pyncette.repository import Repository, check_options
from pyncette.sql.connect import open_sql_repository
from pyncette.sql.names import validate_table_name
from pyncette.sql.options import as_bool, as_int, as_str

_KNOWN = {
    "mysql_host",
    "mysql_port",
    "mysql_database",
    "mysql_user",
    "mysql_password",
    "mysql_table_name",
    "mysql_skip_table_create",
    "mysql_pool_size",
}


@dataclass(frozen=True, slots=True)
class MysqlSettings:
    url: URL
    table_name: str
    skip_table_create: bool
    pool_size: int

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> MysqlSettings:
        check_options("mysql_", options, _KNOWN)
        if options.get("mysql_database") is None:
            raise ValueError("mysql_database is required by the mysql backend")
        url = URL.create(
            "mysql+asyncmy",
            username=as_str("mysql_user", options.get("mysql_user"), optional=True),
            password=as_str("mysql_password", options.get("mysql_password"), optional=True),
            host=as_str("mysql_host", options.get("mysql_host", "localhost")),
            port=as_int("mysql_port", options.get("mysql_port", 3306), minimum=1, maximum=65535),
            database=as_str("mysql_database", options["mysql_database"]),
            query={"charset": "utf8mb4"},
        )
        return cls(
            url=url,
            table_name=validate_table_name(
                "mysql_table_name", options.get("mysql_table_name", "pyncette")
            ),
            skip_table_create=as_bool(
                "mysql_skip_table_create", options.get("mysql_skip_table_create", False)
            ),
            pool_size=as_int("mysql_pool_size", options.get("mysql_pool_size", 10), minimum=1),
        )


@asynccontextmanager
async def mysql_repository(**options: Any) -> AsyncIterator[Repository]:
    """A repository in the MySQL/MariaDB table ``mysql_table_name`` of ``mysql_database``.

    The table is created or upgraded (Alembic, under ``GET_LOCK``) on entry unless
    ``mysql_skip_table_create`` is true.
    """
    settings = MysqlSettings.from_options(options)
    async with open_sql_repository(
        settings.url,
        table_name=settings.table_name,
        skip_table_create=settings.skip_table_create,
        pool_size=settings.pool_size,
        option_prefix="mysql_",
    ) as repository:
        yield repository
