"""overlap="skip" | "buffer_one" | "allow": what happens to runs that fall due while a
run of the same task is still going on. Every backend, under the fake clock (a task
runs 25 virtual seconds on a 10-second interval)."""

from __future__ import annotations

import datetime

import pytest

from backends import BackendConfig
from harness import T0, VirtualClock, make_app, running
from pyncette import Context, ExecutionMode, Pyncette, RunStatus

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.injected_clock_only(
        "a feature beyond 1.x: 1.x-style harnesses are covered by the 1.x behaviour suite"
    ),
]
S = datetime.timedelta(seconds=1)
Runs = list[tuple[datetime.datetime, datetime.datetime]]
"""(scheduled_at, started at) of each run."""


async def slow_runs(
    backend: BackendConfig, clock: VirtualClock, seconds: float, **options: object
) -> Runs:
    app = make_app(backend, clock)
    runs: Runs = []

    @app.task(interval=10 * S, **options)
    async def slow(context: Context) -> None:
        runs.append((context.scheduled_at, clock.now()))
        await clock.sleep(25)

    async with running(app):
        await clock.advance(seconds)
    return runs


def offsets(runs: Runs) -> list[tuple[float, float]]:
    return [((due - T0) / S, (started - T0) / S) for due, started in runs]


async def test_by_default_each_missed_run_is_caught_up_in_turn(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    runs = await slow_runs(backend, clock, 80)
    assert offsets(runs) == [(10, 10), (20, 35), (30, 60)]


async def test_skip_drops_the_runs_that_fell_due_meanwhile(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    runs = await slow_runs(backend, clock, 95, overlap="skip")
    # 10 ran until 35: 20 and 30 are dropped; 40 ran until 65: 50 and 60 are dropped
    assert offsets(runs) == [(10, 10), (40, 40), (70, 70)]


async def test_buffer_one_runs_the_last_of_them_at_once(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    runs = await slow_runs(backend, clock, 90, overlap="buffer_one")
    # 10 ran until 35 (20, 30 due): 30 at 35, until 60 (40, 50, 60 due): 60 at 60, ...
    assert offsets(runs) == [(10, 10), (30, 35), (60, 60), (80, 85)]


async def test_allow_starts_each_run_on_time_beside_the_running_one(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    runs = await slow_runs(backend, clock, 45, overlap="allow")
    assert offsets(runs) == [(10, 10), (20, 20), (30, 30), (40, 40)]


async def test_allow_runs_every_run_at_least_once_and_leaves_no_rows_behind(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock, run_history=10)
    done: list[datetime.datetime] = []

    @app.dynamic_task(overlap="allow")
    async def export(context: Context) -> None:
        await clock.sleep(15)
        done.append(context.scheduled_at)

    async with running(app) as ctx:
        await ctx.schedule_task(export, "daily", interval=10 * S)
        await clock.advance(62)
        page = await ctx.list_tasks(export)
        state = await ctx.get_task(export, "daily")
        rows = (await ctx.repository.list(export.group_for("daily"), limit=100)).records
    # at 62 the runs of 10..40 are done and their rows gone; 50 and 60 run in their own
    assert sorted(row.name[:9] for row in rows) == ["__run__:o", "__run__:o", "daily"]
    # 10..60, each ran 15 s (leaving the block waited for the runs still going on)
    assert done == [T0 + n * 10 * S for n in range(1, 7)]
    assert [s.task.name for s in page] == ["daily"]  # extra rows are not instances
    assert state is not None and state.last_status is RunStatus.STARTED
    assert state.last_run is not None and state.last_run.scheduled_at == T0 + 60 * S


async def test_an_instance_can_override_the_task_overlap(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    runs: list[tuple[str, float]] = []

    @app.dynamic_task(interval=10 * S)
    async def job(context: Context) -> None:
        runs.append((context.task.name, (context.scheduled_at - T0) / S))
        await clock.sleep(25)

    async with running(app) as ctx:
        await ctx.schedule_task(job, "skipping", overlap="skip")
        await ctx.schedule_task(job, "catching_up")
        stored = await ctx.get_task(job, "skipping")
        await clock.advance(65)
    assert stored is not None and stored.task.overlap == "skip"
    assert [at for name, at in runs if name == "skipping"] == [10, 40]
    assert [at for name, at in runs if name == "catching_up"] == [10, 20, 30]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"overlap": "sometimes"}, r"Invalid overlap 'sometimes': expected one of 'skip'"),
        (
            {"overlap": "skip", "execution_mode": ExecutionMode.AT_MOST_ONCE},
            "overlap='skip' needs execution_mode=AT_LEAST_ONCE",
        ),
    ],
)
def test_bad_overlap_options_are_refused(options: dict[str, object], message: str) -> None:
    app = Pyncette()
    with pytest.raises(ValueError, match=message):

        @app.task(interval=10 * S, **options)
        async def job(context: Context) -> None:
            pass


def test_at_most_once_tasks_may_say_allow() -> None:
    app = Pyncette()

    @app.task(interval=10 * S, overlap="allow", execution_mode=ExecutionMode.AT_MOST_ONCE)
    async def job(context: Context) -> None:
        pass

    assert job.overlap == "allow"
