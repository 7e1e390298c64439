"""The app (:class:`Pyncette`), its running context (:class:`PyncetteContext`) and the
poll loop. Everything about what happens to an execution is decided here, once."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import gc
import json
import logging
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar, overload

from pyncette.clock import Clock, DefaultClock
from pyncette.errors import LeaseLostException, TaskLockedException
from pyncette.executor import DefaultExecutor
from pyncette.model import (
    Context,
    ContinuationToken,
    ExecutionMode,
    FailureMode,
    FixtureFunc,
    Lease,
    MiddlewareFunc,
    PartitionSelector,
    TaskFunc,
    TaskPage,
    TaskState,
)
from pyncette.repository import Commit, Record, Registration, Repository, RepositoryFactory
from pyncette.task import STATIC_GROUP, Task, make_task, unwrap

logger = logging.getLogger(__name__)
_F = TypeVar("_F", bound=Callable[..., Any])

RESERVED_CONTEXT_NAMES = frozenset(
    {"app_context", "task", "scheduled_at", "args", "heartbeat"}
    | {name for name in dir(Context) if not name.startswith("__")}
)
COMMIT_CHUNK = 500
MAX_BACKOFF = 30.0


def _current_time() -> datetime.datetime:
    """The current time, aware UTC. The default clock reads time only through this."""
    return datetime.datetime.now(datetime.UTC)


def _seconds(option: str, value: object) -> float:
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValueError(f"{option} must be a timedelta, got {value!r}")
    if seconds <= 0:
        raise ValueError(f"{option} must be positive, got {value!r}")
    return seconds


def _positive_int(option: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{option} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{option} must be at least 1, got {value}")
    return value


def _default_repository_factory(
    **options: Any,
) -> contextlib.AbstractAsyncContextManager[Repository]:
    from pyncette.sqlite import sqlite_repository

    return sqlite_repository(**options)


class Pyncette:
    """The scheduler app: holds task definitions, middlewares and fixtures.

    Keyword arguments beyond the named ones are backend options, handed to
    ``repository_factory`` (e.g. ``redis_url=...``). With no factory, pyncette uses
    :func:`pyncette.sqlite.sqlite_repository`, which runs in memory unless
    ``sqlite_database`` names a file.
    """

    def __init__(
        self,
        repository_factory: RepositoryFactory | None = None,
        executor_cls: type[DefaultExecutor] = DefaultExecutor,
        poll_interval: datetime.timedelta = datetime.timedelta(seconds=1),
        concurrency_limit: int = 100,
        batch_size: int = 100,
        *,
        clock: Clock | None = None,
        **backend_options: Any,
    ) -> None:
        self.poll_interval = datetime.timedelta(seconds=_seconds("poll_interval", poll_interval))
        self.concurrency_limit = _positive_int("concurrency_limit", concurrency_limit)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.repository_factory: RepositoryFactory = (
            repository_factory or _default_repository_factory
        )
        self.executor_cls = executor_cls
        self.clock: Clock = clock or DefaultClock()
        self.backend_options = backend_options
        self._tasks: dict[str, Task] = {}
        self._middlewares: list[MiddlewareFunc] = []
        self._fixtures: list[tuple[str, FixtureFunc]] = []
        self._tick_observers: list[Callable[[float], None]] = []

    # -- declaring tasks --------------------------------------------------------------

    def _add_task(self, task: Task) -> Task:
        if task.name == STATIC_GROUP:
            raise ValueError(f"Task name {STATIC_GROUP!r} is reserved")
        if task.name in self._tasks:
            raise ValueError(
                f"Duplicate task name {task.name!r}: give each decorator a unique name="
            )
        self._tasks[task.name] = task
        return task

    def _decorator(self, **options: Any) -> Callable[[TaskFunc | Task], Task]:
        def decorate(func: TaskFunc | Task) -> Task:
            target = unwrap(func)
            name = options.get("name") or getattr(target, "__name__", "")
            rest = {key: value for key, value in options.items() if key != "name"}
            return self._add_task(make_task(name=str(name), func=target, **rest))

        return decorate

    def task(self, **options: Any) -> Callable[[TaskFunc | Task], Task]:
        """Declare a static task; see the README for the options."""
        return self._decorator(**options)

    def dynamic_task(self, **options: Any) -> Callable[[TaskFunc | Task], Task]:
        """Declare a template whose instances are added with ``schedule_task``."""
        return self._decorator(dynamic=True, **options)

    def partitioned_task(
        self,
        partition_count: int = 8,
        partition_selector: PartitionSelector | None = None,
        enabled_partitions: Iterable[int] | None = None,
        poll_partitions: Iterable[int] | None = None,
        **options: Any,
    ) -> Callable[[TaskFunc | Task], Task]:
        """A dynamic task whose instances are spread over ``partition_count`` groups.

        ``enabled_partitions`` (alias ``poll_partitions``) limits which partitions this
        instance polls; every instance can still schedule into all of them.
        """
        if enabled_partitions is not None and poll_partitions is not None:
            raise ValueError("Give enabled_partitions or poll_partitions, not both")
        return self._decorator(
            dynamic=True,
            partition_count=partition_count,
            partition_selector=partition_selector,
            enabled_partitions=enabled_partitions if poll_partitions is None else poll_partitions,
            **options,
        )

    # -- middlewares and fixtures -----------------------------------------------------

    def use_middleware(self, func: MiddlewareFunc) -> None:
        if not callable(func):
            raise ValueError(f"Middleware {func!r} is not callable")
        self._middlewares.append(func)

    def middleware(self, func: MiddlewareFunc) -> MiddlewareFunc:
        """Decorator: run ``func(context, next)`` around every execution."""
        self.use_middleware(func)
        return func

    def use_fixture(self, fixture_name: str, func: FixtureFunc) -> None:
        _check_context_name(fixture_name)
        if any(name == fixture_name for name, _ in self._fixtures):
            raise ValueError(f"Duplicate fixture name {fixture_name!r}")
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
            self.use_fixture(name or func.__name__, func)
            return func

        return decorate

    # -- running ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def create(
        self, context_items: Mapping[str, Any] | None = None
    ) -> AsyncIterator[PyncetteContext]:
        """Connect to the backend, set up fixtures and yield a :class:`PyncetteContext`.

        On exit: stop polling, wait for running executions, tear fixtures down in
        reverse order, close the backend.
        """
        async with contextlib.AsyncExitStack() as stack:
            repository = await stack.enter_async_context(
                self.repository_factory(**self.backend_options)
            )
            executor = self.executor_cls(concurrency_limit=self.concurrency_limit)
            ctx = PyncetteContext(self, repository, executor)
            for name, value in (context_items or {}).items():
                ctx.add_to_context(name, value)
            await ctx._register_static_tasks()
            for name, func in self._fixtures:
                generator = func(ctx)
                ctx._items[name] = await generator.__anext__()
                stack.push_async_callback(_close_fixture, name, generator)
            stack.push_async_callback(ctx._close)
            yield ctx

    def main(self) -> None:
        """Run until SIGINT/SIGTERM: the first stops gracefully, the second at once."""
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        try:
            asyncio.run(self._main())
        except asyncio.CancelledError:
            logger.warning("Stopped without waiting for running executions")
            sys.exit(1)

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()
        async with self.create() as ctx:
            received = 0

            def on_signal(signum: int) -> None:
                nonlocal received
                received += 1
                if received == 1:
                    logger.info(
                        "Received %s: shutting down after running executions finish",
                        signal.Signals(signum).name,
                    )
                    ctx.shutdown()
                elif main_task is not None:
                    logger.warning("Received %s again: exiting now", signal.Signals(signum).name)
                    ctx._forced = True
                    main_task.cancel()

            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, on_signal, signum)
            # Everything loaded so far (modules, drivers, the app) lives as long as the
            # process: keep it out of the collector's full passes, which otherwise stall
            # the loop for tens of milliseconds once SQLAlchemy and friends are imported.
            gc.freeze()
            try:
                await ctx.run()
            finally:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)


async def _close_fixture(name: str, generator: AsyncIterator[Any]) -> None:
    try:
        await generator.__anext__()
    except StopAsyncIteration:
        return
    except Exception:
        logger.exception("Fixture %r failed during teardown", name)
        return
    logger.warning("Fixture %r yielded more than once; only the first value is used", name)


def _check_context_name(name: object) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"Invalid context name {name!r}: expected an identifier")
    if name in RESERVED_CONTEXT_NAMES or name.startswith("_"):
        raise ValueError(f"Context name {name!r} is reserved")


def _encode_token(index: int, inner: str | None) -> ContinuationToken:
    raw = json.dumps([index, inner]).encode()
    return ContinuationToken(base64.urlsafe_b64encode(raw).decode())


def _decode_token(token: str) -> tuple[int, ContinuationToken | None]:
    try:
        index, inner = json.loads(base64.urlsafe_b64decode(token.encode()))
        if not isinstance(index, int) or not (inner is None or isinstance(inner, str)):
            raise TypeError
    except Exception:
        raise ValueError(f"Invalid continuation token {token!r}") from None
    return index, (ContinuationToken(inner) if inner is not None else None)


class _CommitBatcher:
    """Collects commits of executions that finish close together into one call per group."""

    def __init__(self, ctx: PyncetteContext) -> None:
        self._ctx = ctx
        self._pending: dict[str, list[Commit]] = {}
        self._flusher: asyncio.Future[None] | None = None

    def submit(self, group: str, commit: Commit) -> None:
        pending = self._pending.get(group)
        if pending is None:
            self._pending[group] = [commit]
        else:
            pending.append(commit)
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(0)  # let executions finishing in this round join the batch
                batch, self._pending = self._pending, {}
                for group, commits in batch.items():
                    for start in range(0, len(commits), COMMIT_CHUNK):
                        await self._ctx._commit(group, commits[start : start + COMMIT_CHUNK])
        finally:
            self._flusher = None

    async def drain(self) -> None:
        while self._flusher is not None:
            await asyncio.shield(self._flusher)


class _RegisterBatcher:
    """Concurrent ``schedule_task`` calls that arrive together share one ``register`` call
    per group (a name appears at most once per call, so updates stay in order)."""

    def __init__(self, ctx: PyncetteContext) -> None:
        self._ctx = ctx
        self._pending: list[tuple[str, bool, Registration, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Future[None] | None = None

    async def register(self, group: str, registration: Registration, force: bool) -> bool:
        """Register one row; ``False`` if it was left alone because it is locked."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((group, force, registration, future))
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(0)  # let calls made in this round join the batch
                pending, self._pending = self._pending, []
                chunks: dict[
                    tuple[str, bool], list[list[tuple[Registration, asyncio.Future[bool]]]]
                ]
                chunks = {}
                names: dict[tuple[str, bool], set[str]] = {}
                for group, force, registration, future in pending:
                    key = (group, force)
                    batches = chunks.setdefault(key, [[]])
                    seen = names.setdefault(key, set())
                    if registration.name in seen or len(batches[-1]) >= self._ctx._app.batch_size:
                        batches.append([])
                        seen.clear()
                    batches[-1].append((registration, future))
                    seen.add(registration.name)
                for (group, force), batches in chunks.items():
                    for batch in batches:
                        await self._send(group, force, batch)
        finally:
            self._flusher = None

    async def _send(
        self, group: str, force: bool, batch: list[tuple[Registration, asyncio.Future[bool]]]
    ) -> None:
        ctx = self._ctx
        try:
            skipped = set(
                await ctx._repository.register(
                    group, [r for r, _ in batch], now=ctx._clock.now(), force=force
                )
            )
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for registration, future in batch:
            if not future.done():
                future.set_result(registration.name not in skipped)


