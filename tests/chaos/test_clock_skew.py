"""Scenario 5, clock skew: two instances on one real backend, one clock 2 s ahead of the
true time and one 2 s behind (a relative skew of 4 s), driven by one virtual clock.

What a clock decides, and so what skew can break (reasoned out in
``docs/reliability.md``, "Clock skew"): a claim takes a row whose ``locked_until`` is at
or before the claimer's ``now``, and ``locked_until`` was written from the previous
holder's clock. An instance running ``Δ`` ahead of another therefore sees that one's
leases expire ``Δ`` early. Commits and heartbeats compare lease tokens, never times.

* At-most-once: an execution is committed (guarded by its lease token) before it starts,
  so of two instances that both claimed a run only the one whose commit lands runs it.
  No skew makes a run execute twice; the tests force the worst interleaving (the ahead
  instance claims between the behind one's claim and its commit) and check it.
* At-least-once: a run held for ``D`` seconds (claim to commit) is taken over while it
  is still running when ``D > lease_duration - Δ``; the tests show both sides of that
  boundary.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from backends import BackendConfig
from chaos._storm_helpers import OffsetClock, publish, repetitions
from harness import FakeClock, VirtualClock, make_app, running
from pyncette import Context, ExecutionMode, Pyncette, PyncetteContext
from pyncette.model import Lease
from pyncette.repository import (
    ClaimResult,
    Commit,
    Repository,
    RepositoryFactory,
    RepositoryProxy,
)

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.anyio,
    pytest.mark.shared_storage,
    pytest.mark.injected_clock_only(reason="two clocks, each offset from one FakeClock"),
]

S = datetime.timedelta(seconds=1)
AHEAD = 2 * S
BEHIND = -2 * S
SKEW = AHEAD - BEHIND
"""The relative skew between the two instances: 4 s."""
SECONDS = repetitions(12, 120)
"""Seconds of scheduled work in the at-most-once run (120 in the long form)."""


class Hooked(RepositoryProxy):
    """Awaits ``before_commit(group)`` ahead of every commit and calls
    ``after_claim(group)`` after every claim."""

    def __init__(
        self,
        inner: Repository,
        before_commit: Callable[[str], Awaitable[None]] | None,
        after_claim: Callable[[str], None] | None,
    ) -> None:
        super().__init__(inner)
        self.before_commit = before_commit
        self.after_claim = after_claim

    async def commit(
        self, group: str, commits: Sequence[Commit], *, now: datetime.datetime
    ) -> list[str]:
        if self.before_commit is not None:
            await self.before_commit(group)
        return await super().commit(group, commits, now=now)

    async def claim(
        self, group: str, *, now: datetime.datetime, limit: int, lease: Lease
    ) -> ClaimResult:
        result = await super().claim(group, now=now, limit=limit, lease=lease)
        if self.after_claim is not None:
            self.after_claim(group)
        return result


def hooked(
    factory: RepositoryFactory,
    before_commit: Callable[[str], Awaitable[None]] | None = None,
    after_claim: Callable[[str], None] | None = None,
) -> RepositoryFactory:
    @asynccontextmanager
    async def wrapped(**options: Any) -> AsyncIterator[Repository]:
        async with factory(**options) as repository:
            yield Hooked(repository, before_commit, after_claim)

    return wrapped


def skewed(
    backend: BackendConfig, clock: VirtualClock, offset: datetime.timedelta, **options: Any
) -> Pyncette:
    """An app on ``backend`` whose clock reads ``offset`` off the test's virtual time."""
    assert isinstance(clock, FakeClock)
    app = make_app(backend, clock, **options)
    app.clock = OffsetClock(clock, offset)
    return app


