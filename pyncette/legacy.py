"""Pyncette 1.x data: carried over in place at start-up, or imported from elsewhere.

Data that Pyncette 1.x left under the *same name* as the app's is converted when the app
starts, under the backend's start-up lock: a SQL table (by the table's first Alembic
revision, so ``alembic upgrade head`` does it too), a Redis namespace, or the items of
a DynamoDB partition prefix. Data kept under another name (another table, namespace or
prefix) is not this app's to take: to carry it over, stop the 1.x apps and, inside
``async with app.create() as ctx``, run once the importer of the store 1.x used:
:func:`import_pyncette1_sql`, :func:`import_pyncette1_redis` or
:func:`import_pyncette1_dynamodb` (see docs/operations.md).

Each 1.x dynamic instance keeps its options and arguments (1.x's ``task_spec`` JSON)
and next run (its ``execute_after``), as ``schedule_task`` would register it (an
instance already present keeps the sooner of the two runs); a static task keeps its
next run. 1.x leases are dropped. The importers only read the 1.x data; running one
twice is harmless.

The conversion of one stored 1.x task (:func:`convert`) needs nothing from the app: a
1.x parent name is the template's name with ``:`` doubled, followed for a partition of
a partitioned task by ``:<partition>`` (:func:`parse_parent`), which maps straight to
this scheduler's group, ``<name>`` or ``<name>:<partition>``.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import itertools
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyncette.errors import PyncetteException
from pyncette.repository import Registration
from pyncette.task import MAX_NAME_LENGTH, STATIC_GROUP, Task

if TYPE_CHECKING:
    from pyncette.model import Context
    from pyncette.pyncette import PyncetteContext

__all__ = [
    "ImportResult",
    "Pyncette1DataError",
    "import_pyncette1_dynamodb",
    "import_pyncette1_redis",
    "import_pyncette1_sql",
]

logger = logging.getLogger(__name__)

DEFAULT_TABLE = "pyncette_tasks"
"""Pyncette 1.x's default SQL table name."""
REDIS_PAGE = 500
LEASE_DURATION = datetime.timedelta(seconds=60)
"""The lease of a converted row until the app registers it again: 1.x's default. 1.x
stored no lease duration (it came from the task definition)."""
MAX_LISTED = 10
"""Bad entries named in one :class:`Pyncette1DataError`."""


class Pyncette1DataError(PyncetteException, ValueError):
    """Pyncette 1.x data found under the app's name cannot be converted. Nothing was
    changed; the message names the store and the entries, with the reason for each."""

    def __init__(self, source: str, bad: Mapping[str, str]) -> None:
        self.source = source
        self.bad = dict(bad)
        first = itertools.islice(bad.items(), MAX_LISTED)
        listed = "; ".join(f"{key!r}: {why}" for key, why in first)
        more = f" (and {len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
        super().__init__(
            f"Pyncette 1.x data in {source} cannot be converted, so nothing was changed. "
            f"Fix or delete these {len(bad)} entries, then start again: {listed}{more}"
        )


# -- the 1.x format ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One task as Pyncette 1.x stored it, whatever the store."""

    key: str
    """1.x's canonical name: ``<name with ':' doubled>`` for a static task,
    ``<parent>:<instance name with ':' doubled>`` for a dynamic instance."""
    parent: str | None
    """The canonical name of the instance's dynamic task (or of its partition);
    ``None`` for a static task."""
    task_spec: Any
    """The instance's options as JSON text (or already decoded); none for a static task."""
    execute_after: Any
    """The next run: a datetime, epoch seconds, or ISO 8601 text."""


def escape(name: str) -> str:
    """A name as 1.x writes it inside canonical names: every ``:`` doubled."""
    return name.replace(":", "::")


def _split(canonical: str) -> list[str]:
    """Split at single ``:`` (read left to right, ``::`` is a literal ``:``)."""
    parts = [""]
    at = 0
    while at < len(canonical):
        if canonical.startswith("::", at):
            parts[-1] += ":"
            at += 2
        elif canonical[at] == ":":
            parts.append("")
            at += 1
        else:
            parts[-1] += canonical[at]
            at += 1
    return parts


def parse_parent(parent: str) -> tuple[str, int | None]:
    """The task name and partition (``None`` for a plain dynamic task) that a 1.x
    parent name stands for: ``hello`` -> ``("hello", None)``, ``shard:3`` ->
    ``("shard", 3)``, ``a::b`` -> ``("a:b", None)``. ``ValueError`` for anything
    1.x cannot have written."""
    parts = _split(parent)
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 2 and parts[0] and parts[1].isascii() and parts[1].isdigit():
        return parts[0], int(parts[1])
    raise ValueError(f"{parent!r} is not the name of a 1.x dynamic task or partition")


def group_of(parent: str) -> str:
    """This scheduler's group for the instances of a 1.x parent (see :func:`parse_parent`)."""
    name, partition = parse_parent(parent)
    return name if partition is None else f"{name}:{partition}"


