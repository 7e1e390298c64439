"""Tests written the way Pyncette 1.x applications test their schedulers: a time machine
patched into ``pyncette.pyncette._current_time``, ``asyncio.sleep``, ``asyncio.wait_for``
and ``time.perf_counter``, the repository factory wrapped so that every coroutine method
of the repository object reports its I/O, and the app on its default clock.

Under such a harness ``asyncio.sleep(0)`` only returns when the test moves time, so the
scheduler must never use it to yield, and the test is free to schedule tasks and shut
down before it moves time at all. Runs on every backend.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest

from backends import BackendConfig
from harness import T0
from pyncette import Context, Pyncette, PyncetteContext
from pyncette.utils import with_heartbeat
from timemachine import TimeMachine, counters_of

pytestmark = pytest.mark.anyio
S = datetime.timedelta(seconds=1)


def make_app(backend: BackendConfig, timemachine: TimeMachine, **options: Any) -> Pyncette:
    """As a 1.x test builds its app: the backend's factory, wrapped by the time machine."""
    return Pyncette(
        repository_factory=timemachine.wrap_factory(backend.repository_factory),
        **backend.options,
        **options,
    )


async def stop(
    ctx: PyncetteContext, run_task: asyncio.Task[None], timemachine: TimeMachine
) -> None:
    """``ctx.shutdown(); await run_task``, failing instead of hanging if ``run()`` waits
    for anything that needs virtual time."""
    ctx.shutdown()
    await timemachine.unwind()
    assert run_task.done(), "run() must return once polling stops, without time moving"
    await run_task


async def test_gathered_schedule_task_calls_before_time_moves(
    backend: BackendConfig, timemachine: TimeMachine
) -> None:
    app = make_app(backend, timemachine)
    seen: list[tuple[str, datetime.datetime]] = []

    @app.dynamic_task()
    async def hello(context: Context) -> None:
        seen.append((context.task.name, context.scheduled_at))

    async with app.create() as ctx:
        scheduling = asyncio.gather(
            ctx.schedule_task(hello, "1", interval=2 * S),
            ctx.schedule_task(hello, "2", interval=2 * S),
            ctx.schedule_task(hello, "3", schedule="* * * * * */5"),
            ctx.schedule_task(hello, "once", execute_at=T0 + 3 * S),
        )
        await timemachine.unwind()
        assert scheduling.done(), "schedule_task must not wait for virtual time"
        instances = await scheduling
        assert [instance.name for instance in instances] == ["1", "2", "3", "once"]
        run_task = asyncio.create_task(ctx.run())
        await timemachine.step(10 * S)
        await stop(ctx, run_task, timemachine)
    assert sorted(seen) == sorted(
        [(name, T0 + i * 2 * S) for name in ("1", "2") for i in range(1, 6)]
        + [("3", T0 + 5 * S), ("3", T0 + 10 * S), ("once", T0 + 3 * S)]
    )


async def test_shutdown_returns_while_an_execution_sleeps(
    backend: BackendConfig, timemachine: TimeMachine
) -> None:
    app = make_app(backend, timemachine)
    started: list[datetime.datetime] = []
    finished: list[datetime.datetime] = []

    @app.task(interval=10 * S)
    async def slow(context: Context) -> None:
        started.append(timemachine.current_time())
        await asyncio.sleep(30)
        finished.append(timemachine.current_time())

    async with app.create() as ctx:
        run_task = asyncio.create_task(ctx.run())
        await timemachine.step(15 * S)
        assert started == [T0 + 10 * S]
        # run() returns without waiting for the execution, which sleeps until 40 s
        await stop(ctx, run_task, timemachine)
        assert finished == []
        # leaving the block waits for it, so move time on meanwhile
        mover = asyncio.create_task(timemachine.step(60 * S))
    assert finished == [T0 + 40 * S]
    await mover
    assert started == [T0 + 10 * S]  # no new run after shutdown


