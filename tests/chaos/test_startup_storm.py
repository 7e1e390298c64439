"""Scenario 4, the start-up storm: ten OS processes start an app at the same instant on
an empty store (an empty database, a missing DynamoDB table, an empty Redis namespace).

Every process must start without an error; the schema must be created exactly once
(SQL: the task table and its own Alembic version table, holding one row, at head;
DynamoDB: one ACTIVE table of the documented schema; Redis: the namespace's one
adoption marker, its lock released); the ten registrations of one static task must make
one row; and the ten instances due at once must each run exactly once.

The ten processes are started once per module and import everything first; each round
then releases them from a barrier (one short write to each one's stdin) onto a fresh
store. The long form (``python -m benchmarks chaos --scenario storm``) runs 20 rounds
per backend instead of 2 (and, with ``--fresh``, starts ten new processes every round).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytest

from backend_dynamodb import REGION, delete_table, moto_client, unique_table
from backend_redis import RedisClusterServers, delete_namespace, unique_namespace
from backend_sql import fresh_mysql_database, fresh_postgres_database, mysql_options, postgres_url
from chaos._storm_helpers import (
    AWS_TEST_ENV,
    StormProcesses,
    StormResult,
    dump_store,
    publish,
    redis_marker,
    repetitions,
    sql_table,
    sql_url,
    storm_processes,
)
from pyncette.task import STATIC_GROUP

pytestmark = [pytest.mark.chaos]

PROCESSES = 10
ROUNDS = repetitions(2, 20)
STATIC = "storm-static"
TEMPLATE = "storm-jobs"
Store = tuple[str, dict[str, Any]]
"""A backend name and the options of one fresh store on it."""


def _fresh() -> bool:
    return os.environ.get("PYNCETTE_CHAOS_FRESH", "") not in ("", "0")


@pytest.fixture(scope="module")
def storm() -> Iterator[StormProcesses | None]:
    """The ten processes every round of the module uses (``None`` when each round
    starts its own: ``PYNCETTE_CHAOS_FRESH=1``)."""
    if _fresh():
        yield None
        return
    with storm_processes(PROCESSES, AWS_TEST_ENV) as processes:
        yield processes


def _alembic_head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from pyncette.sql.migrations import script_location

    config = Config()
    config.set_main_option("script_location", str(script_location()))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


async def _sql_schema(kind: str, options: dict[str, Any]) -> tuple[list[str], list[Any]]:
    """The database's tables, and the rows of the pyncette table's version table."""
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    table = sql_table(kind, options)
    engine = create_async_engine(sql_url(kind, options))
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: sorted(sa.inspect(sync).get_table_names()))
            versions = sa.table(f"{table}_alembic_version", sa.column("version_num"))
            rows = [tuple(row) for row in (await conn.execute(sa.select(versions))).all()]
    finally:
        await engine.dispose()
    return tables, rows


def _dynamodb_schema(options: dict[str, Any]) -> list[str]:
    """What is wrong with the DynamoDB table the storm created (nothing, hopefully)."""
    from pyncette.dynamodb.table import DynamoDBTableError, check_schema

    client = moto_client(options["dynamodb_endpoint"])
    try:
        name = options["dynamodb_table_name"]
        tables = client.list_tables()["TableNames"]
        table = client.describe_table(TableName=name)["Table"]
    finally:
        client.close()
    problems = [] if tables.count(name) == 1 else [f"tables {tables}"]
    if table.get("TableStatus") != "ACTIVE":
        problems.append(f"status {table.get('TableStatus')}")
    try:
        check_schema(name, dict(table))
    except DynamoDBTableError as exc:
        problems.append(str(exc))
    return problems


def check_round(kind: str, options: dict[str, Any], result: StormResult) -> None:
    """Every assertion of one round (see the module docstring)."""
    assert result.failures == [], "\n\n".join(result.failures)
    errors = [line for r in result.reports for line in r["logs"] if line.startswith("ERROR")]
    assert errors == [], errors
    once = sorted(f"once-{i}" for i in range(PROCESSES))
    assert result.executed == once, f"each one-off must run exactly once: {result.executed}"

    if kind in ("sqlite", "postgres", "mysql"):
        table = sql_table(kind, options)
        tables, versions = asyncio.run(_sql_schema(kind, options))
        assert tables == sorted([table, f"{table}_alembic_version", f"{table}_history"])
        assert versions == [(_alembic_head(),)]
    elif kind == "dynamodb":
        assert _dynamodb_schema(options) == []

    dump = asyncio.run(dump_store(kind, options))
    assert dump.problems == []
    assert {row.group for row in dump.rows} == {STATIC_GROUP, TEMPLATE}
    assert [row.name for row in dump.rows if row.group == STATIC_GROUP] == [STATIC]
    assert dump.names(TEMPLATE) == {f"keep-{i}" for i in range(PROCESSES)}
    assert all(row.locked_by is None for row in dump.rows)
    if kind in ("redis", "redis_cluster"):
        assert dump.other_keys == [redis_marker(options["redis_namespace"])]
    elif kind == "dynamodb":  # the marker item: checked once for Pyncette 1.x data
        assert dump.other_keys == [f"{options['dynamodb_partition_prefix']}:/pyncette1"]


@contextmanager
def _processes(pooled: StormProcesses | None) -> Iterator[StormProcesses]:
    """The module's processes, or ten new ones."""
    if pooled is not None:
        yield pooled
        return
    with storm_processes(PROCESSES, AWS_TEST_ENV) as processes:
        yield processes


