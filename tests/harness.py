"""Virtual time for the behaviour suite: a fake clock and a way to run apps under it.

The scheduler is given a :class:`FakeClock`; the test moves time with
:meth:`FakeClock.advance`, which wakes sleepers in deadline order and, between steps,
lets every runnable coroutine run and every in-flight repository call finish (the
repository is wrapped so the clock can count them). No test waits real seconds to
watch a schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import heapq
import itertools
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from backends import BackendConfig
from pyncette import Pyncette, PyncetteContext
from pyncette.repository import Repository, RepositoryFactory, RepositoryProxy

T = TypeVar("T")
T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


class FakeClock:
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
        """Run until nothing is runnable and no repository call is in flight."""
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
        """Move time forward by ``delta``, waking sleepers in order on the way."""
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

    async def until_done(self, future: asyncio.Future[Any], limit: float = 3600.0) -> None:
        """Advance time, sleeper by sleeper, until ``future`` is done (at most ``limit`` s)."""
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


class CountingRepository(RepositoryProxy):
    """Delegates to a real repository, counting in-flight calls on the fake clock."""

    def __init__(self, inner: Repository, clock: FakeClock) -> None:
        super().__init__(inner)
        self.clock = clock
        self.calls: dict[str, int] = {}
        self.fail_with: BaseException | None = None

    async def around(self, operation: str, call: Awaitable[T]) -> T:
        self.calls[operation] = self.calls.get(operation, 0) + 1
        self.clock.busy += 1
        try:
            if self.fail_with is not None:
                close = getattr(call, "close", None)
                if close is not None:
                    close()
                raise self.fail_with
            return await call
        finally:
            self.clock.busy -= 1


def counted(factory: RepositoryFactory, clock: FakeClock) -> RepositoryFactory:
    @contextlib.asynccontextmanager
    async def wrapped(**options: Any) -> AsyncIterator[Repository]:
        async with factory(**options) as repository:
            yield CountingRepository(repository, clock)

    return wrapped


def make_app(backend: BackendConfig, clock: FakeClock, **options: Any) -> Pyncette:
    """An app on ``backend`` driven by ``clock``."""
    return Pyncette(
        repository_factory=counted(backend.repository_factory, clock),
        clock=clock,
        **backend.options,
        **options,
    )


@contextlib.asynccontextmanager
async def running(app: Pyncette) -> AsyncIterator[PyncetteContext]:
    """Create the app and run its poll loop in the background for the block."""
    clock = app.clock
    assert isinstance(clock, FakeClock)
    async with app.create() as ctx:
        loop_task = asyncio.ensure_future(ctx.run())
        await clock.settle()
        try:
            yield ctx
        finally:
            ctx.shutdown()
            await clock.until_done(loop_task)
            if not loop_task.done():
                loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
