"""Pyncette 1.x data: converted in place at start-up when it is under the app's own name
(SQL table, Redis namespace, DynamoDB partition prefix), imported with
``pyncette.legacy`` from anywhere else.

The 1.x data here is laid out exactly as Pyncette 1.1.0 writes it: its tables and
indexes, canonical names (``:`` doubled, ``:<n>`` for a partition), Redis hashes and
index members, DynamoDB items (``locked_until`` ``""`` and ``locked_by`` NULL when
unlocked). The layouts were compared with what the real 1.1.0 library wrote.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from redis.asyncio import Redis, RedisCluster
from sqlalchemy import Connection, MetaData, inspect, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from backend_dynamodb import REGION, delete_table, isolate_aws_env, moto_client, unique_table
from backend_redis import RedisClusterServers, delete_namespace, unique_namespace
from backend_sql import (
    fresh_mysql_database,
    fresh_postgres_database,
    mysql_options,
    mysql_url,
    postgres_url,
)
from backends import BackendConfig
from harness import T0, FakeClock, make_app, running
from pyncette import Context, Pyncette
from pyncette.dynamodb import dynamodb_repository, table_definition
from pyncette.legacy import (
    Pyncette1DataError,
    import_pyncette1_dynamodb,
    import_pyncette1_redis,
    import_pyncette1_sql,
    parse_parent,
)
from pyncette.model import Lease
from pyncette.mysql import mysql_repository
from pyncette.postgres import postgres_repository
from pyncette.redis import adopt as adopt_redis
from pyncette.redis import redis_repository
from pyncette.repository import Repository
from pyncette.sql import adopt as adopt_sql
from pyncette.sql.engine import normalize_url
from pyncette.sql.schema import make_table
from pyncette.sqlite import sqlite_repository
from pyncette.task import STATIC_GROUP, default_partition_selector
from support import alembic_cli, schema_diff

pytestmark = pytest.mark.anyio

UTC = datetime.UTC
S = datetime.timedelta(seconds=1)
NEXT_RUN = datetime.datetime(2030, 5, 6, 7, 8, 9, 500000, tzinfo=UTC)
EXECUTE_AT = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
TABLE = "pyncette_tasks"
"""1.x's default table name, and the one the documented configuration uses."""
BACKUP = f"{TABLE}_pyncette1"


@dataclass(frozen=True)
class V1:
    """One task as Pyncette 1.x stores it (its canonical name, parent's, spec, times)."""

    name: str
    parent: str | None
    task_spec: str | None
    execute_after: datetime.datetime | None
    locked_until: datetime.datetime | None = None
    locked_by: str | None = None


def spec(name: str, **fields: Any) -> str:
    """A ``task_spec`` as 1.x writes it: every key present."""
    base: dict[str, Any] = {
        "name": name,
        "schedule": None,
        "interval": None,
        "execute_at": None,
        "timezone": None,
        "extra_args": {},
    }
    return json.dumps({**base, **fields})


def shard(instance: str) -> str:
    return f"shard:{default_partition_selector(4, instance)}"


NOT_JSON = "{not json"

# For the importers: rows of tasks the app defines and does not, and unreadable ones.
LEGACY_ROWS = [
    V1("nightly", None, None, NEXT_RUN),  # a static task: the importers leave it
    V1("hello:alice", "hello", spec("alice", interval=300.0, extra_args={"x": 1}), NEXT_RUN),
    V1("hello:bob", "hello", spec("bob", execute_at=EXECUTE_AT.isoformat()), EXECUTE_AT),
    V1("hello:carol", "hello", spec("carol", schedule="0 2 * * *", timezone="Europe/Dublin"), None),
    V1(f"{shard('dave')}:dave", shard("dave"), spec("dave", interval=60.0), NEXT_RUN),
    V1("gone:erin", "gone", spec("erin", interval=60.0), NEXT_RUN),
    V1("hello:frank", "hello", NOT_JSON, NEXT_RUN),
    V1("hello:grace", "hello", spec("grace", interval="soon"), NEXT_RUN),
]

# For the conversion at start-up: due within the first minute of the harness's clock.
LOCKED_BY = "7a1e9a52-5e0e-4a8f-9b43-2b3f0b8b2d11"
ARGS = {"x": 5, "y": [1, 2]}
CAROL_NEXT = datetime.datetime(2030, 1, 1, 2, 0, tzinfo=UTC)  # 02:00 in Dublin (winter)
ADOPTED = [
    V1("nightly", None, None, T0 + 10 * S),
    V1("odd::name", None, None, T0 + 20 * S),
    V1("hello:alice", "hello", spec("alice", interval=300.0, extra_args=ARGS), T0 + 30 * S),
    V1(
        "hello:bob",
        "hello",
        spec("bob", execute_at=(T0 + 40 * S).isoformat(), extra_args={"x": 5}),
        T0 + 40 * S,
    ),
    V1(
        "hello:carol::x",
        "hello",
        spec("carol:x", schedule="0 2 * * *", timezone="Europe/Dublin", extra_args={"x": 5}),
        CAROL_NEXT,
    ),
    # a 1.x lease, held far into the future: dropped
    V1(
        "hello:locked",
        "hello",
        spec("locked", interval=600.0, extra_args={"x": 5}),
        T0 + 5 * S,
        T0 + datetime.timedelta(hours=1),
        LOCKED_BY,
    ),
    V1("a::b:z::1", "a::b", spec("z:1", interval=30.0), T0 + 15 * S),
    V1(f"{shard('dave')}:dave", shard("dave"), spec("dave", interval=60.0), T0 + 50 * S),
    # a task this app does not define: kept in its group, not run
    V1("gone:erin", "gone", spec("erin", interval=60.0), T0 + 5 * S),
]
RUNS = [
    ("locked", T0 + 5 * S),
    ("nightly", T0 + 10 * S),
    ("z:1", T0 + 15 * S),
    ("odd:name", T0 + 20 * S),
    ("alice", T0 + 30 * S),
    ("bob", T0 + 40 * S),
    ("z:1", T0 + 45 * S),
    ("dave", T0 + 50 * S),
]
"""What the app runs in its first minute from the converted data."""
BAD = [
    V1("hello:frank", "hello", NOT_JSON, T0),
    V1("hello:grace", "hello", spec("grace", interval="soon"), T0),
    V1("hello:henry", "hello", spec("not-henry", interval=60.0), T0),
]