class PyncetteContext:
    """A running app: the poll loop plus the operations on dynamic tasks."""

    def __init__(self, app: Pyncette, repository: Repository, executor: DefaultExecutor) -> None:
        self._app = app
        self._repository = repository
        self._executor = executor
        self._clock = app.clock
        self._items: dict[str, Any] = {}
        self._static = {
            name: task for name, task in app._tasks.items() if not task.dynamic and task.enabled
        }
        self._poll_targets: list[tuple[str, Task | None]] = (
            [(STATIC_GROUP, None)] if self._static else []
        )
        for task in app._tasks.values():
            if task.dynamic and task.enabled:
                self._poll_targets.extend((group, task) for group in task.groups())
        self._polled_groups = {group for group, _ in self._poll_targets}
        self._wake = asyncio.Event()
        self._wake_at: datetime.datetime | None = None
        self._hint: datetime.datetime | None = None
        self._stopping = False
        self._forced = False
        self._commits = _CommitBatcher(self)
        self._registrations = _RegisterBatcher(self)
        self._background_tasks: set[asyncio.Future[None]] = set()
        self.last_tick: datetime.datetime | None = None
        """When the poll loop last completed a tick (``None`` before the first)."""

    @property
    def app(self) -> Pyncette:
        return self._app

    @property
    def repository(self) -> Repository:
        return self._repository

    @property
    def clock(self) -> Clock:
        return self._clock

    def add_to_context(self, name: str, value: Any) -> None:
        """Make ``value`` readable as ``context.<name>`` in every execution."""
        _check_context_name(name)
        if name in self._items:
            raise ValueError(f"Duplicate context name {name!r}")
        self._items[name] = value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._items[name]
        except KeyError:
            raise AttributeError(f"PyncetteContext has no attribute {name!r}") from None

    # -- the poll loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Poll and execute until :meth:`shutdown`; then wait for running executions."""
        poll = self._app.poll_interval
        failures = 0
        try:
            while not self._stopping:
                self._wake.clear()
                self._hint = None
                tick_started = self._clock.now()
                try:
                    wake_at, more = await self._tick()
                except Exception:
                    failures += 1
                    delay = min(0.1 * 2**failures, poll.total_seconds() * 4, MAX_BACKOFF)
                    logger.exception(
                        "Polling failed (attempt %d); retrying in %.1f s", failures, delay
                    )
                    await self._idle(delay)
                    continue
                failures = 0
                self.last_tick = self._clock.now()
                for observer in self._app._tick_observers:
                    observer((self.last_tick - tick_started).total_seconds())
                if more:
                    await asyncio.sleep(0)
                    continue
                if self._hint is not None and self._hint < wake_at:
                    wake_at = self._hint
                self._wake_at = wake_at
                await self._idle((wake_at - self._clock.now()).total_seconds())
                self._wake_at = None
        finally:
            await self._executor.join()
            await self._commits.drain()

    async def _idle(self, seconds: float) -> None:
        if seconds <= 0 or self._stopping or self._wake.is_set():
            return
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await self._clock.wait_for(self._wake.wait(), seconds)

    def shutdown(self) -> None:
        """Stop polling; :meth:`run` returns once running executions have finished."""
        self._stopping = True
        self._wake.set()
        self._executor.wake()

    async def _close(self) -> None:
        self.shutdown()
        if self._forced:
            self._executor.cancel()
        await self._executor.join()
        await self._commits.drain()

    async def _tick(self) -> tuple[datetime.datetime, bool]:
        """Claim one batch from every polled group; return when to wake and whether any
        group had more due work than one batch."""
        now = self._clock.now()
        wake_at = now + self._app.poll_interval
        more = False
        for group, template in self._poll_targets:
            if self._stopping:
                break
            if self._executor.capacity <= 0:
                await self._executor.wait_for_capacity()
                if self._stopping:
                    break
                now = self._clock.now()
            limit = min(self._app.batch_size, self._executor.capacity)
            lease = Lease(uuid.uuid4().hex)
            result = await self._repository.claim(group, now=now, limit=limit, lease=lease)
            if result.records:
                await self._dispatch(group, template, result.records, now)
                # a run that neither commits nor unlocks is claimable again at its expiry
                expiry = min(r.locked_until or wake_at for r in result.records)
                wake_at = min(wake_at, expiry)
            if len(result.records) >= limit:
                more = True
            elif result.next_due_at is not None and result.next_due_at < wake_at:
                wake_at = result.next_due_at
        return wake_at, more

    async def _dispatch(
        self, group: str, template: Task | None, records: list[Record], now: datetime.datetime
    ) -> None:
        at_most_once: list[tuple[Task, Record]] = []
        spawn = self._executor.spawn
        for record in records:
            task = self._resolve(group, template, record)
            if task is None:
                continue
            if task.execution_mode is ExecutionMode.AT_MOST_ONCE:
                at_most_once.append((task, record))
            else:
                await spawn(self._execute(group, task, record))
        if at_most_once:
            commits = [
                Commit(record.name, record.locked_by, task.next_run(record.scheduled_at, now))  # type: ignore[arg-type]
                for task, record in at_most_once
            ]
            lost = set(await self._repository.commit(group, commits, now=now))
            self._note_due(group, min((c.next_at for c in commits if c.next_at), default=None))
            for task, record in at_most_once:
                if record.name in lost:
                    logger.warning("Lease lost on %r before it started; skipping", task.name)
                else:
                    await spawn(self._execute(group, task, record, at_most_once=True))

    def _resolve(self, group: str, template: Task | None, record: Record) -> Task | None:
        if template is None:
            task = self._static.get(record.name)
            if task is None:
                # A static task this instance does not run (disabled here, or removed):
                # hand it back at once so an instance that runs it can claim it.
                logger.debug("Releasing static task %r: not enabled here", record.name)
                self._background(self._repository.unlock(group, record.name, record.locked_by))  # type: ignore[arg-type]
            return task
        try:
            return template.from_spec(record.name, record.spec or "{}")
        except Exception:
            logger.exception(
                "Cannot load instance %r of %r; it stays locked until its lease expires",
                record.name,
                template.name,
            )
            return None

    def _background(self, operation: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await operation
            except Exception:
                logger.exception("Background repository operation failed")

        task = asyncio.ensure_future(run())
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)

    # -- one execution ----------------------------------------------------------------

    async def _execute(
        self, group: str, task: Task, record: Record, *, at_most_once: bool = False
    ) -> None:
        context = Context()
        context.app_context = self
        context.task = task
        context.scheduled_at = record.scheduled_at
        context.args = task.extra_args
        context._group = group
        context._lease = None if at_most_once else record.locked_by
        try:
            await self._invoke(context)
        except LeaseLostException:
            logger.warning("Execution of %r stopped: lease lost", task.name)
            return
        except asyncio.CancelledError:
            if not at_most_once:
                await self._release(group, task, record)
            raise
        except Exception:
            logger.exception("Execution of %r failed", task.name)
            if at_most_once or task.failure_mode is FailureMode.NONE:
                return
            if task.failure_mode is FailureMode.UNLOCK:
                await self._release(group, task, record)
                return
        if not at_most_once:
            next_at = task.next_run(record.scheduled_at, self._clock.now())
            self._commits.submit(group, Commit(record.name, record.locked_by, next_at))  # type: ignore[arg-type]

    def _invoke(self, context: Context) -> Awaitable[None]:
        middlewares = self._app._middlewares
        if not middlewares:
            return context.task.func(context)

        def call(index: int) -> Awaitable[None]:
            if index == len(middlewares):
                return context.task.func(context)
            return middlewares[index](context, lambda: call(index + 1))

        return call(0)

    async def _release(self, group: str, task: Task, record: Record) -> None:
        try:
            await self._repository.unlock(group, record.name, record.locked_by)  # type: ignore[arg-type]
        except Exception:
            logger.exception("Could not unlock %r; it retries when its lease expires", task.name)

    async def _commit(self, group: str, commits: list[Commit]) -> None:
        for attempt in range(3):
            try:
                lost = await self._repository.commit(group, commits, now=self._clock.now())
            except Exception:
                if attempt == 2:
                    logger.exception(
                        "Could not commit %d executions; they run again after their leases expire",
                        len(commits),
                    )
                    return
                logger.warning("Commit failed; retrying", exc_info=True)
                await self._clock.sleep(0.2 * 2**attempt)
                continue
            for name in lost:
                logger.warning("Lease lost on %r before its commit; not committed", name)
            self._note_due(group, min((c.next_at for c in commits if c.next_at), default=None))
            return

    async def _heartbeat(self, context: Context) -> None:
        lease = context._lease
        if lease is None:
            return
        task = context.task
        locked_until = self._clock.now() + task.lease_duration
        if not await self._repository.extend(
            context._group, task.name, lease, locked_until=locked_until
        ):
            raise LeaseLostException(task)

    # -- dynamic tasks ----------------------------------------------------------------

    async def _register_static_tasks(self) -> None:
        if not self._static:
            return
        now = self._clock.now()
        registrations = [
            Registration(task.name, None, task.initial_run(now), task.lease_duration)
            for task in self._static.values()
        ]
        for start in range(0, len(registrations), self._app.batch_size):
            await self._repository.register(
                STATIC_GROUP,
                registrations[start : start + self._app.batch_size],
                now=now,
                force=False,
            )

    @staticmethod
    def _template(task: Task) -> Task:
        if not isinstance(task, Task):
            raise ValueError(f"Expected a task, got {task!r}")
        if task.is_instance or not task.dynamic:
            raise ValueError(f"Task {task.name!r} is not a dynamic task")
        return task

    def _note_due(self, group: str, due_at: datetime.datetime | None) -> None:
        """Something in ``group`` becomes due at ``due_at``: make sure the loop wakes then."""
        if due_at is None or group not in self._polled_groups:
            return
        wake_at = self._wake_at
        if wake_at is None:  # a tick is running: fold it into the next wake-up
            if self._hint is None or due_at < self._hint:
                self._hint = due_at
        elif due_at < wake_at:
            self._wake.set()

    async def schedule_task(
        self, task: Task, instance_name: str, force: bool = False, **options: Any
    ) -> Task:
        """Add an instance of a dynamic task, or update it.

        An existing instance gets the new spec and keeps the sooner of its old and new
        next run. While it is executing, :class:`TaskLockedException` is raised unless
        ``force``, which overwrites it at once (the running execution loses its lease).
        """
        template = self._template(task)
        instance = template.make_instance(instance_name, options)
        group = template.group_for(instance_name)
        now = self._clock.now()
        scheduled_at = instance.initial_run(now)
        registration = Registration(
            instance_name, instance.spec(), scheduled_at, instance.lease_duration
        )
        if not await self._registrations.register(group, registration, force):
            raise TaskLockedException(instance)
        self._note_due(group, scheduled_at)
        return instance

    async def schedule_tasks(
        self,
        task: Task,
        instances: Mapping[str, Mapping[str, Any]] | Iterable[tuple[str, Mapping[str, Any]]],
        force: bool = False,
    ) -> list[Task]:
        """Bulk :meth:`schedule_task`: ``{instance_name: options}``, registered in batches.

        All instances that are not locked are written; if any were locked (and not
        ``force``), :class:`TaskLockedException` names them afterwards.
        """
        template = self._template(task)
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
        locked = [name for _, name in await self._register_groups(by_group, now, force)]
        if locked:
            raise TaskLockedException(
                template, f"Instances locked by running executions: {', '.join(sorted(locked))}"
            )
        return created

    async def _register_groups(
        self, by_group: Mapping[str, list[Registration]], now: datetime.datetime, force: bool
    ) -> list[tuple[str, str]]:
        """Register rows in ``batch_size`` chunks per group, waking the loop for any that
        fall due sooner; return the (group, name) pairs left alone because locked."""
        locked: list[tuple[str, str]] = []
        size = self._app.batch_size
        for group, registrations in by_group.items():
            for start in range(0, len(registrations), size):
                chunk = registrations[start : start + size]
                skipped = await self._repository.register(group, chunk, now=now, force=force)
                locked += [(group, name) for name in skipped]
                self._note_due(group, min(r.scheduled_at for r in chunk))
        return locked

    async def unschedule_task(self, task: Task, instance_name: str | None = None) -> None:
        """Remove a dynamic task instance (given as the instance, or template + name)."""
        template, name = self._instance_key(task, instance_name)
        await self._repository.unregister(template.group_for(name), name)

    def _instance_key(self, task: Task, instance_name: str | None) -> tuple[Task, str]:
        if isinstance(task, Task) and task.is_instance:
            assert task.parent_task is not None
            return task.parent_task, task.name
        template = self._template(task)
        if instance_name is None:
            raise ValueError(f"An instance name is needed for dynamic task {task.name!r}")
        return template, instance_name

    async def get_task(self, task: Task, instance_name: str | None = None) -> TaskState | None:
        """The stored state of a static task or of a dynamic task instance."""
        if isinstance(task, Task) and not task.dynamic and not task.is_instance:
            record = await self._repository.get(STATIC_GROUP, task.name)
            return self._state(task, record) if record is not None else None
        template, name = self._instance_key(task, instance_name)
        record = await self._repository.get(template.group_for(name), name)
        if record is None:
            return None
        return self._state(template.from_spec(name, record.spec or "{}"), record)

    @staticmethod
    def _state(task: Task, record: Record) -> TaskState:
        return TaskState(task, record.scheduled_at, record.locked_until, record.locked_by)

    async def list_tasks(
        self,
        task: Task,
        limit: int | None = None,
        continuation_token: ContinuationToken | None = None,
    ) -> TaskPage:
        """A page of the instances of a dynamic task (``limit`` defaults to the batch size);
        pass the returned ``continuation_token`` back for the next page."""
        if not isinstance(task, Task) or not task.dynamic or task.is_instance:
            raise ValueError(f"list_tasks needs a dynamic task; {task!r} is not one")
        limit = _positive_int("limit", limit if limit is not None else self._app.batch_size)
        groups = task.all_groups()
        index, inner = (
            (0, None) if continuation_token is None else _decode_token(continuation_token)
        )
        states: list[TaskState] = []
        while index < len(groups) and len(states) < limit:
            page = await self._repository.list(
                groups[index], limit=limit - len(states), continuation_token=inner
            )
            states.extend(
                self._state(task.from_spec(r.name, r.spec or "{}"), r) for r in page.records
            )
            if page.continuation_token is None:
                index, inner = index + 1, None
            else:
                inner = page.continuation_token
        token = _encode_token(index, inner) if index < len(groups) else None
        return TaskPage(states, token)
