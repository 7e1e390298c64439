"""Minimal reproductions, in virtual time, of the core bugs the chaos scenarios found.

Apps share one in-memory store and one fake clock; a proxy in front of one app's
repository makes a claim slow, answers it late, delays a registration or never answers,
as the chaos proxy and kill storm did; each test then counts the executions of a run.
Each docstring names the bug as it was; all are fixed in pyncette/worker.py and
pyncette/manager.py, and these tests keep them fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import pytest

from backends import BackendConfig
from harness import T0, FakeClock, make_app, running, wrap_repository
from pyncette import Context, ExecutionMode, Pyncette
from pyncette.events import LeaseLost
from pyncette.executor import DefaultExecutor
from pyncette.memory import InMemoryRepository
from pyncette.model import Lease
from pyncette.repository import (
    ClaimResult,
    Commit,
    Registration,
    Repository,
    RepositoryProxy,
)

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]
S = datetime.timedelta(seconds=1)
LEASE = 3 * S
STATIC_GROUP = "__static__"


def shared_store() -> BackendConfig:
    """Every app built from this config uses the same in-memory repository."""
    store = InMemoryRepository()

    @contextlib.asynccontextmanager
    async def factory(**options: Any) -> AsyncIterator[Repository]:
        yield store

    return BackendConfig("memory-shared", factory)


class SlowClaim(RepositoryProxy):
    """Delays one claim of ``group`` made at or after ``at``, by ``seconds`` of the
    fake clock: ``before`` the store sees it (a slow round trip, a busy database), or
    after the store applied it (``answer``: the answer is held up on its way back)."""

    def __init__(
        self,
        inner: Repository,
        clock: FakeClock,
        group: str,
        at: datetime.datetime,
        *,
        answer: bool,
    ) -> None:
        super().__init__(inner)
        self.clock, self.group, self.at, self.answer = clock, group, at, answer
        self.armed = True

    async def claim(
        self, group: str, *, now: datetime.datetime, limit: int, lease: Lease
    ) -> ClaimResult:
        delay = self.armed and group == self.group and now >= self.at
        if delay and not self.answer:
            self.armed = False
            await self.clock.sleep(5)
        result = await self.inner.claim(group, now=now, limit=limit, lease=lease)
        if delay and self.answer and result.records:
            self.armed = False
            await self.clock.sleep(5)
        return result


def declare(
    app: Pyncette, name: str, runs: list[tuple[str, datetime.datetime]], *, static: bool = True
) -> Any:
    if static:

        @app.task(interval=10 * S, lease_duration=LEASE)
        async def ticking(context: Context) -> None:
            pass

    @app.dynamic_task(lease_duration=LEASE)
    async def queue(context: Context) -> None:
        runs.append((name, context.scheduled_at))
        await context.app_context.clock.sleep(1)

    return queue


async def test_a_slow_claim_of_one_group_does_not_shorten_the_next_groups_leases() -> None:
    """Regression (found by the chaos suite): Worker._tick claims every group with the
    `now` read at the start of the tick, so a slow claim of one group makes the next
    group's leases expire early."""
    clock = FakeClock(T0)
    backend = shared_store()
    runs: list[tuple[str, datetime.datetime]] = []
    first, second = make_app(backend, clock), make_app(backend, clock)
    queue = declare(first, "first", runs)
    declare(second, "second", runs)
    # The static group is claimed before the queue; at T0+10 s its claim takes 5 s.
    wrap_repository(
        first, lambda repo: SlowClaim(repo, clock, STATIC_GROUP, T0 + 10 * S, answer=False)
    )
    with anyio.fail_after(60):
        async with running(first) as ctx:
            await ctx.schedule_task(queue, "job", execute_at=T0 + 10 * S)
            await clock.advance(15.5)  # first claims the job at T0+15 s with now=T0+10 s
            async with running(second):
                await clock.advance(10)
    assert len(runs) == 1, f"the run executed more than once: {runs}"