def test_parent_names_map_to_groups_without_the_app() -> None:
    assert parse_parent("hello") == ("hello", None)
    assert parse_parent("shard:3") == ("shard", 3)
    assert parse_parent("a::b") == ("a:b", None)
    assert parse_parent("a::b:12") == ("a:b", 12)
    assert parse_parent("a:::0") == ("a:", 0)
    for bad in ("", "a:b", "a:1:2", ":0", "a:-1", "a:"):
        with pytest.raises(ValueError, match=r"not the name of a 1\.x"):
            parse_parent(bad)


# -- the app that runs converted data --------------------------------------------------


Seen = list[tuple[str, datetime.datetime]]


def adopting_app(backend: BackendConfig, clock: FakeClock, seen: Seen) -> Pyncette:
    """The 1.x app's tasks, on ``backend``; executions are noted in ``seen``."""
    app = make_app(backend, clock)

    def note(context: Context) -> None:
        seen.append((context.task.name, context.scheduled_at))
        if context.task.name == "alice":
            assert context.args == ARGS

    @app.task(schedule="0 0 * * *")
    async def nightly(context: Context) -> None:
        note(context)

    @app.task(name="odd:name", interval=datetime.timedelta(hours=1))
    async def odd(context: Context) -> None:
        note(context)

    @app.dynamic_task(x=0)
    async def hello(context: Context) -> None:
        note(context)

    @app.dynamic_task(name="a:b")
    async def colon(context: Context) -> None:
        note(context)

    @app.partitioned_task(partition_count=4)
    async def shard(context: Context) -> None:
        note(context)

    return app


async def run_converted(backend: BackendConfig) -> None:
    """Start an app on 1.x data (``ADOPTED``): it runs it as 1.x would have."""
    clock = FakeClock(T0)
    seen: Seen = []
    app = adopting_app(backend, clock, seen)
    hello = app._tasks["hello"]
    async with running(app) as ctx:
        alice = await ctx.get_task(hello, "alice")
        assert alice is not None and alice.scheduled_at == T0 + 30 * S
        assert alice.task.interval == 300 * S and alice.task.extra_args == ARGS
        carol = await ctx.get_task(hello, "carol:x")
        assert carol is not None and carol.task.schedule == "0 2 * * *"
        assert carol.scheduled_at == CAROL_NEXT
        assert carol.scheduled_at.astimezone(ZoneInfo("Europe/Dublin")).hour == 2
        locked = await ctx.get_task(hello, "locked")
        assert locked is not None and locked.locked_by is None
        await clock.advance(60)
        assert await ctx.get_task(hello, "bob") is None  # ran once, gone
        nightly = await ctx.get_task(app._tasks["nightly"])
        assert nightly is not None
        assert nightly.scheduled_at == datetime.datetime(2030, 1, 2, tzinfo=UTC)
    assert sorted(seen) == sorted(RUNS)


# -- SQL --------------------------------------------------------------------------------

# The tables (and due-task indexes) Pyncette 1.x creates. On MariaDB 1.x's functional
# index is a syntax error (1.x needs MySQL 8), so there the table has none.
LEGACY_DDL = {
    "postgres": [
        "CREATE TABLE {t} (name text PRIMARY KEY, parent_name text, locked_until timestamptz, "
        "locked_by uuid, execute_after timestamptz, task_spec json)",
        "CREATE INDEX due_tasks_{t} ON {t} (parent_name, GREATEST(locked_until, execute_after))",
    ],
    "mysql": [
        "CREATE TABLE {t} (name VARCHAR(256) PRIMARY KEY, parent_name VARCHAR(256), "
        "locked_until DOUBLE, locked_by VARCHAR(256), execute_after DOUBLE, task_spec TEXT)",
    ],
    "sqlite": [
        "CREATE TABLE {t} (name PRIMARY KEY, parent_name, locked_until timestamp, "
        "locked_by, execute_after timestamp, task_spec)",
        "CREATE INDEX due_tasks_{t} ON {t} "
        "(parent_name, MAX(COALESCE(locked_until, 0), COALESCE(execute_after, 0)))",
    ],
}
MYSQL8_INDEX = (
    "CREATE INDEX due_tasks_{t} ON {t} "
    "(parent_name, (GREATEST(COALESCE(locked_until, 0), COALESCE(execute_after, 0))))"
)


