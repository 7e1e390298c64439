"""retry=Retry(...): a failed at-least-once run runs again after a back-off, in the
instance that claimed it, which keeps the lease meanwhile. Every backend, under the
fake clock (the multi-instance tests on shared-storage backends)."""

from __future__ import annotations

import datetime
import logging

import pytest

from backends import BackendConfig
from harness import T0, VirtualClock, make_app, running
from pyncette import Context, FailureMode, Retry
from pyncette.events import ExecutionFailed, ExecutionRetried

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.injected_clock_only(
        "a feature beyond 1.x: 1.x-style harnesses are covered by the 1.x behaviour suite"
    ),
]
S = datetime.timedelta(seconds=1)


class Flaky(Exception):
    pass


async def test_a_failed_run_is_retried_with_backoff_until_it_succeeds(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    attempts: list[tuple[datetime.datetime, int, datetime.datetime]] = []
    retried: list[ExecutionRetried] = []
    failed: list[ExecutionFailed] = []
    app.subscribe(retried.append, ExecutionRetried)
    app.subscribe(failed.append, ExecutionFailed)

    @app.task(interval=100 * S, retry=Retry(attempts=4, backoff=2 * S, max_backoff=3 * S))
    async def flaky(context: Context) -> None:
        attempts.append((context.scheduled_at, context.attempt, clock.now()))
        if context.attempt < 3:
            raise Flaky(f"attempt {context.attempt}")

    async with running(app) as ctx:
        await clock.advance(150)
        state = await ctx.get_task(flaky)
    # due at 100: fails at 100 and (2 s later) at 102; 3 s later (capped) it succeeds
    assert [(at, n) for at, n, _ in attempts] == [
        (T0 + 100 * S, 1),
        (T0 + 100 * S, 2),
        (T0 + 100 * S, 3),
    ]
    started = [when for _, _, when in attempts]
    assert started[1] - started[0] >= 2 * S and started[2] - started[1] >= 3 * S
    assert started[2] - started[0] < 7 * S
    assert [(e.attempt, e.delay) for e in retried] == [(1, 2 * S), (2, 3 * S)]
    assert [str(e.error) for e in retried] == ["attempt 1", "attempt 2"]
    assert len(failed) == 2
    assert state is not None and state.scheduled_at == T0 + 200 * S  # committed once


@pytest.mark.parametrize("failure_mode", [FailureMode.UNLOCK, FailureMode.COMMIT])
async def test_after_the_last_attempt_the_failure_mode_applies(
    backend: BackendConfig, clock: VirtualClock, failure_mode: FailureMode
) -> None:
    app = make_app(backend, clock)
    attempts: list[tuple[datetime.datetime, int]] = []

    @app.dynamic_task(failure_mode=failure_mode, retry=Retry(attempts=2, backoff=S))
    async def always_fails(context: Context) -> None:
        attempts.append((clock.now(), context.attempt))
        raise Flaky("no")

    async with running(app) as ctx:
        await ctx.schedule_task(always_fails, "job", execute_at=T0 + 10 * S)
        await clock.advance(13.5)
        remaining = await ctx.get_task(always_fails, "job")
    numbers = [n for _, n in attempts]
    if failure_mode is FailureMode.COMMIT:  # the one-off counts as done after 2 attempts
        assert numbers == [1, 2] and remaining is None
    else:  # unlocked: claimed again at the next tick, from attempt 1
        assert numbers[:4] == [1, 2, 1, 2], attempts
        assert remaining is not None


async def test_a_task_without_retry_runs_once_per_failure_with_attempt_one(
    backend: BackendConfig, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(backend, clock)
    attempts: list[int] = []

    @app.task(interval=10 * S, failure_mode=FailureMode.COMMIT)
    async def plain(context: Context) -> None:
        attempts.append(context.attempt)
        raise Flaky("once")

    @app.task(interval=10 * S, failure_mode=FailureMode.COMMIT, retry=Retry(attempts=2))
    async def retried(context: Context) -> None:
        raise Flaky("twice")

    with caplog.at_level(logging.ERROR, logger="pyncette.worker"):
        async with running(app):
            await clock.advance(25)
    assert attempts == [1, 1]
    # the 1.x message for a task without retry; the attempt for one with it
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("Execution of plain failed") == 2
    assert messages.count("Execution of retried failed (attempt 1 of 2)") == 2
    assert messages.count("Execution of retried failed (attempt 2 of 2)") == 2


async def test_an_instance_stores_its_own_retry(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    attempts: list[tuple[str, int]] = []

    @app.dynamic_task(failure_mode=FailureMode.COMMIT)
    async def job(context: Context) -> None:
        attempts.append((context.task.name, context.attempt))
        raise Flaky("no")

    policy = Retry(attempts=3, backoff=0.5 * S, factor=1.5)
    async with running(app) as ctx:
        await ctx.schedule_task(job, "patient", execute_at=T0 + 5 * S, retry=policy)
        await ctx.schedule_task(job, "impatient", execute_at=T0 + 5 * S)
        stored = await ctx.get_task(job, "patient")
        await clock.advance(10)
    assert stored is not None and stored.task.retry == policy
    assert sorted(attempts) == [("impatient", 1), ("patient", 1), ("patient", 2), ("patient", 3)]


@pytest.mark.shared_storage
async def test_the_lease_is_kept_through_a_backoff_longer_than_the_lease(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    runs: list[tuple[str, int]] = []

    def app(name: str) -> object:
        made = make_app(backend, clock)

        @made.dynamic_task(lease_duration=5 * S, retry=Retry(attempts=2, backoff=20 * S))
        async def job(context: Context) -> None:
            runs.append((name, context.attempt))
            if context.attempt == 1:
                raise Flaky("first")

        return made

    first, second = app("first"), app("second")
    async with running(first) as ctx:  # type: ignore[arg-type]
        await ctx.schedule_task(first.tasks["job"], "job", execute_at=T0 + 2 * S)  # type: ignore[attr-defined]
        await clock.advance(3)  # first runs attempt 1 at T0+2 s and waits 20 s
        async with running(second):  # type: ignore[arg-type]
            await clock.advance(30)
    assert runs == [("first", 1), ("first", 2)]


@pytest.mark.shared_storage
async def test_shutdown_during_a_backoff_hands_the_run_back(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    runs: list[tuple[str, int, datetime.datetime]] = []

    def app(name: str) -> object:
        made = make_app(backend, clock)

        @made.dynamic_task(lease_duration=60 * S, retry=Retry(attempts=3, backoff=30 * S))
        async def job(context: Context) -> None:
            runs.append((name, context.attempt, clock.now()))
            if name == "first":
                raise Flaky("first")

        return made

    first, second = app("first"), app("second")
    async with running(first) as ctx:  # type: ignore[arg-type]
        await ctx.schedule_task(first.tasks["job"], "job", execute_at=T0 + 2 * S)  # type: ignore[attr-defined]
        await clock.advance(5)
    # first left during its 30 s back-off, within 60 s leases: the row was unlocked
    async with running(second):  # type: ignore[arg-type]
        await clock.advance(5)
    assert [(name, attempt) for name, attempt, _ in runs] == [("first", 1), ("second", 1)]
    assert runs[1][2] < T0 + 20 * S