async def test_a_claim_answered_after_its_lease_expired_does_not_execute() -> None:
    """Regression (found by the chaos suite): Worker._dispatch starts rows whose lease
    expired while the claim's answer was on its way, although another instance may have
    taken them since."""
    clock = FakeClock(T0)
    backend = shared_store()
    runs: list[tuple[str, datetime.datetime]] = []
    first, second = make_app(backend, clock), make_app(backend, clock)
    queue = declare(first, "first", runs)
    declare(second, "second", runs)
    # first's claim of the job is applied at T0+10 s; its answer arrives 5 s later.
    wrap_repository(first, lambda repo: SlowClaim(repo, clock, "queue", T0 + 10 * S, answer=True))
    await second_takes_over(clock, first, second, queue)
    assert len(runs) == 1, f"the run executed more than once: {runs}"


async def second_takes_over(
    clock: FakeClock, first: Pyncette, second: Pyncette, queue: Any
) -> None:
    """``first`` runs with a job due at T0+10 s; from T0+10.5 s ``second`` runs beside it
    for 10 s, long enough to take the job over once a lease of first's on it expires."""
    with anyio.fail_after(60):
        async with running(first) as ctx:
            await ctx.schedule_task(queue, "job", execute_at=T0 + 10 * S)
            await clock.advance(10.5)
            async with running(second):
                await clock.advance(10)


class SlowRegister(RepositoryProxy):
    """Delays the first registration of static tasks by ``seconds`` of the fake clock
    before the store sees it (a process starting up on a slow connection)."""

    def __init__(self, inner: Repository, clock: FakeClock, seconds: float) -> None:
        super().__init__(inner)
        self.clock, self.seconds = clock, seconds
        self.armed = True

    async def register(
        self,
        group: str,
        registrations: Sequence[Registration],
        *,
        now: datetime.datetime,
        force: bool,
    ) -> list[str]:
        if self.armed and group == STATIC_GROUP:
            self.armed = False
            await self.clock.sleep(self.seconds)
        return await self.inner.register(group, registrations, now=now, force=force)


async def test_starting_an_instance_never_runs_a_committed_run_again() -> None:
    """Regression (found by the chaos suite): an instance starting up registers its
    static tasks with scheduled_at = min(stored, first run after its `now`); landing
    just after another instance committed that first run, it rewinds the row and the run
    executes again, even at-most-once."""
    clock = FakeClock(T0)
    backend = shared_store()
    runs: list[tuple[str, datetime.datetime]] = []

    def app(name: str) -> Pyncette:
        made = make_app(backend, clock)

        @made.task(schedule="* * * * * *", execution_mode=ExecutionMode.AT_MOST_ONCE)
        async def every_second(context: Context) -> None:
            runs.append((name, context.scheduled_at))

        return made

    first, second = app("first"), app("second")
    # second computes its first run (T0+5 s) at T0+4.5 s; its registration lands at
    # T0+5.5 s, after first has committed the T0+5 s run and moved the row to T0+6 s.
    wrap_repository(second, lambda repo: SlowRegister(repo, clock, 1.0))

    async def second_lifetime(started: asyncio.Event, stop: asyncio.Event) -> None:
        async with second.create() as ctx:
            started.set()
            loop = asyncio.ensure_future(ctx.run())
            await stop.wait()
            ctx.shutdown()
            await loop

    with anyio.fail_after(60):
        async with running(first):
            await clock.advance(4.5)
            started, stop = asyncio.Event(), asyncio.Event()
            lifetime = asyncio.ensure_future(second_lifetime(started, stop))
            await clock.advance(5)
            assert started.is_set()
            stop.set()
            await clock.until_done(lifetime)
            await lifetime
    times = [at for _, at in runs]
    twice = sorted({at for at in times if times.count(at) > 1})
    assert not twice, f"runs executed twice: {twice} ({runs})"


class HangingClaim(RepositoryProxy):
    """The first claim made at or after ``at`` never returns: a connection the network
    dropped silently (no RST), or a server that accepted it and never answers."""

    def __init__(self, inner: Repository, at: datetime.datetime) -> None:
        super().__init__(inner)
        self.at = at
        self.armed = True

    async def claim(
        self, group: str, *, now: datetime.datetime, limit: int, lease: Lease
    ) -> ClaimResult:
        if self.armed and now >= self.at:
            self.armed = False
            await asyncio.Event().wait()
        return await self.inner.claim(group, now=now, limit=limit, lease=lease)


def every_ten_seconds(app: Pyncette, runs: list[datetime.datetime]) -> None:
    @app.task(interval=10 * S)
    async def ticking(context: Context) -> None:
        runs.append(context.scheduled_at)


