"""Executors decide how claimed executions run: concurrently (default) or one by one."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class DefaultExecutor:
    """Runs each execution as its own asyncio task, at most ``concurrency_limit`` at once.

    The scheduler never claims more work than :attr:`capacity` allows, so a saturated
    instance leaves due tasks to other instances instead of hoarding leases.
    """

    def __init__(self, concurrency_limit: int = 100, **_: Any) -> None:
        if isinstance(concurrency_limit, bool) or not isinstance(concurrency_limit, int):
            raise ValueError(f"concurrency_limit must be an integer, got {concurrency_limit!r}")
        if concurrency_limit < 1:
            raise ValueError(f"concurrency_limit must be at least 1, got {concurrency_limit}")
        self.concurrency_limit = concurrency_limit
        self._running: set[asyncio.Task[None]] = set()
        self._freed = asyncio.Event()

    @property
    def capacity(self) -> int:
        """How many more executions can start now."""
        return self.concurrency_limit - len(self._running)

    @property
    def running(self) -> int:
        return len(self._running)

    async def spawn(self, execution: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(execution)
        self._running.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._freed.set()

    async def wait_for_capacity(self) -> None:
        while self.capacity <= 0:
            self._freed.clear()
            await self._freed.wait()

    def wake(self) -> None:
        """Release anyone waiting for capacity (used on shutdown)."""
        self._freed.set()

    async def join(self) -> None:
        """Wait until every running execution has finished."""
        while self._running:
            await asyncio.wait(list(self._running))

    def cancel(self) -> None:
        for task in list(self._running):
            task.cancel()


class SynchronousExecutor(DefaultExecutor):
    """Runs executions one at a time, in the poll loop itself."""

    async def spawn(self, execution: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(execution)
        self._running.add(task)
        try:
            await asyncio.shield(task)
        finally:
            if task.done():
                self._running.discard(task)
            else:
                task.add_done_callback(self._finished)
