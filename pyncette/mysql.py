"""MySQL 8 / MariaDB 10.6+ backend (asyncmy)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.engine import URL

from pyncette.repository import Repository, check_options
from pyncette.sql.connect import SqlSettings
from pyncette.sql.options import as_int, as_str

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


def parse_options(options: dict[str, Any]) -> SqlSettings:
    """Validate the ``mysql_*`` options (``ValueError`` naming any bad one)."""
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

    return SqlSettings.parse(url, "mysql_", options)


@asynccontextmanager
async def mysql_repository(**options: Any) -> AsyncIterator[Repository]:
    """A repository in the MySQL/MariaDB table ``mysql_table_name`` of ``mysql_database``.

    The table is created or upgraded (Alembic, under ``GET_LOCK``) on entry unless
    ``mysql_skip_table_create`` is true.
    """
    async with parse_options(options).open() as repository:
        yield repository
