"""A virtual-time "time machine" of the kind Pyncette 1.x applications test with.

Nothing here knows pyncette's insides. Like a harness written for 1.x, it drives the
scheduler only through the seams 1.x users patch:

* ``pyncette.pyncette._current_time`` reads the virtual time;
* ``asyncio.sleep(d)`` parks the caller until the test moves virtual time to
  ``now + d`` or later (``asyncio.sleep(0)`` included: it never returns on its own);
* ``asyncio.wait_for(aw, timeout)`` races ``aw`` against such a sleep;
* ``time.perf_counter`` counts virtual seconds.

The repository the app builds is instrumented the 1.x way: every coroutine method found
on the repository *object* is replaced, by ``setattr`` on the instance, with a wrapper
that tells the machine I/O is in flight. Moving time first waits for that I/O to finish
and lets the loop run until it is quiet, then wakes sleepers in deadline order, letting
the loop run again after each one.

The machine's own waiting uses the real ``asyncio.sleep`` and ``asyncio.wait_for``,
captured here at import, before any test patches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import heapq
import inspect
import io
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from pyncette.repository import Repository, RepositoryFactory

T = TypeVar("T")

real_sleep = asyncio.sleep
real_wait_for = asyncio.wait_for
real_perf_counter = time.perf_counter

QUIET_ROUNDS = 10
"""Loop rounds in a row with nothing runnable and no I/O before the loop counts as quiet."""
MAX_SPIN_ROUNDS = 100_000
"""A loop that never goes quiet is a busy-waiting bug, reported rather than waited out."""
MAX_STANDSTILL_STEPS = 10_000
"""Wake-ups in a row that do not move time (``sleep(0)`` loops) before giving up."""
IO_TIMEOUT = 30.0
"""Real seconds one wait for in-flight I/O may take before the machine reports a hang."""


class RepositoryCounters:
    """What the behaviour suite observes and controls on an instrumented repository."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.fail_with: BaseException | None = None


COUNTERS_ATTRIBUTE = "_timemachine_counters"


