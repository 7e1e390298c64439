"""Bring the dynamic task instances that Pyncette 1.x stored into this scheduler.

Static tasks need nothing: they are registered again at start-up. Dynamic instances
(``schedule_task`` calls made at run time) live only in the store, and pyncette keeps
its own table, keys and partitions, so a team switching from Pyncette 1.x stops its 1.x
apps and, inside ``async with app.create() as ctx``, runs once the importer of the store
1.x used: :func:`import_pyncette1_sql`, :func:`import_pyncette1_redis` or
:func:`import_pyncette1_dynamodb` (see docs/operations.md).

Each 1.x instance of a dynamic or partitioned task of ``ctx``'s app is registered with
its options (1.x's ``task_spec`` JSON) and next run (its ``execute_after``), as
``schedule_task`` would (an instance already present keeps the sooner of the two
runs); the 1.x lease, if any, is dropped and the 1.x data is only read. Running an
importer twice is harmless.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyncette.pyncette import PyncetteContext
from pyncette.repository import Registration
from pyncette.task import Task

logger = logging.getLogger(__name__)

DEFAULT_TABLE = "pyncette_tasks"
REDIS_PAGE = 500

LegacyRow = tuple[str, str, Any, Any]
"""A 1.x instance: its stored name, its parent's name, ``task_spec``, ``execute_after``."""


@dataclass
class ImportResult:
    """What one of the importers did."""

    imported: int = 0
    """Instances registered."""
    skipped: dict[str, str] = field(default_factory=dict)
    """1.x row name -> why it was not imported."""


async def import_pyncette1_sql(
    ctx: PyncetteContext, url: str, *, table: str = DEFAULT_TABLE
) -> ImportResult:
    """Register the dynamic instances stored in the Pyncette 1.x table ``table`` at
    ``url`` (``postgresql://``, ``mysql://`` or ``sqlite:///path``) with ``ctx``.

    1.x keeps every instance in one table, with its parent task's name, its
    ``task_spec`` and ``execute_after`` (a timestamp on PostgreSQL, epoch seconds on
    MySQL and SQLite). Rows of tasks the app does not define are reported in
    :attr:`ImportResult.skipped` and left alone."""
    from sqlalchemy import inspect, text

    from pyncette.sql.engine import create_engine, mask, normalize_url, translate_errors
    from pyncette.sql.names import validate_table_name

    table = validate_table_name("table", table)
    database = normalize_url(url)
    where = mask(database)
    if database.get_backend_name() == "sqlite":
        path = Path(database.database or "")
        if not await asyncio.to_thread(path.is_file):  # connecting would create it
            raise ValueError(f"No SQLite file at {where}")
    engine = create_engine(database, pool_size=1)
    try:
        async with translate_errors(where), engine.connect() as conn:
            if not await conn.run_sync(lambda sync: inspect(sync).has_table(table)):
                raise ValueError(f"No table {table!r} at {where}: give the 1.x table as table=")
            query = text(
                f"SELECT name, parent_name, task_spec, execute_after FROM {table} "  # noqa: S608 - validated identifier
                "WHERE parent_name IS NOT NULL ORDER BY name"
            )
            rows = [tuple(row) for row in (await conn.execute(query)).all()]
    finally:
        await engine.dispose()

    return await _import_rows(ctx, rows, f"table {table}")


async def import_pyncette1_redis(
    ctx: PyncetteContext, url: str, *, namespace: str = ""
) -> ImportResult:
    """Register the dynamic instances that Pyncette 1.x keeps in Redis at ``url`` under
    ``namespace`` (its ``redis_namespace``; a single server or a cluster) with ``ctx``.

    1.x keeps one sorted set per dynamic task (per partition of a partitioned task),
    ``pyncette:<namespace>:index:<task>``, whose members name the instances' hashes; the
    sets of the app's dynamic and partitioned tasks are read, other tasks' are not.
    """
    from pyncette.redis.connection import open_client
    from pyncette.redis.settings import RedisSettings

    if not isinstance(namespace, str):
        raise ValueError(f"namespace must be a string, not {type(namespace).__name__}")
    settings = RedisSettings.from_options({"redis_url": url})
    client = await open_client(settings)
    rows: list[LegacyRow] = []
    try:
        for parent in _parents(ctx):
            rows += await _redis_rows(client, f"pyncette:{namespace}:", parent)
    finally:
        await client.aclose()
    return await _import_rows(ctx, rows, f"Redis namespace {namespace!r}")


