"""One back-off policy for everything that retries: the poll loop after a failed tick,
commits, SQL start-up and operations, and the DynamoDB client.

Delays grow exponentially from ``initial`` by ``factor`` up to ``maximum``, with "full
jitter" when ``jitter`` is set (a uniformly random delay between half and all of the
step), so that many instances that failed together do not retry together.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 0.1
    """Seconds before the first retry."""
    factor: float = 2.0
    maximum: float = 30.0
    """No delay is longer than this."""
    jitter: bool = False

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
        step = min(self.initial * self.factor ** max(attempt - 1, 0), self.maximum)
        if self.jitter:
            step *= random.uniform(0.5, 1.0)
        return step


POLL = Backoff(initial=0.2, factor=2.0, maximum=30.0)
"""After a failed tick; the loop also never waits longer than four poll intervals."""

COMMIT = Backoff(initial=0.2, factor=2.0, maximum=0.8)
COMMIT_ATTEMPTS = 3
"""A commit is tried this often before its executions are left to their leases."""

STARTUP = Backoff(initial=0.05, factor=2.0, maximum=1.0, jitter=True)
"""Connecting and migrating at start-up, until the backend's own deadline."""


async def retry(
    operation: Callable[[], Awaitable[T]],
    *,
    policy: Backoff,
    attempts: int,
    sleep: Callable[[float], Awaitable[None]],
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """Call ``operation`` until it succeeds, at most ``attempts`` times; the last
    failure propagates. ``sleep`` is the caller's clock, so tests drive it in virtual
    time; ``on_retry(attempt, error, delay)`` is told before each wait."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await operation()
        except retry_on as error:
            if attempt >= attempts:
                raise
            delay = policy.delay(attempt)
            if on_retry is not None:
                on_retry(attempt, error, delay)
            await sleep(delay)
