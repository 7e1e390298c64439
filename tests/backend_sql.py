"""SQL backends for the contract and behaviour suites: SQLite, PostgreSQL, MySQL/MariaDB.

Isolation: SQLite gets a file per test. PostgreSQL and MariaDB get one fresh database
per session (other suites share the servers) and a fresh table per test, which is far
cheaper than a database per test. Tests that need a whole empty database of their own
use :func:`fresh_postgres_database` / :func:`fresh_mysql_database`.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from backends import BACKENDS, BackendConfig, BackendInfo, port_open, require_service
from pyncette.mysql import mysql_repository
from pyncette.postgres import postgres_repository
from pyncette.sqlite import sqlite_repository

PG_HOST = os.environ.get("PYNCETTE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PYNCETTE_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("PYNCETTE_TEST_PG_USER", "postgres")
MYSQL_HOST = os.environ.get("PYNCETTE_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("PYNCETTE_TEST_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("PYNCETTE_TEST_MYSQL_USER", "root")
MYSQL_PASSWORD = os.environ.get("PYNCETTE_TEST_MYSQL_PASSWORD", "")

BACKENDS["sqlite"] = BackendInfo()
BACKENDS["postgres"] = BackendInfo(marks=[pytest.mark.service("postgres")])
BACKENDS["mysql"] = BackendInfo(marks=[pytest.mark.service("mysql")])


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def postgres_url(database: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


def mysql_url(database: str) -> str:
    password = f":{MYSQL_PASSWORD}" if MYSQL_PASSWORD else ""
    return f"mysql://{MYSQL_USER}{password}@{MYSQL_HOST}:{MYSQL_PORT}/{database}"


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create an empty database on the running server; yield its name; drop it."""
    require_service("postgres", port_open(PG_HOST, PG_PORT), f"{PG_HOST}:{PG_PORT}")
    with DatabaseJanitor(
        user=PG_USER, host=PG_HOST, port=PG_PORT, dbname=unique_name("pyncette")
    ) as janitor:
        yield janitor.dbname


async def _mysql(statement: str) -> None:
    import asyncmy

    conn = await asyncmy.connect(
        host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD
    )
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(statement)
    finally:
        conn.close()


@contextmanager
def fresh_mysql_database() -> Iterator[str]:
    """Create an empty database on the running server; yield its name; drop it."""
    require_service("mysql", port_open(MYSQL_HOST, MYSQL_PORT), f"{MYSQL_HOST}:{MYSQL_PORT}")
    name = unique_name("pyncette")
    asyncio.run(_mysql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    try:
        yield name
    finally:
        asyncio.run(_mysql(f"DROP DATABASE IF EXISTS `{name}`"))


def mysql_options(database: str) -> dict[str, object]:
    options: dict[str, object] = {
        "mysql_host": MYSQL_HOST,
        "mysql_port": MYSQL_PORT,
        "mysql_database": database,
        "mysql_user": MYSQL_USER,
        # given even when empty: root with an empty password is a common local setup
        "mysql_password": MYSQL_PASSWORD,
    }
    return options


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    with fresh_postgres_database() as name:
        yield name


@pytest.fixture(scope="session")
def mysql_database() -> Iterator[str]:
    with fresh_mysql_database() as name:
        yield name


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> BackendConfig:
    return BackendConfig(
        "sqlite", sqlite_repository, {"sqlite_database": str(tmp_path / "pyncette.db")}
    )


@pytest.fixture
def postgres_backend(postgres_database: str) -> BackendConfig:
    return BackendConfig(
        "postgres",
        postgres_repository,
        {"postgres_url": postgres_url(postgres_database), "postgres_table_name": unique_name()},
    )


@pytest.fixture
def mysql_backend(mysql_database: str) -> BackendConfig:
    return BackendConfig(
        "mysql",
        mysql_repository,
        {**mysql_options(mysql_database), "mysql_table_name": unique_name()},
    )