async def test_shutdown_does_not_wait_for_a_claim_that_never_returns() -> None:
    """Regression (found by the chaos suite): Worker.run awaits a claim without a
    deadline; shutdown() only sets a flag, so a SIGINT while the connection is stalled
    does not stop the process."""
    clock = FakeClock(T0)
    app = make_app(shared_store(), clock)
    every_ten_seconds(app, [])
    wrap_repository(app, lambda repo: HangingClaim(repo, T0 + 10 * S))
    with anyio.fail_after(60):
        async with app.create() as ctx:
            loop = asyncio.ensure_future(ctx.run())
            await clock.advance(15)  # the claim at T0+10 s hangs
            ctx.shutdown()
            await clock.advance(11)  # the grace for a claim in flight: at most 10 s
            stopped = loop.done()
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
    assert stopped, "run() still waits for the stalled claim 11 s after shutdown()"


async def test_a_claim_that_never_returns_does_not_stop_polling() -> None:
    """Regression (found by the chaos suite): a claim that never returns stops the poll
    loop for good, without a log line (SQL drivers have no timeout; Redis and DynamoDB
    give up after 40-60 s)."""
    clock = FakeClock(T0)
    app = make_app(shared_store(), clock)
    runs: list[datetime.datetime] = []
    every_ten_seconds(app, runs)
    wrap_repository(app, lambda repo: HangingClaim(repo, T0 + 10 * S))
    with anyio.fail_after(60):
        async with app.create() as ctx:
            loop = asyncio.ensure_future(ctx.run())
            await clock.advance(300)
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
    assert T0 + 10 * S in runs, f"the run due at T0+10 s never ran in 5 minutes: {runs}"


class HangingCommit(RepositoryProxy):
    """The first commit never returns (a connection stalled after the claim)."""

    def __init__(self, inner: Repository) -> None:
        super().__init__(inner)
        self.armed = True

    async def commit(
        self, group: str, commits: Sequence[Commit], *, now: datetime.datetime
    ) -> list[str]:
        if self.armed:
            self.armed = False
            await asyncio.Event().wait()
        return await self.inner.commit(group, commits, now=now)


async def test_a_commit_that_never_returns_is_retried_and_does_not_block_shutdown() -> None:
    """Regression: commits, unlocks and heartbeats had no deadline either, so one stalled
    commit held the commit batcher, and with it every later commit and the shutdown."""
    clock = FakeClock(T0)
    app = make_app(shared_store(), clock)
    runs: list[datetime.datetime] = []
    every_ten_seconds(app, runs)
    wrap_repository(app, HangingCommit)
    with anyio.fail_after(60):
        async with running(app) as ctx:
            await clock.advance(45)
            state = await ctx.get_task(app.tasks["ticking"])
    assert runs == [T0 + 10 * S, T0 + 20 * S, T0 + 30 * S, T0 + 40 * S]
    assert state is not None and state.scheduled_at == T0 + 50 * S


class PerRowClaim(RepositoryProxy):
    """Every claim takes ``per_row`` seconds of the fake clock per row it asks for before
    the store sees it: a backend that writes each claimed row apart (DynamoDB does)."""

    def __init__(self, inner: Repository, clock: FakeClock, per_row: float) -> None:
        super().__init__(inner)
        self.clock, self.per_row = clock, per_row

    async def claim(
        self, group: str, *, now: datetime.datetime, limit: int, lease: Lease
    ) -> ClaimResult:
        await self.clock.sleep(self.per_row * limit)
        return await self.inner.claim(group, now=now, limit=limit, lease=lease)


async def test_claims_too_slow_for_a_full_batch_still_make_progress() -> None:
    """Regression (found by the chaos suite): a claim that takes longer than half a
    lease is abandoned and retried with the same limit; when a claim's time grows with
    its batch (DynamoDB writes each row apart; the kill storm on moto, 100-row batches,
    2 s leases), every claim is abandoned and nothing due ever runs."""
    clock = FakeClock(T0)
    app = make_app(shared_store(), clock, batch_size=100)
    runs: list[datetime.datetime] = []

    @app.dynamic_task(lease_duration=2 * S)
    async def queue(context: Context) -> None:
        runs.append(context.scheduled_at)

    # 100 rows: 1.2 s, past the 1 s the loop allows a call with a 2 s lease; 50 rows: 0.6 s
    wrap_repository(app, lambda repo: PerRowClaim(repo, clock, 0.012))
    with anyio.fail_after(60):
        async with running(app) as ctx:
            for index in range(100):
                await ctx.schedule_task(queue, f"job-{index}", execute_at=T0 + S)
            await clock.advance(120)
    assert len(runs) == 100, f"{len(runs)} of 100 due runs executed in two minutes"


