"""Static tasks: schedules, time zones, fast-forward, options. Runs on every backend."""

from __future__ import annotations

import datetime

import pytest

from backends import BackendConfig
from harness import T0, ClockFactory, VirtualClock, make_app, running
from pyncette import Context
from pyncette.schedule import next_cron, parse_timezone

pytestmark = pytest.mark.anyio
S = datetime.timedelta(seconds=1)


async def test_interval_task_runs_every_interval(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    seen: list[datetime.datetime] = []

    @app.task(interval=datetime.timedelta(seconds=10))
    async def tick(context: Context) -> None:
        seen.append(context.scheduled_at)

    async with running(app):
        await clock.advance(55)
    assert seen == [T0 + i * 10 * S for i in range(1, 6)]


async def test_cron_with_five_and_six_fields(backend: BackendConfig, clock: VirtualClock) -> None:
    app = make_app(backend, clock)
    minutes: list[datetime.datetime] = []
    tens: list[datetime.datetime] = []

    @app.task(schedule="* * * * *")
    async def every_minute(context: Context) -> None:
        minutes.append(context.scheduled_at)

    @app.task(schedule="* * * * * */10")
    async def every_ten_seconds(context: Context) -> None:
        tens.append(context.scheduled_at)

    async with running(app):
        await clock.advance(125)
    assert minutes == [T0 + 60 * S, T0 + 120 * S]
    assert tens == [T0 + i * 10 * S for i in range(1, 13)]


async def test_executions_start_on_time_not_at_the_next_poll(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock, poll_interval=datetime.timedelta(seconds=30))
    started: list[datetime.datetime] = []

    @app.task(interval=datetime.timedelta(seconds=7))
    async def punctual(context: Context) -> None:
        started.append(clock.now())

    async with running(app):
        await clock.advance(22)
    assert started == [T0 + 7 * S, T0 + 14 * S, T0 + 21 * S]


async def test_timezone_follows_local_wall_clock(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock, poll_interval=datetime.timedelta(hours=1))
    seen: list[datetime.datetime] = []

    @app.task(schedule="0 12 * * *", timezone="Europe/Dublin")
    async def noon_in_dublin(context: Context) -> None:
        seen.append(context.scheduled_at)

    async with running(app):
        await clock.advance(datetime.timedelta(days=2))
    # January: Dublin is on GMT
    assert seen == [T0 + datetime.timedelta(hours=12), T0 + datetime.timedelta(days=1, hours=12)]


async def test_disabled_task_never_runs(backend: BackendConfig, clock: VirtualClock) -> None:
    app = make_app(backend, clock)
    runs: list[str] = []

    @app.task(interval=S, enabled=False)
    async def off(context: Context) -> None:
        runs.append("off")

    @app.task(interval=S)
    async def on(context: Context) -> None:
        runs.append("on")

    async with running(app):
        await clock.advance(3)
    assert runs == ["on"] * 3


async def test_extra_arguments_and_shared_function(
    backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(backend, clock)
    seen: list[tuple[str, str]] = []

    @app.task(name="task1", interval=10 * S, username="abra")
    @app.task(name="task2", interval=20 * S, username="kadabra")
    async def greet(context: Context) -> None:
        seen.append((context.task.name, context.args["username"]))

    async with running(app):
        await clock.advance(20)
    assert sorted(seen) == [("task1", "abra"), ("task1", "abra"), ("task2", "kadabra")]


@pytest.mark.parametrize("fast_forward", [False, True])
async def test_fast_forward_skips_missed_runs(
    backend: BackendConfig, clock: VirtualClock, fast_forward: bool
) -> None:
    app = make_app(backend, clock)
    seen: list[datetime.datetime] = []

    @app.task(interval=10 * S, fast_forward=fast_forward)
    async def slow(context: Context) -> None:
        seen.append(context.scheduled_at)
        if len(seen) == 1:
            await clock.sleep(35)  # overruns three later runs

    async with running(app):
        await clock.advance(50)
    if fast_forward:
        # first run 10..45; the next one after 45 is 50
        assert seen == [T0 + 10 * S, T0 + 50 * S]
    else:
        # missed runs at 20, 30, 40 are caught up one by one at 45, then 50 on time
        assert seen == [T0 + i * 10 * S for i in range(1, 6)]


# -- DST: a daily 02:00 task across transitions ------------------------------------------


def _runs(
    expression: str, zone: str, start: datetime.datetime, count: int
) -> list[datetime.datetime]:
    tzinfo = parse_timezone(zone)
    out, at = [], start
    for _ in range(count):
        at = next_cron(expression, tzinfo, at)
        out.append(at)
    return out


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime.datetime:
    return datetime.datetime(year, month, day, hour, minute, tzinfo=datetime.UTC)


def test_dst_new_york_spring_gap_runs_once_after_the_gap() -> None:
    # 2026-03-08: clocks jump 02:00 EST -> 03:00 EDT; 02:00 does not exist that day
    assert _runs("0 2 * * *", "America/New_York", utc(2026, 3, 7, 0), 3) == [
        utc(2026, 3, 7, 7),  # 02:00 EST
        utc(2026, 3, 8, 7),  # 03:00 EDT, the first instant after the gap
        utc(2026, 3, 9, 6),  # 02:00 EDT
    ]


def test_dst_new_york_fall_repeat_runs_once() -> None:
    # 2026-11-01: 01:00-02:00 happens twice; 02:00 EST once; 01:30 runs at its first occurrence
    assert _runs("0 2 * * *", "America/New_York", utc(2026, 10, 31, 0), 3) == [
        utc(2026, 10, 31, 6),
        utc(2026, 11, 1, 7),
        utc(2026, 11, 2, 7),
    ]
    assert _runs("30 1 * * *", "America/New_York", utc(2026, 10, 31, 12), 2) == [
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT; not again at 01:30 EST
        utc(2026, 11, 2, 6, 30),
    ]


def test_dst_dublin_transitions() -> None:
    # 2026-03-29: 01:00 GMT -> 02:00 IST; 02:00 exists; 01:00 is skipped (runs at 02:00 IST)
    assert _runs("0 2 * * *", "Europe/Dublin", utc(2026, 3, 28, 0), 3) == [
        utc(2026, 3, 28, 2),
        utc(2026, 3, 29, 1),
        utc(2026, 3, 30, 1),
    ]
    assert _runs("0 1 * * *", "Europe/Dublin", utc(2026, 3, 28, 12), 2) == [
        utc(2026, 3, 29, 1),  # 01:00 does not exist: first instant after the gap
        utc(2026, 3, 30, 0),
    ]
    # 2026-10-25: 02:00 IST -> 01:00 GMT; 01:00-02:00 twice, 02:00 GMT once
    assert _runs("0 2 * * *", "Europe/Dublin", utc(2026, 10, 24, 0), 3) == [
        utc(2026, 10, 24, 1),
        utc(2026, 10, 25, 2),
        utc(2026, 10, 26, 2),
    ]
    assert _runs("30 1 * * *", "Europe/Dublin", utc(2026, 10, 24, 12), 2) == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 26, 1, 30),
    ]


