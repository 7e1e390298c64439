"""Virtual time for the behaviour suite: two clocks, and a way to run apps under them.

The suite runs under both (the ``clock`` fixture is parametrized ``fake`` / ``patched``):

* :class:`FakeClock` is injected: the app is built with ``clock=``, and its repository is
  wrapped in a :class:`CountingRepository` proxy that counts in-flight calls.
* :class:`PatchedClock` is how Pyncette 1.x applications test: the app keeps its default
  clock, and a :class:`~timemachine.TimeMachine` patched into
  ``pyncette.pyncette._current_time``, ``asyncio.sleep``, ``asyncio.wait_for`` and
  ``time.perf_counter`` drives it; the repository object gets its coroutine methods
  replaced by instance attributes that report in-flight I/O.

Either way the test moves time with ``advance``, which wakes sleepers in deadline order
and, between steps, lets every runnable coroutine run and every in-flight repository
call finish. No test waits real seconds to watch a schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import heapq
import itertools
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import pytest

from backends import BackendConfig
from pyncette import Pyncette, PyncetteContext
from pyncette.repository import Repository, RepositoryFactory, RepositoryProxy
from timemachine import RepositoryCounters, TimeMachine, counters_of

T = TypeVar("T")
T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
DRAIN_LIMIT = 3600.0
"""Virtual seconds leaving ``running()`` may take before the test fails instead of hanging."""


class VirtualClock(Protocol):
    """What behaviour tests use of time, whichever way it is driven."""

    def now(self) -> datetime.datetime: ...

    async def sleep(self, seconds: float) -> None: ...

    async def wait_for(self, awaitable: Awaitable[T], timeout: float) -> T: ...

    async def settle(self) -> None:
        """Run until nothing is runnable and no repository call is in flight."""
        ...

    async def advance(self, delta: datetime.timedelta | float) -> None:
        """Move time forward by ``delta``, waking sleepers in order on the way."""
        ...

    async def until_done(self, future: asyncio.Future[Any], limit: float = DRAIN_LIMIT) -> None:
        """Advance time, sleeper by sleeper, until ``future`` is done (at most ``limit`` s)."""
        ...


ClockFactory = Callable[[datetime.datetime], VirtualClock]


class FakeClock:
    """A clock injected into the app with ``Pyncette(clock=...)``."""

    def __init__(self, start: datetime.datetime = T0) -> None:
        self._now = start
        self._sleepers: list[tuple[datetime.datetime, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.busy = 0

    def now(self) -> datetime.datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        deadline = self._now + datetime.timedelta(seconds=seconds)
        heapq.heappush(self._sleepers, (deadline, next(self._seq), future))
        await future

    async def wait_for(self, awaitable: Awaitable[T], timeout: float) -> T:
        inner = asyncio.ensure_future(awaitable)
        timer = asyncio.ensure_future(self.sleep(timeout))
        try:
            await asyncio.wait({inner, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not inner.done():
                inner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await inner
        if inner.cancelled():
            raise TimeoutError
        return inner.result()

    async def settle(self) -> None:
        loop = asyncio.get_running_loop()
        quiet = 0
        while quiet < 4:
            await asyncio.sleep(0)
            if self.busy:
                quiet = 0
                await asyncio.sleep(0.0005)
            elif loop._ready:  # type: ignore[attr-defined]
                quiet = 0
            else:
                quiet += 1

    async def advance(self, delta: datetime.timedelta | float) -> None:
        if not isinstance(delta, datetime.timedelta):
            delta = datetime.timedelta(seconds=delta)
        target = self._now + delta
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            if future.done():
                continue
            self._now = max(self._now, deadline)
            future.set_result(None)
            await self.settle()
        self._now = target
        await self.settle()

    async def until_done(self, future: asyncio.Future[Any], limit: float = DRAIN_LIMIT) -> None:
        end = self._now + datetime.timedelta(seconds=limit)
        await self.settle()
        idle_spins = 0
        while not future.done() and self._now < end and idle_spins < 2000:
            live = [entry for entry in self._sleepers if not entry[2].done()]
            if not live:  # waiting on something real (I/O): give it a moment
                idle_spins += 1
                await asyncio.sleep(0.002)
                continue
            await self.advance(min(live)[0] - self._now)


class PatchedClock:
    """The suite's clock interface over a :class:`~timemachine.TimeMachine` that is
    patched into the process; the app runs on its default clock."""

    def __init__(self, machine: TimeMachine) -> None:
        self.machine = machine

    def now(self) -> datetime.datetime:
        return self.machine.current_time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)  # the patched one, as a 1.x task would call it

    async def wait_for(self, awaitable: Awaitable[T], timeout: float) -> T:
        return await asyncio.wait_for(awaitable, timeout)

    async def settle(self) -> None:
        await self.machine.unwind()

    async def advance(self, delta: datetime.timedelta | float) -> None:
        await self.machine.step(delta)

    async def until_done(self, future: asyncio.Future[Any], limit: float = DRAIN_LIMIT) -> None:
        await self.machine.run_until(future, limit)


def clock_factory(kind: str, monkeypatch: pytest.MonkeyPatch) -> ClockFactory:
    """Make clocks of ``kind`` (``fake`` or ``patched``) starting at a given time.

    A patched clock takes over the process's time, so a test gets at most one.
    """
    made: list[VirtualClock] = []

    def make(start: datetime.datetime = T0) -> VirtualClock:
        if kind == "fake":
            return FakeClock(start)
        assert kind == "patched", kind
        assert not made, "only one patched clock per test: it patches the process"
        machine = TimeMachine(start)
        machine.install(monkeypatch)
        clock = PatchedClock(machine)
        made.append(clock)
        return clock

    return make


class CountingRepository(RepositoryProxy):
    """Delegates to a real repository, counting in-flight calls on the fake clock."""

    def __init__(self, inner: Repository, clock: FakeClock) -> None:
        super().__init__(inner)
        self.clock = clock
        self.counters = RepositoryCounters()

    async def around(self, operation: str, call: Awaitable[T]) -> T:
        calls = self.counters.calls
        calls[operation] = calls.get(operation, 0) + 1
        self.clock.busy += 1
        try:
            if self.counters.fail_with is not None:
                close = getattr(call, "close", None)
                if close is not None:
                    close()
                raise self.counters.fail_with
            return await call
        finally:
            self.clock.busy -= 1


def counters(repository: Repository) -> RepositoryCounters:
    """Call counts of a test app's repository, and a switch to make every call fail."""
    if isinstance(repository, CountingRepository):
        return repository.counters
    return counters_of(repository)