@dataclass
class SqlTarget:
    """One empty database of one dialect."""

    dialect: str
    url: str
    factory: Callable[..., AbstractAsyncContextManager[Repository]]
    base: dict[str, Any]
    prefix: str

    def options(self, table: str = TABLE, **extra: object) -> dict[str, Any]:
        return {**self.base, f"{self.prefix}table_name": table, **extra}

    def backend(self, table: str = TABLE) -> BackendConfig:
        return BackendConfig(self.dialect, self.factory, self.options(table))


def _sqlite(tmp_path: Path) -> Iterator[SqlTarget]:
    path = tmp_path / "pyncette1.db"
    yield SqlTarget(
        "sqlite", f"sqlite:///{path}", sqlite_repository, {"sqlite_database": str(path)}, "sqlite_"
    )


def _postgres(tmp_path: Path) -> Iterator[SqlTarget]:
    with fresh_postgres_database() as name:
        url = postgres_url(name)
        yield SqlTarget("postgres", url, postgres_repository, {"postgres_url": url}, "postgres_")


def _mysql(tmp_path: Path) -> Iterator[SqlTarget]:
    with fresh_mysql_database() as name:
        yield SqlTarget("mysql", mysql_url(name), mysql_repository, mysql_options(name), "mysql_")


SOURCES = {"sqlite": _sqlite, "postgres": _postgres, "mysql": _mysql}


def _param(name: str) -> Any:
    return pytest.param(
        name, marks=[] if name == "sqlite" else [pytest.mark.service(name)], id=name
    )


@pytest.fixture(params=[_param(name) for name in SOURCES])
def sql(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlTarget]:
    yield from SOURCES[request.param](tmp_path)


@pytest.fixture(params=[_param(name) for name in ("postgres", "mysql")])
def sql_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlTarget]:
    yield from SOURCES[request.param](tmp_path)


async def write_sql_v1(target: SqlTarget, table: str, rows: list[V1]) -> None:
    """Create the 1.x table ``table`` and store ``rows`` as 1.x does."""
    engine = create_async_engine(normalize_url(target.url))
    try:
        async with engine.begin() as conn:
            for statement in LEGACY_DDL[target.dialect]:
                await conn.execute(text(statement.format(t=table)))
            if target.dialect == "mysql" and not getattr(conn.dialect, "is_mariadb", False):
                await conn.execute(text(MYSQL8_INDEX.format(t=table)))
            for row in rows:
                task_spec = row.task_spec
                if task_spec == NOT_JSON and target.dialect == "postgres":
                    task_spec = "[1, 2]"  # a json column takes only JSON; not an object, though
                times: list[Any] = [row.execute_after, row.locked_until]
                locked_by: Any = row.locked_by
                if target.dialect != "postgres":
                    times = [None if t is None else t.timestamp() for t in times]
                elif locked_by is not None:
                    locked_by = uuid.UUID(locked_by)
                await conn.execute(
                    text(
                        f"INSERT INTO {table} (name, parent_name, task_spec, execute_after, "
                        "locked_until, locked_by) VALUES (:n, :p, :s, :a, :u, :b)"
                    ),
                    {
                        "n": row.name,
                        "p": row.parent,
                        "s": task_spec,
                        "a": times[0],
                        "u": times[1],
                        "b": locked_by,
                    },
                )
    finally:
        await engine.dispose()


async def on_sql(target: SqlTarget, fn: Callable[[Connection], Any]) -> Any:
    engine = create_async_engine(normalize_url(target.url))
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


def tables(conn: Connection) -> list[str]:
    return sorted(inspect(conn).get_table_names())


def dump(table: str) -> Callable[[Connection], list[tuple[Any, ...]]]:
    def read(conn: Connection) -> list[tuple[Any, ...]]:
        query = text(f"SELECT * FROM {table} ORDER BY name")
        return [tuple(row) for row in conn.execute(query)]

    return read


def version(table: str) -> Callable[[Connection], list[tuple[Any, ...]]]:
    def read(conn: Connection) -> list[tuple[Any, ...]]:
        if not inspect(conn).has_table(f"{table}_alembic_version"):
            return []
        query = text(f"SELECT version_num FROM {table}_alembic_version")
        return [tuple(row) for row in conn.execute(query)]

    return read


def group_rows(table: str, group: str) -> Callable[[Connection], list[str]]:
    def read(conn: Connection) -> list[str]:
        t = make_table(MetaData(), table)
        query = select(t.c.name).where(t.c.task_group == group)
        return [str(name) for (name,) in conn.execute(query)]

    return read


async def test_a_pyncette1_table_under_the_app_s_name_is_converted_at_start_up(
    sql: SqlTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adopt_sql, "PAGE", 3)  # read and written a few rows at a time
    await write_sql_v1(sql, TABLE, ADOPTED)
    original = await on_sql(sql, dump(TABLE))

    await run_converted(sql.backend())

    assert await on_sql(sql, tables) == sorted(
        [TABLE, f"{TABLE}_alembic_version", f"{TABLE}_history", BACKUP]
    )
    assert await on_sql(sql, lambda c: schema_diff(c, TABLE)) == []
    assert await on_sql(sql, version(TABLE)) == [("0002",)]
    # the 1.x table is kept, as it was, under another name
    assert await on_sql(sql, dump(BACKUP)) == original
    # a task the app does not define is carried over to its group, and left there
    assert await on_sql(sql, group_rows(TABLE, "gone")) == ["erin"]
    assert sorted(await on_sql(sql, group_rows(TABLE, STATIC_GROUP))) == ["nightly", "odd:name"]

    # starting again changes nothing
    async with sql.factory(**sql.options()) as repo:
        record = await repo.get("hello", "alice")
        assert record is not None and record.scheduled_at == T0 + 330 * S
    assert await on_sql(sql, dump(BACKUP)) == original