@pytest.mark.parametrize(
    ("zone", "start", "expected"),
    [
        ("America/New_York", utc(2026, 3, 7, 8), [utc(2026, 3, 8, 7), utc(2026, 3, 9, 6)]),
        ("America/New_York", utc(2026, 10, 31, 8), [utc(2026, 11, 1, 7), utc(2026, 11, 2, 7)]),
        ("Europe/Dublin", utc(2026, 3, 28, 3), [utc(2026, 3, 29, 1), utc(2026, 3, 30, 1)]),
        ("Europe/Dublin", utc(2026, 10, 24, 3), [utc(2026, 10, 25, 2), utc(2026, 10, 26, 2)]),
    ],
)
async def test_dst_scheduler_runs_daily_task_once_per_day(
    backend: BackendConfig,
    make_clock: ClockFactory,
    zone: str,
    start: datetime.datetime,
    expected: list[datetime.datetime],
) -> None:
    clock = make_clock(start)
    app = make_app(backend, clock, poll_interval=datetime.timedelta(hours=1))
    seen: list[datetime.datetime] = []

    @app.task(schedule="0 2 * * *", timezone=zone)
    async def nightly(context: Context) -> None:
        seen.append(context.scheduled_at)

    async with running(app):
        await clock.advance(datetime.timedelta(hours=47))
    assert seen == expected
