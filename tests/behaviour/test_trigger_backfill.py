"""trigger_task (one extra run now, the schedule unchanged) and backfill_task (every
run of a past range, each once). Every backend, under the fake clock."""

from __future__ import annotations

import asyncio
import datetime

import pytest

from backends import BackendConfig
from harness import T0, VirtualClock, make_app, running
from pyncette import Context

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.injected_clock_only(
        "a feature beyond 1.x: 1.x-style harnesses are covered by the 1.x behaviour suite"
    ),
]
S = datetime.timedelta(seconds=1)
M = datetime.timedelta(minutes=1)


async def test_a_triggered_run_leaves_the_schedule_alone(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    runs: list[tuple[str, datetime.datetime, datetime.datetime]] = []

    @app.task(interval=100 * S)
    async def static(context: Context) -> None:
        runs.append((context.task.name, context.scheduled_at, clock.now()))

    @app.dynamic_task()
    async def dyn(context: Context) -> None:
        runs.append(
            (f"{context.task.name}:{context.args['who']}", context.scheduled_at, clock.now())
        )

    async with running(app) as ctx:
        await ctx.schedule_task(dyn, "a", interval=100 * S, who="ann")
        await ctx.schedule_task(dyn, "once", execute_at=T0 + 50 * S, who="bob")
        await clock.advance(5)
        await ctx.trigger_task(static)
        await ctx.trigger_task(dyn, "a")
        await ctx.trigger_task(dyn, "once")
        await clock.advance(1)
        states = [await ctx.get_task(static), await ctx.get_task(dyn, "a")]
        listed = [state.task.name for state in await ctx.list_tasks(dyn)]
        await clock.advance(100)
    assert sorted((name, ran) for name, _, ran in runs if ran < T0 + 10 * S) == [
        ("a:ann", T0 + 5 * S),
        ("once:bob", T0 + 5 * S),
        ("static", T0 + 5 * S),
    ]
    # the schedules are untouched: the runs due at 50 and 100 still happen, once
    assert [s.scheduled_at for s in states if s is not None] == [T0 + 100 * S, T0 + 100 * S]
    assert sorted(listed) == ["a", "once"]
    later = sorted((name, at) for name, at, ran in runs if ran >= T0 + 10 * S)
    assert later == [("a:ann", T0 + 100 * S), ("once:bob", T0 + 50 * S), ("static", T0 + 100 * S)]


async def test_backfill_queues_each_run_of_a_range_once(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    runs: list[tuple[str, datetime.datetime]] = []

    @app.task(schedule="*/10 * * * *")  # every 10 minutes
    async def report(context: Context) -> None:
        runs.append(("report", context.scheduled_at))

    @app.dynamic_task()
    async def feed(context: Context) -> None:
        runs.append((context.task.name, context.scheduled_at))

    async with app.create() as ctx:  # the loop starts after the backfills
        await ctx.schedule_task(feed, "f", interval=7 * M)  # next run T0+7 min: its grid
        start, end = T0 - 30 * M, T0
        queued = await ctx.backfill_task(report, start, end)
        again = await ctx.backfill_task(report, start, end)  # still pending: nothing new
        fed = await ctx.backfill_task(feed, T0 - 15 * M, T0 - M, instance_name="f")
        loop = asyncio.ensure_future(ctx.run())
        await clock.advance(2)
        state = await ctx.get_task(report)
        ctx.shutdown()
        await clock.until_done(loop)
        await loop
    expected = [T0 - 30 * M, T0 - 20 * M, T0 - 10 * M]
    assert queued == again == expected
    assert fed == [T0 - 14 * M, T0 - 7 * M]
    assert sorted(at for name, at in runs if name == "report") == expected
    assert sorted(at for name, at in runs if name == "f") == fed
    assert state is not None and state.scheduled_at == T0 + 10 * M  # schedule unchanged


async def test_bad_backfills_are_refused_before_anything_is_queued(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)

    @app.task(interval=S)
    async def often(context: Context) -> None:
        pass

    async with running(app) as ctx:
        with pytest.raises(ValueError, match=r"start .* must be before end"):
            await ctx.backfill_task(often, T0, T0 - S)
        with pytest.raises(ValueError, match="start must be an aware datetime"):
            await ctx.backfill_task(often, datetime.datetime(2029, 1, 1), T0)
        with pytest.raises(ValueError, match="more than 10000 runs"):
            await ctx.backfill_task(often, T0 - datetime.timedelta(days=1), T0)
        with pytest.raises(ValueError, match="reserved for extra runs"):
            app.task(name="__run__:x", interval=S)(often.func)
        state = await ctx.get_task(often)
    assert state is not None and state.scheduled_at == T0 + S
