"""Pyncette 1.x's run-time semantics that programs and their tests rely on: plain ``def``
tasks, scheduled_at in the task's timezone, forced rescheduling, the ``context._lease``
idiom, custom 1.x executors, ``task.enabled`` set before ``run()``, and the event API.
Runs on every backend, under both virtual clocks."""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
from collections.abc import Awaitable
from types import TracebackType
from typing import Any, ClassVar

import pytest

from backends import BackendConfig
from harness import T0, VirtualClock, make_app, running
from pyncette import Context
from pyncette.errors import LeaseLostException
from pyncette.events import (
    Event,
    ExecutionFailed,
    ExecutionFinished,
    ExecutionStarted,
    LeaseLost,
    TickFinished,
)
from pyncette.model import Lease

pytestmark = pytest.mark.anyio
S = datetime.timedelta(seconds=1)


async def _wait_in_thread(event: threading.Event) -> bool:
    """Wait for ``event`` without asyncio.sleep (which a time machine may have patched)."""
    return await asyncio.get_running_loop().run_in_executor(None, event.wait, 10)


async def test_a_plain_def_task_runs_in_a_worker_thread(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    loop_thread = threading.get_ident()
    threads: list[int] = []
    ran = threading.Event()

    @app.task(interval=10 * S)
    def blocking(context: Context) -> None:
        threads.append(threading.get_ident())
        assert context.scheduled_at == T0 + 10 * S
        ran.set()

    async with running(app) as ctx:
        await clock.advance(10)
        assert await _wait_in_thread(ran)
        await clock.settle()
        state = await ctx.get_task(blocking)
    assert len(threads) == 1 and threads[0] != loop_thread
    # committed like any other run: the next one is on schedule and unlocked
    assert state is not None and state.scheduled_at == T0 + 20 * S and state.locked_by is None


async def test_scheduled_at_is_in_the_tasks_timezone(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    # long horizon: the loop wakes on known due times, so a long poll interval is fine
    app = make_app(backend, clock, poll_interval=datetime.timedelta(minutes=10))
    seen: dict[str, datetime.datetime] = {}

    @app.task(schedule="0 * * * *", timezone="Europe/Ljubljana")
    async def zoned(context: Context) -> None:
        seen["zoned"] = context.scheduled_at

    @app.task(interval=3600 * S)
    async def plain(context: Context) -> None:
        seen["plain"] = context.scheduled_at

    async with running(app):
        await clock.advance(3600)
    assert seen["zoned"] == seen["plain"] == T0 + 3600 * S  # the same instant...
    assert seen["zoned"].utcoffset() == datetime.timedelta(hours=1)  # ...in CET
    assert seen["plain"].utcoffset() == datetime.timedelta(0)


async def test_forced_schedule_task_takes_a_later_time(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    runs: list[datetime.datetime] = []

    @app.dynamic_task()
    async def job(context: Context) -> None:
        runs.append(clock.now())

    async with running(app) as ctx:
        await ctx.schedule_task(job, "one", execute_at=T0 + 10 * S)
        await ctx.schedule_task(job, "one", execute_at=T0 + 50 * S)  # later: ignored
        state = await ctx.get_task(job, "one")
        assert state is not None and state.scheduled_at == T0 + 10 * S
        await ctx.schedule_task(job, "one", force=True, execute_at=T0 + 50 * S)
        state = await ctx.get_task(job, "one")
        assert state is not None and state.scheduled_at == T0 + 50 * S
        await clock.advance(60)
    assert runs == [T0 + 50 * S]


async def test_heartbeat_with_a_faked_old_lease_is_refused(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    outcomes: list[str] = []

    @app.task(interval=100 * S, lease_duration=30 * S)
    async def job(context: Context) -> None:
        context._lease = Lease("taken-over-by-someone-else")
        try:
            await context.heartbeat()
        except LeaseLostException:
            outcomes.append("lost")
        outcomes.append("lease gone" if context._lease is None else "lease kept")

    async with running(app) as ctx:
        await clock.advance(101)
        state = await ctx.get_task(job)
    assert outcomes == ["lost", "lease gone"]
    # not committed: still the run at 100, locked until its real lease runs out
    assert state is not None and state.scheduled_at == T0 + 100 * S
    assert state.locked_until == T0 + 130 * S


async def test_commit_with_a_faked_old_lease_is_refused(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    runs: list[datetime.datetime] = []

    @app.task(interval=100 * S, lease_duration=30 * S)
    async def job(context: Context) -> None:
        runs.append(clock.now())
        if len(runs) == 1:
            context._lease = Lease("not-the-lease-this-run-holds")

    async with running(app) as ctx:
        await clock.advance(150)
        state = await ctx.get_task(job)
    # the first commit presented the wrong lease, so the run was retried at its expiry
    assert runs == [T0 + 100 * S, T0 + 130 * S]
    assert state is not None and state.scheduled_at == T0 + 200 * S and state.locked_by is None


class OneAtATimeExecutor:
    """A Pyncette 1.x custom executor: an async context manager with spawn_task()."""

    instances: ClassVar[list[OneAtATimeExecutor]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.spawned = 0
        self.exited_with: type[BaseException] | str | None = "not exited"
        self._tasks: set[asyncio.Task[None]] = set()
        OneAtATimeExecutor.instances.append(self)

    async def __aenter__(self) -> OneAtATimeExecutor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.exited_with = exc_type
        if self._tasks:
            await asyncio.wait(self._tasks)

    async def spawn_task(self, awaitable: Awaitable[None]) -> None:
        async def run() -> None:
            await awaitable

        self.spawned += 1
        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def test_a_1x_custom_executor_runs_the_executions(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    OneAtATimeExecutor.instances.clear()
    app = make_app(backend, clock, executor_cls=OneAtATimeExecutor, concurrency_limit=7)
    runs: list[datetime.datetime] = []

    @app.task(interval=10 * S)
    async def job(context: Context) -> None:
        runs.append(clock.now())

    async with running(app):
        await clock.advance(35)
    (executor,) = OneAtATimeExecutor.instances
    assert runs == [T0 + 10 * S, T0 + 20 * S, T0 + 30 * S]
    assert executor.spawned == 3
    assert executor.kwargs["concurrency_limit"] == 7
    assert executor.exited_with is None  # entered and left like any context manager


async def test_task_disabled_before_run_is_not_run(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    runs: list[str] = []

    @app.task(interval=10 * S)
    async def off(context: Context) -> None:
        runs.append("off")

    @app.task(interval=10 * S)
    async def on(context: Context) -> None:
        runs.append("on")

    @app.dynamic_task()
    async def template(context: Context) -> None:
        runs.append(context.task.name)

    async with app.create() as ctx:
        off.enabled = False  # 1.x idiom: e.g. from configuration, before run()
        template.enabled = False
        await ctx.schedule_task(template, "instance", interval=10 * S)
        loop = asyncio.ensure_future(ctx.run())
        await clock.advance(25)
        ctx.shutdown()
        await clock.until_done(loop)
    assert runs == ["on", "on"]


async def test_events_report_ticks_executions_and_lost_leases(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    seen: list[Event] = []
    failures: list[ExecutionFailed] = []
    app.subscribe(seen.append)
    unsubscribe = app.subscribe(failures.append, ExecutionFailed)

    @app.task(interval=10 * S)
    async def good(context: Context) -> None: ...

    @app.task(interval=10 * S, lease_duration=60 * S)
    async def bad(context: Context) -> None:
        raise RuntimeError("boom")

    @app.task(interval=100 * S)
    async def robbed(context: Context) -> None:
        context._lease = Lease("stolen")
        await context.heartbeat()

    async with running(app):
        await clock.advance(10)
        unsubscribe()
        await clock.advance(100)
    kinds = {type(event) for event in seen}
    assert {TickFinished, ExecutionStarted, ExecutionFinished, ExecutionFailed, LeaseLost} <= kinds
    finished = [e for e in seen if isinstance(e, ExecutionFinished)]
    assert {e.task.name for e in finished} == {"good"}
    assert all(e.scheduled_at == e.started_at for e in finished if e.started_at == T0 + 10 * S)
    assert [(e.task.name, str(e.error)) for e in failures] == [("bad", "boom")]
    lost = [e for e in seen if isinstance(e, LeaseLost)]
    assert [(e.task.name, e.scheduled_at) for e in lost] == [("robbed", T0 + 100 * S)]
    assert all(e.error is None for e in seen if isinstance(e, TickFinished))


def test_subscribe_rejects_what_is_not_an_event_type() -> None:
    from pyncette import Pyncette

    app = Pyncette()
    with pytest.raises(ValueError, match="Event subclasses"):
        app.subscribe(print, int)  # type: ignore[type-var]


async def test_cancelled_while_leaving_create_cancels_the_executions(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    cancelled: list[str] = []

    @app.task(interval=10 * S)
    async def job(context: Context) -> None:
        try:
            await clock.sleep(1000)
        except asyncio.CancelledError:
            cancelled.append("job")
            raise

    leaving = asyncio.Event()

    async def lifetime() -> None:
        async with app.create() as ctx:
            loop = asyncio.ensure_future(ctx.run())
            await clock.advance(10)
            ctx.shutdown()
            await loop
            leaving.set()  # the block is left gracefully: the exit waits for the job

    life = asyncio.ensure_future(lifetime())
    await leaving.wait()
    await clock.settle()
    assert not life.done() and cancelled == []
    life.cancel()  # e.g. a second signal while waiting
    with pytest.raises(asyncio.CancelledError):
        await life
    assert cancelled == ["job"]


async def test_each_execution_logs_one_info_line_with_structured_fields(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    from pyncette.memory import memory_repository

    app = make_app(BackendConfig("memory", memory_repository, shared=False), clock)

    @app.dynamic_task()
    async def job(context: Context) -> None: ...

    caplog.set_level(logging.INFO, logger="pyncette")
    async with running(app) as ctx:
        await ctx.schedule_task(job, "one", execute_at=T0 + 5 * S)
        await clock.advance(6)
    (record,) = [r for r in caplog.records if r.getMessage().startswith("Executed")]
    assert record.levelno == logging.INFO
    fields = vars(record)
    assert (fields["task"], fields["instance"], fields["scheduled_at"]) == (
        "job",
        "one",
        T0 + 5 * S,
    )
    assert isinstance(fields["duration"], float) and fields["duration"] >= 0
    assert "Executed job:one (scheduled at 2030-01-01T00:00:05+00:00) in" in record.getMessage()