class TimeMachine:
    """Virtual time for one test. :meth:`install` patches it into the globals."""

    def __init__(self, base_time: datetime.datetime) -> None:
        self.base_time = base_time
        self.offset = datetime.timedelta(0)
        self._sleepers: list[tuple[datetime.timedelta, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._io_in_flight = 0
        self._io_idle = asyncio.Event()
        self._io_idle.set()
        self._moving = asyncio.Lock()  # one unwind or step at a time, whoever calls it

    # -- what the test patches in -----------------------------------------------------

    def current_time(self) -> datetime.datetime:
        return self.base_time + self.offset

    def perf_counter(self) -> float:
        return self.offset.total_seconds()

    async def sleep(self, delay: float, result: T | None = None) -> T | None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        deadline = self.offset + datetime.timedelta(seconds=max(delay, 0))
        heapq.heappush(self._sleepers, (deadline, next(self._seq), future))
        await future
        return result

    async def wait_for(self, awaitable: Awaitable[T], timeout: float | None) -> T:
        if timeout is None:
            return await awaitable
        inner = asyncio.ensure_future(awaitable)
        timer = asyncio.ensure_future(self.sleep(timeout))
        try:
            await asyncio.wait({inner, timer}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            inner.cancel()
            timer.cancel()
            raise
        timer.cancel()
        if inner.done():
            return inner.result()
        inner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await inner
        raise TimeoutError

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Patch the time and the waits of the whole process, as a 1.x test does."""
        monkeypatch.setattr("pyncette.pyncette._current_time", self.current_time)
        monkeypatch.setattr(asyncio, "sleep", self.sleep)
        monkeypatch.setattr(asyncio, "wait_for", self.wait_for)
        monkeypatch.setattr(time, "perf_counter", self.perf_counter)

    # -- the repository, instrumented the 1.x way -------------------------------------

    def track_io(self, method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        """Wrap a coroutine function so that time does not move while it runs."""

        @functools.wraps(method)
        async def wrapper(*args: Any, **kwargs: Any) -> T:
            self._io_in_flight += 1
            self._io_idle.clear()
            try:
                return await method(*args, **kwargs)
            finally:
                self._io_in_flight -= 1
                if not self._io_in_flight:
                    self._io_idle.set()

        return wrapper

    def instrument(self, repository: object) -> RepositoryCounters:
        """Replace every coroutine method of ``repository`` by a tracked, counted one
        (instance attributes set with ``setattr``); return the counters."""
        counters = RepositoryCounters()
        for name, method in inspect.getmembers(repository):
            if name.startswith("__") or not inspect.iscoroutinefunction(method):
                continue
            setattr(repository, name, self.track_io(_counted(name, method, counters)))
        setattr(repository, COUNTERS_ATTRIBUTE, counters)
        return counters

    def wrap_factory(self, factory: RepositoryFactory) -> RepositoryFactory:
        """A factory that hands out the repositories of ``factory``, instrumented.

        Opening and closing the repository count as I/O in flight too: time stands still
        while a backend connects or closes its connections.
        """

        @contextlib.asynccontextmanager
        async def wrapped(**options: Any) -> AsyncIterator[Repository]:
            async with contextlib.AsyncExitStack() as stack:
                opening = self.track_io(stack.enter_async_context)
                repository = await opening(factory(**options))
                self.instrument(repository)
                try:
                    yield repository
                finally:
                    await self.track_io(stack.aclose)()

        return wrapped

    # -- moving time ------------------------------------------------------------------

    async def unwind(self) -> None:
        """Wait for in-flight I/O and let the loop run until nothing is runnable."""
        async with self._moving:
            await self._unwind()

    async def _unwind(self) -> None:
        loop = asyncio.get_running_loop()
        quiet = 0
        for _ in range(MAX_SPIN_ROUNDS):
            if self._io_in_flight:
                await self._wait_for_io()
                quiet = 0
                continue
            await real_sleep(0)
            if loop._ready or self._io_in_flight:  # type: ignore[attr-defined]
                quiet = 0
            else:
                quiet += 1
                if quiet >= QUIET_ROUNDS:
                    return
        raise RuntimeError(
            f"The event loop never went quiet (busy-waiting?); tasks:\n{describe_tasks()}"
        )

    async def _wait_for_io(self) -> None:
        try:
            await real_wait_for(self._io_idle.wait(), IO_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(
                f"Repository I/O still in flight after {IO_TIMEOUT} real seconds "
                f"(is it waiting for virtual time?); tasks:\n{describe_tasks()}"
            ) from None

    async def step(self, delta: datetime.timedelta | float = 0.0) -> None:
        """Move time forward by ``delta``, waking sleepers in deadline order on the way."""
        if not isinstance(delta, datetime.timedelta):
            delta = datetime.timedelta(seconds=delta)
        async with self._moving:
            target = self.offset + delta
            await self._unwind()
            while self._sleepers and self._sleepers[0][0] <= target:
                deadline, _, future = heapq.heappop(self._sleepers)
                if future.done():  # its sleeper was cancelled
                    continue
                self.offset = max(self.offset, deadline)
                future.set_result(None)
                await self._unwind()
            self.offset = max(self.offset, target)
            await self._unwind()

    def next_deadline(self) -> datetime.timedelta | None:
        """When the earliest sleeper still waiting wakes (``None`` if nobody sleeps)."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def run_until(
        self, future: asyncio.Future[Any], limit: datetime.timedelta | float = 3600.0
    ) -> bool:
        """Move time sleeper by sleeper until ``future`` is done or ``limit`` has passed;
        return whether it is done."""
        if not isinstance(limit, datetime.timedelta):
            limit = datetime.timedelta(seconds=limit)
        end = self.offset + limit
        await self.unwind()
        standstill = 0
        waiting_for_real = 0
        while not future.done() and self.offset < end:
            deadline = self.next_deadline()
            if deadline is None:
                # nobody sleeps in virtual time: the future waits for something real
                waiting_for_real += 1
                if waiting_for_real > 500:
                    break
                await real_sleep(0.002)
                await self.unwind()
                continue
            waiting_for_real = 0
            if deadline <= self.offset:
                standstill += 1
                if standstill > MAX_STANDSTILL_STEPS:
                    raise RuntimeError(
                        "Virtual time stands still: something keeps sleeping 0 s; "
                        f"tasks:\n{describe_tasks()}"
                    )
            else:
                standstill = 0
            await self.step(min(deadline, end) - self.offset)
        return future.done()


def _counted(
    name: str, method: Callable[..., Awaitable[T]], counters: RepositoryCounters
) -> Callable[..., Awaitable[T]]:
    @functools.wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        counters.calls[name] = counters.calls.get(name, 0) + 1
        if counters.fail_with is not None:
            raise counters.fail_with
        return await method(*args, **kwargs)

    return wrapper


def counters_of(repository: object) -> RepositoryCounters:
    """The counters :meth:`TimeMachine.instrument` attached to ``repository``."""
    counters = getattr(repository, COUNTERS_ATTRIBUTE, None)
    assert isinstance(counters, RepositoryCounters), f"{repository!r} is not instrumented"
    return counters


def describe_tasks() -> str:
    """Every task of the running loop with the whole chain of awaits it is suspended in,
    for reporting a hang."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        print(repr(task), file=out)
        awaited: Any = task.get_coro()
        while awaited is not None:
            frame = next(
                (
                    getattr(awaited, a)
                    for a in ("cr_frame", "gi_frame", "ag_frame")
                    if hasattr(awaited, a)
                ),
                None,
            )
            if frame is None:
                print(f"    awaiting {awaited!r}", file=out)
                break
            print(
                f"    {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}",
                file=out,
            )
            awaited = next(
                (
                    getattr(awaited, a)
                    for a in ("cr_await", "gi_yieldfrom", "ag_await")
                    if hasattr(awaited, a)
                ),
                None,
            )
    return out.getvalue()
