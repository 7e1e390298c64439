"""What a task's stored state says about its last run (TaskState.last_*), and the run
history (Pyncette(run_history=N), ctx.task_history). Every backend, under the fake
clock; the times are virtual, so they are exact."""

from __future__ import annotations

import datetime
import logging

import pytest

from backends import BackendConfig
from harness import T0, VirtualClock, make_app, running
from pyncette import Context, ExecutionMode, FailureMode, Pyncette, Retry, RunStatus

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.injected_clock_only(
        "a feature beyond 1.x: 1.x-style harnesses are covered by the 1.x behaviour suite"
    ),
]
S = datetime.timedelta(seconds=1)


class Boom(Exception):
    pass


async def test_a_task_that_never_ran_has_no_last_run(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)

    @app.task(interval=100 * S)
    async def later(context: Context) -> None:
        pass

    async with running(app) as ctx:
        await clock.advance(5)
        state = await ctx.get_task(later)
    assert state is not None and state.last_run is None
    assert (state.last_run_at, state.last_status, state.last_duration, state.attempt) == (
        None,
        None,
        None,
        None,
    )


async def test_a_successful_run_is_stored_with_its_times(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)

    @app.task(interval=10 * S)
    async def work(context: Context) -> None:
        await clock.sleep(3)

    async with running(app) as ctx:
        await clock.advance(15)  # the run due at 10 took 3 s
        state = await ctx.get_task(work)
    assert state is not None and state.last_run is not None
    run = state.last_run
    assert state.last_status is RunStatus.SUCCEEDED and state.last_error is None
    assert run.scheduled_at == T0 + 10 * S
    assert T0 + 10 * S <= run.started_at < T0 + 11 * S
    assert state.last_run_at == run.started_at
    assert state.last_duration == 3 * S and run.finished_at == run.started_at + 3 * S
    assert state.attempt == 1
    assert run.instance is not None and ":" in run.instance
    assert state.scheduled_at == T0 + 20 * S


@pytest.mark.parametrize("failure_mode", [FailureMode.COMMIT, FailureMode.UNLOCK])
async def test_a_failed_run_is_stored_with_its_error(
    backend: BackendConfig,
    clock: VirtualClock,
    failure_mode: FailureMode,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL, logger="pyncette")
    app = make_app(backend, clock)
    calls: list[datetime.datetime] = []

    @app.task(interval=10 * S, failure_mode=failure_mode)
    async def failing(context: Context) -> None:
        calls.append(context.scheduled_at)
        if len(calls) == 1:
            raise Boom("the first run fails")

    async with running(app) as ctx:
        await clock.advance(10.5)
        failed = await ctx.get_task(failing)
        await clock.advance(20)
        recovered = await ctx.get_task(failing)
    assert failed is not None and failed.last_run is not None
    assert failed.last_status is RunStatus.FAILED
    assert failed.last_error == "Boom: the first run fails"
    assert failed.last_run.scheduled_at == T0 + 10 * S
    # COMMIT moved the schedule on; UNLOCK left it to be run again
    expected_next = T0 + 20 * S if failure_mode is FailureMode.COMMIT else T0 + 10 * S
    assert failed.scheduled_at == expected_next
    assert recovered is not None and recovered.last_status is RunStatus.SUCCEEDED
    assert recovered.last_error is None


async def test_failure_mode_none_writes_nothing_so_the_last_stored_run_stays(
    backend: BackendConfig, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="pyncette")
    app = make_app(backend, clock)
    calls: list[int] = []

    @app.task(interval=10 * S, failure_mode=FailureMode.NONE, lease_duration=30 * S)
    async def sometimes(context: Context) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise Boom("second")

    async with running(app) as ctx:
        await clock.advance(25)  # 10 succeeded, 20 failed and holds its lease
        state = await ctx.get_task(sometimes)
    assert len(calls) == 2
    assert state is not None and state.last_run is not None
    assert state.last_status is RunStatus.SUCCEEDED
    assert state.last_run.scheduled_at == T0 + 10 * S


async def test_the_attempt_that_ended_a_retried_run_is_stored(
    backend: BackendConfig, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="pyncette")
    app = make_app(backend, clock)

    @app.task(interval=100 * S, retry=Retry(attempts=4, backoff=2 * S))
    async def flaky(context: Context) -> None:
        if context.attempt < 3:
            raise Boom(f"attempt {context.attempt}")

    async with running(app) as ctx:
        await clock.advance(120)
        state = await ctx.get_task(flaky)
    assert state is not None and state.last_status is RunStatus.SUCCEEDED
    assert state.attempt == 3
    assert state.last_run is not None and state.last_run.scheduled_at == T0 + 100 * S


async def test_a_run_skipped_as_misfired_is_stored_as_skipped(
    backend: BackendConfig, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="pyncette")
    app = make_app(backend, clock)
    runs: list[datetime.datetime] = []

    @app.task(interval=10 * S, misfire_grace_time=2 * S)
    async def strict(context: Context) -> None:
        runs.append(context.scheduled_at)

    async with running(app) as ctx:
        await ctx.pause_task(strict)
        await clock.advance(35)
        # at 35, from 20: the runs at 20 and 30 are 15 s and 5 s late, and skipped
        await ctx.resume_task(strict, resume_from=T0 + 20 * S)
        await clock.advance(1)
        state = await ctx.get_task(strict)
    assert runs == []
    assert state is not None and state.last_status is RunStatus.SKIPPED
    assert state.last_error == "claimed 5.000 s late, more than its misfire_grace_time"
    assert state.last_run is not None and state.last_run.scheduled_at == T0 + 30 * S
    assert state.last_duration is None and state.scheduled_at == T0 + 40 * S


