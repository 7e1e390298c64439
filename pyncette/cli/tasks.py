"""``pyncette tasks``: read and change the stored tasks of an app, without running it."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from pyncette.app import Pyncette
from pyncette.cli.common import CommandFailed, app_argument, console, run_async
from pyncette.cli.loading import APP_HELP, load_app
from pyncette.context import PyncetteContext
from pyncette.errors import TaskLockedException
from pyncette.model import TaskState
from pyncette.task import Task


@click.group()
def tasks() -> None:
    """Read and change an app's stored tasks.

    These commands open the app's backend (as `app.create()` does, without its fixtures,
    so an app's health or metrics server does not clash with the running app's)
    but never run the app. APP is as for `pyncette run`.
    """


def _task(app: Pyncette, name: str) -> Task:
    task = app.tasks.get(name)
    if task is None:
        defined = ", ".join(sorted(app.tasks)) or "none"
        raise CommandFailed(f"No task {name!r} in the app (its tasks: {defined})")
    return task


def _kind(task: Task) -> str:
    template = task.template
    if template.partition_count is not None:
        return "partitioned"
    return "dynamic" if template.dynamic else "static"


def _time(value: datetime.datetime | None) -> str | None:
    return value.astimezone(datetime.UTC).isoformat() if value is not None else None


@dataclass(frozen=True, slots=True)
class Row:
    """One stored task or instance as the commands print it."""

    task: str
    instance: str | None
    kind: str
    scheduled_at: datetime.datetime | None
    locked_until: datetime.datetime | None
    locked_by: str | None

    @classmethod
    def of(cls, task: Task, state: TaskState | None) -> Row:
        instance = state.task.name if state is not None and state.task.is_instance else None
        return cls(
            task=task.template.name,
            instance=instance,
            kind=_kind(task),
            scheduled_at=state.scheduled_at if state is not None else None,
            locked_until=state.locked_until if state is not None else None,
            locked_by=state.locked_by if state is not None else None,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "instance": self.instance,
            "kind": self.kind,
            "scheduled_at": _time(self.scheduled_at),
            "locked_until": _time(self.locked_until),
            "locked_by": self.locked_by,
        }


async def _rows(ctx: PyncetteContext, task: Task, limit: int | None) -> list[Row]:
    if not task.dynamic:
        return [Row.of(task, await ctx.get_task(task))]
    rows: list[Row] = []
    token = None
    while limit is None or len(rows) < limit:
        page = await ctx.list_tasks(
            task, limit=None if limit is None else limit - len(rows), continuation_token=token
        )
        rows += [Row.of(task, state) for state in page]
        token = page.continuation_token
        if token is None:
            break
    return rows


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _shown(value: datetime.datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@tasks.command("list", epilog=APP_HELP)
@app_argument()
@click.argument("task", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="At most this many instances of each dynamic task (default: all).",
)
def list_command(app: str, task: str | None, as_json: bool, limit: int | None) -> None:
    """List static tasks and dynamic task instances: next run, lease holder and expiry.

    Without TASK, every task of the app; with TASK, that static task or the instances
    of that dynamic task. Times are UTC.
    """
    pyncette = load_app(app)
    selected = [_task(pyncette, task)] if task is not None else list(pyncette.tasks.values())

    async def collect() -> list[Row]:
        async with pyncette.create(fixtures=False) as ctx:
            rows: list[Row] = []
            for each in selected:
                rows += await _rows(ctx, each, limit)
            return rows

    rows = run_async(collect())
    if as_json:
        _print_json([row.as_json() for row in rows])
        return
    if not rows:
        click.echo("No stored tasks.")
        return
    table = Table("Task", "Instance", "Kind", "Next run", "Locked by", "Lock expires")
    for row in rows:
        cells = (
            row.task,
            row.instance or "-",
            row.kind,
            _shown(row.scheduled_at) if row.scheduled_at is not None else "not stored",
            row.locked_by or "-",
            _shown(row.locked_until),
        )
        table.add_row(*(Text(cell) for cell in cells))  # names are data, not markup
    console().print(table)


def _definition(task: Task) -> dict[str, Any]:
    """What the app (or the stored spec of an instance) says about ``task``."""
    template = task.template
    described: dict[str, Any] = {
        "task": template.name,
        "instance": task.name if task.is_instance else None,
        "kind": _kind(task),
        "schedule": task.schedule,
        "interval": task.interval.total_seconds() if task.interval is not None else None,
        "execute_at": _time(task.execute_at),
        "timezone": task.timezone,
        "execution_mode": task.execution_mode.name,
        "failure_mode": task.failure_mode.name,
        "lease_duration": task.lease_duration.total_seconds(),
        "fast_forward": task.fast_forward,
        "args": dict(task.extra_args),
    }
    if not task.dynamic and not task.is_instance:
        described["enabled"] = task.enabled
    if template.partition_count is not None:
        if task.is_instance:
            described["partition"] = template.partition_for(task.name)
        else:
            described["partition_count"] = template.partition_count
    return described


def _state(state: TaskState | None) -> dict[str, Any]:
    run = state.last_run if state is not None else None
    return {
        "stored": state is not None,
        "scheduled_at": _time(state.scheduled_at) if state is not None else None,
        "locked_until": _time(state.locked_until) if state is not None else None,
        "locked_by": state.locked_by if state is not None else None,
        "last_status": run.status.value if run is not None else None,
        "last_run_at": _time(run.started_at) if run is not None else None,
        "last_duration": run.duration.total_seconds() if run and run.duration else None,
        "last_attempt": run.attempt if run is not None else None,
        "last_error": run.error if run is not None else None,
    }


def _target(app: str, task: str, instance: str | None, command: str) -> tuple[Pyncette, Task]:
    """The app APP and its task TASK, checked to go with INSTANCE (see _instance_name)."""
    pyncette = load_app(app)
    target = _task(pyncette, task)
    _instance_name(target, instance, command)
    return pyncette, target


async def _stored_state(
    ctx: PyncetteContext, target: Task, task: str, instance: str | None
) -> TaskState:
    """The stored state of TASK [INSTANCE]; exit status 1 if it is not stored."""
    state = await ctx.get_task(target, instance)
    if state is None:
        raise CommandFailed(f"{_label(task, instance)} is not stored")
    return state


def _instance_name(task: Task, instance: str | None, command: str) -> str | None:
    """Check that INSTANCE is given exactly for dynamic tasks (a usage error otherwise)."""
    if task.dynamic and instance is None and command != "show":
        raise click.UsageError(f"{task.name!r} is a dynamic task: give the INSTANCE name")
    if not task.dynamic and instance is not None:
        raise click.UsageError(f"{task.name!r} is a static task: it has no instances")
    return instance


@tasks.command("show", epilog=APP_HELP)
@app_argument()
@click.argument("task")
@click.argument("instance", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def show_command(app: str, task: str, instance: str | None, as_json: bool) -> None:
    """Show a task's definition and stored state.

    TASK is a static task, or a dynamic task with the INSTANCE name (an instance's
    definition is read from what `schedule_task` stored). A dynamic task without
    INSTANCE shows its template. Exit status 1 when there is no such task or instance.
    """
    pyncette = load_app(app)
    target = _task(pyncette, task)
    _instance_name(target, instance, "show")

    async def read() -> dict[str, Any]:
        if target.dynamic and instance is None:
            return _definition(target)
        async with pyncette.create(fixtures=False) as ctx:
            state = await ctx.get_task(target, instance)
        if state is None and instance is not None:
            raise CommandFailed(f"No instance {instance!r} of {task!r} is stored")
        return {**_definition(state.task if state is not None else target), **_state(state)}

    described = run_async(read())
    if as_json:
        _print_json(described)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in described.items():
        grid.add_row(key, Text(_shown_value(key, value)))
    console().print(grid)


def _shown_value(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("interval", "lease_duration", "last_duration"):
        return str(datetime.timedelta(seconds=value))
    if isinstance(value, (dict, list, bool)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


@tasks.command("trigger", epilog=APP_HELP)
@app_argument()
@click.argument("task")
@click.argument("instance", required=False)
@click.option(
    "--reschedule",
    is_flag=True,
    help="Move the task's next run to now instead of queuing an extra run.",
)
def trigger_command(app: str, task: str, instance: str | None, reschedule: bool) -> None:
    """Run a task now, once (`trigger_task`), without changing its schedule.

    TASK is a static task, or a dynamic task with the INSTANCE name. The run is queued
    beside the task's own. With --reschedule the next run itself moves to now and the
    runs after it follow from there; a running task (one holding a lease) is then not
    changed: exit status 1, try again once it has finished.
    """
    pyncette, target = _target(app, task, instance, "trigger")

    async def trigger() -> datetime.datetime:
        async with pyncette.create(fixtures=False) as ctx:
            state = await _stored_state(ctx, target, task, instance)
            now = ctx.clock.now()
            try:
                await ctx.trigger_task(target, instance, reschedule=reschedule)
            except TaskLockedException:
                raise CommandFailed(
                    f"{_label(task, instance)} is running now (lease until "
                    f"{_shown(state.locked_until)}); trigger it again once it has finished"
                ) from None
            return now

    now = run_async(trigger())
    if reschedule:
        click.echo(f"{_label(task, instance)}: next run set to {_shown(now)}")
    else:
        click.echo(f"{_label(task, instance)}: a run queued for {_shown(now)}")


@tasks.command("pause", epilog=APP_HELP)
@app_argument()
@click.argument("task")
@click.argument("instance", required=False)
def pause_command(app: str, task: str, instance: str | None) -> None:
    """Stop a task from running until it is resumed (`pause_task`).

    TASK is a static task, or a dynamic task with the INSTANCE name. A paused static
    task stays paused when apps start again. An execution in progress finishes, but
    its commit is refused.
    """
    pyncette, target = _target(app, task, instance, "pause")

    async def pause() -> None:
        async with pyncette.create(fixtures=False) as ctx:
            await _stored_state(ctx, target, task, instance)
            await ctx.pause_task(target, instance)

    run_async(pause())
    click.echo(f"{_label(task, instance)}: paused")


@tasks.command("resume", epilog=APP_HELP)
@app_argument()
@click.argument("task")
@click.argument("instance", required=False)
def resume_command(app: str, task: str, instance: str | None) -> None:
    """Resume a paused task from now (`resume_task`): its next run is the first one
    after now (a one-off instance runs at its time, at once if that has passed).

    Exit status 1 if it is not stored or not paused.
    """
    pyncette, target = _target(app, task, instance, "resume")

    async def resume() -> datetime.datetime:
        async with pyncette.create(fixtures=False) as ctx:
            state = await _stored_state(ctx, target, task, instance)
            if not state.paused:
                raise CommandFailed(f"{_label(task, instance)} is not paused")
            return await ctx.resume_task(target, instance)

    next_at = run_async(resume())
    click.echo(f"{_label(task, instance)}: resumed, next run at {_shown(next_at)}")


def _label(task: str, instance: str | None) -> str:
    return f"Instance {instance!r} of {task!r}" if instance is not None else f"Task {task!r}"


@tasks.command("unschedule", epilog=APP_HELP)
@app_argument()
@click.argument("task")
@click.argument("instance")
def unschedule_command(app: str, task: str, instance: str) -> None:
    """Remove an instance of a dynamic task (`unschedule_task`).

    Exit status 1 when there is no such instance.
    """
    pyncette, target = _target(app, task, instance, "unschedule")

    async def unschedule() -> None:
        async with pyncette.create(fixtures=False) as ctx:
            await _stored_state(ctx, target, task, instance)
            await ctx.unschedule_task(target, instance)

    run_async(unschedule())
    click.echo(f"{_label(task, instance)}: unscheduled")
