"""Importing the dynamic instances of a Pyncette 1.x SQL table (pyncette.legacy)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from backend_sql import (
    MYSQL_HOST,
    MYSQL_PASSWORD,
    MYSQL_PORT,
    MYSQL_USER,
    fresh_mysql_database,
    fresh_postgres_database,
    postgres_url,
)
from pyncette import Context, Pyncette
from pyncette.legacy import import_pyncette1_sql
from pyncette.sql.engine import normalize_url
from pyncette.task import default_partition_selector

pytestmark = pytest.mark.anyio

UTC = datetime.UTC
NEXT_RUN = datetime.datetime(2030, 5, 6, 7, 8, 9, 500000, tzinfo=UTC)
EXECUTE_AT = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)

# The table each Pyncette 1.x backend creates: next run and lease as timestamps on
# PostgreSQL, as epoch seconds on MySQL and SQLite.
LEGACY_DDL = {
    "postgres": "CREATE TABLE {t} (name text PRIMARY KEY, parent_name text, "
    "locked_until timestamptz, locked_by uuid, execute_after timestamptz, task_spec json)",
    "mysql": "CREATE TABLE {t} (name VARCHAR(256) PRIMARY KEY, parent_name VARCHAR(256), "
    "locked_until DOUBLE, locked_by VARCHAR(256), execute_after DOUBLE, task_spec TEXT)",
    "sqlite": "CREATE TABLE {t} (name PRIMARY KEY, parent_name, locked_until timestamp, "
    "locked_by, execute_after timestamp, task_spec)",
}


NOT_JSON = "{not json"


def spec(name: str, **fields: Any) -> str:
    base: dict[str, Any] = {
        "name": name,
        "schedule": None,
        "interval": None,
        "execute_at": None,
        "timezone": None,
        "extra_args": {},
    }
    return json.dumps({**base, **fields})


def shard_parent(instance: str) -> str:
    return f"shard:{default_partition_selector(4, instance)}"


LEGACY_ROWS: list[tuple[str, str | None, str | None, datetime.datetime | None]] = [
    ("nightly", None, None, NEXT_RUN),  # a static task: registered again at start-up
    ("hello:alice", "hello", spec("alice", interval=300.0, extra_args={"x": 1}), NEXT_RUN),
    ("hello:bob", "hello", spec("bob", execute_at=EXECUTE_AT.isoformat()), EXECUTE_AT),
    ("hello:carol", "hello", spec("carol", schedule="0 2 * * *", timezone="Europe/Dublin"), None),
    (f"{shard_parent('dave')}:dave", shard_parent("dave"), spec("dave", interval=60.0), NEXT_RUN),
    ("gone:erin", "gone", spec("erin", interval=60.0), NEXT_RUN),
    ("hello:frank", "hello", NOT_JSON, NEXT_RUN),
    ("hello:grace", "hello", spec("grace", interval="soon"), NEXT_RUN),
]


def _sqlite(tmp_path: Path) -> Iterator[tuple[str, str]]:
    yield "sqlite", f"sqlite:///{tmp_path / 'pyncette1.db'}"


def _postgres(tmp_path: Path) -> Iterator[tuple[str, str]]:
    with fresh_postgres_database() as name:
        yield "postgres", postgres_url(name)


def _mysql(tmp_path: Path) -> Iterator[tuple[str, str]]:
    with fresh_mysql_database() as name:
        password = f":{MYSQL_PASSWORD}" if MYSQL_PASSWORD else ""
        yield "mysql", f"mysql://{MYSQL_USER}{password}@{MYSQL_HOST}:{MYSQL_PORT}/{name}"


SOURCES = {"sqlite": _sqlite, "postgres": _postgres, "mysql": _mysql}


@pytest.fixture(
    params=[
        pytest.param(name, marks=[] if name == "sqlite" else [pytest.mark.service(name)], id=name)
        for name in SOURCES
    ]
)
def legacy_table(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    yield from SOURCES[request.param](tmp_path)


async def fill(dialect: str, url: str, table: str) -> None:
    engine = create_async_engine(normalize_url(url))
    try:
        async with engine.begin() as conn:
            await conn.execute(text(LEGACY_DDL[dialect].format(t=table)))
            for name, parent, task_spec, after in LEGACY_ROWS:
                if task_spec == NOT_JSON and dialect == "postgres":
                    task_spec = "[1, 2]"  # a json column takes only JSON; not an object, though
                value: Any = after
                if dialect != "postgres" and after is not None:
                    value = after.timestamp()
                await conn.execute(
                    text(
                        f"INSERT INTO {table} (name, parent_name, task_spec, execute_after) "
                        "VALUES (:name, :parent, :spec, :after)"
                    ),
                    {"name": name, "parent": parent, "spec": task_spec, "after": value},
                )
    finally:
        await engine.dispose()


def make_app() -> Pyncette:
    app = Pyncette()

    @app.dynamic_task()
    async def hello(context: Context) -> None: ...

    @app.partitioned_task(partition_count=4)
    async def shard(context: Context) -> None: ...

    @app.task(schedule="0 0 * * *")
    async def nightly(context: Context) -> None: ...

    return app


async def test_dynamic_instances_are_imported_with_their_options_and_next_run(
    legacy_table: tuple[str, str],
) -> None:
    dialect, url = legacy_table
    await fill(dialect, url, "pyncette_tasks")
    app = make_app()
    hello, shard = app._tasks["hello"], app._tasks["shard"]
    async with app.create() as ctx:
        result = await import_pyncette1_sql(ctx, url)

        assert result.imported == 4
        assert set(result.skipped) == {"gone:erin", "hello:frank", "hello:grace"}
        assert "no dynamic task 'gone'" in result.skipped["gone:erin"]
        assert "task_spec" in result.skipped["hello:frank"]

        alice = await ctx.get_task(hello, "alice")
        assert alice is not None
        assert alice.scheduled_at == NEXT_RUN
        assert alice.task.interval == datetime.timedelta(seconds=300)
        assert alice.task.extra_args == {"x": 1}
        assert alice.locked_by is None
        bob = await ctx.get_task(hello, "bob")
        assert bob is not None and bob.task.execute_at == EXECUTE_AT
        assert bob.scheduled_at == EXECUTE_AT
        carol = await ctx.get_task(hello, "carol")
        assert carol is not None and carol.task.schedule == "0 2 * * *"
        # no stored next run: computed as schedule_task would, from now
        assert carol.scheduled_at > ctx.clock.now()
        assert carol.scheduled_at.astimezone(ZoneInfo("Europe/Dublin")).hour == 2
        dave = await ctx.get_task(shard, "dave")
        assert dave is not None and dave.scheduled_at == NEXT_RUN

        again = await import_pyncette1_sql(ctx, url)
        assert again.imported == 4
        page = await ctx.list_tasks(hello, limit=100)
        assert sorted(state.task.name for state in page) == ["alice", "bob", "carol"]


async def test_a_sooner_run_already_registered_is_kept(legacy_table: tuple[str, str]) -> None:
    dialect, url = legacy_table
    await fill(dialect, url, "old_tasks")
    app = make_app()
    hello = app._tasks["hello"]
    async with app.create() as ctx:
        sooner = EXECUTE_AT - datetime.timedelta(days=1)
        await ctx.schedule_task(hello, "alice", execute_at=sooner)
        await import_pyncette1_sql(ctx, url, table="old_tasks")
        alice = await ctx.get_task(hello, "alice")
        assert alice is not None
        assert alice.scheduled_at == sooner
        assert alice.task.interval == datetime.timedelta(seconds=300)


async def test_bad_table_names_and_urls_are_refused(tmp_path: Path) -> None:
    async with make_app().create() as ctx:
        with pytest.raises(ValueError, match="table"):
            await import_pyncette1_sql(ctx, f"sqlite:///{tmp_path / 'x.db'}", table="x; DROP")
        with pytest.raises(ValueError, match="url"):
            await import_pyncette1_sql(ctx, "redis://localhost/0")


async def test_a_missing_table_is_named(legacy_table: tuple[str, str]) -> None:
    _, url = legacy_table
    engine = create_async_engine(normalize_url(url))
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE unrelated (x INTEGER)"))
    finally:
        await engine.dispose()
    async with make_app().create() as ctx:
        with pytest.raises(ValueError, match="No table 'pyncette_tasks'"):
            await import_pyncette1_sql(ctx, url)


async def test_a_missing_sqlite_file_is_named_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"
    async with make_app().create() as ctx:
        with pytest.raises(ValueError, match="No SQLite file"):
            await import_pyncette1_sql(ctx, f"sqlite:///{missing}")
    assert not missing.exists()