async def test_rows_1x_cannot_have_written_stop_start_up_and_change_nothing(
    sql: SqlTarget,
) -> None:
    await write_sql_v1(sql, TABLE, ADOPTED + BAD)
    original = await on_sql(sql, dump(TABLE))
    with pytest.raises(Pyncette1DataError) as raised:
        async with sql.factory(**sql.options()):
            pass
    message = str(raised.value)
    assert f"table {TABLE!r}" in message and "nothing was changed" in message
    assert set(raised.value.bad) == {"hello:frank", "hello:grace", "hello:henry"}
    assert "task_spec" in raised.value.bad["hello:frank"]
    assert "'hello:not-henry'" in raised.value.bad["hello:henry"]
    # the 1.x table is as it was (MySQL keeps its empty version table, created first)
    assert set(await on_sql(sql, tables)) <= {TABLE, f"{TABLE}_alembic_version"}
    assert await on_sql(sql, dump(TABLE)) == original
    assert await on_sql(sql, version(TABLE)) == []


async def test_a_table_of_another_layout_is_refused_with_its_columns(sql: SqlTarget) -> None:
    engine = create_async_engine(normalize_url(sql.url))
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"CREATE TABLE {TABLE} (id INTEGER, payload TEXT)"))
    finally:
        await engine.dispose()
    with pytest.raises(ValueError, match=r"neither a pyncette table nor a Pyncette 1\.x") as raised:
        async with sql.factory(**sql.options()):
            pass
    assert "id, payload" in str(raised.value)
    assert f"{sql.prefix}table_name" in str(raised.value)
    assert TABLE in await on_sql(sql, tables)


async def test_skip_table_create_on_a_pyncette1_table_names_the_command(
    sql_server: SqlTarget,
) -> None:
    await write_sql_v1(sql_server, TABLE, ADOPTED)
    option = f"{sql_server.prefix}skip_table_create"
    with pytest.raises(ValueError, match=r"Pyncette 1\.x table") as raised:
        async with sql_server.factory(**sql_server.options(TABLE, **{option: True})):
            pass
    assert f"-x table={TABLE} upgrade head" in str(raised.value) and option in str(raised.value)
    assert await on_sql(sql_server, tables) == [TABLE]


async def test_the_command_line_converts_and_downgrading_restores_the_1x_table(
    sql: SqlTarget,
) -> None:
    await write_sql_v1(sql, TABLE, ADOPTED)
    original = await on_sql(sql, dump(TABLE))
    args = ["-x", f"url={sql.url}", "-x", f"table={TABLE}"]

    done = alembic_cli(*args, "upgrade", "head")
    assert done.returncode == 0, done.stderr
    assert await on_sql(sql, lambda c: schema_diff(c, TABLE)) == []
    skip = {} if sql.dialect == "sqlite" else {f"{sql.prefix}skip_table_create": True}
    async with sql.factory(**sql.options(TABLE, **skip)) as repo:
        alice = await repo.get("hello", "alice")
        assert alice is not None and alice.locked_by is None
        assert alice.scheduled_at == T0 + 30 * S
        assert alice.spec is not None and json.loads(alice.spec)["y"] == [1, 2]
        dave = await repo.get(shard("dave"), "dave")
        assert dave is not None and dave.scheduled_at == T0 + 50 * S
        locked = await repo.get("hello", "locked")
        assert locked is not None and locked.locked_by is None and locked.locked_until is None

    done = alembic_cli(*args, "downgrade", "base")
    assert done.returncode == 0, done.stderr
    assert await on_sql(sql, tables) == sorted([TABLE, f"{TABLE}_alembic_version"])
    assert await on_sql(sql, dump(TABLE)) == original
    if sql.dialect == "postgres":
        key = await on_sql(sql, lambda c: inspect(c).get_pk_constraint(TABLE)["name"])
        assert key == f"{TABLE}_pkey"
    # and it can be converted again
    done = alembic_cli(*args, "upgrade", "head")
    assert done.returncode == 0, done.stderr
    assert await on_sql(sql, dump(BACKUP)) == original


@pytest.mark.parametrize("stopped", ["after_rename", "after_create"])
async def test_a_conversion_interrupted_without_transactional_ddl_is_picked_up(
    sql: SqlTarget, stopped: str
) -> None:
    """MySQL commits each DDL statement: a start-up that died after renaming the 1.x
    table (and perhaps creating the new one) left no version behind."""
    await write_sql_v1(sql, TABLE, ADOPTED)
    original = await on_sql(sql, dump(TABLE))
    engine = create_async_engine(normalize_url(sql.url))
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"ALTER TABLE {TABLE} RENAME TO {BACKUP}"))
            if sql.dialect == "postgres":
                await conn.execute(
                    text(f"ALTER TABLE {BACKUP} RENAME CONSTRAINT {TABLE}_pkey TO {BACKUP}_pkey")
                )
            if stopped == "after_create":
                await conn.run_sync(make_table(MetaData(), TABLE).create)
    finally:
        await engine.dispose()

    await run_converted(sql.backend())
    assert await on_sql(sql, dump(BACKUP)) == original
    assert await on_sql(sql, version(TABLE)) == [("0002",)]