def instance_options(spec: Any) -> tuple[str, dict[str, Any]]:
    """The instance name and ``schedule_task`` options of a 1.x ``task_spec``."""
    if isinstance(spec, bytes):
        spec = spec.decode()
    if isinstance(spec, str):
        spec = json.loads(spec)
    if not isinstance(spec, dict):
        raise ValueError(f"expected a JSON object, got {type(spec).__name__}")
    extra = spec.get("extra_args") or {}
    if not isinstance(extra, dict):
        raise ValueError("extra_args is not a JSON object")
    options: dict[str, Any] = dict(extra)
    if spec.get("schedule") is not None:
        options["schedule"] = spec["schedule"]
    if spec.get("interval") is not None:
        seconds = float(spec["interval"])
        if not math.isfinite(seconds):
            raise ValueError(f"bad interval {spec['interval']!r}")
        options["interval"] = datetime.timedelta(seconds=seconds)
    if spec.get("execute_at") is not None:
        options["execute_at"] = datetime.datetime.fromisoformat(spec["execute_at"])
    if spec.get("timezone") is not None:
        options["timezone"] = spec["timezone"]
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"bad instance name {name!r}")
    return name, options


def as_time(value: Any) -> datetime.datetime | None:
    """``execute_after`` as an aware UTC datetime: 1.x stores a ``timestamptz`` on
    PostgreSQL, epoch seconds on MySQL and SQLite, ISO 8601 text in Redis and
    DynamoDB. ``None`` when there is none."""
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
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"bad execute_after {value!r}")
    try:
        return datetime.datetime.fromtimestamp(float(value), datetime.UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"bad execute_after {value!r}") from None


async def _never(context: Context) -> None:  # pragma: no cover - never executed
    raise AssertionError("only used to validate converted 1.x instances")


@functools.cache
def _any_template() -> Task:
    """A dynamic template with no options of its own: a 1.x ``task_spec`` holds every
    option an instance has (1.x copied the template's into it), so validating it
    against this template checks what the app's template would."""
    return Task(name="pyncette1", func=_never, dynamic=True)


def convert(entry: Entry, now: datetime.datetime) -> tuple[str, Registration]:
    """The group and row that a 1.x entry becomes; ``ValueError`` (with the reason)
    for anything 1.x cannot have written. ``now`` gives the next run of an instance
    stored without one, as ``schedule_task`` would compute it."""
    if entry.parent is None:
        if entry.task_spec not in (None, ""):
            raise ValueError("a static task (no parent) with a task_spec")
        parts = _split(entry.key)
        if len(parts) != 1 or not parts[0]:
            raise ValueError("not the name of a 1.x static task")
        at = as_time(entry.execute_after)
        if at is None:
            raise ValueError("a static task without execute_after")
        return STATIC_GROUP, Registration(parts[0], None, at, LEASE_DURATION)
    group = group_of(entry.parent)
    if len(group) > MAX_NAME_LENGTH:
        raise ValueError(f"task name longer than {MAX_NAME_LENGTH} characters")
    try:
        name, options = instance_options(entry.task_spec)
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"unreadable task_spec: {error}") from None
    expected = f"{entry.parent}:{escape(name)}"
    if entry.key != expected:
        raise ValueError(f"stored as {entry.key!r}, but its parent and name make {expected!r}")
    try:
        instance = _any_template().make_instance(name, options)
    except (ValueError, TypeError) as error:
        raise ValueError(f"invalid task_spec: {error}") from None
    at = as_time(entry.execute_after) or instance.initial_run(now)
    return group, Registration(name, instance.spec(), at, LEASE_DURATION)