async def import_pyncette1_dynamodb(
    ctx: PyncetteContext,
    *,
    table_name: str = "pyncette",
    region_name: str | None = None,
    endpoint: str | None = None,
    partition_prefix: str = "",
) -> ImportResult:
    """Register the dynamic instances that Pyncette 1.x keeps in the DynamoDB table
    ``table_name`` with ``ctx``; the arguments are 1.x's ``dynamodb_*`` options (its
    partition prefix defaults to empty).

    1.x keeps the instances of a dynamic task (of each partition of a partitioned task)
    in one partition, ``<prefix with ':' doubled>:<task>``; the partitions of the app's
    dynamic and partitioned tasks are read, others are not. The table may be the one
    pyncette itself uses: its own items live in partitions of its own prefix.
    """
    import anyio
    import anyio.to_thread

    from pyncette.dynamodb.client import MAX_CONCURRENCY, Caller, TableNotFound, open_client
    from pyncette.dynamodb.settings import DynamoDBSettings

    options: dict[str, Any] = {"dynamodb_table_name": table_name}
    if region_name is not None:
        options["dynamodb_region_name"] = region_name
    if endpoint is not None:
        options["dynamodb_endpoint"] = endpoint
    settings = DynamoDBSettings.from_options(options)
    if not isinstance(partition_prefix, str):
        raise ValueError("partition_prefix must be a string")
    limiter = anyio.CapacityLimiter(MAX_CONCURRENCY)
    client = await anyio.to_thread.run_sync(open_client, settings, limiter=limiter)
    call = Caller(f"table {table_name!r} at {client.meta.endpoint_url}", limiter)
    escaped = partition_prefix.replace(":", "::")
    rows: list[LegacyRow] = []
    try:
        try:
            await call(lambda: client.describe_table(TableName=table_name))
        except TableNotFound:
            raise ValueError(f"No DynamoDB table {table_name!r}: give the 1.x table") from None
        for parent in _parents(ctx):
            request: dict[str, Any] = {
                "TableName": table_name,
                "KeyConditionExpression": "partition_id = :p",
                "ExpressionAttributeValues": {":p": {"S": f"{escaped}:{parent}"}},
                "ConsistentRead": True,
            }
            while True:
                page = await call(lambda request=request: client.query(**request))  # type: ignore[misc]
                for item in page.get("Items", []):
                    spec = item.get("task_spec", {}).get("S")
                    after = item.get("execute_after", {}).get("S")
                    rows.append((item["task_id"]["S"], parent, spec, after))
                if "LastEvaluatedKey" not in page:
                    break
                request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(client.close, limiter=limiter)
    return await _import_rows(ctx, rows, f"DynamoDB table {table_name!r}")


async def _redis_rows(client: Any, prefix: str, parent: str) -> list[LegacyRow]:
    """The instances in 1.x's index of ``parent``, a page at a time."""
    rows: list[LegacyRow] = []
    for start in itertools.count(0, REDIS_PAGE):
        members: list[Any] = await client.zrange(
            f"{prefix}index:{parent}", start, start + REDIS_PAGE - 1
        )
        # a member is "<execute_after or locked_until>_<key of the instance's hash>"
        keys = [bytes(member).decode().split("_", 1)[-1] for member in members]
        values: list[list[Any]] = await asyncio.gather(
            *(client.hmget(key, "execute_after", "task_spec") for key in keys)
        )
        for key, (execute_after, task_spec) in zip(keys, values, strict=True):
            if task_spec is not None:  # else removed since the index was read
                name = key.removeprefix(f"{prefix}task:")
                rows.append((name, parent, bytes(task_spec).decode(), execute_after))
        if len(members) < REDIS_PAGE:
            return rows
    raise AssertionError("unreachable")