async def test_instances_starting_at_once_convert_the_table_once(sql: SqlTarget) -> None:
    await write_sql_v1(sql, TABLE, ADOPTED)

    async def start() -> None:
        async with sql.factory(**sql.options()) as repo:
            assert await repo.get("hello", "alice") is not None

    await asyncio.gather(*(start() for _ in range(4)))
    assert await on_sql(sql, tables) == sorted(
        [TABLE, f"{TABLE}_alembic_version", f"{TABLE}_history", BACKUP]
    )
    count = text(f"SELECT COUNT(*) FROM {TABLE}")
    assert await on_sql(sql, lambda c: c.execute(count).scalar()) == len(ADOPTED)


async def test_a_new_table_beside_1x_s_default_one_says_how_to_carry_it_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = next(_sqlite(tmp_path))
    await write_sql_v1(target, TABLE, ADOPTED)
    with caplog.at_level(logging.WARNING, logger="pyncette.sql"):
        async with sqlite_repository(**target.options("pyncette")):
            pass
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"sqlite_table_name={TABLE!r}" in warning
    assert f"import_pyncette1_sql(ctx, url, table={TABLE!r})" in warning
    assert len(await on_sql(target, dump(TABLE))) == len(ADOPTED)


# -- SQL importer (a 1.x table under another name) ----------------------------------------


def make_importing_app(**options: Any) -> Pyncette:
    app = Pyncette(**options)

    @app.dynamic_task()
    async def hello(context: Context) -> None: ...

    @app.partitioned_task(partition_count=4)
    async def shard(context: Context) -> None: ...

    @app.task(schedule="0 0 * * *")
    async def nightly(context: Context) -> None: ...

    return app


async def test_dynamic_instances_are_imported_with_their_options_and_next_run(
    sql: SqlTarget,
) -> None:
    await write_sql_v1(sql, TABLE, LEGACY_ROWS)
    app = make_importing_app()
    hello, shard_task = app._tasks["hello"], app._tasks["shard"]
    async with app.create() as ctx:
        result = await import_pyncette1_sql(ctx, sql.url)

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
        dave = await ctx.get_task(shard_task, "dave")
        assert dave is not None and dave.scheduled_at == NEXT_RUN

        again = await import_pyncette1_sql(ctx, sql.url)
        assert again.imported == 4
        page = await ctx.list_tasks(hello, limit=100)
        assert sorted(state.task.name for state in page) == ["alice", "bob", "carol"]


async def test_a_sooner_run_already_registered_is_kept(sql: SqlTarget) -> None:
    await write_sql_v1(sql, "old_tasks", LEGACY_ROWS)
    app = make_importing_app()
    hello = app._tasks["hello"]
    async with app.create() as ctx:
        sooner = EXECUTE_AT - datetime.timedelta(days=1)
        await ctx.schedule_task(hello, "alice", execute_at=sooner)
        await import_pyncette1_sql(ctx, sql.url, table="old_tasks")
        alice = await ctx.get_task(hello, "alice")
        assert alice is not None
        assert alice.scheduled_at == sooner
        assert alice.task.interval == datetime.timedelta(seconds=300)


async def test_an_instance_running_in_the_new_scheduler_is_left_alone(sql: SqlTarget) -> None:
    await write_sql_v1(sql, TABLE, LEGACY_ROWS)
    app = make_importing_app()
    hello = app._tasks["hello"]
    async with app.create() as ctx:
        await ctx.schedule_task(hello, "alice", execute_at=EXECUTE_AT)
        lease = Lease("running")
        claim = await ctx.repository.claim("hello", now=EXECUTE_AT, limit=10, lease=lease)
        assert [r.name for r in claim.records] == ["alice"]
        result = await import_pyncette1_sql(ctx, sql.url)
        assert result.imported == 3
        assert result.skipped["hello:alice"] == "running in this scheduler; left as is"
        alice = await ctx.get_task(hello, "alice")
        assert alice is not None and alice.locked_by == lease
        assert alice.task.execute_at == EXECUTE_AT


async def test_bad_table_names_and_urls_are_refused(tmp_path: Path) -> None:
    async with make_importing_app().create() as ctx:
        with pytest.raises(ValueError, match="table"):
            await import_pyncette1_sql(ctx, f"sqlite:///{tmp_path / 'x.db'}", table="x; DROP")
        with pytest.raises(ValueError, match="url"):
            await import_pyncette1_sql(ctx, "redis://localhost/0")


async def test_a_missing_table_is_named(sql: SqlTarget) -> None:
    engine = create_async_engine(normalize_url(sql.url))
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE unrelated (x INTEGER)"))
    finally:
        await engine.dispose()
    async with make_importing_app().create() as ctx:
        with pytest.raises(ValueError, match="No table 'pyncette_tasks'"):
            await import_pyncette1_sql(ctx, sql.url)


async def test_a_missing_sqlite_file_is_named_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"
    async with make_importing_app().create() as ctx:
        with pytest.raises(ValueError, match="No SQLite file"):
            await import_pyncette1_sql(ctx, f"sqlite:///{missing}")
    assert not missing.exists()