def counted(factory: RepositoryFactory, clock: FakeClock) -> RepositoryFactory:
    """``factory``'s repositories as :class:`CountingRepository`; opening and closing one
    count as in-flight calls too, so time stands still while a backend connects or
    closes (closing an engine is real I/O the clock must not run ahead of)."""

    @contextlib.asynccontextmanager
    async def wrapped(**options: Any) -> AsyncIterator[Repository]:
        async with contextlib.AsyncExitStack() as stack:
            clock.busy += 1
            try:
                repository = await stack.enter_async_context(factory(**options))
            finally:
                clock.busy -= 1
            try:
                yield CountingRepository(repository, clock)
            finally:
                clock.busy += 1
                try:
                    await stack.aclose()
                finally:
                    clock.busy -= 1

    return wrapped


_clocks: weakref.WeakKeyDictionary[Pyncette, VirtualClock] = weakref.WeakKeyDictionary()


def make_app(backend: BackendConfig, clock: VirtualClock, **options: Any) -> Pyncette:
    """An app on ``backend`` driven by ``clock``."""
    if isinstance(clock, FakeClock):
        app = Pyncette(
            repository_factory=counted(backend.repository_factory, clock),
            clock=clock,
            **backend.options,
            **options,
        )
    else:
        assert isinstance(clock, PatchedClock)
        app = Pyncette(
            repository_factory=clock.machine.wrap_factory(backend.repository_factory),
            **backend.options,
            **options,
        )
    _clocks[app] = clock
    return app


@contextlib.asynccontextmanager
async def running(app: Pyncette, *, cancel_on_exit: bool = False) -> AsyncIterator[PyncetteContext]:
    """Create the app and run its poll loop in the background for the block.

    Leaving the block shuts the app down and keeps virtual time moving until the poll
    loop has stopped and leaving ``create()`` has waited for running executions; if they
    need more than ``DRAIN_LIMIT`` virtual seconds the ``create()`` block is cancelled
    (which cancels them, as in 1.x) and the test fails rather than hangs. With
    ``cancel_on_exit`` the block is cancelled at once, as a second signal would.
    """
    clock = _clocks[app]
    started: asyncio.Future[PyncetteContext] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()

    async def lifetime() -> None:
        async with app.create() as ctx:
            loop_task = asyncio.ensure_future(ctx.run())
            started.set_result(ctx)
            try:
                await release.wait()
            finally:
                ctx.shutdown()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop_task

    life = asyncio.ensure_future(lifetime())
    waiting: list[asyncio.Future[Any]] = [life, started]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if not started.done():
        await life  # create() failed: raise its error
    ctx = started.result()
    await clock.settle()
    try:
        yield ctx
    finally:
        if cancel_on_exit:
            life.cancel()  # leave create() by cancellation: executions are cancelled
        else:
            release.set()
        await clock.until_done(life)
        if not life.done():
            life.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await life
            raise AssertionError(
                f"Executions still running {DRAIN_LIMIT} virtual seconds after shutdown"
            )
        with contextlib.suppress(asyncio.CancelledError):
            await life


def wrap_repository(app: Pyncette, make: Callable[[Repository], Repository]) -> None:
    """Put ``make(repository)`` in front of the app's repository (outside the harness's
    counting proxy, so the fake clock moves on while a wrapped call waits)."""
    inner: RepositoryFactory = app.repository_factory

    @contextlib.asynccontextmanager
    async def factory(**options: Any) -> AsyncIterator[Repository]:
        async with inner(**options) as repository:
            yield make(repository)

    app.repository_factory = factory