async def _import_rows(
    ctx: PyncetteContext, rows: Iterable[LegacyRow], source: str
) -> ImportResult:
    """Register 1.x rows (name, parent name, ``task_spec``, ``execute_after``)."""
    result = ImportResult()
    parents = _parents(ctx)
    by_group: dict[str, list[Registration]] = {}
    row_names: dict[tuple[str, str], str] = {}
    now = ctx.clock.now()
    for row_name, parent_name, raw_spec, execute_after in rows:
        template = parents.get(str(parent_name))
        if template is None:
            result.skipped[row_name] = f"no dynamic task {parent_name!r} in this app"
            continue
        try:
            spec = json.loads(raw_spec) if isinstance(raw_spec, str) else raw_spec
            instance_name, options = _options(spec)
            instance = template.make_instance(instance_name, options)
            scheduled_at = _as_time(execute_after) or instance.initial_run(now)
        except (ValueError, TypeError, KeyError) as error:
            result.skipped[row_name] = f"unreadable task_spec or execute_after: {error}"
            continue
        group = template.group_for(instance_name)
        by_group.setdefault(group, []).append(
            Registration(instance_name, instance.spec(), scheduled_at, instance.lease_duration)
        )
        row_names[group, instance_name] = row_name
    locked = await ctx._register_groups(by_group, now, force=False)
    for key in locked:
        result.skipped[row_names[key]] = "running in this scheduler; left as is"
    result.imported = len(row_names) - len(locked)
    logger.info(
        "Imported %d Pyncette 1.x task instances from %s (%d skipped)",
        result.imported,
        source,
        len(result.skipped),
    )
    return result


def _parents(ctx: PyncetteContext) -> dict[str, Task]:
    """Every name 1.x gives the parent of an instance of ``ctx``'s app's templates: a
    dynamic task's name, or ``<name with ':' doubled>:<partition>`` per partition."""
    parents: dict[str, Task] = {}
    for task in ctx.app._tasks.values():
        if not task.dynamic:
            continue
        if task.partition_count is None:
            parents[task.name] = task
            continue
        escaped = task.name.replace(":", "::")
        for partition in range(task.partition_count):
            parents[f"{escaped}:{partition}"] = task
    return parents


def _options(spec: Any) -> tuple[str, dict[str, Any]]:
    """The instance name and ``schedule_task`` options of a 1.x ``task_spec``."""
    if not isinstance(spec, dict):
        raise ValueError(f"expected a JSON object, got {type(spec).__name__}")
    options: dict[str, Any] = dict(spec.get("extra_args") or {})
    if spec.get("schedule") is not None:
        options["schedule"] = spec["schedule"]
    if spec.get("interval") is not None:
        options["interval"] = datetime.timedelta(seconds=float(spec["interval"]))
    if spec.get("execute_at") is not None:
        options["execute_at"] = datetime.datetime.fromisoformat(spec["execute_at"])
    if spec.get("timezone") is not None:
        options["timezone"] = spec["timezone"]
    name = spec["name"]
    if not isinstance(name, str) or not name:
        raise ValueError(f"bad instance name {name!r}")
    return name, options


def _as_time(value: Any) -> datetime.datetime | None:
    """``execute_after`` as an aware UTC datetime: 1.x stores a ``timestamptz`` on
    PostgreSQL, epoch seconds on MySQL and SQLite, ISO 8601 text in Redis."""
    if isinstance(value, bytes):
        value = value.decode()
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = datetime.datetime.fromisoformat(value)
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)
    return datetime.datetime.fromtimestamp(float(value), datetime.UTC)
