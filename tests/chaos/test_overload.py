"""Scenario 7, overload: ten times more due work than one process can run at once.

100 one-off instances fall due together (1,000 in the long form); the app runs at most
10 at a time (``concurrency_limit``) and each execution takes 50 s of a 60 s lease, so a
row that waited in the process after being claimed would lose its lease before it
started. The scheduler must claim only what it can start at once: every execution
starts at the instant of its claim, at no moment is a row locked that is not executing,
no lease expires and no commit is refused, and each instance runs exactly once, in
waves of ten.
Virtual time throughout; the repository is observed through a proxy.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import pytest

from backends import BackendConfig
from chaos._storm_helpers import publish, repetitions
from harness import T0, VirtualClock, make_app, running
from pyncette import Context, Pyncette, PyncetteContext
from pyncette.events import ExecutionFinished, ExecutionStarted, LeaseLost
from pyncette.executor import SynchronousExecutor
from pyncette.model import Lease
from pyncette.repository import (
    ClaimResult,
    Repository,
    RepositoryFactory,
    RepositoryProxy,
)

T = TypeVar("T")
pytestmark = [
    pytest.mark.chaos,
    pytest.mark.anyio,
    pytest.mark.injected_clock_only(reason="virtual time with an observed repository"),
]

S = datetime.timedelta(seconds=1)
LIMIT = 10
WAVES = repetitions(10, 100)
"""Executions in a row each slot runs (100 in the long form)."""
INSTANCES = LIMIT * WAVES
EXECUTION = 50 * S
LEASE = 60 * S


@dataclass
class Observed:
    """What one app did, as its repository and its events saw it."""

    clock: VirtualClock
    running: int = 0
    started: dict[str, list[datetime.datetime]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )
    claimed_at: dict[str, list[datetime.datetime]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )
    over_capacity: list[str] = field(default_factory=list)
    refused_commits: list[str] = field(default_factory=list)
    leases_lost: int = 0
    claims: int = 0
    max_running: int = 0

    def on_event(self, event: object) -> None:
        if isinstance(event, ExecutionStarted):
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.started[event.task.name].append(self.clock.now())
        elif isinstance(event, ExecutionFinished):
            self.running -= 1
        elif isinstance(event, LeaseLost):
            self.leases_lost += 1


class Observing(RepositoryProxy):
    def __init__(self, inner: Repository, seen: Observed, limit: int) -> None:
        super().__init__(inner)
        self.seen = seen
        self.limit = limit

    async def claim(
        self, group: str, *, now: datetime.datetime, limit: int, lease: Lease
    ) -> ClaimResult:
        running = self.seen.running
        result = await super().claim(group, now=now, limit=limit, lease=lease)
        self.seen.claims += 1
        if result.records and running + len(result.records) > self.limit:
            self.seen.over_capacity.append(
                f"{self.seen.clock.now()}: claimed {len(result.records)} with {running} running"
            )
        for record in result.records:
            self.seen.claimed_at[record.name].append(self.seen.clock.now())
        return result

    async def commit(self, group: str, commits: Any, *, now: datetime.datetime) -> list[str]:
        lost = await super().commit(group, commits, now=now)
        self.seen.refused_commits += lost
        return lost


def observing(factory: RepositoryFactory, seen: Observed, limit: int) -> RepositoryFactory:
    @asynccontextmanager
    async def wrapped(**options: Any) -> AsyncIterator[Repository]:
        async with factory(**options) as repository:
            yield Observing(repository, seen, limit)

    return wrapped


def overloaded_app(
    backend: BackendConfig, clock: VirtualClock, seen: Observed, **options: Any
) -> Pyncette:
    options.setdefault("concurrency_limit", LIMIT)
    app = make_app(backend, clock, poll_interval=S, **options)
    app.repository_factory = observing(app.repository_factory, seen, LIMIT)
    app.subscribe(seen.on_event)

    @app.dynamic_task(name="work", lease_duration=LEASE)
    async def work(context: Context) -> None:
        await clock.sleep(EXECUTION.total_seconds())

    return app


async def locked_rows(ctx: PyncetteContext, template: Any) -> list[tuple[str, datetime.datetime]]:
    """The instances holding a lease now, with its expiry."""
    rows: list[tuple[str, datetime.datetime]] = []
    token = None
    while True:
        page = await ctx.list_tasks(template, limit=50, continuation_token=token)
        rows += [
            (state.task.name, state.locked_until)
            for state in page.tasks
            if state.locked_by is not None and state.locked_until is not None
        ]
        token = page.continuation_token
        if token is None:
            return rows


def names() -> dict[str, dict[str, Any]]:
    return {f"w{i:03d}": {"execute_at": T0} for i in range(INSTANCES)}


async def test_overload_claims_only_what_it_can_start(
    backend: BackendConfig, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pyncette")
    seen = Observed(clock)
    app = overloaded_app(backend, clock, seen)
    waves = WAVES
    async with running(app) as ctx:
        work = app.tasks["work"]
        await ctx.schedule_tasks(work, names())
        await clock.advance(EXECUTION / 2)
        for wave in range(waves):
            # mid-wave: exactly the executing rows are locked, and their leases are live
            locked = await locked_rows(ctx, work)
            assert len(locked) == seen.running == LIMIT, f"wave {wave}"
            assert all(until > clock.now() for _, until in locked)
            await clock.advance(EXECUTION)
        assert seen.running == 0
        assert await locked_rows(ctx, work) == []
        assert (await ctx.list_tasks(work)).tasks == []

    publish(
        {
            "scenario": "overload",
            "backend": backend.name,
            "instances": INSTANCES,
            "concurrency_limit": LIMIT,
            "max_running": seen.max_running,
            "claims": seen.claims,
            "claimed_beyond_capacity": len(seen.over_capacity),
            "refused_commits": len(seen.refused_commits),
            "leases_lost": seen.leases_lost,
            "makespan_s": (clock.now() - T0).total_seconds(),
        }
    )
    assert seen.over_capacity == []
    assert sorted(seen.started) == sorted(names())
    assert all(len(times) == 1 for times in seen.started.values()), "ran exactly once"
    waited = {
        name: seen.started[name][0] - claimed[0]
        for name, claimed in seen.claimed_at.items()
        if seen.started[name][0] != claimed[0]
    }
    assert waited == {}, "claimed rows waited in the process before starting"
    assert all(len(times) == 1 for times in seen.claimed_at.values()), "claimed once"
    assert seen.refused_commits == [] and seen.leases_lost == 0
    assert [r.getMessage() for r in caplog.records] == []
    assert seen.max_running == LIMIT
    # ten waves of 50 s; a claim when a wave ends and the polls in between, no spinning
    assert seen.claims <= waves * (EXECUTION / S + 5)


@pytest.mark.shared_storage
async def test_a_saturated_instance_leaves_due_work_to_others(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    """A second instance started while the first is saturated finds the work the first
    did not claim: the first hoards nothing, and the backlog drains twice as fast."""
    first, second = Observed(clock), Observed(clock)
    app_first = overloaded_app(backend, clock, first)
    app_second = overloaded_app(backend, clock, second)
    async with running(app_first) as ctx:
        await ctx.schedule_tasks(app_first.tasks["work"], names())
        await clock.advance(10 * S)
        async with running(app_second):
            await clock.advance(WAVES // 2 * EXECUTION)
        await clock.advance(EXECUTION)
    started = collections.Counter(
        {name: len(t) for name, t in first.started.items()}
    ) + collections.Counter({name: len(t) for name, t in second.started.items()})
    assert sorted(started) == sorted(names()) and set(started.values()) == {1}
    assert len(second.started) >= (WAVES // 2 - 1) * LIMIT
    assert first.over_capacity == second.over_capacity == []
    assert first.refused_commits == second.refused_commits == []


class ThrottlingExecutor:
    """A Pyncette 1.x style executor: ``spawn_task`` waits for one of ``limit`` slots."""

    def __init__(self, limit: int = LIMIT, **_: Any) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Future[None]] = set()

    async def __aenter__(self) -> ThrottlingExecutor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def spawn_task(self, execution: Awaitable[None]) -> None:
        await self._slots.acquire()

        async def run() -> None:
            try:
                await execution
            finally:
                self._slots.release()

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


@pytest.mark.parametrize(
    "executor",
    [
        pytest.param(SynchronousExecutor, id="synchronous"),
        pytest.param(ThrottlingExecutor, id="1x-throttling"),
    ],
)
async def test_other_executors_claim_only_what_they_can_start(
    clock: VirtualClock, executor: type[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The same overload with the other executors (memory backend): each claims only
    what it can start. ``SynchronousExecutor`` runs one execution at a time, so it claims
    one row at a time; a 1.x-style executor that throttles in ``spawn_task`` is handed
    at most ``concurrency_limit`` rows per claim. (Both used to claim a whole batch and
    let the last rows' leases expire while they waited.)"""
    from pyncette.memory import memory_repository

    caplog.set_level(logging.WARNING, logger="pyncette")
    seen = Observed(clock)
    backend = BackendConfig("memory", memory_repository, shared=False)
    app = overloaded_app(backend, clock, seen, executor_cls=executor)
    async with running(app) as ctx:
        await ctx.schedule_tasks(app.tasks["work"], names())
        for _ in range(INSTANCES):
            await clock.advance(EXECUTION)
            if seen.running == 0 and len(seen.started) == INSTANCES:
                break
    waited = {
        name: seen.started[name][0] - claimed[0]
        for name, claimed in seen.claimed_at.items()
        if name in seen.started and seen.started[name][0] - claimed[0] >= LEASE
    }
    assert waited == {}, f"{len(waited)} rows started after their lease had expired"