def record_figures(kind: str, results: list[StormResult]) -> None:
    """The rounds' figures, printed (and appended to ``PYNCETTE_CHAOS_REPORT``)."""
    startups = [r["startup_s"] for result in results for r in result.reports]
    figures = {
        "scenario": "storm",
        "backend": kind,
        "rounds": len(results),
        "processes": PROCESSES,
        "failures": sum(len(result.failures) for result in results),
        "warnings_logged": sum(len(r["logs"]) for result in results for r in result.reports),
        "release_spread_ms_max": round(max(r.release_spread_ms for r in results), 2),
        "startup_s_median": round(statistics.median(startups), 3),
        "startup_s_max": round(max(startups), 3),
        "round_wall_s_max": round(max(r.wall_s for r in results), 3),
    }
    publish(figures)


def run_storm(
    storm: StormProcesses | None,
    kind: str,
    fresh_store: Callable[[int], AbstractContextManager[Store]],
) -> None:
    results: list[StormResult] = []
    for number in range(ROUNDS):
        with fresh_store(number) as (name, options), _processes(storm) as processes:
            result = processes.run({"backend": name, "options": options, "timeout": 60})
            results.append(result)
            try:
                check_round(name, options, result)
            except AssertionError as exc:
                raise AssertionError(f"round {number + 1} of {ROUNDS} on {kind}: {exc}") from exc
    record_figures(kind, results)


def test_sqlite(storm: StormProcesses | None, tmp_path: Path) -> None:
    def fresh(number: int) -> AbstractContextManager[Store]:
        path = tmp_path / f"storm-{number}.db"
        return nullcontext(("sqlite", {"sqlite_database": str(path)}))

    run_storm(storm, "sqlite", fresh)


@pytest.mark.service("postgres")
def test_postgres(storm: StormProcesses | None) -> None:
    @contextmanager
    def fresh(number: int) -> Iterator[Store]:
        with fresh_postgres_database() as database:
            yield "postgres", {"postgres_url": postgres_url(database)}

    run_storm(storm, "postgres", fresh)


@pytest.mark.service("mysql")
def test_mysql(storm: StormProcesses | None) -> None:
    @contextmanager
    def fresh(number: int) -> Iterator[Store]:
        with fresh_mysql_database() as database:
            yield "mysql", mysql_options(database)

    run_storm(storm, "mysql", fresh)


@pytest.mark.service("redis")
def test_redis(storm: StormProcesses | None, redis_url: str) -> None:
    @contextmanager
    def fresh(number: int) -> Iterator[Store]:
        namespace = unique_namespace()
        try:
            yield "redis", {"redis_url": redis_url, "redis_namespace": namespace}
        finally:
            asyncio.run(delete_namespace(redis_url, namespace))

    run_storm(storm, "redis", fresh)


@pytest.mark.service("redis-cluster")
def test_redis_cluster(storm: StormProcesses | None, redis_cluster: RedisClusterServers) -> None:
    def fresh(number: int) -> AbstractContextManager[Store]:
        # the cluster is private to this session; a namespace per round keeps rounds apart
        options = {"redis_url": redis_cluster.url, "redis_namespace": unique_namespace()}
        return nullcontext(("redis_cluster", options))

    run_storm(storm, "redis_cluster", fresh)


@pytest.mark.service("dynamodb")
def test_dynamodb(storm: StormProcesses | None, dynamodb_server: str) -> None:
    @contextmanager
    def fresh(number: int) -> Iterator[Store]:
        table = unique_table()
        try:
            yield (
                "dynamodb",
                {
                    "dynamodb_endpoint": dynamodb_server,
                    "dynamodb_region_name": REGION,
                    "dynamodb_table_name": table,
                    "dynamodb_partition_prefix": f"storm-{uuid.uuid4().hex[:8]}",
                },
            )
        finally:
            delete_table(dynamodb_server, table)

    run_storm(storm, "dynamodb", fresh)
