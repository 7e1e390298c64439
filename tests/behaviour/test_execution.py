"""What happens to executions: failure modes, leases, heartbeats, concurrency, middlewares,
fixtures and shutdown. Runs on every backend."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from backends import BackendConfig
from harness import T0, VirtualClock, counters, make_app, running
from pyncette import Context, ExecutionMode, FailureMode, PyncetteContext, SynchronousExecutor
from pyncette.errors import BackendUnavailableError, LeaseLostException
from pyncette.utils import with_heartbeat
from timemachine import RepositoryCounters

pytestmark = pytest.mark.anyio
S = datetime.timedelta(seconds=1)


@pytest.mark.parametrize(
    ("failure_mode", "expected"),
    [
        # stays locked until the 60 s lease expires, then retried
        (FailureMode.NONE, [10, 70, 130]),
        # unlocked at once: retried on the next tick (poll interval 1 s)
        (FailureMode.UNLOCK, [10, 11, 12]),
        # counted as done: next run on schedule
        (FailureMode.COMMIT, [10, 20, 30]),
    ],
)
async def test_failure_modes(
    backend: BackendConfig, clock: VirtualClock, failure_mode: FailureMode, expected: list[int]
) -> None:
    app = make_app(backend, clock)
    seen: list[int] = []

    @app.task(interval=10 * S, failure_mode=failure_mode)
    async def failing(context: Context) -> None:
        seen.append(int((clock.now() - T0).total_seconds()))
        raise RuntimeError("boom")

    async with running(app):
        for _ in range(200):
            await clock.advance(1)
            if len(seen) >= 3:
                break
    assert seen[:3] == expected


async def test_at_most_once_never_retries(backend: BackendConfig, clock: VirtualClock) -> None:
    app = make_app(backend, clock)
    seen: list[datetime.datetime] = []

    @app.task(interval=10 * S, execution_mode=ExecutionMode.AT_MOST_ONCE)
    async def once(context: Context) -> None:
        seen.append(context.scheduled_at)
        if len(seen) == 1:
            raise RuntimeError("lost for good")

    async with running(app) as ctx:
        await clock.advance(25)
        state = await ctx.get_task(once)
    assert seen == [T0 + 10 * S, T0 + 20 * S]
    assert state is not None and state.scheduled_at == T0 + 30 * S


async def test_lease_expiry_lets_a_slow_run_overlap(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    # long horizon: the loop wakes on known due times, so a long poll interval is fine
    app = make_app(backend, clock, poll_interval=datetime.timedelta(minutes=10))
    starts: list[datetime.datetime] = []

    @app.task(interval=100 * S, lease_duration=10 * S)
    async def slow(context: Context) -> None:
        starts.append(clock.now())
        await clock.sleep(25)

    async with running(app):
        await clock.advance(130)
    # the lease expired at 110 and 120 while the first run was still going
    assert starts[:3] == [T0 + 100 * S, T0 + 110 * S, T0 + 120 * S]


async def test_cooperative_heartbeat_extends_the_lease(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    # long horizon: the loop wakes on known due times, so a long poll interval is fine
    app = make_app(backend, clock, poll_interval=datetime.timedelta(minutes=10))
    starts: list[datetime.datetime] = []
    expiries: list[datetime.datetime | None] = []

    @app.task(interval=100 * S, lease_duration=10 * S)
    async def careful(context: Context) -> None:
        starts.append(clock.now())
        for _ in range(5):
            await clock.sleep(5)
            await context.heartbeat()
            state = await context.app_context.get_task(context.task)
            expiries.append(state.locked_until if state else None)

    async with running(app):
        await clock.advance(140)
    assert starts == [T0 + 100 * S]
    assert expiries == [T0 + (100 + 5 * i + 10) * S for i in range(1, 6)]


async def test_with_heartbeat_keeps_a_long_task_alive(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    # long horizon: the loop wakes on known due times, so a long poll interval is fine
    app = make_app(backend, clock, poll_interval=datetime.timedelta(minutes=10))
    starts: list[datetime.datetime] = []
    finished: list[datetime.datetime] = []

    @app.task(interval=1000 * S, lease_duration=10 * S)
    @with_heartbeat()
    async def long(context: Context) -> None:
        starts.append(clock.now())
        await clock.sleep(95)
        finished.append(clock.now())

    async with running(app) as ctx:
        await clock.advance(1100)
        state = await ctx.get_task(long)
    assert starts == [T0 + 1000 * S]
    assert finished == [T0 + 1095 * S]
    assert state is not None and state.scheduled_at == T0 + 2000 * S and state.locked_by is None


async def test_with_heartbeat_cancels_on_lease_lost(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    outcome: list[str] = []

    @app.dynamic_task(lease_duration=10 * S)
    @with_heartbeat(cancel_on_lease_lost=True)
    async def victim(context: Context) -> None:
        try:
            await clock.sleep(1000)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    async with running(app) as ctx:
        await ctx.schedule_task(victim, "v", execute_at=T0)
        await clock.advance(1)
        await ctx.unschedule_task(victim, "v")
        await clock.advance(20)
    assert outcome == ["cancelled"]


async def test_a_lease_that_cannot_be_renewed_is_given_up_when_it_expires(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    """While the backend fails, a heartbeat error is transient only as long as the lease
    it renews still holds; past its expiry another instance may run the task, so the
    holder stops trusting it: with ``cancel_on_lease_lost`` the run is cancelled and not
    committed, and the run is executed again once the backend answers."""
    # long horizon: the loop wakes on known due times, so a long poll interval is fine
    app = make_app(backend, clock, poll_interval=datetime.timedelta(minutes=10))
    starts: list[tuple[datetime.datetime, datetime.datetime]] = []
    outcome: list[tuple[str, datetime.datetime]] = []

    @app.task(interval=1000 * S, lease_duration=10 * S)
    @with_heartbeat(cancel_on_lease_lost=True)
    async def long(context: Context) -> None:
        starts.append((context.scheduled_at, clock.now()))
        try:
            await clock.sleep(30)
        except asyncio.CancelledError:
            outcome.append(("cancelled", clock.now()))
            raise
        outcome.append(("finished", clock.now()))

    async with running(app) as ctx:
        await clock.advance(1001)
        switch = counters(ctx.repository)
        switch.fail_with = BackendUnavailableError("down")
        await clock.advance(9)  # the beat at 1005 fails within the lease; 1010 past it
        assert outcome == [("cancelled", T0 + 1010 * S)]
        switch.fail_with = None
        await clock.advance(60)
    assert [at for at, _ in starts] == [T0 + 1000 * S, T0 + 1000 * S]
    assert starts[1][1] >= T0 + 1010 * S
    assert outcome[-1][0] == "finished"


async def test_concurrency_limit_caps_running_and_claimed(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock, concurrency_limit=2)
    running_now: list[int] = []
    active = 0

    @app.dynamic_task()
    async def work(context: Context) -> None:
        nonlocal active
        active += 1
        running_now.append(active)
        await clock.sleep(10)
        active -= 1

    async with running(app) as ctx:
        await ctx.schedule_tasks(work, {f"w{i}": {"execute_at": T0} for i in range(5)})
        await clock.advance(1)
        locked = [s for s in await ctx.list_tasks(work) if s.locked_by is not None]
        assert len(locked) == 2  # only what can start is claimed
        await clock.advance(40)
        assert len(await ctx.list_tasks(work)) == 0
    assert max(running_now) == 2 and len(running_now) == 5


async def test_synchronous_executor_runs_one_at_a_time(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock, executor_cls=SynchronousExecutor)
    events: list[str] = []

    @app.dynamic_task()
    async def step(context: Context) -> None:
        events.append(f"start {context.task.name}")
        await clock.sleep(1)
        events.append(f"end {context.task.name}")

    async with running(app) as ctx:
        await ctx.schedule_tasks(step, {f"s{i}": {"execute_at": T0} for i in range(3)})
        await clock.advance(10)
    assert events == [f"{what} s{i}" for i in range(3) for what in ("start", "end")]


async def test_middlewares_run_in_order_around_each_execution(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    log: list[str] = []

    @app.middleware
    async def outer(context: Context, next: Callable[[], Awaitable[None]]) -> None:
        log.append("outer in")
        context.request_id = 42
        await next()
        log.append("outer out")

    async def inner(context: Context, next: Callable[[], Awaitable[None]]) -> None:
        log.append("inner in")
        try:
            await next()
        except RuntimeError:
            log.append("inner caught")

    app.use_middleware(inner)

    @app.task(interval=10 * S)
    async def job(context: Context) -> None:
        log.append(f"task {context.request_id}")
        raise RuntimeError("swallowed by inner")

    async with running(app) as ctx:
        await clock.advance(10)
        state = await ctx.get_task(job)
    assert log == ["outer in", "inner in", "task 42", "inner caught", "outer out"]
    assert state is not None and state.scheduled_at == T0 + 20 * S  # success as far as we know


async def test_fixtures_and_context_items(backend: BackendConfig, clock: VirtualClock) -> None:
    app = make_app(backend, clock)
    log: list[str] = []

    @app.fixture()
    async def db(app_context: PyncetteContext) -> AsyncIterator[str]:
        log.append("db up")
        yield "the-db"
        log.append("db down")

    @app.fixture(name="logfile")
    async def open_log(app_context: PyncetteContext) -> AsyncIterator[str]:
        log.append(f"log up (db={app_context.db})")
        yield "the-log"
        log.append("log down")

    @app.task(interval=10 * S)
    async def job(context: Context) -> None:
        log.append(f"task {context.db} {context.logfile} {context.extra}")
        await clock.sleep(5)
        log.append("task done")

    async with running(app) as ctx:
        ctx.add_to_context("extra", "item")
        assert log == ["db up", "log up (db=the-db)"]
        await clock.advance(12)
        ctx.shutdown()
        await clock.advance(5)
    assert log == [
        "db up",
        "log up (db=the-db)",
        "task the-db the-log item",
        "task done",
        "log down",
        "db down",
    ]


async def test_graceful_shutdown_waits_for_running_executions(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    done: list[datetime.datetime] = []

    @app.task(interval=10 * S)
    async def job(context: Context) -> None:
        await clock.sleep(30)
        done.append(clock.now())

    async with app.create() as ctx:
        repository = counters(ctx.repository)
        loop = asyncio.ensure_future(ctx.run())
        await clock.advance(11)
        assert ctx.last_tick is not None and ctx.last_tick >= T0 + 10 * S
        ctx.shutdown()
        await clock.advance(5)
        # as in 1.x, run() returns once polling stops; the execution goes on
        assert loop.done()
        await loop
        assert done == []
        state = await ctx.get_task(job)
        assert state is not None and state.locked_by is not None
        # leaving the block waits for it while time moves on
        mover = asyncio.ensure_future(clock.advance(60))
    assert done == [T0 + 40 * S]
    assert repository.calls.get("commit", 0) == 1
    await mover


async def test_leaving_create_by_cancellation_cancels_executions(
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

    async def lifetime() -> None:
        async with app.create() as ctx:
            calls.append(counters(ctx.repository))
            loop = asyncio.ensure_future(ctx.run())
            await clock.advance(10)
            assert cancelled == []
            loop.cancel()  # e.g. a second signal: stop now
            await loop

    calls: list[RepositoryCounters] = []
    with pytest.raises(asyncio.CancelledError):
        await lifetime()
    (repository,) = calls
    # the blocked execution was cancelled instead of awaited, and its lease released
    assert cancelled == ["job"]
    assert repository.calls.get("unlock", 0) == 1
    assert repository.calls.get("commit", 0) == 0


async def test_backend_outage_is_survived(backend: BackendConfig, clock: VirtualClock) -> None:
    app = make_app(backend, clock)
    seen: list[datetime.datetime] = []

    @app.task(interval=10 * S)
    async def job(context: Context) -> None:
        seen.append(context.scheduled_at)

    async with running(app) as ctx:
        repository = counters(ctx.repository)
        await clock.advance(10)
        repository.fail_with = BackendUnavailableError("down for maintenance")
        await clock.advance(45)
        assert seen == [T0 + 10 * S]
        repository.fail_with = None
        await clock.advance(60)
    # nothing lost: the missed runs are caught up
    assert seen[:5] == [T0 + i * 10 * S for i in range(1, 6)]
    assert seen == sorted(set(seen))


async def test_lease_lost_inside_a_task_is_not_committed(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)

    @app.task(interval=10 * S)
    async def job(context: Context) -> None:
        raise LeaseLostException(context.task)

    async with running(app) as ctx:
        await clock.advance(10)
        state = await ctx.get_task(job)
    assert state is not None and state.locked_by is not None and state.scheduled_at == T0 + 10 * S