# -- Redis ------------------------------------------------------------------------------


def redis_v1_key(namespace: str, name: str) -> str:
    return f"pyncette:{namespace}:task:{name}"


async def write_redis_v1(
    url: str, namespace: str, rows: list[V1], *, cluster: bool = False
) -> None:
    """``rows`` as Pyncette 1.x keeps them: a hash per task (``version``,
    ``execute_after``, the lease when locked, ``task_spec`` for an instance) and sorted
    sets, ``index`` for static tasks and ``index:<parent>``, whose members are
    ``<execute_after, or locked_until when later>_<key of the hash>``."""
    client: Redis | RedisCluster = RedisCluster.from_url(url) if cluster else Redis.from_url(url)
    try:
        for row in rows:
            key = redis_v1_key(namespace, row.name)
            after = row.execute_after or NEXT_RUN
            fields: dict[str, str] = {"version": "0", "execute_after": after.isoformat()}
            if row.task_spec is not None:
                fields["task_spec"] = row.task_spec
            if row.locked_until is not None and row.locked_by is not None:
                fields["locked_until"] = row.locked_until.isoformat()
                fields["locked_by"] = row.locked_by
            await client.hset(key, mapping=fields)  # type: ignore[arg-type]
            index = f"pyncette:{namespace}:index" + ("" if row.parent is None else f":{row.parent}")
            due = max(after, row.locked_until or after)
            await client.zadd(index, {f"{due.isoformat()}_{key}": 0})
    finally:
        await client.aclose()


async def redis_dump(url: str, pattern: str) -> dict[bytes, Any]:
    client = Redis.from_url(url)
    try:
        found: dict[bytes, Any] = {}
        async for key in client.scan_iter(match=pattern):
            kind = await client.type(key)
            if kind == b"hash":
                found[key] = await client.hgetall(key)
            elif kind == b"zset":
                found[key] = await client.zrange(key, 0, -1)
            else:
                found[key] = await client.get(key)
        return found
    finally:
        await client.aclose()


async def delete_v1(url: str, namespace: str) -> None:
    client = Redis.from_url(url)
    try:
        async for key in client.scan_iter(match=f"pyncette:{namespace}:*"):
            await client.unlink(key)
    finally:
        await client.aclose()


@pytest.fixture
async def redis_namespace(redis_url: str) -> Any:
    namespace = unique_namespace()
    yield namespace
    await delete_namespace(redis_url, namespace)
    await delete_v1(redis_url, namespace)


def redis_backend_for(url: str, namespace: str) -> BackendConfig:
    return BackendConfig(
        "redis", redis_repository, {"redis_url": url, "redis_namespace": namespace}
    )


@pytest.mark.service("redis")
async def test_pyncette1_data_in_the_app_s_namespace_is_converted_at_start_up(
    redis_url: str, redis_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adopt_redis, "REDIS_PAGE", 2)  # indexes read a few entries at a time
    await write_redis_v1(redis_url, redis_namespace, ADOPTED)
    await run_converted(redis_backend_for(redis_url, redis_namespace))
    # the 1.x keys are gone; a marker records that the namespace was checked
    assert await redis_dump(redis_url, f"pyncette:{redis_namespace}:*") == {}
    marker = await redis_dump(redis_url, f"pyncette:{{{redis_namespace}:}}:*")
    assert list(marker) == [f"pyncette:{{{redis_namespace}:}}:pyncette1".encode()]
    assert json.loads(next(iter(marker.values())))["converted"] == len(ADOPTED)
    async with redis_repository(redis_url=redis_url, redis_namespace=redis_namespace) as repo:
        erin = await repo.get("gone", "erin")
        assert erin is not None and erin.scheduled_at == T0 + 5 * S


@pytest.mark.service("redis-cluster")
async def test_pyncette1_data_on_a_cluster_is_converted_at_start_up(
    redis_cluster: RedisClusterServers,
) -> None:
    namespace = unique_namespace()
    await write_redis_v1(redis_cluster.url, namespace, ADOPTED, cluster=True)
    await run_converted(redis_backend_for(redis_cluster.url, namespace))
    for client in redis_cluster.clients():
        try:
            assert list(client.scan_iter(match=f"pyncette:{namespace}:*")) == []
        finally:
            client.close()


@pytest.mark.service("redis")
async def test_bad_pyncette1_data_in_redis_stops_start_up_and_changes_nothing(
    redis_url: str, redis_namespace: str
) -> None:
    await write_redis_v1(redis_url, redis_namespace, ADOPTED + BAD)
    before = await redis_dump(redis_url, f"pyncette:{redis_namespace}:*")
    with pytest.raises(Pyncette1DataError) as raised:
        async with redis_repository(redis_url=redis_url, redis_namespace=redis_namespace):
            pass
    assert f"Redis namespace {redis_namespace!r}" in str(raised.value)
    assert set(raised.value.bad) == {"hello:frank", "hello:grace", "hello:henry"}
    assert await redis_dump(redis_url, f"pyncette:{redis_namespace}:*") == before
    # no rows, marker or lock of the new layout either
    assert await redis_dump(redis_url, f"pyncette:{{{redis_namespace}:*") == {}


