"""Bring the dynamic task instances of a Pyncette 1.x SQL table into this scheduler.

Static tasks need nothing: they are registered again at start-up. Dynamic instances
(``schedule_task`` calls made at run time) live only in the store, and pyncette keeps
its own table, so a team switching from Pyncette 1.x stops its 1.x apps and runs
``await import_pyncette1_sql(ctx, url)`` once, inside ``async with app.create() as
ctx``, with the URL of the 1.x database (see docs/operations.md).

Pyncette 1.x keeps every backend's rows in one table (``pyncette_tasks`` by default)
with a ``task_spec`` JSON column and the next run in ``execute_after``: a timestamp on
PostgreSQL, epoch seconds on MySQL and SQLite. Each row whose parent is a dynamic or
partitioned task of ``ctx``'s app is registered with its options and next run, as
``schedule_task`` would (an instance already present keeps the sooner of the two
runs); the 1.x lease, if any, is dropped. Rows of tasks the app does not define are
reported and left alone. Running it twice is harmless.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyncette.pyncette import PyncetteContext
from pyncette.repository import Registration
from pyncette.task import Task

logger = logging.getLogger(__name__)

DEFAULT_TABLE = "pyncette_tasks"


@dataclass
class ImportResult:
    """What :func:`import_pyncette1_sql` did."""

    imported: int = 0
    """Instances registered."""
    skipped: dict[str, str] = field(default_factory=dict)
    """1.x row name -> why it was not imported."""


async def import_pyncette1_sql(
    ctx: PyncetteContext, url: str, *, table: str = DEFAULT_TABLE
) -> ImportResult:
    """Register the dynamic instances stored in the Pyncette 1.x table ``table`` at
    ``url`` (``postgresql://``, ``mysql://`` or ``sqlite:///path``) with ``ctx``."""
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
            rows = (await conn.execute(query)).all()
    finally:
        await engine.dispose()

    result = ImportResult()
    templates = _dynamic_templates(ctx)
    batches: dict[str, list[Registration]] = {}
    now = ctx.clock.now()
    for row_name, parent_name, raw_spec, execute_after in rows:
        template = _template_for(templates, str(parent_name))
        if template is None:
            result.skipped[row_name] = f"no dynamic task {parent_name!r} in this app"
            continue
        try:
            spec = json.loads(raw_spec) if isinstance(raw_spec, str) else raw_spec
            instance_name, options = _options(spec)
            instance = template.instantiate(instance_name, options)
        except (ValueError, TypeError, KeyError) as error:
            result.skipped[row_name] = f"unreadable task_spec: {error}"
            continue
        scheduled_at = _as_time(execute_after) or instance.initial_run(now)
        batches.setdefault(template.group_for(instance_name), []).append(
            Registration(instance_name, instance.spec(), scheduled_at, instance.lease_duration)
        )
    size = ctx.app.batch_size
    for group, registrations in batches.items():
        for start in range(0, len(registrations), size):
            chunk = registrations[start : start + size]
            locked = set(await ctx.repository.register(group, chunk, now=now, force=False))
            for registration in chunk:
                if registration.name in locked:
                    result.skipped[registration.name] = "running in this scheduler; left as is"
                else:
                    result.imported += 1
    logger.info(
        "Imported %d Pyncette 1.x task instances from %s (%d skipped)",
        result.imported,
        table,
        len(result.skipped),
    )
    return result


def _dynamic_templates(ctx: PyncetteContext) -> dict[str, Task]:
    return {task.name: task for task in ctx.app._tasks.values() if task.dynamic}


def _template_for(templates: dict[str, Task], parent_name: str) -> Task | None:
    """The template a 1.x ``parent_name`` refers to: a dynamic task's name, or for a
    partitioned task ``<name with ':' doubled>:<partition>``."""
    template = templates.get(parent_name)
    if template is not None and template.partition_count is None:
        return template
    escaped, sep, partition = parent_name.rpartition(":")
    if sep and partition.isdigit():
        template = templates.get(escaped.replace("::", ":"))
        if template is not None and template.partition_count is not None:
            return template
    return None


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
    PostgreSQL and epoch seconds (a number, or its text on SQLite) elsewhere."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)
    return datetime.datetime.fromtimestamp(float(value), datetime.UTC)
