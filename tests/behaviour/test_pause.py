"""pause_task / resume_task: a paused task or instance does not run, survives restarts
paused, and resumes from now or from a given time. Every backend, under the fake clock."""

from __future__ import annotations

import datetime

import pytest

from backends import BackendConfig
from harness import T0, VirtualClock, make_app, running
from pyncette import Context
from pyncette.model import PAUSED_AT

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.injected_clock_only(
        "a feature beyond 1.x: 1.x-style harnesses are covered by the 1.x behaviour suite"
    ),
]
S = datetime.timedelta(seconds=1)


async def test_a_paused_task_does_not_run_until_resumed(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    runs: list[datetime.datetime] = []

    @app.task(interval=10 * S)
    async def ticking(context: Context) -> None:
        runs.append(context.scheduled_at)

    async with running(app) as ctx:
        await clock.advance(15)  # ran at 10
        await ctx.pause_task(ticking)
        paused = await ctx.get_task(ticking)
        await clock.advance(40)  # 20, 30, 40, 50 do not run
        next_at = await ctx.resume_task(ticking)  # at 55: next run at 65
        resumed = await ctx.get_task(ticking)
        await clock.advance(20)
    assert paused is not None and paused.paused and paused.scheduled_at == PAUSED_AT
    assert resumed is not None and not resumed.paused
    assert next_at == T0 + 65 * S == resumed.scheduled_at
    assert runs == [T0 + 10 * S, T0 + 65 * S, T0 + 75 * S]


@pytest.mark.shared_storage  # a store that outlives its app
async def test_a_paused_static_task_stays_paused_when_the_app_starts_again(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    runs: list[datetime.datetime] = []

    def app() -> object:
        made = make_app(backend, clock)

        @made.task(interval=10 * S)
        async def ticking(context: Context) -> None:
            runs.append(context.scheduled_at)

        return made

    first = app()
    async with running(first) as ctx:  # type: ignore[arg-type]
        await ctx.pause_task(first.tasks["ticking"])  # type: ignore[attr-defined]
    second = app()
    async with running(second) as ctx:  # type: ignore[arg-type]
        await clock.advance(30)
        state = await ctx.get_task(second.tasks["ticking"])  # type: ignore[attr-defined]
    assert runs == []
    assert state is not None and state.paused


async def test_resume_from_the_past_catches_up_instances(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    runs: list[tuple[str, datetime.datetime]] = []

    @app.dynamic_task(interval=10 * S)
    async def feed(context: Context) -> None:
        runs.append((context.task.name, context.scheduled_at))

    async with running(app) as ctx:
        await ctx.schedule_task(feed, "all")
        await ctx.schedule_task(feed, "latest", coalesce="latest")
        await ctx.pause_task(feed, "all")
        await ctx.pause_task(feed, "latest")
        await clock.advance(35)
        assert runs == []
        await ctx.resume_task(feed, "all", resume_from=T0)
        await ctx.resume_task(feed, "latest", resume_from=T0)
        await clock.advance(1)
    # "all" runs every missed run from T0 on; "latest" runs the first and skips to after it
    assert [at for name, at in runs if name == "all"] == [T0 + n * 10 * S for n in (1, 2, 3)]
    assert [at for name, at in runs if name == "latest"] == [T0 + 10 * S]


async def test_a_one_off_instance_resumed_after_its_time_runs_at_once(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    runs: list[datetime.datetime] = []

    @app.dynamic_task()
    async def once(context: Context) -> None:
        runs.append(clock.now())

    async with running(app) as ctx:
        await ctx.schedule_task(once, "job", execute_at=T0 + 10 * S)
        await ctx.pause_task(once, "job")
        await clock.advance(20)
        assert runs == []
        assert await ctx.resume_task(once, "job") == T0 + 10 * S
        await clock.advance(1)
        gone = await ctx.get_task(once, "job")
    assert runs == [T0 + 20 * S]
    assert gone is None


async def test_pausing_a_running_execution_keeps_the_task_paused(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    runs: list[datetime.datetime] = []

    @app.task(interval=10 * S)
    async def slow(context: Context) -> None:
        runs.append(context.scheduled_at)
        await clock.sleep(5)

    async with running(app) as ctx:
        await clock.advance(12)  # the run of 10 is executing until 15
        await ctx.pause_task(slow)
        await clock.advance(30)
        state = await ctx.get_task(slow)
    assert runs == [T0 + 10 * S]  # it finished, and its commit did not unpause the task
    assert state is not None and state.paused


async def test_bad_pause_and_resume_calls_are_refused(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)

    @app.task(interval=10 * S)
    async def ticking(context: Context) -> None:
        pass

    @app.dynamic_task(interval=10 * S)
    async def feed(context: Context) -> None:
        pass

    async with running(app) as ctx:
        with pytest.raises(ValueError, match="is not paused"):
            await ctx.resume_task(ticking)
        with pytest.raises(ValueError, match="no stored run to pause"):
            await ctx.pause_task(feed, "missing")
        await ctx.pause_task(ticking)
        with pytest.raises(ValueError, match="resume_from must be an aware datetime"):
            await ctx.resume_task(ticking, resume_from=datetime.datetime(2030, 1, 1))
        state = await ctx.get_task(ticking)
    assert state is not None and state.paused  # the refused resume changed nothing
