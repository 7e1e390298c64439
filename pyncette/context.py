"""The running app as tasks and callers see it: :class:`PyncetteContext`."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pyncette.clock import Clock
from pyncette.events import EventBus
from pyncette.executor import Runner
from pyncette.manager import TaskManager
from pyncette.model import ContinuationToken, MiddlewareFunc, TaskPage, TaskState
from pyncette.options import AppSettings
from pyncette.outcome import RunRecord
from pyncette.repository import Registration, Repository
from pyncette.task import Task
from pyncette.worker import Worker

if TYPE_CHECKING:
    from pyncette.app import Pyncette

RESERVED_CONTEXT_NAMES = frozenset(
    {
        "app_context",
        "task",
        "scheduled_at",
        "args",
        "attempt",
        "heartbeat",
        "lease",
        "for_execution",
    }
    | {"_lease", "_heartbeater", "_held", "_items"}
)


def check_context_name(name: object) -> str:
    """A fixture or context-item name: an identifier the task context does not use."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"Invalid context name {name!r}: expected an identifier")
    if name in RESERVED_CONTEXT_NAMES or name.startswith("__"):
        raise ValueError(f"Cannot use reserved name {name}: the context defines it")
    return name


class PyncetteContext:
    """A running app (from ``async with app.create() as ctx``): the poll loop and the
    operations on stored tasks. Fixtures and values added with :meth:`add_to_context`
    are readable as attributes, here and on every task's context."""

    def __init__(
        self,
        app: Pyncette,
        repository: Repository,
        runner: Runner,
        settings: AppSettings,
        events: EventBus,
        middlewares: Iterable[MiddlewareFunc],
    ) -> None:
        self._app = app
        self._repository = repository
        self._settings = settings
        self._clock = app.clock
        self._items: dict[str, Any] = {}
        self._worker = Worker(
            app_context=self,
            repository=repository,
            runner=runner,
            clock=self._clock,
            settings=settings,
            events=events,
            middlewares=list(middlewares),
            items=self._items,
        )
        self._manager = TaskManager(repository, self._clock, settings.batch_size, self._due)
        self._worker.poll(list(app.tasks.values()))

    def _due(self, group: str, due_at: datetime.datetime | None) -> None:
        self._worker.announce(group, due_at)

    @property
    def app(self) -> Pyncette:
        return self._app

    @property
    def repository(self) -> Repository:
        return self._repository

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def poll_interval(self) -> datetime.timedelta:
        """The app's poll interval, as validated at start-up."""
        return self._settings.poll_interval

    @property
    def batch_size(self) -> int:
        return self._settings.batch_size

    @property
    def last_tick(self) -> datetime.datetime | None:
        """When the poll loop last completed a tick (``None`` before the first)."""
        return self._worker.last_tick

    @last_tick.setter
    def last_tick(self, value: datetime.datetime | None) -> None:
        self._worker.last_tick = value

    def add_to_context(self, name: str, value: Any) -> None:
        """Make ``value`` readable as ``context.<name>`` in every execution."""
        check_context_name(name)
        if name in self._items:
            raise ValueError(f"Key {name} already exists in the context")
        self._items[name] = value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._items[name]
        except KeyError:
            raise AttributeError(f"PyncetteContext has no attribute {name!r}") from None

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Create the rows of the static tasks (done by ``app.create()``)."""
        await self._manager.register_static(self._worker.static_tasks)

    async def run(self) -> None:
        """Poll and execute until :meth:`shutdown`.

        Returns as soon as polling stops, without waiting for running executions: leaving
        ``async with app.create()`` waits for those (or cancels them, when the block is
        left by cancellation). Tasks are enabled or disabled as ``task.enabled`` says when
        ``run()`` starts.
        """
        before = {task.name for task in self._worker.static_tasks}
        self._worker.poll(list(self._app.tasks.values()))
        added = [task for task in self._worker.static_tasks if task.name not in before]
        if added:
            await self._manager.register_static(added)
        await self._worker.run()

    def shutdown(self) -> None:
        """Stop polling gracefully: :meth:`run` returns, running executions go on and are
        awaited when the ``create()`` block is left."""
        self._worker.shutdown()

    async def drain(self) -> None:
        """Wait until the commits of finished executions are stored (done on exit)."""
        await self._worker.drain()

    # -- stored tasks -----------------------------------------------------------------

    async def schedule_task(
        self, task: Task, instance_name: str, force: bool = False, **options: Any
    ) -> Task:
        """Add an instance of a dynamic task, or update it; returns the instance.

        An existing instance gets the new spec and keeps the sooner of its old and new
        next run. While it is executing, :class:`~pyncette.errors.TaskLockedException`
        is raised, unless ``force``: then it is overwritten at once, taking the new next
        run even when that is later (the running execution finds its lease lost).
        """
        return await self._manager.schedule_task(task, instance_name, force, options)

    async def schedule_tasks(
        self,
        task: Task,
        instances: Mapping[str, Mapping[str, Any]] | Iterable[tuple[str, Mapping[str, Any]]],
        force: bool = False,
    ) -> list[Task]:
        """Bulk :meth:`schedule_task`: ``{instance_name: options}``, registered in batches.

        All instances that are not locked are written; if any were locked (and not
        ``force``), :class:`~pyncette.errors.TaskLockedException` names them afterwards.
        """
        return await self._manager.schedule_tasks(task, instances, force)

    async def register_rows(
        self, rows_by_group: Mapping[str, list[Registration]], *, force: bool = False
    ) -> list[tuple[str, str]]:
        """Store prepared rows (``group -> registrations``) in batches, waking the loop
        for any due sooner; returns the ``(group, name)`` pairs left alone because they
        are locked. The low-level path of :meth:`schedule_tasks`, for importers."""
        return await self._manager.register_rows(rows_by_group, force=force)

    async def trigger_task(
        self, task: Task, instance_name: str | None = None, *, reschedule: bool = False
    ) -> None:
        """Run a stored static task or dynamic instance now, once, without changing its
        schedule: the run is queued in a row of its own (due now, the task's execution
        mode, failure mode and lease), removed once it has run. It may overlap with a
        scheduled run of the same task.

        With ``reschedule=True`` the task's next run itself moves to now instead, and
        the runs after it follow from there; that raises
        :class:`~pyncette.errors.TaskLockedException` while it is executing.
        ``ValueError`` if nothing is stored for it.
        """
        await self._manager.trigger_task(task, instance_name, reschedule=reschedule)

    async def backfill_task(
        self,
        task: Task,
        start: datetime.datetime,
        end: datetime.datetime,
        instance_name: str | None = None,
    ) -> list[datetime.datetime]:
        """Queue every run of a stored task's schedule from ``start`` (included) to
        ``end`` (excluded), each once, in a row of its own with its own
        ``scheduled_at``; returns their times. They are due at once and run like any
        other (at least once, by default), without changing the task's schedule. An
        interval task's runs are on the grid through its stored next run. Queuing the
        same range again while its runs are pending adds nothing. At most 10,000 runs
        per call; ``ValueError`` for more, for a range that is not an aware ``start <
        end``, or if nothing is stored for it."""
        return await self._manager.backfill_task(task, instance_name, start, end)

    async def pause_task(self, task: Task, instance_name: str | None = None) -> None:
        """Stop a stored static task or dynamic instance from running until
        :meth:`resume_task`: its row is parked at :data:`~pyncette.model.PAUSED_AT`
        (``get_task(...).paused`` is then true). An execution in progress finishes, but
        its commit is refused, so it cannot unpause the task. ``ValueError`` if nothing
        is stored for it."""
        await self._manager.pause_task(task, instance_name)

    async def resume_task(
        self,
        task: Task,
        instance_name: str | None = None,
        *,
        resume_from: datetime.datetime | None = None,
    ) -> datetime.datetime:
        """Resume a paused task or instance; returns its next run: the first one after
        ``resume_from`` (default now), so runs since a ``resume_from`` in the past are
        caught up as the task's ``coalesce`` says. A one-off instance runs at its
        ``execute_at`` (at once, if that has passed). ``ValueError`` if it is not paused
        or not stored."""
        return await self._manager.resume_task(task, instance_name, resume_from)

    async def unschedule_task(self, task: Task, instance_name: str | None = None) -> None:
        """Remove a dynamic task instance (given as the instance, or template + name)."""
        await self._manager.unschedule_task(task, instance_name)

    async def get_task(self, task: Task, instance_name: str | None = None) -> TaskState | None:
        """The stored state of a static task or of a dynamic task instance (given as the
        instance, or as its dynamic task and ``instance_name``); ``None`` if not stored."""
        return await self._manager.get_task(task, instance_name)

    async def task_history(
        self, task: Task, instance_name: str | None = None, *, limit: int | None = None
    ) -> list[RunRecord]:
        """The last runs of a static task or a dynamic task instance (given as for
        :meth:`get_task`), newest first: at most ``limit`` (by default all the app
        keeps, ``run_history=``), none older than ``run_history_retention``. Also for an
        instance that no longer exists, within that retention. ``ValueError`` if the app
        keeps no history (``run_history=0``, the default)."""
        settings = self._settings
        if not settings.run_history:
            raise ValueError(
                "task_history() needs a run history: create the app with "
                "Pyncette(run_history=N) to keep the last N runs of each task"
            )
        return await self._manager.task_history(
            task,
            instance_name,
            settings.run_history if limit is None else limit,
            settings.run_history_retention,
        )

    async def list_tasks(
        self,
        task: Task,
        limit: int | None = None,
        continuation_token: ContinuationToken | None = None,
    ) -> TaskPage:
        """A page of the instances of a dynamic task (``limit`` defaults to the batch
        size); pass the returned ``continuation_token`` back for the next page."""
        return await self._manager.list_tasks(task, limit, continuation_token)
