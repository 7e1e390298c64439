"""Time as the scheduler sees it: a clock object it is given, never the global time."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable
from typing import Protocol, TypeVar

T = TypeVar("T")


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


class DefaultClock:
    """Reads the time through ``pyncette.pyncette._current_time`` and waits through
    ``asyncio.sleep`` / ``asyncio.wait_for``, each looked up at call time, so a test
    harness written for Pyncette can drive the whole scheduler by patching them."""

    def now(self) -> datetime.datetime:
        from pyncette import pyncette as core

        return core._current_time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait_for(self, awaitable: Awaitable[T], timeout: float) -> T:  # noqa: ASYNC109
        return await asyncio.wait_for(awaitable, timeout)
