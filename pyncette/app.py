"""Declaring an app: :class:`Pyncette` holds task definitions, middlewares, fixtures and
event subscriptions, and starts a :class:`~pyncette.PyncetteContext` with ``create()``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar, overload

from pyncette.clock import Clock, DefaultClock
from pyncette.context import PyncetteContext, check_context_name
from pyncette.events import E, Event, EventBus
from pyncette.executor import DefaultExecutor, adapt
from pyncette.model import FixtureFunc, MiddlewareFunc, PartitionSelector, SyncTaskFunc, TaskFunc
from pyncette.options import AppSettings, boolean
from pyncette.repository import Repository, RepositoryFactory
from pyncette.task import (
    RESERVED_ARGUMENTS,
    STATIC_GROUP,
    PartitionedTask,
    Task,
    make_task,
    unwrap,
)

logger = logging.getLogger(__name__)
_F = TypeVar("_F", bound=Callable[..., Any])


def _unreserved(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` of a decorator, refusing the keywords ``Task`` keeps for itself."""
    bad = sorted((RESERVED_ARGUMENTS - {"name"}) & options.keys())
    if bad:
        raise ValueError(f"{', '.join(map(repr, bad))}: reserved, cannot be a task argument")
    return options


def default_repository_factory(
    **options: Any,
) -> contextlib.AbstractAsyncContextManager[Repository]:
    """The backend of an app given no ``repository_factory``: SQLite, in memory unless
    ``sqlite_database`` names a file (imported only when the app starts)."""
    from pyncette.sqlite import sqlite_repository

    return sqlite_repository(**options)


