"""Operations on stored tasks: schedule, unschedule, read and list instances.

The :class:`TaskManager` turns the public calls of :class:`~pyncette.PyncetteContext`
into repository calls; it never executes anything. Whenever it stores a run that falls
due sooner than the loop expects, it tells the loop through ``on_due``.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pyncette import outcome
from pyncette.batching import RegisterBatcher, chunks
from pyncette.clock import Clock
from pyncette.codec import decode_token, encode_token
from pyncette.errors import TaskLockedException
from pyncette.model import PAUSED_AT, ContinuationToken, TaskPage, TaskState
from pyncette.options import positive_int
from pyncette.repository import Record, Registration, Repository
from pyncette.task import (
    RUN_PREFIX,
    STATIC_GROUP,
    Task,
    check_instance_name,
    extra_run_name,
    extra_run_spec,
)

MAX_BACKFILL = 10_000
"""The most runs one backfill_task call may queue."""

DueCallback = Callable[[str, datetime.datetime | None], None]


def dynamic_template(task: object) -> Task:
    """``task`` as a dynamic template, or a ``ValueError`` saying what it is instead."""
    if not isinstance(task, Task):
        raise ValueError(f"Expected a task, got {task!r}")
    if not task.dynamic:
        raise ValueError(
            f"Cannot instantiate a non-dynamic task: {task.name!r} is not a dynamic task"
        )
    if task.is_instance:
        raise ValueError(f"{task} is already an instance; pass its dynamic task instead")
    return task


def task_state(task: Task, record: Record) -> TaskState:
    return TaskState(
        task,
        record.scheduled_at,
        record.locked_until,
        record.locked_by,
        outcome.decode(record.outcome),
    )


class TaskManager:
    def __init__(
        self,
        repository: Repository,
        clock: Clock,
        batch_size: int,
        on_due: DueCallback,
    ) -> None:
        self._repository = repository
        self._clock = clock
        self._batch_size = batch_size
        self._on_due = on_due
        self._registrations = RegisterBatcher(self._register, batch_size)

    async def _register(self, group: str, rows: list[Registration], force: bool) -> list[str]:
        return await self._repository.register(group, rows, now=self._clock.now(), force=force)

    async def register_static(self, tasks: Iterable[Task]) -> None:
        """Create the rows of static tasks that have none, and refresh the others.

        A missing row starts at the task's first run after now. An existing row keeps
        its run: another instance may commit that first run while this registration is
        on its way, and the repository's ``min(stored, new)`` would then run it again.
        So for an existing row the proposed run is the first one after
        ``now + lease_duration`` -- later than any run an instance can have committed
        by the time the registration lands (if it lands within a lease, clock skew
        included) -- which only takes effect when the stored run is later still, i.e.
        when the schedule changed to a sooner one.
        """
        tasks = list(tasks)
        if not tasks:
            return
        stored = await self._rows(STATIC_GROUP)
        now = self._clock.now()
        rows = [
            Registration(
                t.name,
                None,
                t.initial_run(now + t.lease_duration if t.name in stored else now),
                t.lease_duration,
            )
            for t in tasks
            # a paused task stays paused (min(stored, new) would move it back)
            if t.name not in stored or stored[t.name].scheduled_at < PAUSED_AT
        ]
        for chunk in chunks(rows, self._batch_size):
            await self._repository.register(STATIC_GROUP, list(chunk), now=now, force=False)

    async def _rows(self, group: str) -> dict[str, Record]:
        """Every row stored in ``group``, by name."""
        rows: dict[str, Record] = {}
        token: ContinuationToken | None = None
        while True:
            page = await self._repository.list(
                group, limit=self._batch_size, continuation_token=token
            )
            rows.update((record.name, record) for record in page.records)
            token = page.continuation_token
            if token is None:
                return rows

    async def schedule_task(
        self, task: Task, instance_name: str, force: bool, options: dict[str, Any]
    ) -> Task:
        template = dynamic_template(task)
        instance = template.make_instance(instance_name, options)
        group = template.group_for(instance_name)
        scheduled_at = instance.initial_run(self._clock.now())
        registration = Registration(
            instance_name, instance.spec(), scheduled_at, instance.lease_duration
        )
        if not await self._registrations.register(group, registration, force):
            raise TaskLockedException(instance)
        self._on_due(group, scheduled_at)
        return instance

    async def schedule_tasks(
        self,
        task: Task,
        instances: Mapping[str, Mapping[str, Any]] | Iterable[tuple[str, Mapping[str, Any]]],
        force: bool,
    ) -> list[Task]:
        template = dynamic_template(task)
        items = instances.items() if isinstance(instances, Mapping) else instances
        now = self._clock.now()
        created: list[Task] = []
        by_group: dict[str, list[Registration]] = {}
        for name, options in items:
            instance = template.make_instance(name, dict(options))
            created.append(instance)
            by_group.setdefault(template.group_for(name), []).append(
                Registration(
                    name, instance.spec(), instance.initial_run(now), instance.lease_duration
                )
            )
        locked = [name for _, name in await self.register_rows(by_group, force=force)]
        if locked:
            raise TaskLockedException(
                template,
                message=f"Instances locked by running executions: {', '.join(sorted(locked))}",
            )
        return created

    async def register_rows(
        self, by_group: Mapping[str, list[Registration]], *, force: bool
    ) -> list[tuple[str, str]]:
        """Register prepared rows in ``batch_size`` chunks per group, waking the loop for
        any that fall due sooner; return the (group, name) pairs left alone because
        they are locked."""
        locked: list[tuple[str, str]] = []
        now = self._clock.now()
        for group, registrations in by_group.items():
            for chunk in chunks(registrations, self._batch_size):
                skipped = await self._repository.register(group, chunk, now=now, force=force)
                locked += [(group, name) for name in skipped]
                self._on_due(group, min(r.scheduled_at for r in chunk))
        return locked

    async def _stored(
        self, task: Task, instance_name: str | None, action: str
    ) -> tuple[str, str, Task, Record]:
        """The group, name, task (an instance rebuilt from its spec) and row of a stored
        static task or dynamic instance; ``ValueError`` if nothing is stored."""
        if isinstance(task, Task) and not task.dynamic and not task.is_instance:
            if instance_name is not None:
                raise ValueError(
                    f"instance_name provided but task is not dynamic: {task.name!r} is static"
                )
            group, name, template = STATIC_GROUP, task.name, task
        else:
            template, name = _instance_key(task, instance_name)
            group = template.group_for(name)
        record = await self._repository.get(group, name)
        if record is None:
            raise ValueError(f"{task} has no stored run to {action} (is it scheduled?)")
        stored = (
            template if group == STATIC_GROUP else template.from_spec(name, record.spec or "{}")
        )
        return group, name, stored, record

    async def trigger_task(
        self, task: Task, instance_name: str | None, *, reschedule: bool
    ) -> None:
        group, name, stored, record = await self._stored(task, instance_name, "trigger")
        now = self._clock.now()
        if reschedule:
            registration = Registration(name, record.spec, now, stored.lease_duration)
            if await self._repository.register(group, [registration], now=now, force=False):
                raise TaskLockedException(stored)
        else:
            run = f"{RUN_PREFIX}t{uuid.uuid4().hex[:24]}"
            spec = extra_run_spec(name, record.spec)
            registration = Registration(run, spec, now, stored.lease_duration)
            await self._repository.register(group, [registration], now=now, force=False)
        self._on_due(group, now)

    async def backfill_task(
        self,
        task: Task,
        instance_name: str | None,
        start: datetime.datetime,
        end: datetime.datetime,
    ) -> list[datetime.datetime]:
        group, name, stored, record = await self._stored(task, instance_name, "backfill")
        for bound, value in (("start", start), ("end", end)):
            if not isinstance(value, datetime.datetime) or value.tzinfo is None:
                raise ValueError(f"backfill {bound} must be an aware datetime, got {value!r}")
        if not start < end:
            raise ValueError(f"backfill start ({start}) must be before end ({end})")
        anchor = record.scheduled_at if record.scheduled_at < PAUSED_AT else None
        runs = stored.runs_between(start, end, anchor=anchor, limit=MAX_BACKFILL)
        registrations = [
            Registration(
                extra_run_name("b", name, at),
                extra_run_spec(name, record.spec),
                at,
                stored.lease_duration,
            )
            for at in runs
        ]
        await self.register_rows({group: registrations}, force=False)
        return runs

    async def pause_task(self, task: Task, instance_name: str | None) -> None:
        group, name, stored, record = await self._stored(task, instance_name, "pause")
        registration = Registration(name, record.spec, PAUSED_AT, stored.lease_duration)
        # forced: a running execution's lease is cleared, so its commit cannot unpause it
        await self._repository.register(group, [registration], now=self._clock.now(), force=True)

    async def resume_task(
        self, task: Task, instance_name: str | None, resume_from: datetime.datetime | None
    ) -> datetime.datetime:
        group, name, stored, record = await self._stored(task, instance_name, "resume")
        if record.scheduled_at < PAUSED_AT:
            raise ValueError(f"{stored} is not paused")
        if resume_from is not None and (
            not isinstance(resume_from, datetime.datetime) or resume_from.tzinfo is None
        ):
            raise ValueError(f"resume_from must be an aware datetime, got {resume_from!r}")
        next_at = stored.initial_run(resume_from or self._clock.now())
        registration = Registration(name, record.spec, next_at, stored.lease_duration)
        await self._repository.register(group, [registration], now=self._clock.now(), force=True)
        self._on_due(group, next_at)
        return next_at

    async def unschedule_task(self, task: Task, instance_name: str | None) -> None:
        template, name = _instance_key(task, instance_name)
        await self._repository.unregister(template.group_for(name), name)

    async def get_task(self, task: Task, instance_name: str | None) -> TaskState | None:
        group, name, template = _row_of(task, instance_name)
        record = await self._repository.get(group, name)
        if record is None:
            return None
        if template is None:
            return task_state(task, record)
        return task_state(template.from_spec(name, record.spec or "{}"), record)

    async def task_history(
        self,
        task: Task,
        instance_name: str | None,
        limit: int,
        retention: datetime.timedelta,
    ) -> list[outcome.RunRecord]:
        limit = positive_int("limit", limit)
        group, name, _ = _row_of(task, instance_name)
        oldest = self._clock.now() - retention
        runs = []
        for text in await self._repository.history(group, name, limit=limit):
            run = outcome.decode(text)
            if run is not None and (run.finished_at or run.started_at) >= oldest:
                runs.append(run)
        return runs

    async def list_tasks(
        self, task: Task, limit: int | None, continuation_token: ContinuationToken | None
    ) -> TaskPage:
        if not isinstance(task, Task) or not task.dynamic or task.is_instance:
            raise ValueError(f"Cannot list instances of non-dynamic task {task}")
        limit = positive_int("limit", limit if limit is not None else self._batch_size)
        groups = task.all_groups()
        index, inner = (0, None) if continuation_token is None else _position(continuation_token)
        states: list[TaskState] = []
        while index < len(groups) and len(states) < limit:
            page = await self._repository.list(
                groups[index], limit=limit - len(states), continuation_token=inner
            )
            states.extend(
                task_state(task.from_spec(r.name, r.spec or "{}"), r)
                for r in page.records
                if not r.name.startswith(RUN_PREFIX)  # extra runs are not instances
            )
            if page.continuation_token is None:
                index, inner = index + 1, None
            else:
                inner = page.continuation_token
        token = encode_token([index, inner]) if index < len(groups) else None
        return TaskPage(states, token)


def _row_of(task: Task, instance_name: str | None) -> tuple[str, str, Task | None]:
    """Where ``task`` (static, or an instance given as one or as template + name) is
    stored: its group, its row name and, for an instance, its dynamic task."""
    if isinstance(task, Task) and task.is_instance and instance_name is not None:
        raise ValueError(
            f"Cannot provide instance_name with already-instantiated dynamic task {task}"
        )
    if isinstance(task, Task) and not task.dynamic and not task.is_instance:
        if instance_name is not None:
            raise ValueError(
                f"instance_name provided but task is not dynamic: {task.name!r} is static"
            )
        return STATIC_GROUP, task.name, None
    template, name = _instance_key(task, instance_name)
    return template.group_for(name), name, template


def _instance_key(task: Task, instance_name: str | None) -> tuple[Task, str]:
    if isinstance(task, Task) and task.is_instance:
        assert task.parent_task is not None
        return task.parent_task, task.name
    template = dynamic_template(task)
    if instance_name is None:
        raise ValueError(f"{task.name!r} is a dynamic task: instance name must be provided")
    return template, check_instance_name(instance_name)


def _position(token: ContinuationToken) -> tuple[int, ContinuationToken | None]:
    """Where a ``list_tasks`` token says to go on: a group index and the backend's token."""
    value = decode_token(token)
    if (
        not isinstance(value, list)
        or len(value) != 2
        or isinstance(value[0], bool)
        or not isinstance(value[0], int)
        or value[0] < 0
        or not (value[1] is None or isinstance(value[1], str))
    ):
        raise ValueError(f"Invalid continuation token {token!r}")
    return value[0], (ContinuationToken(value[1]) if value[1] is not None else None)