async def test_leaving_create_by_cancellation_cancels_blocked_executions(
    backend: BackendConfig, timemachine: TimeMachine
) -> None:
    app = make_app(backend, timemachine)
    entered: list[str] = []
    cancelled: list[str] = []

    @app.task(interval=10 * S)
    async def blocked(context: Context) -> None:
        entered.append("blocked")
        try:
            await asyncio.Event().wait()  # nothing will ever set it
        except asyncio.CancelledError:
            cancelled.append("blocked")
            raise

    @app.task(interval=10 * S)
    async def sleeping(context: Context) -> None:
        entered.append("sleeping")
        try:
            await asyncio.sleep(3600)  # longer than the test will move time
        except asyncio.CancelledError:
            cancelled.append("sleeping")
            raise

    calls: dict[str, int] = {}

    async def scenario() -> None:
        nonlocal calls
        async with app.create() as ctx:
            calls = counters_of(ctx.repository).calls
            run_task = asyncio.create_task(ctx.run())
            await timemachine.step(10 * S)
            assert sorted(entered) == ["blocked", "sleeping"]
            run_task.cancel()
            await run_task  # raises CancelledError: the block is left by it

    leaving = asyncio.create_task(scenario())
    await timemachine.run_until(leaving, limit=60)
    assert leaving.done(), "leaving create() by CancelledError must not wait for executions"
    assert leaving.cancelled()
    assert sorted(cancelled) == ["blocked", "sleeping"]
    # cancelled, not completed: both leases were handed back, nothing committed
    assert calls.get("unlock", 0) == 2
    assert calls.get("commit", 0) == 0


async def test_with_heartbeat_under_patched_time(
    backend: BackendConfig, timemachine: TimeMachine
) -> None:
    app = make_app(backend, timemachine, poll_interval=datetime.timedelta(minutes=1))
    started: list[datetime.datetime] = []
    finished: list[datetime.datetime] = []

    @app.task(interval=300 * S, lease_duration=10 * S)
    @with_heartbeat()
    async def long(context: Context) -> None:
        started.append(timemachine.current_time())
        await asyncio.sleep(95)
        finished.append(timemachine.current_time())

    async with app.create() as ctx:
        calls = counters_of(ctx.repository).calls
        run_task = asyncio.create_task(ctx.run())
        await timemachine.step(400 * S)
        state = await ctx.get_task(long)
        await stop(ctx, run_task, timemachine)
    # without heartbeats the 10 s lease would expire at 310 and the run start again
    assert started == [T0 + 300 * S]
    assert finished == [T0 + 395 * S]
    assert calls.get("extend", 0) >= 90 // 5  # every 5 s (half the lease) while it ran
    assert state is not None and state.locked_by is None and state.scheduled_at == T0 + 600 * S


async def test_cron_and_interval_tasks_fire_at_virtual_times(
    backend: BackendConfig, timemachine: TimeMachine
) -> None:
    app = make_app(backend, timemachine)
    fired: list[tuple[str, datetime.datetime, datetime.datetime]] = []

    @app.task(schedule="*/2 * * * *")
    async def every_two_minutes(context: Context) -> None:
        fired.append(("cron", context.scheduled_at, timemachine.current_time()))

    @app.task(interval=45 * S)
    async def every_45_seconds(context: Context) -> None:
        fired.append(("interval", context.scheduled_at, timemachine.current_time()))

    async with app.create() as ctx:
        run_task = asyncio.create_task(ctx.run())
        await timemachine.step(datetime.timedelta(minutes=5))
        await stop(ctx, run_task, timemachine)
    expected = [("cron", T0 + m * 120 * S) for m in (1, 2)] + [
        ("interval", T0 + i * 45 * S) for i in range(1, 7)
    ]
    # each run starts at its scheduled (virtual) time, not a poll later
    assert sorted(fired) == sorted((kind, at, at) for kind, at in expected)


@pytest.mark.parametrize("when", ["before create()", "before run()"])
async def test_task_disabled_after_decoration_is_honoured(
    backend: BackendConfig, timemachine: TimeMachine, when: str
) -> None:
    app = make_app(backend, timemachine)
    runs: list[str] = []

    @app.task(interval=S)
    async def switched_off(context: Context) -> None:
        runs.append("off")

    @app.task(interval=S)
    async def left_on(context: Context) -> None:
        runs.append("on")

    if when == "before create()":
        switched_off.enabled = False
    async with app.create() as ctx:
        if when == "before run()":
            switched_off.enabled = False
        run_task = asyncio.create_task(ctx.run())
        await timemachine.step(5 * S)
        await stop(ctx, run_task, timemachine)
    assert runs == ["on"] * 5
