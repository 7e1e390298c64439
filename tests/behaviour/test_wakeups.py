"""instant_wakeups: a run scheduled sooner by one instance starts on another without
waiting for that one's next poll (PostgreSQL LISTEN/NOTIFY, Redis pub/sub); elsewhere
the next poll finds it, as without the option. Shared-storage backends, fake clock.

The fake clock does not move while the test waits for the wake-up (in real time): a
run that starts meanwhile was started by the message, not by a poll.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable

import pytest

from backends import BackendConfig
from harness import T0, FakeClock, make_app, running, wrap_repository
from pyncette import Context, Pyncette
from pyncette.clock import real_sleep
from pyncette.repository import Repository, RepositoryProxy, deliver_wake_up, wake_up_message

pytestmark = [pytest.mark.anyio, pytest.mark.shared_storage]
S = datetime.timedelta(seconds=1)
WITH_WAKE_UPS = {"postgres", "redis", "redis_cluster"}
"""The backends with a wake-up channel."""
REAL_WAIT = 5.0
"""Seconds of real time a wake-up may take to arrive (a loaded 2-core machine)."""
QUIET_WAIT = 1.0
"""Seconds of real time in which no wake-up must arrive when none is expected."""


async def wait_real(done: Callable[[], bool], seconds: float) -> bool:
    for _ in range(int(seconds / 0.02)):
        if done():
            return True
        await real_sleep(0.02)
    return done()


class Watched(RepositoryProxy):
    """Records announcements; ``broken`` makes every ``listen`` fail at once."""

    def __init__(self, inner: Repository, clock: FakeClock, *, broken: bool = False) -> None:
        super().__init__(inner)
        self.clock, self.broken = clock, broken
        self.announced: list[tuple[str, datetime.datetime]] = []
        self.listens: list[datetime.datetime] = []

    async def announce(self, group: str, due_at: datetime.datetime) -> None:
        self.announced.append((group, due_at))
        await super().announce(group, due_at)

    async def listen(self, wake: Callable[[str, datetime.datetime], None]) -> None:
        self.listens.append(self.clock.now())
        if self.broken:
            raise ConnectionError("no channel")
        await super().listen(wake)


def watched(app: Pyncette, clock: FakeClock, *, broken: bool = False) -> list[Watched]:
    """Put a :class:`Watched` in front of the app's repository; the list gets it."""
    made: list[Watched] = []

    def make(repository: Repository) -> Repository:
        made.append(Watched(repository, clock, broken=broken))
        return made[-1]

    wrap_repository(app, make)
    return made


def app_with_queue(
    backend: BackendConfig, clock: FakeClock, started: list[datetime.datetime], **options: object
) -> Pyncette:
    app = make_app(backend, clock, **options)

    @app.dynamic_task()
    async def queue(context: Context) -> None:
        started.append(clock.now())

    return app


@pytest.mark.parametrize("wakeups", [True, False], ids=["instant", "polling"])
async def test_a_run_scheduled_elsewhere_starts_without_waiting_for_a_poll(
    backend: BackendConfig, wakeups: bool
) -> None:
    clock = FakeClock(T0)
    started: list[datetime.datetime] = []
    worker = app_with_queue(backend, clock, started, poll_interval=60 * S, instant_wakeups=wakeups)
    other = app_with_queue(backend, clock, [], instant_wakeups=wakeups)
    async with running(worker) as ctx:
        await clock.advance(1)  # the loop now sleeps until its next poll at T0+60 s
        instant = wakeups and backend.name in WITH_WAKE_UPS
        async with other.create() as scheduler:  # schedules, runs no loop
            await scheduler.schedule_task(other.tasks["queue"], "now", execute_at=clock.now())
            woken = await wait_real(lambda: bool(started), REAL_WAIT if instant else QUIET_WAIT)
        assert ctx.repository.wake_ups is (backend.name in WITH_WAKE_UPS)
        assert woken is instant, f"started at {started} (virtual clock not moved)"
        if instant:
            assert started == [T0 + S]
        else:
            await clock.advance(60)  # the poll finds it
            assert started == [T0 + 60 * S]


async def test_only_runs_due_before_the_next_poll_are_announced(backend: BackendConfig) -> None:
    """A run due after the other instances' next poll is not worth a message;
    registrations made together go out as one message per group; a backend without a
    channel sends nothing."""
    clock = FakeClock(T0)
    app = app_with_queue(backend, clock, [], instant_wakeups=True)
    repositories = watched(app, clock)
    async with running(app) as ctx:
        queue = app.tasks["queue"]
        await ctx.schedule_task(queue, "later", execute_at=T0 + 5 * S)  # poll interval 1 s
        await ctx.schedule_tasks(queue, {f"soon-{n}": {"execute_at": T0} for n in range(5)})
        await clock.advance(0.5)
    expected = [("queue", T0)] if backend.name in WITH_WAKE_UPS else []
    assert repositories[0].announced == expected


async def test_a_broken_channel_falls_back_to_polling(
    backend: BackendConfig, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(T0)
    started: list[datetime.datetime] = []
    app = app_with_queue(backend, clock, started, instant_wakeups=True)
    repositories = watched(app, clock, broken=True)
    with caplog.at_level(logging.INFO, logger="pyncette.worker"):
        async with running(app) as ctx:
            await ctx.schedule_task(app.tasks["queue"], "job", execute_at=T0 + 3 * S)
            await clock.advance(5)
    assert started == [T0 + 3 * S]
    listens = repositories[0].listens
    if backend.name in WITH_WAKE_UPS:
        # tried again after a growing pause: 0.1, 0.2, 0.4, ... s
        assert len(listens) >= 3 and listens[0] == T0, listens
        assert "Wake-up channel failed" in caplog.text
    else:
        assert listens == []
        assert "has no wake-up channel; polling every" in caplog.text


def test_wake_up_messages_round_trip_and_foreign_ones_are_dropped() -> None:
    got: list[tuple[str, datetime.datetime]] = []
    at = T0 + datetime.timedelta(microseconds=123)
    deliver_wake_up(wake_up_message("group:{1}'\"", at), lambda g, t: got.append((g, t)))
    deliver_wake_up(wake_up_message("ünï", at).encode(), lambda g, t: got.append((g, t)))
    for foreign in ("hello", "[1, 2]", '["g", true]', '["g", 1e400]', b"\xff", "[]"):
        deliver_wake_up(foreign, lambda g, t: got.append((g, t)))
    assert got == [("group:{1}'\"", at), ("ünï", at)]