class LateAnswer(RepositoryProxy):
    """The first claim of ``group`` that takes rows is applied at once and answered
    ``seconds`` of the fake clock later."""

    def __init__(self, inner: Repository, clock: FakeClock, group: str, seconds: float) -> None:
        super().__init__(inner)
        self.clock, self.group, self.seconds = clock, group, seconds
        self.armed = True

    async def claim(
        self, group: str, *, now: datetime.datetime, limit: int, lease: Lease
    ) -> ClaimResult:
        result = await self.inner.claim(group, now=now, limit=limit, lease=lease)
        if self.armed and group == self.group and result.records:
            self.armed = False
            await self.clock.sleep(self.seconds)
        return result


async def test_rows_claimed_while_shutting_down_are_handed_back() -> None:
    """Regression (found by the start-up storm in CI): shutdown() cancelled a claim on
    its way, although the server had taken its rows already; nobody ran them until
    their leases expired (a minute by default)."""
    clock = FakeClock(T0)
    backend = shared_store()
    started: list[tuple[str, datetime.datetime]] = []

    def app(name: str) -> tuple[Pyncette, Any]:
        made = make_app(backend, clock)

        @made.dynamic_task(lease_duration=60 * S)
        async def queue(context: Context) -> None:
            started.append((name, context.app_context.clock.now()))

        return made, queue

    (first, queue), (second, _) = app("first"), app("second")
    wrap_repository(first, lambda repo: LateAnswer(repo, clock, "queue", 1.0))
    with anyio.fail_after(60):
        async with first.create() as ctx:
            loop = asyncio.ensure_future(ctx.run())
            await ctx.schedule_task(queue, "job", execute_at=T0 + 10 * S)
            await clock.advance(10.5)  # first's claim took the job; its answer is on the way
            ctx.shutdown()
            await clock.until_done(loop)
            await loop
        async with running(second):
            await clock.advance(5)
    assert [name for name, _ in started] == ["second"], started
    assert started[0][1] < T0 + 20 * S, f"the job waited for its lease to expire: {started}"


class HeldUpSpawn(DefaultExecutor):
    """An executor that, once, is held up for ``seconds`` of the fake clock between the
    claim and the start of an execution: what a loop blocked by other code, or a
    machine that stalls the whole process, does to a claimed run."""

    def __init__(self, clock: FakeClock, seconds: float, **options: Any) -> None:
        super().__init__(**options)
        self.clock, self.seconds = clock, seconds
        self.armed = True

    async def spawn(self, execution: Any) -> None:
        if self.armed:
            self.armed = False
            await self.clock.sleep(self.seconds)
        await super().spawn(execution)


async def test_a_run_whose_lease_ran_out_before_it_started_does_not_start() -> None:
    """Regression (found by the kill scenario on DynamoDB Local in CI, where two
    processes started 40 runs 12 s after their leases had expired, and 3 of them ran
    twice): only the claim's answer was checked against the lease, not the start, so
    a process held up between the two started runs another instance had taken over."""
    clock = FakeClock(T0)
    backend = shared_store()
    runs: list[tuple[str, datetime.datetime]] = []
    first = make_app(
        backend,
        clock,
        executor_cls=lambda **options: HeldUpSpawn(clock, 5.0, **options),
    )
    second = make_app(backend, clock)
    # no static task: the hold-up is for the job's spawn
    queue = declare(first, "first", runs, static=False)
    declare(second, "second", runs, static=False)
    lost: list[LeaseLost] = []
    first.subscribe(lost.append, LeaseLost)
    # first claims the job at T0+10 s (lease until T0+13 s) and would start it at T0+15 s
    await second_takes_over(clock, first, second, queue)
    assert runs == [("second", T0 + 10 * S)], f"the run executed {len(runs)} times: {runs}"
    assert [event.scheduled_at for event in lost] == [T0 + 10 * S]
