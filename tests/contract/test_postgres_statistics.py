"""PostgreSQL: a table that has never been analysed is analysed once a repository has
registered ``ANALYSE_AFTER`` rows, so that the planner joins commit batches through the
primary key instead of guessing (``Capabilities.analyse_fresh``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from backends import BackendConfig
from pyncette.repository import Repository
from pyncette.sql import repository as sql_repository
from support import T0, reg

pytestmark = pytest.mark.anyio


@pytest.fixture
async def db(postgres_backend: BackendConfig) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(postgres_backend.options["postgres_url"])
    try:
        yield conn
    finally:
        await conn.close()


async def statistics(db: asyncpg.Connection, table: str) -> dict[str, Any]:
    row = await db.fetchrow(
        "SELECT last_analyze, analyze_count, "
        "(SELECT reltuples FROM pg_class WHERE oid = CAST($1 AS regclass)) AS reltuples "
        "FROM pg_stat_all_tables WHERE relid = CAST($1 AS regclass)",
        table,
    )
    assert row is not None
    return dict(row)


async def register(repository: Repository, count: int, prefix: str = "i") -> None:
    rows = [reg(f"{prefix}{i:05d}", T0) for i in range(count)]
    assert await repository.register("g", rows, now=T0, force=False) == []


async def test_a_bulk_registration_into_a_fresh_table_analyses_it(
    postgres_backend: BackendConfig, db: asyncpg.Connection
) -> None:
    table = postgres_backend.options["postgres_table_name"]
    async with postgres_backend.repository_factory(**postgres_backend.options) as repository:
        before = await statistics(db, table)
        assert before["last_analyze"] is None
        await register(repository, sql_repository.ANALYSE_AFTER)
        after = await statistics(db, table)
    # analysed by this session (autovacuum's would be last_autoanalyze)
    assert after["last_analyze"] is not None and after["analyze_count"] == 1
    assert after["reltuples"] == sql_repository.ANALYSE_AFTER


async def test_a_few_rows_leave_the_table_to_autovacuum(
    postgres_backend: BackendConfig, db: asyncpg.Connection
) -> None:
    table = postgres_backend.options["postgres_table_name"]
    async with postgres_backend.repository_factory(**postgres_backend.options) as repository:
        await register(repository, sql_repository.ANALYSE_AFTER - 1)
        assert (await statistics(db, table))["last_analyze"] is None
        # the count is per repository, across registrations
        await register(repository, 1, prefix="j")
        assert (await statistics(db, table))["analyze_count"] == 1
        # and the check is made once
        await register(repository, sql_repository.ANALYSE_AFTER, prefix="k")
        assert (await statistics(db, table))["analyze_count"] == 1


async def test_a_table_with_statistics_is_not_analysed_again(
    postgres_backend: BackendConfig, db: asyncpg.Connection
) -> None:
    table = postgres_backend.options["postgres_table_name"]
    async with postgres_backend.repository_factory(**postgres_backend.options) as repository:
        await db.execute(f'ANALYZE "{table}"')
        await register(repository, sql_repository.ANALYSE_AFTER)
        assert (await statistics(db, table))["analyze_count"] == 1


async def test_a_registration_does_not_wait_for_a_table_another_session_holds(
    postgres_backend: BackendConfig, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    table = postgres_backend.options["postgres_table_name"]
    async with postgres_backend.repository_factory(**postgres_backend.options) as repository:
        # what a running VACUUM or ANALYZE holds
        transaction = db.transaction()
        await transaction.start()
        await db.execute(f'LOCK TABLE "{table}" IN SHARE UPDATE EXCLUSIVE MODE')
        try:
            with caplog.at_level(logging.INFO, logger="pyncette.sql.repository"):
                await asyncio.wait_for(register(repository, sql_repository.ANALYSE_AFTER), 10)
        finally:
            await transaction.rollback()
        stats = await statistics(db, table)
        assert stats["last_analyze"] is None
        count = await db.fetchval(f'SELECT count(*) FROM "{table}"')
        assert count == sql_repository.ANALYSE_AFTER  # registered all the same
    assert any("Did not analyse" in r.getMessage() for r in caplog.records)


async def test_an_analyse_that_takes_too_long_is_given_up(
    postgres_backend: BackendConfig,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = postgres_backend.options["postgres_table_name"]
    monkeypatch.setattr(sql_repository, "ANALYSE_TIMEOUT_MS", 1)
    async with postgres_backend.repository_factory(**postgres_backend.options) as repository:
        # analysing 20,000 rows takes 10-20 ms here, far past a timeout of 1 ms
        with caplog.at_level(logging.INFO, logger="pyncette.sql.repository"):
            await register(repository, 20_000)
        assert (await statistics(db, table))["last_analyze"] is None
        assert await db.fetchval(f'SELECT count(*) FROM "{table}"') == 20_000
    assert any("statement timeout" in r.getMessage() for r in caplog.records)
