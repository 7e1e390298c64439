"""Time as the scheduler sees it: a clock object it is given, never the global time."""

from __future__ import annotations

import asyncio
import datetime
import types
from collections.abc import Awaitable, Generator
from types import ModuleType
from typing import Protocol, TypeVar

T = TypeVar("T")
_core: ModuleType | None = None
"""``pyncette.pyncette``, imported on first use (it imports this module)."""


class Clock(Protocol):
    """What the scheduler needs of time. Tests inject a fake one."""

    def now(self) -> datetime.datetime:
        """The current time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...

    async def wait_for(self, awaitable: Awaitable[T], timeout: float) -> T:  # noqa: ASYNC109
        """Await ``awaitable``; raise ``TimeoutError`` after ``timeout`` seconds."""
        ...


def system_time() -> datetime.datetime:
    """The current time, aware UTC, from the system's wall clock: what
    ``pyncette.pyncette._current_time`` is until a test harness patches it."""
    return datetime.datetime.now(datetime.UTC)


_SYSTEM_DATETIME = datetime.datetime


def wall_clock_deadline(clock: Clock, at: datetime.datetime) -> float | None:
    """``at`` as a ``time.time()`` reading, when ``clock`` is the system's wall clock (a
    :class:`DefaultClock` with nothing patched: ``_current_time`` is
    :func:`system_time` and ``datetime.datetime`` is the real class); otherwise ``None``.
    ``time.time() < deadline`` then says ``clock.now() < at`` without building a
    datetime (time-travel libraries that replace ``datetime.datetime`` replace
    ``time.time`` too, and are caught by the class check anyway)."""
    if type(clock) is not DefaultClock or datetime.datetime is not _SYSTEM_DATETIME:
        return None
    if _core_module()._current_time is not system_time:
        return None
    return at.timestamp()


def _core_module() -> ModuleType:
    global _core
    if _core is None:
        from pyncette import pyncette as core

        _core = core
    return _core


class DefaultClock:
    """Reads the time through ``pyncette.pyncette._current_time`` and waits through
    ``asyncio.sleep`` / ``asyncio.wait_for``, each looked up at call time, so a test
    harness written for Pyncette can drive the whole scheduler by patching them."""

    def now(self) -> datetime.datetime:
        now: datetime.datetime = _core_module()._current_time()  # looked up at every call
        return now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait_for(self, awaitable: Awaitable[T], timeout: float) -> T:  # noqa: ASYNC109
        return await asyncio.wait_for(awaitable, timeout)


@types.coroutine
def _bare_yield() -> Generator[None, None, None]:
    yield


async def yield_to_loop() -> None:
    """Let every other ready coroutine run once, then continue.

    The scheduler yields (to let concurrent calls join a batch, say) only through this,
    never through ``asyncio.sleep(0)``: test harnesses written for Pyncette replace
    ``asyncio.sleep`` with a virtual-time version under which even ``sleep(0)`` waits
    until the test moves time on.
    """
    await _bare_yield()


async def real_sleep(seconds: float) -> None:
    """Wait ``seconds`` of real time, whatever test harness patched ``asyncio.sleep``.

    For waits inside a backend call (a retry after a busy database, say): a harness
    that treats the call as I/O in flight waits for it to finish before it moves its
    virtual time on, so such a wait must not be virtual.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    handle = loop.call_later(max(seconds, 0.0), _resolve, future)
    try:
        await future
    finally:
        handle.cancel()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


real_timeout = asyncio.timeout
"""``asyncio.timeout`` as it was at import, before any test harness patched asyncio: a
deadline in the event loop's real time."""


class CallTimer:
    """Times the loop's own repository calls and gives up on those that take too long.

    With an injected :class:`Clock`, in that clock's time (a test clock is consistent
    with itself). With :class:`DefaultClock`, in the event loop's real time, whatever a
    test harness patched: a harness written for Pyncette 1.x moves its virtual time in
    its own ``asyncio.sleep`` and ``asyncio.wait_for``, which must not fire timeouts on
    real I/O; in production both are the same clock anyway.
    """

    def __init__(self, clock: Clock) -> None:
        self._virtual: Clock | None = None if isinstance(clock, DefaultClock) else clock

    def reading(self) -> float:
        """Seconds on this timer's clock (only differences mean anything)."""
        if self._virtual is not None:
            return self._virtual.now().timestamp()
        return asyncio.get_running_loop().time()

    async def bounded(self, awaitable: Awaitable[T], timeout: float) -> T:  # noqa: ASYNC109
        """Await ``awaitable``; cancel it and raise ``TimeoutError`` after ``timeout`` s."""
        if self._virtual is not None:
            return await self._virtual.wait_for(awaitable, timeout)
        async with real_timeout(timeout):
            return await awaitable