@pytest.mark.service("redis")
async def test_instances_starting_at_once_convert_the_namespace_once(
    redis_url: str, redis_namespace: str
) -> None:
    await write_redis_v1(redis_url, redis_namespace, ADOPTED)

    async def start() -> None:
        async with redis_repository(redis_url=redis_url, redis_namespace=redis_namespace) as repo:
            assert await repo.get("hello", "alice") is not None

    await asyncio.gather(*(start() for _ in range(4)))
    marker = await redis_dump(redis_url, f"pyncette:{{{redis_namespace}:}}:pyncette1")
    assert [json.loads(value)["converted"] for value in marker.values()] == [len(ADOPTED)]


@pytest.mark.service("redis")
async def test_redis_instances_are_imported(redis_url: str, redis_namespace: str) -> None:
    await write_redis_v1(redis_url, redis_namespace, LEGACY_ROWS)
    # an index entry whose hash is gone (removed while it was being read)
    client = Redis.from_url(redis_url)
    try:
        gone = redis_v1_key(redis_namespace, "hello:zoe")
        await client.zadd(
            f"pyncette:{redis_namespace}:index:hello", {f"{NEXT_RUN.isoformat()}_{gone}": 0}
        )
    finally:
        await client.aclose()
    app = make_importing_app()
    hello, shard_task = app._tasks["hello"], app._tasks["shard"]
    async with app.create() as ctx:
        result = await import_pyncette1_redis(ctx, redis_url, namespace=redis_namespace)
        assert result.imported == 4
        # tasks the app does not define are not read; zoe's hash is gone
        assert set(result.skipped) == {"hello:frank", "hello:grace"}
        alice = await ctx.get_task(hello, "alice")
        assert alice is not None and alice.scheduled_at == NEXT_RUN
        assert alice.task.interval == datetime.timedelta(seconds=300)
        assert alice.task.extra_args == {"x": 1}
        bob = await ctx.get_task(hello, "bob")
        assert bob is not None and bob.scheduled_at == EXECUTE_AT
        dave = await ctx.get_task(shard_task, "dave")
        assert dave is not None and dave.scheduled_at == NEXT_RUN
        assert await ctx.get_task(hello, "zoe") is None

        other = await import_pyncette1_redis(ctx, redis_url, namespace=redis_namespace + "x")
        assert other.imported == 0 and not other.skipped


# -- DynamoDB -----------------------------------------------------------------------------


def dynamodb_v1_item(prefix: str, row: V1) -> dict[str, Any]:
    """``row`` as Pyncette 1.x writes it: partition ``<prefix with ':' doubled>:<parent>``
    (``:<task>`` for a static task), range key the canonical name."""
    after = row.execute_after or NEXT_RUN
    due = max(after, row.locked_until or after)
    item: dict[str, Any] = {
        "partition_id": {"S": f"{prefix.replace(':', '::')}:{row.parent or row.name}"},
        "task_id": {"S": row.name},
        "execute_after": {"S": after.isoformat()},
        "locked_until": {"S": "" if row.locked_until is None else row.locked_until.isoformat()},
        "locked_by": {"NULL": True} if row.locked_by is None else {"S": row.locked_by},
        "ready_at": {"S": f"{due.isoformat()}_{row.name}"},
        "version": {"N": "1"},
    }
    if row.task_spec is not None:
        item["task_spec"] = {"S": row.task_spec}
    return item


def write_dynamodb_v1(endpoint: str, table: str, prefix: str, rows: list[V1]) -> None:
    """Items laid out as Pyncette 1.x writes them, in a table of the same schema
    (created unless it exists)."""
    client = moto_client(endpoint)
    try:
        with suppress(client.exceptions.ResourceInUseException):
            client.create_table(
                TableName=table, BillingMode="PAY_PER_REQUEST", **table_definition()
            )
        for row in rows:
            client.put_item(TableName=table, Item=dynamodb_v1_item(prefix, row))
    finally:
        client.close()


def dynamodb_items(endpoint: str, table: str) -> list[dict[str, Any]]:
    client = moto_client(endpoint)
    try:
        items = client.scan(TableName=table, ConsistentRead=True)["Items"]
        return sorted(items, key=lambda i: (i["partition_id"]["S"], i["task_id"]["S"]))
    finally:
        client.close()


