"""One back-off policy for everything that retries: the poll loop after a failed tick,
commits, SQL start-up and operations, the Redis driver and the DynamoDB client.

Delays grow exponentially from ``initial`` by ``factor`` up to ``maximum``, with "full
jitter" when ``jitter`` is set (a uniformly random delay between half and all of the
step), so that many instances that failed together do not retry together.

The named defaults below are the only retry numbers in pyncette:

=================================  ========================  ==========================
what is retried                    policy                    attempts (first included)
=================================  ========================  ==========================
a failed tick (poll loop)          :data:`POLL`              until it succeeds
a failed wake-up listener          :data:`POLL`              until the loop stops
a commit                           :data:`COMMIT`            :data:`COMMIT_ATTEMPTS`
SQLite busy at start-up (WAL)      :data:`STARTUP`           within the busy timeout
SQL deadlock / unique-key race     :data:`CONFLICT`          :data:`CONFLICT_ATTEMPTS`
SQL call on a dropped connection   :data:`RECONNECT`         :data:`SQL_RECONNECT_ATTEMPTS`
Redis command, connection lost     :data:`RECONNECT`         :data:`REDIS_RECONNECT_ATTEMPTS`
DynamoDB endpoint unreachable      :data:`RECONNECT`         :data:`DYNAMODB_RECONNECT_ATTEMPTS`
DynamoDB throttling, server error  :data:`THROTTLED`         :data:`THROTTLED_ATTEMPTS`
=================================  ========================  ==========================

A wait inside a repository call (every row but the first two) is a real one
(:func:`pyncette.clock.real_sleep`), never ``asyncio.sleep``: test harnesses written for
Pyncette make ``asyncio.sleep`` virtual and wait for repository calls in flight before
they move time on.
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
        step = self._step(attempt)
        if self.jitter:
            step *= random.uniform(0.5, 1.0)
        return step

    def _step(self, attempt: int) -> float:
        try:
            step = self.initial * self.factor ** max(attempt - 1, 0)
        except OverflowError:  # thousands of failures in a row: long since at the maximum
            return self.maximum
        return min(step, self.maximum)

    def attempts_within(self, seconds: float) -> int:
        """How many attempts fit in ``seconds`` of waiting: one more than the number of
        delays (each at its longest, before jitter) whose sum stays within ``seconds``."""
        attempts, waited = 1, 0.0
        while attempts < _MOST_ATTEMPTS:
            step = self._step(attempts)
            if waited + step > seconds:
                break
            waited += step
            attempts += 1
        return attempts


_MOST_ATTEMPTS = 10_000


POLL = Backoff(initial=0.2, factor=2.0, maximum=30.0)
"""After a failed tick; the loop also never waits longer than four poll intervals."""

COMMIT = Backoff(initial=0.2, factor=2.0, maximum=0.8)
COMMIT_ATTEMPTS = 3
"""A commit is tried this often before its executions are left to their leases."""

STARTUP = Backoff(initial=0.05, factor=2.0, maximum=1.0, jitter=True)
"""Connecting and migrating at start-up, until the backend's own deadline (SQLite: a file
busy while it is switched to WAL, for as long as the busy timeout)."""

CONFLICT = Backoff(initial=0.005, factor=2.0, maximum=0.1, jitter=True)
CONFLICT_ATTEMPTS = 5
"""A SQL transaction the database rolled back as a deadlock victim or a unique-key race
(registrations racing another instance's upsert of the same new rows) is run again, up to
this many times in all."""

RECONNECT = Backoff(initial=0.05, factor=2.0, maximum=1.0, jitter=True)
"""A call whose connection turned out dead, or could not be made, sent again."""
SQL_RECONNECT_ATTEMPTS = 2
"""Once more: SQLAlchemy replaces the whole pool when it sees a dropped connection, so the
second try runs on a fresh one, and a second failure means the server is down."""
REDIS_RECONNECT_ATTEMPTS = 4
"""redis-py's own retry reconnects and resends a command up to three times (a restart or
a failover takes a moment) before the call fails."""
DYNAMODB_RECONNECT_ATTEMPTS = 3
"""A DynamoDB request that could not reach the endpoint."""

THROTTLED = Backoff(initial=0.05, factor=2.0, maximum=2.0, jitter=True)
THROTTLED_ATTEMPTS = 8
"""A DynamoDB request refused without being applied (throttling, an internal error): sent
again, up to this many times in all, before the call fails."""


async def retry(
    operation: Callable[[], Awaitable[T]],
    *,
    policy: Backoff,
    attempts: int,
    sleep: Callable[[float], Awaitable[None]],
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    retry_if: Callable[[BaseException, int], bool] | None = None,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    failed: BaseException | None = None,
) -> T:
    """Call ``operation`` until it succeeds, at most ``attempts`` times; the last
    failure propagates, as does any failure that is not one of ``retry_on`` or for which
    ``retry_if(error, attempt)`` is false (``attempt``: how many calls failed so far).
    ``sleep`` is the caller's clock, so tests drive it in virtual time; inside a
    repository call it is :func:`pyncette.clock.real_sleep`. ``on_retry(attempt, error,
    delay)`` is told before each wait. ``failed``: the caller already made the first
    call, which raised this; it counts as attempt 1 (a caller that tries once without
    this machinery, and comes here only when that fails)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            if failed is not None:
                error, failed = failed, None
                raise error
            return await operation()
        except retry_on as error:
            if attempt >= attempts or (retry_if is not None and not retry_if(error, attempt)):
                raise
            delay = policy.delay(attempt)
            if on_retry is not None:
                on_retry(attempt, error, delay)
            await sleep(delay)