@pytest.mark.parametrize(
    "lease_duration",
    [pytest.param(2 * S, id="lease-2s-below-skew"), pytest.param(60 * S, id="lease-60s")],
)
async def test_at_most_once_never_runs_a_scheduled_time_twice(
    backend: BackendConfig,
    clock: VirtualClock,
    lease_duration: datetime.timedelta,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Both instances run an at-most-once static task every second, and the behind one
    keeps scheduling one-off at-most-once instances due at once (so it claims them
    first). Each time it commits one of its claims, the ahead instance is made to claim
    in the same group first: with a lease shorter than the skew it takes the behind
    one's fresh leases over as expired, the behind one's commit is refused and only the
    ahead one runs them; with a longer lease it takes nothing. Every scheduled time runs
    exactly once either way, and nothing is lost."""
    caplog.set_level(logging.WARNING, logger="pyncette")
    mode = ExecutionMode.AT_MOST_ONCE
    runs: list[tuple[str, str, datetime.datetime, datetime.datetime]] = []
    """(instance, which, scheduled_at, true start time)"""
    contexts: dict[str, PyncetteContext] = {}
    b_claims = 0
    b_claimed = asyncio.Event()
    pokes = 0

    async def before_commit(group: str) -> None:
        """The behind instance is about to commit claimed runs: let the ahead one claim
        in that group first."""
        nonlocal pokes
        if group != "jobs" or "ahead" not in contexts:
            return
        pokes += 1
        target = b_claims + 1
        ahead = contexts["ahead"]
        await ahead.schedule_task(poke, f"poke-{pokes}", execute_at=ahead.clock.now())
        while b_claims < target:  # woken by the poke, the ahead instance claims in "jobs"
            b_claimed.clear()
            await asyncio.wait_for(b_claimed.wait(), 10)

    def after_claim(group: str) -> None:
        nonlocal b_claims
        if group == "jobs":
            b_claims += 1
            b_claimed.set()

    behind = skewed(backend, clock, BEHIND, poll_interval=S)
    ahead = skewed(backend, clock, AHEAD, poll_interval=S)
    behind.repository_factory = hooked(behind.repository_factory, before_commit=before_commit)
    ahead.repository_factory = hooked(ahead.repository_factory, after_claim=after_claim)

    for which, app in (("behind", behind), ("ahead", ahead)):

        def declare(which: str, app: Pyncette) -> None:
            async def record(context: Context) -> None:
                runs.append((context.task.name, which, context.scheduled_at, clock.now()))

            app.task(name="tick", interval=S, execution_mode=mode, lease_duration=lease_duration)(
                record
            )
            app.dynamic_task(name="jobs", execution_mode=mode, lease_duration=lease_duration)(
                record
            )

        declare(which, app)

    @ahead.dynamic_task()
    async def poke(context: Context) -> None:
        return None

    scheduled: list[str] = []
    async with running(behind) as ctx_behind, running(ahead) as ctx_ahead:
        contexts["ahead"] = ctx_ahead
        jobs = behind.tasks["jobs"]
        for second in range(SECONDS):
            for k in range(3):
                name = f"j-{second}-{k}"
                scheduled.append(name)
                await ctx_behind.schedule_task(jobs, name, execute_at=behind.clock.now())
            await clock.advance(S)
        await clock.advance(5 * S)
        ctx_behind.shutdown()
        ctx_ahead.shutdown()

    per_run = collections.Counter((name, at) for name, _, at, _ in runs)
    twice = {key: n for key, n in per_run.items() if n > 1}
    assert twice == {}, f"scheduled runs executed more than once: {twice}"
    one_offs = sorted(name for name, _, _, _ in runs if name.startswith("j-"))
    assert one_offs == sorted(scheduled), "every one-off runs exactly once"
    ticks = sorted(at for name, _, at, _ in runs if name == "tick")
    assert ticks == [ticks[0] + i * S for i in range(len(ticks))], "no tick is skipped"
    assert len(ticks) >= SECONDS + 3
    # a run may start early by at most how far the fastest clock is ahead
    assert all(started >= at - AHEAD for _, _, at, started in runs)

    # Runs the behind instance claimed but the ahead one took over before its commit:
    # the behind one logs each and skips it; the ahead one ran it.
    refused = [
        str(r.args[0]).rpartition(":")[2]
        for r in caplog.records
        if "before it started; skipping" in r.msg and isinstance(r.args, tuple)
    ]
    by_ahead = {name for name, which, _, _ in runs if which == "ahead"}
    publish(
        {
            "scenario": "skew",
            "test": "at-most-once",
            "backend": backend.name,
            "lease_s": lease_duration.total_seconds(),
            "skew_s": SKEW.total_seconds(),
            "runs": len(runs),
            "duplicates": len(twice),
            "forced_interleavings": pokes,
            "taken_over": len(refused),
            "earliest_start_s": min((started - at).total_seconds() for _, _, at, started in runs),
        }
    )
    assert pokes >= len(scheduled) // 3, "the interleaving was forced at least once a second"
    if lease_duration <= SKEW:
        # the behind instance's fresh leases look expired to the ahead one
        assert refused, "the ahead instance never took a lease over"
        assert set(refused) <= by_ahead
    else:
        assert refused == []


@pytest.mark.parametrize(
    ("execution", "duplicated"),
    [
        pytest.param(5 * S, False, id="held-5s-of-lease-10s-safe"),
        pytest.param(7 * S, True, id="held-7s-of-lease-10s-taken-over"),
    ],
)
async def test_at_least_once_is_taken_over_only_past_lease_minus_skew(
    backend: BackendConfig,
    clock: VirtualClock,
    execution: datetime.timedelta,
    duplicated: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The behind instance claims an at-least-once run with a 10 s lease and holds it
    for ``execution`` without heartbeats; the ahead instance starts right after. It sees
    the lease expire 4 s early, at 6 s: a run held 5 s is committed before that (one
    execution), one held 7 s is taken over while still running (two executions, and
    the first one's commit is refused). ``lease_duration - skew`` is the exact bound."""
    caplog.set_level(logging.WARNING, logger="pyncette")
    lease = 10 * S
    runs: list[tuple[str, datetime.datetime]] = []

    def declare(which: str, app: Pyncette) -> None:
        async def slow(context: Context) -> None:
            runs.append((which, clock.now()))
            await clock.sleep(execution.total_seconds())

        app.dynamic_task(name="slow", lease_duration=lease)(slow)

    behind = skewed(backend, clock, BEHIND, poll_interval=S)
    ahead = skewed(backend, clock, AHEAD, poll_interval=S)
    declare("behind", behind)
    declare("ahead", ahead)
    start = clock.now()
    async with running(behind) as ctx_behind:
        await ctx_behind.schedule_task(
            behind.tasks["slow"], "report", execute_at=behind.clock.now()
        )
        await clock.advance(0)
        assert runs == [("behind", start)]
        async with running(ahead):
            await clock.advance(20 * S)
    lost = [r for r in caplog.records if "before its commit" in r.getMessage()]
    publish(
        {
            "scenario": "skew",
            "test": "at-least-once",
            "backend": backend.name,
            "lease_s": lease.total_seconds(),
            "held_s": execution.total_seconds(),
            "executions": len(runs),
            "taken_over_after_s": (runs[1][1] - start).total_seconds() if len(runs) > 1 else None,
        }
    )
    if duplicated:
        assert runs == [("behind", start), ("ahead", start + lease - SKEW)]
        assert len(lost) == 1  # the first execution's commit is refused, not applied
    else:
        assert runs == [("behind", start)]
        assert lost == []