@pytest.fixture
def dynamodb_table(dynamodb_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    isolate_aws_env(monkeypatch)
    table = unique_table()
    yield table
    delete_table(dynamodb_server, table)


def dynamodb_options(endpoint: str, table: str, **extra: Any) -> dict[str, Any]:
    return {
        "dynamodb_endpoint": endpoint,
        "dynamodb_region_name": REGION,
        "dynamodb_table_name": table,
        **extra,
    }


@pytest.mark.service("dynamodb")
async def test_pyncette1_items_under_the_app_s_prefix_are_converted_at_start_up(
    dynamodb_server: str, dynamodb_table: str, caplog: pytest.LogCaptureFixture
) -> None:
    write_dynamodb_v1(dynamodb_server, dynamodb_table, "app", ADOPTED)
    # and another 1.x app's, under 1.x's default (empty) prefix: not this app's
    foreign = dynamodb_v1_item("", ADOPTED[2])
    write_dynamodb_v1(dynamodb_server, dynamodb_table, "", ADOPTED[2:3])
    options = dynamodb_options(dynamodb_server, dynamodb_table, dynamodb_partition_prefix="app")
    with caplog.at_level(logging.WARNING, logger="pyncette.dynamodb"):
        await run_converted(BackendConfig("dynamodb", dynamodb_repository, options))

    items = dynamodb_items(dynamodb_server, dynamodb_table)
    legacy = [i for i in items if "scheduled_at" not in i and i["task_id"]["S"] != "pyncette1"]
    assert legacy == [foreign]
    marker = [i for i in items if i["task_id"]["S"] == "pyncette1"]
    assert [(i["partition_id"]["S"], i["converted"]["N"]) for i in marker] == [
        ("app:", str(len(ADOPTED)))
    ]
    (warning,) = [r.getMessage() for r in caplog.records if "did not write" in r.getMessage()]
    assert "import_pyncette1_dynamodb(ctx, table_name=" in warning
    assert "partition_prefix=''" in warning and "':hello'" in warning
    async with dynamodb_repository(**options) as repo:
        erin = await repo.get("gone", "erin")
        assert erin is not None and erin.scheduled_at == T0 + 5 * S
        nightly = await repo.get(STATIC_GROUP, "nightly")
        assert nightly is not None


@pytest.mark.service("dynamodb")
async def test_bad_pyncette1_items_stop_start_up_and_change_nothing(
    dynamodb_server: str, dynamodb_table: str
) -> None:
    write_dynamodb_v1(dynamodb_server, dynamodb_table, "app", ADOPTED + BAD)
    before = dynamodb_items(dynamodb_server, dynamodb_table)
    options = dynamodb_options(dynamodb_server, dynamodb_table, dynamodb_partition_prefix="app")
    with pytest.raises(Pyncette1DataError) as raised:
        async with dynamodb_repository(**options):
            pass
    assert f"DynamoDB table {dynamodb_table!r}, partition prefix 'app'" in str(raised.value)
    assert set(raised.value.bad) == {"hello:frank", "hello:grace", "hello:henry"}
    assert dynamodb_items(dynamodb_server, dynamodb_table) == before


@pytest.mark.service("dynamodb")
async def test_an_instance_that_would_take_another_1x_item_s_place_is_refused(
    dynamodb_server: str, dynamodb_table: str
) -> None:
    """1.x's instance ``hello:x`` of ``hello`` is stored as ``hello:hello::x``; converted,
    it is range key ``hello:x``, where 1.x keeps its instance ``x``."""
    rows = [
        V1("hello:x", "hello", spec("x", interval=60.0), T0),
        V1("hello:hello::x", "hello", spec("hello:x", interval=60.0), T0),
    ]
    write_dynamodb_v1(dynamodb_server, dynamodb_table, "app", rows)
    before = dynamodb_items(dynamodb_server, dynamodb_table)
    options = dynamodb_options(dynamodb_server, dynamodb_table, dynamodb_partition_prefix="app")
    with pytest.raises(Pyncette1DataError, match=r"take the place of the 1\.x item 'hello:x'"):
        async with dynamodb_repository(**options):
            pass
    assert dynamodb_items(dynamodb_server, dynamodb_table) == before


@pytest.mark.service("dynamodb")
@pytest.mark.parametrize("prefix", ["", "legacy:app"])
async def test_dynamodb_instances_are_imported_into_the_same_table(
    dynamodb_server: str, dynamodb_table: str, prefix: str
) -> None:
    write_dynamodb_v1(dynamodb_server, dynamodb_table, prefix, [r for r in LEGACY_ROWS if r.parent])
    location = {"endpoint": dynamodb_server, "region_name": REGION, "table_name": dynamodb_table}
    # the new app keeps its own rows in the same table, under its own prefix
    app = make_importing_app(
        repository_factory=dynamodb_repository, **dynamodb_options(dynamodb_server, dynamodb_table)
    )
    hello, shard_task = app._tasks["hello"], app._tasks["shard"]
    async with app.create() as ctx:
        result = await import_pyncette1_dynamodb(ctx, partition_prefix=prefix, **location)
        assert result.imported == 4
        assert set(result.skipped) == {"hello:frank", "hello:grace"}
        alice = await ctx.get_task(hello, "alice")
        assert alice is not None and alice.scheduled_at == NEXT_RUN
        assert alice.task.extra_args == {"x": 1}
        carol = await ctx.get_task(hello, "carol")
        assert carol is not None and carol.task.schedule == "0 2 * * *"
        dave = await ctx.get_task(shard_task, "dave")
        assert dave is not None and dave.scheduled_at == NEXT_RUN
        page = await ctx.list_tasks(hello, limit=100)
        assert sorted(state.task.name for state in page) == ["alice", "bob", "carol"]

        again = await import_pyncette1_dynamodb(ctx, partition_prefix=prefix, **location)
        assert again.imported == 4
        elsewhere = await import_pyncette1_dynamodb(ctx, partition_prefix="other", **location)
        assert elsewhere.imported == 0 and not elsewhere.skipped


@pytest.mark.service("dynamodb")
async def test_a_missing_dynamodb_table_is_named(
    dynamodb_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolate_aws_env(monkeypatch)
    async with make_importing_app().create() as ctx:
        with pytest.raises(ValueError, match="No DynamoDB table 'pyncette-nowhere'"):
            await import_pyncette1_dynamodb(
                ctx, endpoint=dynamodb_server, region_name=REGION, table_name="pyncette-nowhere"
            )