class Checker:
    """Converts 1.x entries without keeping the result, noting every one that cannot
    be converted (see :func:`check`)."""

    def __init__(self, now: datetime.datetime) -> None:
        self.now = now
        self.count = 0
        self.bad: dict[str, str] = {}
        self._parents: dict[str, str] = {}

    def add(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            self.count += 1
            try:
                group, _ = convert(entry, self.now)
            except ValueError as error:
                self.bad[entry.key] = str(error)
                continue
            # a dynamic task named "x:0" and partition 0 of "x" would share a group
            other = self._parents.setdefault(group, str(entry.parent))
            if other != str(entry.parent):
                self.bad[entry.key] = (
                    f"its task {entry.parent!r} and the task {other!r} would share group {group!r}"
                )

    def done(self, source: str) -> int:
        """Raise :class:`Pyncette1DataError` if any entry was bad; else the count."""
        if self.bad:
            raise Pyncette1DataError(source, self.bad)
        return self.count


def check(entries: Iterable[Entry], now: datetime.datetime, source: str) -> int:
    """Convert ``entries`` without keeping the result: raise :class:`Pyncette1DataError`
    naming every one that cannot be converted; return how many there are."""
    checker = Checker(now)
    checker.add(entries)
    return checker.done(source)


# -- importers (data under another name) -----------------------------------------------


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
    :attr:`ImportResult.skipped` and left alone. (A 1.x table named as the app's own
    table is converted in place at start-up instead.)"""
    from sqlalchemy import inspect

    from pyncette.sql.adopt import read_entries
    from pyncette.sql.engine import create_engine, normalize_url, translate_errors
    from pyncette.sql.names import validate_table_name
    from pyncette.urls import mask_url

    table = validate_table_name("table", table)
    database = normalize_url(url)
    where = mask_url(database)
    if database.get_backend_name() == "sqlite":
        path = Path(database.database or "")
        if not await asyncio.to_thread(path.is_file):  # connecting would create it
            raise ValueError(f"No SQLite file at {where}")
    engine = create_engine(database, pool_size=1)
    try:
        async with translate_errors(where), engine.connect() as conn:
            if not await conn.run_sync(lambda sync: inspect(sync).has_table(table)):
                raise ValueError(f"No table {table!r} at {where}: give the 1.x table as table=")
            entries = await conn.run_sync(
                lambda sync: [e for e in read_entries(sync, table) if e.parent is not None]
            )
    finally:
        await engine.dispose()

    return await _import_entries(ctx, entries, f"table {table}")


async def import_pyncette1_redis(
    ctx: PyncetteContext, url: str, *, namespace: str = ""
) -> ImportResult:
    """Register the dynamic instances that Pyncette 1.x keeps in Redis at ``url`` under
    ``namespace`` (its ``redis_namespace``; a single server or a cluster) with ``ctx``.

    1.x keeps one sorted set per dynamic task (per partition of a partitioned task),
    ``pyncette:<namespace>:index:<task>``, whose members name the instances' hashes; the
    sets of the app's dynamic and partitioned tasks are read, other tasks' are not.
    (1.x data in the app's own namespace is converted at start-up instead.)
    """
    from pyncette.redis.adopt import read_index
    from pyncette.redis.connection import open_client
    from pyncette.redis.settings import RedisSettings

    if not isinstance(namespace, str):
        raise ValueError(f"namespace must be a string, not {type(namespace).__name__}")
    settings = RedisSettings.from_options({"redis_url": url})
    client = await open_client(settings)
    entries: list[Entry] = []
    try:
        for parent in _parents(ctx):
            entries += await read_index(client, f"pyncette:{namespace}:", parent)
    finally:
        await client.aclose()
    return await _import_entries(ctx, entries, f"Redis namespace {namespace!r}")


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
    pyncette itself uses: its own items live in partitions of its own prefix. (1.x
    items under the app's own prefix are converted at start-up instead.)
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
    escaped = escape(partition_prefix)
    entries: list[Entry] = []
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
                    entries.append(Entry(item["task_id"]["S"], parent, spec, after))
                if "LastEvaluatedKey" not in page:
                    break
                request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(client.close, limiter=limiter)
    return await _import_entries(ctx, entries, f"DynamoDB table {table_name!r}")


async def _import_entries(
    ctx: PyncetteContext, entries: Iterable[Entry], source: str
) -> ImportResult:
    """Register 1.x instances of the app's dynamic tasks through the app's templates."""
    result = ImportResult()
    by_group: dict[str, list[Registration]] = {}
    row_names: dict[tuple[str, str], str] = {}
    now = ctx.clock.now()
    for entry in entries:
        template = _template_of(ctx, str(entry.parent))
        if template is None:
            result.skipped[entry.key] = f"no dynamic task {entry.parent!r} in this app"
            continue
        try:
            instance_name, options = instance_options(entry.task_spec)
            instance = template.make_instance(instance_name, options)
            scheduled_at = as_time(entry.execute_after) or instance.initial_run(now)
            group = template.group_for(instance_name)
        except (ValueError, TypeError, KeyError) as error:
            result.skipped[entry.key] = f"unreadable task_spec or execute_after: {error}"
            continue
        by_group.setdefault(group, []).append(
            Registration(instance_name, instance.spec(), scheduled_at, instance.lease_duration)
        )
        row_names[group, instance_name] = entry.key
    locked = await ctx.register_rows(by_group, force=False)
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


def _template_of(ctx: PyncetteContext, parent: str) -> Task | None:
    """The app's dynamic task that 1.x's parent name ``parent`` stands for, if any."""
    try:
        name, partition = parse_parent(parent)
    except ValueError:
        return None
    task = ctx.app.tasks.get(name)
    if task is None or not task.dynamic or (partition is None) != (task.partition_count is None):
        return None
    return task


def _parents(ctx: PyncetteContext) -> list[str]:
    """Every name 1.x gives the parent of an instance of ``ctx``'s app's templates: a
    dynamic task's name, or ``<name with ':' doubled>:<partition>`` per partition."""
    parents: list[str] = []
    for task in ctx.app.tasks.values():
        if not task.dynamic:
            continue
        if task.partition_count is None:
            parents.append(escape(task.name))
        else:
            parents += [f"{escape(task.name)}:{p}" for p in range(task.partition_count)]
    return parents