class Pyncette:
    """The scheduler app: holds task definitions, middlewares and fixtures.

    Keyword arguments beyond the named ones are backend options, handed to
    ``repository_factory`` (e.g. ``redis_url=...``). With no factory, pyncette uses
    :func:`pyncette.sqlite.sqlite_repository`, which runs in memory unless
    ``sqlite_database`` names a file. As in Pyncette 1.x, options are checked when the
    app starts (:meth:`create`), not here.

    ``instant_wakeups=True`` makes a run scheduled for before the next poll start on the
    other instances at once, where the backend has a channel for it (PostgreSQL
    ``LISTEN/NOTIFY``, Redis pub/sub); elsewhere they poll as without it.

    ``run_history=N`` keeps the last ``N`` runs of each task and instance (at most
    1,000), each for ``run_history_retention`` (7 days by default), stored by the
    backend with the commit that ends the run; read them with
    :meth:`PyncetteContext.task_history`. Off (0) by default. The last run is kept in
    :class:`TaskState` either way.
    """

    def __init__(
        self,
        repository_factory: RepositoryFactory | None = None,
        executor_cls: Callable[..., Any] = DefaultExecutor,
        poll_interval: datetime.timedelta = datetime.timedelta(seconds=1),
        concurrency_limit: int = 100,
        batch_size: int = 100,
        *,
        clock: Clock | None = None,
        instant_wakeups: bool = False,
        run_history: int = 0,
        run_history_retention: datetime.timedelta = datetime.timedelta(days=7),
        **backend_options: Any,
    ) -> None:
        self.repository_factory: RepositoryFactory = (
            repository_factory or default_repository_factory
        )
        self.executor_cls = executor_cls
        self.poll_interval = poll_interval
        self.concurrency_limit = concurrency_limit
        self.batch_size = batch_size
        self.instant_wakeups = instant_wakeups
        self.run_history = run_history
        self.run_history_retention = run_history_retention
        self.clock: Clock = clock or DefaultClock()
        self.backend_options = backend_options
        self._tasks: dict[str, Task] = {}
        self._middlewares: list[MiddlewareFunc] = []
        self._fixtures: list[tuple[str, FixtureFunc]] = []
        self._events = EventBus()

    @property
    def tasks(self) -> Mapping[str, Task]:
        """The declared tasks and dynamic tasks, by name."""
        return MappingProxyType(self._tasks)

    # -- declaring tasks --------------------------------------------------------------

    def _add_task(self, task: Task) -> Task:
        if task.name == STATIC_GROUP:
            raise ValueError(f"Task name {STATIC_GROUP!r} is reserved")
        if task.name in self._tasks:
            raise ValueError(
                f"Duplicate task name {task.name!r}: give each decorator a unique name="
            )
        if task.dynamic:
            # each dynamic task (or partition) is stored as a group named after it; a
            # dynamic task called "report:1" would share partition 1 of "report"
            taken = {g: t for t in self._tasks.values() if t.dynamic for g in t.all_groups()}
            clash = next((g for g in task.all_groups() if g in taken), None)
            if clash is not None:
                raise ValueError(
                    f"Task name {task.name!r} clashes with {taken[clash].name!r}: both would "
                    f"store instances as {clash!r}; rename one of them"
                )
        self._tasks[task.name] = task
        return task

    def _decorator(self, **options: Any) -> Callable[[TaskFunc | SyncTaskFunc | Task], Task]:
        def decorate(func: TaskFunc | SyncTaskFunc | Task) -> Task:
            target = unwrap(func)
            name = options.get("name") or getattr(target, "__name__", "")
            rest = {key: value for key, value in options.items() if key != "name"}
            return self._add_task(make_task(name=str(name), func=target, **rest))

        return decorate

    def task(self, **options: Any) -> Callable[[TaskFunc | SyncTaskFunc | Task], Task]:
        """Declare a static task; see the README for the options."""
        return self._decorator(**_unreserved(options))

    def dynamic_task(self, **options: Any) -> Callable[[TaskFunc | SyncTaskFunc | Task], Task]:
        """Declare a template whose instances are added with ``schedule_task``."""
        return self._decorator(dynamic=True, **_unreserved(options))

    def partitioned_task(
        self,
        partition_count: int = 8,
        partition_selector: PartitionSelector | None = None,
        enabled_partitions: Iterable[int] | None = None,
        poll_partitions: Iterable[int] | None = None,
        **options: Any,
    ) -> Callable[[TaskFunc | SyncTaskFunc | Task], PartitionedTask]:
        """A dynamic task whose instances are spread over ``partition_count`` groups.

        ``enabled_partitions`` (alias ``poll_partitions``) limits which partitions this
        instance polls; every instance can still schedule into all of them.
        """
        if enabled_partitions is not None and poll_partitions is not None:
            raise ValueError("Give enabled_partitions or poll_partitions, not both")
        declare = self._decorator(
            dynamic=True,
            partition_count=partition_count,
            partition_selector=partition_selector,
            enabled_partitions=enabled_partitions if poll_partitions is None else poll_partitions,
            **_unreserved(options),
        )

        def decorate(func: TaskFunc | SyncTaskFunc | Task) -> PartitionedTask:
            task = declare(func)
            assert isinstance(task, PartitionedTask)
            return task

        return decorate

    # -- middlewares, fixtures and events ---------------------------------------------

    def use_middleware(self, func: MiddlewareFunc) -> None:
        if not callable(func):
            raise ValueError(f"Middleware {func!r} is not callable")
        self._middlewares.append(func)

    def middleware(self, func: MiddlewareFunc) -> MiddlewareFunc:
        """Decorator: run ``func(context, next)`` around every execution."""
        self.use_middleware(func)
        return func

    def use_fixture(self, fixture_name: str, func: FixtureFunc) -> None:
        """Set ``func`` up when the app starts (an async generator taking the
        :class:`~pyncette.PyncetteContext`); what it yields is ``context.<fixture_name>``."""
        check_context_name(fixture_name)
        if any(name == fixture_name for name, _ in self._fixtures):
            raise ValueError(f"Duplicate fixture name {fixture_name}")
        if not callable(func):
            raise ValueError(f"Fixture {func!r} is not callable")
        self._fixtures.append((fixture_name, func))

    @overload
    def fixture(self, name: _F) -> _F: ...

    @overload
    def fixture(self, name: str | None = None) -> Callable[[_F], _F]: ...

    def fixture(self, name: str | _F | None = None) -> _F | Callable[[_F], _F]:
        """Decorator for an async generator taking the app context; its value is
        ``context.<name>`` (the function's name by default)."""
        if callable(name):
            self.use_fixture(name.__name__, name)
            return name

        def decorate(func: _F) -> _F:
            fixture_name = name or getattr(func, "__name__", None)
            if not fixture_name:
                raise ValueError("Unable to determine name for the fixture: pass fixture(name=...)")
            self.use_fixture(fixture_name, func)
            return func

        return decorate

    def subscribe(
        self,
        callback: Callable[[E], None],
        event_types: type[E] | tuple[type[E], ...] = Event,  # type: ignore[assignment]
    ) -> Callable[[], None]:
        """Call ``callback(event)`` for each :mod:`pyncette.events` event of
        ``event_types`` (all by default); returns a function that unsubscribes."""
        return self._events.subscribe(callback, event_types)

    # -- running ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def create(
        self, context_items: Mapping[str, Any] | None = None, *, fixtures: bool = True
    ) -> AsyncIterator[PyncetteContext]:
        """Validate the options, connect to the backend, set up fixtures and yield a
        :class:`PyncetteContext`.

        On exit: stop polling; wait for running executions (or cancel them when the
        block is left by ``CancelledError``); store their outcome; tear fixtures down in
        reverse order; close the backend. With ``fixtures=False`` no fixture is set up:
        for tools that read or change stored tasks without running the app.
        """
        settings = AppSettings.from_options(
            poll_interval=self.poll_interval,
            concurrency_limit=self.concurrency_limit,
            batch_size=self.batch_size,
            instant_wakeups=self.instant_wakeups,
            run_history=self.run_history,
            run_history_retention=self.run_history_retention,
        )
        async with contextlib.AsyncExitStack() as stack:
            repository = await stack.enter_async_context(
                self.repository_factory(**self.backend_options)
            )
            executor = self.executor_cls(
                concurrency_limit=settings.concurrency_limit, **self.backend_options
            )
            runner = adapt(executor, min(settings.batch_size, settings.concurrency_limit))
            ctx = PyncetteContext(
                self, repository, runner, settings, self._events, self._middlewares
            )
            for name, value in (context_items or {}).items():
                ctx.add_to_context(name, value)
            await ctx.start()
            for name, func in self._fixtures if fixtures else ():
                fixture = contextlib.asynccontextmanager(func)(ctx)
                ctx.add_to_context(name, await stack.enter_async_context(fixture))
            stack.push_async_callback(ctx.drain)
            await stack.enter_async_context(executor)
            stack.callback(ctx.shutdown)
            yield ctx

    def main(self) -> None:
        """Run the app until SIGINT/SIGTERM: the first stops it gracefully, the second
        at once (exit status 1).

        Logging is set up at ``LOG_LEVEL`` (default ``INFO``); with ``USE_UVLOOP`` set to
        a true value the loop is uvloop's (``pip install "pyncette[uvloop]"``).
        """
        level = os.environ.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
        if not isinstance(logging.getLevelName(level), int):
            raise SystemExit(f"LOG_LEVEL={level!r} is not a logging level (e.g. DEBUG, INFO)")
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            _run(self._main(), uvloop=boolean("USE_UVLOOP", os.environ.get("USE_UVLOOP") or "0"))
        except asyncio.CancelledError:
            logger.warning("Stopped without waiting for running executions")
            sys.exit(1)

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()
        running: list[PyncetteContext] = []
        received = 0

        def on_signal(signum: int) -> None:
            nonlocal received
            received += 1
            name = signal.Signals(signum).name
            if received == 1:
                logger.info("Received %s: shutting down after running executions finish", name)
                for ctx in running:
                    ctx.shutdown()
            elif main_task is not None:
                logger.warning("Received %s again: exiting now", name)
                main_task.cancel()

        # The handlers stay until create() has exited, so a second signal also cuts
        # short the wait for running executions.
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            async with self.create() as ctx:
                running.append(ctx)
                if received:
                    ctx.shutdown()
                # Everything loaded so far (modules, drivers, the app) lives as long as
                # the process: keep it out of the collector's full passes, which otherwise
                # stall the loop for tens of milliseconds once SQLAlchemy is imported.
                gc.freeze()
                await ctx.run()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)


def _run(main: Coroutine[Any, Any, None], *, uvloop: bool) -> None:
    if not uvloop:
        asyncio.run(main)
        return
    try:
        import uvloop as uvloop_module
    except ImportError:
        main.close()
        raise SystemExit(
            'USE_UVLOOP is set but uvloop is not installed: pip install "pyncette[uvloop]"'
        ) from None
    with asyncio.Runner(loop_factory=uvloop_module.new_event_loop) as runner:
        runner.run(main)
