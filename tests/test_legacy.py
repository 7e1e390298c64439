"""Importing the dynamic instances of a Pyncette 1.x SQL table (pyncette.legacy)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from backend_dynamodb import REGION, delete_table, isolate_aws_env, moto_client, unique_table
from backend_redis import delete_namespace, unique_namespace
from backend_sql import fresh_mysql_database, fresh_postgres_database, mysql_url, postgres_url
from pyncette import Context, Pyncette
from pyncette.dynamodb import dynamodb_repository, table_definition
from pyncette.legacy import (
    import_pyncette1_dynamodb,
    import_pyncette1_redis,
    import_pyncette1_sql,
)
from pyncette.model import Lease
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
        yield "mysql", mysql_url(name)


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


def make_app(**options: Any) -> Pyncette:
    app = Pyncette(**options)

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


async def test_an_instance_running_in_the_new_scheduler_is_left_alone(
    legacy_table: tuple[str, str],
) -> None:
    dialect, url = legacy_table
    await fill(dialect, url, "pyncette_tasks")
    app = make_app()
    hello = app._tasks["hello"]
    async with app.create() as ctx:
        await ctx.schedule_task(hello, "alice", execute_at=EXECUTE_AT)
        lease = Lease("running")
        claim = await ctx.repository.claim("hello", now=EXECUTE_AT, limit=10, lease=lease)
        assert [r.name for r in claim.records] == ["alice"]
        result = await import_pyncette1_sql(ctx, url)
        assert result.imported == 3
        assert result.skipped["hello:alice"] == "running in this scheduler; left as is"
        alice = await ctx.get_task(hello, "alice")
        assert alice is not None and alice.locked_by == lease
        assert alice.task.execute_at == EXECUTE_AT


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


async def write_redis_v1(url: str, namespace: str) -> None:
    """Instances laid out as Pyncette 1.x keeps them in Redis: a hash per instance and,
    per dynamic task (or partition), a sorted set naming the hashes."""
    client = Redis.from_url(url)
    try:
        for name, parent, task_spec, after in LEGACY_ROWS:
            if parent is None:
                continue
            key = f"pyncette:{namespace}:task:{name}"
            when = (after or NEXT_RUN).isoformat()
            if task_spec is not None:
                fields: dict[str, str | int] = {"version": 1, "execute_after": when}
                fields["task_spec"] = task_spec
                await client.hset(key, mapping=fields)  # type: ignore[arg-type]
            await client.zadd(f"pyncette:{namespace}:index:{parent}", {f"{when}_{key}": 0})
        # an index entry whose hash is gone (removed while it was being read)
        gone = f"pyncette:{namespace}:task:hello:zoe"
        await client.zadd(
            f"pyncette:{namespace}:index:hello", {f"{NEXT_RUN.isoformat()}_{gone}": 0}
        )
    finally:
        await client.aclose()


@pytest.mark.service("redis")
async def test_redis_instances_are_imported(redis_url: str) -> None:
    namespace = unique_namespace()
    try:
        await write_redis_v1(redis_url, namespace)
        app = make_app()
        hello, shard = app._tasks["hello"], app._tasks["shard"]
        async with app.create() as ctx:
            result = await import_pyncette1_redis(ctx, redis_url, namespace=namespace)
            assert result.imported == 4
            # tasks the app does not define are not read; zoe's hash is gone
            assert set(result.skipped) == {"hello:frank", "hello:grace"}
            alice = await ctx.get_task(hello, "alice")
            assert alice is not None and alice.scheduled_at == NEXT_RUN
            assert alice.task.interval == datetime.timedelta(seconds=300)
            assert alice.task.extra_args == {"x": 1}
            bob = await ctx.get_task(hello, "bob")
            assert bob is not None and bob.scheduled_at == EXECUTE_AT
            dave = await ctx.get_task(shard, "dave")
            assert dave is not None and dave.scheduled_at == NEXT_RUN
            assert await ctx.get_task(hello, "zoe") is None

            other = await import_pyncette1_redis(ctx, redis_url, namespace=namespace + "x")
            assert other.imported == 0 and not other.skipped
    finally:
        await delete_namespace(redis_url, namespace)


def write_dynamodb_v1(endpoint: str, table: str, prefix: str) -> None:
    """Items laid out as Pyncette 1.x writes them: one partition per dynamic task (or
    partition), ``<prefix with ':' doubled>:<task>``, in a table of the same schema."""
    client = moto_client(endpoint)
    try:
        client.create_table(TableName=table, BillingMode="PAY_PER_REQUEST", **table_definition())
        for name, parent, task_spec, after in LEGACY_ROWS:
            if parent is None:
                continue
            when = (after or NEXT_RUN).isoformat()
            item: dict[str, Any] = {
                "partition_id": {"S": f"{prefix.replace(':', '::')}:{parent}"},
                "task_id": {"S": name},
                "ready_at": {"S": f"{when}_{name}"},
                "execute_after": {"S": when},
                "version": {"N": "1"},
            }
            if task_spec is not None:
                item["task_spec"] = {"S": task_spec}
            client.put_item(TableName=table, Item=item)
    finally:
        client.close()


@pytest.mark.service("dynamodb")
@pytest.mark.parametrize("prefix", ["", "legacy:app"])
async def test_dynamodb_instances_are_imported_into_the_same_table(
    dynamodb_server: str, monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    isolate_aws_env(monkeypatch)
    table = unique_table()
    try:
        write_dynamodb_v1(dynamodb_server, table, prefix)
        location = {"endpoint": dynamodb_server, "region_name": REGION, "table_name": table}
        # the new app keeps its own rows in the same table, under its own prefix
        app = make_app(
            repository_factory=dynamodb_repository,
            dynamodb_endpoint=dynamodb_server,
            dynamodb_region_name=REGION,
            dynamodb_table_name=table,
        )
        hello, shard = app._tasks["hello"], app._tasks["shard"]
        async with app.create() as ctx:
            result = await import_pyncette1_dynamodb(ctx, partition_prefix=prefix, **location)
            assert result.imported == 4
            assert set(result.skipped) == {"hello:frank", "hello:grace"}
            alice = await ctx.get_task(hello, "alice")
            assert alice is not None and alice.scheduled_at == NEXT_RUN
            assert alice.task.extra_args == {"x": 1}
            carol = await ctx.get_task(hello, "carol")
            assert carol is not None and carol.task.schedule == "0 2 * * *"
            dave = await ctx.get_task(shard, "dave")
            assert dave is not None and dave.scheduled_at == NEXT_RUN
            page = await ctx.list_tasks(hello, limit=100)
            assert sorted(state.task.name for state in page) == ["alice", "bob", "carol"]

            again = await import_pyncette1_dynamodb(ctx, partition_prefix=prefix, **location)
            assert again.imported == 4
            elsewhere = await import_pyncette1_dynamodb(ctx, partition_prefix="other", **location)
            assert elsewhere.imported == 0 and not elsewhere.skipped
    finally:
        delete_table(dynamodb_server, table)


@pytest.mark.service("dynamodb")
async def test_a_missing_dynamodb_table_is_named(
    dynamodb_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolate_aws_env(monkeypatch)
    async with make_app().create() as ctx:
        with pytest.raises(ValueError, match="No DynamoDB table 'pyncette-nowhere'"):
            await import_pyncette1_dynamodb(
                ctx, endpoint=dynamodb_server, region_name=REGION, table_name="pyncette-nowhere"
            )