async def test_an_at_most_once_run_is_stored_as_started(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)

    @app.task(interval=10 * S, execution_mode=ExecutionMode.AT_MOST_ONCE)
    async def once(context: Context) -> None:
        await clock.sleep(1)

    async with running(app) as ctx:
        await clock.advance(15)
        state = await ctx.get_task(once)
    assert state is not None and state.last_status is RunStatus.STARTED
    assert state.last_run is not None and state.last_run.scheduled_at == T0 + 10 * S
    assert state.last_duration is None


async def test_instances_and_list_tasks_carry_their_last_run(
    backend: BackendConfig, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="pyncette")
    app = make_app(backend, clock)

    @app.dynamic_task(interval=10 * S, failure_mode=FailureMode.COMMIT)
    async def feed(context: Context) -> None:
        if context.args.get("bad"):
            raise Boom(context.task.name)

    async with running(app) as ctx:
        await ctx.schedule_task(feed, "good")
        await ctx.schedule_task(feed, "bad", bad=True)
        await clock.advance(15)
        page = await ctx.list_tasks(feed)
        bad = await ctx.get_task(feed, "bad")
    assert {state.task.name: state.last_status for state in page} == {
        "good": RunStatus.SUCCEEDED,
        "bad": RunStatus.FAILED,
    }
    assert bad is not None and bad.last_error == "Boom: bad"


async def test_the_history_keeps_the_last_runs_newest_first(
    backend: BackendConfig, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="pyncette")
    app = make_app(backend, clock, run_history=3)

    @app.task(interval=10 * S, failure_mode=FailureMode.COMMIT)
    async def ticking(context: Context) -> None:
        if context.scheduled_at == T0 + 40 * S:
            raise Boom("at 40")

    async with running(app) as ctx:
        await clock.advance(55)  # runs at 10, 20, 30, 40 (fails), 50
        runs = await ctx.task_history(ticking)
        two = await ctx.task_history(ticking, limit=2)
    assert [run.scheduled_at for run in runs] == [T0 + 50 * S, T0 + 40 * S, T0 + 30 * S]
    assert [run.status for run in runs] == [
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.SUCCEEDED,
    ]
    assert runs[1].error == "Boom: at 40"
    assert two == runs[:2]


async def test_a_one_off_instance_keeps_its_history_after_it_is_gone(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock, run_history=5)

    @app.dynamic_task()
    async def reminder(context: Context) -> None:
        await clock.sleep(2)

    async with running(app) as ctx:
        await ctx.schedule_task(reminder, "once", execute_at=T0 + 20 * S)
        await clock.advance(30)
        gone = await ctx.get_task(reminder, "once")
        runs = await ctx.task_history(reminder, "once")
        also = await ctx.task_history(reminder.instantiate("once", execute_at=T0 + 20 * S))
    assert gone is None
    assert [(run.status, run.scheduled_at, run.duration) for run in runs] == [
        (RunStatus.SUCCEEDED, T0 + 20 * S, 2 * S)
    ]
    assert also == runs


async def test_runs_older_than_the_retention_are_not_returned(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock, run_history=10, run_history_retention=25 * S)

    @app.task(interval=10 * S)
    async def ticking(context: Context) -> None:
        pass

    async with running(app) as ctx:
        await clock.advance(55)  # runs at 10..50; at 55 only those after 30 are kept
        runs = await ctx.task_history(ticking)
    assert [run.scheduled_at for run in runs] == [T0 + 50 * S, T0 + 40 * S, T0 + 30 * S]


async def test_history_is_off_by_default_and_says_how_to_turn_it_on(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)

    @app.task(interval=10 * S)
    async def ticking(context: Context) -> None:
        pass

    async with running(app) as ctx:
        await clock.advance(15)
        with pytest.raises(ValueError, match=r"run_history=N"):
            await ctx.task_history(ticking)
        with pytest.raises(ValueError, match="instance_name provided"):
            await ctx.get_task(ticking, "x")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"run_history": -1}, "run_history must be between 0 and 1000"),
        ({"run_history": 1001}, "run_history must be between 0 and 1000"),
        ({"run_history": "many"}, "run_history must be an integer"),
        ({"run_history_retention": 60}, "run_history_retention must be a timedelta"),
        ({"run_history_retention": -S}, "run_history_retention must be positive"),
    ],
)
async def test_bad_history_options_are_refused_at_start(
    options: dict[str, object], message: str
) -> None:
    app = Pyncette(**options)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        async with app.create():
            pass


async def test_a_bad_history_limit_is_refused(backend: BackendConfig, clock: VirtualClock) -> None:
    app = make_app(backend, clock, run_history=3)

    @app.task(interval=10 * S)
    async def ticking(context: Context) -> None:
        pass

    async with running(app) as ctx:
        with pytest.raises(ValueError, match="limit"):
            await ctx.task_history(ticking, limit=0)
