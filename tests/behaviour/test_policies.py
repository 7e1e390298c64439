"""Scheduling policies: misfire_grace_time, coalesce and max_jitter, per task and per
dynamic instance. Runs on every backend under the fake clock."""

from __future__ import annotations

import datetime
import hashlib
import logging
from typing import Any

import pytest

from backends import BackendConfig
from harness import T0, VirtualClock, make_app, running
from pyncette import Context, ExecutionMode
from pyncette.events import ExecutionSkipped

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.injected_clock_only(
        "a feature beyond 1.x: 1.x-style harnesses are covered by the 1.x behaviour suite"
    ),
]
S = datetime.timedelta(seconds=1)


def _offset(key: str, max_jitter: datetime.timedelta) -> datetime.timedelta:
    """The documented jitter: BLAKE2b (8 bytes, big-endian) modulo max_jitter in ms."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    units = max_jitter // datetime.timedelta(milliseconds=1)
    return datetime.timedelta(milliseconds=int.from_bytes(digest, "big") % units)


# -- misfire_grace_time -------------------------------------------------------------------


@pytest.mark.parametrize("mode", [ExecutionMode.AT_LEAST_ONCE, ExecutionMode.AT_MOST_ONCE])
async def test_misfired_runs_are_skipped_not_executed(
    backend: BackendConfig,
    clock: VirtualClock,
    mode: ExecutionMode,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # one slot: while the first run takes 35 s nothing else is claimed
    app = make_app(backend, clock, concurrency_limit=1)
    seen: list[datetime.datetime] = []
    skipped: list[ExecutionSkipped] = []
    app.subscribe(skipped.append, ExecutionSkipped)

    @app.task(interval=10 * S, misfire_grace_time=5 * S, execution_mode=mode)
    async def slow(context: Context) -> None:
        seen.append(context.scheduled_at)
        if len(seen) == 1:
            await clock.sleep(35)

    with caplog.at_level(logging.WARNING, logger="pyncette.worker"):
        async with running(app):
            await clock.advance(55)
    # at 45: the run of 20 is 25 s late and the run of 30 15 s late (skipped, one
    # claim each); the run of 40 is 5 s late, within the grace: it runs
    assert seen == [T0 + 10 * S, T0 + 40 * S, T0 + 50 * S]
    assert [(e.task, e.scheduled_at) for e in skipped] == [
        (slow, T0 + 20 * S),
        (slow, T0 + 30 * S),
    ]
    assert "misfire" in skipped[0].reason
    assert sum("Skipped slow" in r.getMessage() for r in caplog.records) == 2


async def test_without_grace_late_runs_execute(backend: BackendConfig, clock: VirtualClock) -> None:
    app = make_app(backend, clock, concurrency_limit=1)
    seen: list[datetime.datetime] = []
    skipped: list[ExecutionSkipped] = []
    app.subscribe(skipped.append, ExecutionSkipped)

    @app.task(interval=10 * S)
    async def slow(context: Context) -> None:
        seen.append(context.scheduled_at)
        if len(seen) == 1:
            await clock.sleep(35)

    async with running(app):
        await clock.advance(55)
    assert seen == [T0 + i * 10 * S for i in range(1, 6)]
    assert skipped == []


@pytest.mark.parametrize("mode", [ExecutionMode.AT_LEAST_ONCE, ExecutionMode.AT_MOST_ONCE])
async def test_misfired_one_off_instance_is_removed(
    backend: BackendConfig, clock: VirtualClock, mode: ExecutionMode
) -> None:
    app = make_app(backend, clock)
    seen: list[str] = []
    skipped: list[ExecutionSkipped] = []
    app.subscribe(skipped.append, ExecutionSkipped)

    @app.dynamic_task(execution_mode=mode)
    async def once(context: Context) -> None:
        seen.append(context.task.name)

    async with running(app) as ctx:
        hour = datetime.timedelta(hours=1)
        # per instance: only "stale" has a grace, and it is two hours overdue
        await ctx.schedule_task(once, "stale", execute_at=T0 - 2 * hour, misfire_grace_time=hour)
        await ctx.schedule_task(once, "late", execute_at=T0 - 2 * hour)
        await ctx.schedule_task(once, "fresh", execute_at=T0 - 30 * S, misfire_grace_time=hour)
        await clock.advance(5)
        assert await ctx.get_task(once, "stale") is None
        assert await ctx.get_task(once, "late") is None
    assert sorted(seen) == ["fresh", "late"]
    assert [(e.task.name, e.scheduled_at) for e in skipped] == [("stale", T0 - 2 * hour)]


# -- coalesce -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # every missed run, one claim at a time
        ({"coalesce": "all"}, [10, 20, 30, 40, 50]),
        ({}, [10, 20, 30, 40, 50]),
        # the first run was claimed on time at 10; the runs due while it ran (20, 30,
        # 40) are coalesced into the earliest of them, claimed at 45; then 50
        ({"coalesce": "earliest"}, [10, 20, 50]),
        # everything due before the run ended is dropped: the next run is 50
        ({"coalesce": "latest"}, [10, 50]),
        ({"fast_forward": True}, [10, 50]),
        ({"fast_forward": True, "coalesce": "latest"}, [10, 50]),
    ],
)
async def test_coalesce_of_a_static_task(
    backend: BackendConfig, clock: VirtualClock, options: dict[str, Any], expected: list[int]
) -> None:
    app = make_app(backend, clock)
    seen: list[datetime.datetime] = []

    @app.task(interval=10 * S, **options)
    async def slow(context: Context) -> None:
        seen.append(context.scheduled_at)
        if len(seen) == 1:
            await clock.sleep(35)

    async with running(app):
        await clock.advance(55)
    assert seen == [T0 + i * S for i in expected]


@pytest.mark.parametrize(
    ("coalesce", "expected"),
    [("all", [60, 120, 180, 240]), ("earliest", [60, 120, 240]), ("latest", [60, 240])],
)
async def test_coalesce_per_instance_overrides_the_template(
    backend: BackendConfig, clock: VirtualClock, coalesce: str, expected: list[int]
) -> None:
    app = make_app(backend, clock)
    seen: list[datetime.datetime] = []

    # the template says fast_forward; each instance's coalesce replaces it
    @app.dynamic_task(schedule="* * * * *", fast_forward=True, lease_duration=300 * S)
    async def report(context: Context) -> None:
        seen.append(context.scheduled_at)
        if len(seen) == 1:
            await clock.sleep(150)  # 60..210: overruns 120 and 180

    async with running(app) as ctx:
        await ctx.schedule_task(report, "mine", coalesce=coalesce)
        await clock.advance(250)
    assert seen == [T0 + i * S for i in expected]


# -- max_jitter ---------------------------------------------------------------------------


async def test_cron_jitter_spreads_instances_deterministically(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    started: dict[str, list[tuple[datetime.datetime, datetime.datetime]]] = {}
    jitter = 30 * S

    @app.dynamic_task(schedule="* * * * *")
    async def poll_feed(context: Context) -> None:
        started.setdefault(context.task.name, []).append((context.scheduled_at, clock.now()))

    names = [f"feed-{i}" for i in range(8)]
    async with running(app) as ctx:
        for name in names:
            await ctx.schedule_task(poll_feed, name, max_jitter=jitter)
        await ctx.schedule_task(poll_feed, "plain")
        await clock.advance(215)  # past 3 min + 30 s; the fourth minute starts at 240
    assert started["plain"] == [(T0 + i * 60 * S, T0 + i * 60 * S) for i in (1, 2, 3)]
    offsets = set()
    for name in names:
        expected = []
        for minute in (1, 2, 3):
            nominal = T0 + minute * 60 * S
            offset = _offset(f"poll_feed:{name}\x00{nominal.isoformat()}", jitter)
            offsets.add(offset)
            # context.scheduled_at is the jittered time, and the run starts then
            expected.append((nominal + offset, nominal + offset))
        assert started[name] == expected, name
    assert len(offsets) > 12  # 24 runs spread over 30 s, not stacked on one second


async def test_interval_jitter_is_a_fixed_phase_without_drift(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    seen: list[datetime.datetime] = []
    jitter = 4 * S

    @app.task(interval=10 * S, max_jitter=jitter)
    async def beat(context: Context) -> None:
        seen.append(context.scheduled_at)

    phase = _offset("beat\x00interval", jitter)
    assert S < phase < jitter  # this name's phase is not trivially zero
    async with running(app) as ctx:
        await clock.advance(60)
        state = await ctx.get_task(beat)
    assert seen == [T0 + i * 10 * S + phase for i in range(1, 6)]
    assert state is not None and state.scheduled_at == T0 + 60 * S + phase


async def test_jitter_per_instance_with_one_off_and_interval(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    seen: list[tuple[str, datetime.datetime]] = []

    @app.dynamic_task()
    async def job(context: Context) -> None:
        seen.append((context.task.name, context.scheduled_at))

    async with running(app) as ctx:
        await ctx.schedule_task(job, "once", execute_at=T0 + 20 * S, max_jitter=10 * S)
        await ctx.schedule_task(job, "every", interval=30 * S, max_jitter=10 * S)
        await clock.advance(95)
    once = T0 + 20 * S + _offset(f"job:once\x00{(T0 + 20 * S).isoformat()}", 10 * S)
    phase = _offset("job:every\x00interval", 10 * S)
    assert sorted(seen) == sorted(
        [("once", once)] + [("every", T0 + i * 30 * S + phase) for i in (1, 2, 3)]
    )
