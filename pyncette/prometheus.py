"""Prometheus metrics for executions, repository operations and ticks.

Requires the ``prometheus`` extra. Call :func:`use_prometheus` on the app and expose the
default registry the usual way (e.g. ``prometheus_client.start_http_server``).
"""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram

from pyncette.model import Context
from pyncette.pyncette import Pyncette
from pyncette.repository import Repository, RepositoryProxy

T = TypeVar("T")

EXECUTIONS = Counter(
    "pyncette_executions_total", "Task executions by outcome", ["task_name", "outcome"]
)
EXECUTION_DURATION = Histogram(
    "pyncette_execution_duration_seconds", "Time a task execution took", ["task_name"]
)
EXECUTIONS_IN_PROGRESS = Gauge(
    "pyncette_executions_in_progress", "Executions running now", ["task_name"]
)
START_LATENESS = Histogram(
    "pyncette_execution_lateness_seconds",
    "Actual start minus scheduled time",
    ["task_name"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
REPOSITORY_OPERATIONS = Counter(
    "pyncette_repository_operations_total", "Repository calls by outcome", ["operation", "outcome"]
)
REPOSITORY_DURATION = Histogram(
    "pyncette_repository_operation_duration_seconds", "Repository call time", ["operation"]
)
REPOSITORY_IN_PROGRESS = Gauge(
    "pyncette_repository_operations_in_progress", "Repository calls in flight", ["operation"]
)
TICKS = Counter("pyncette_ticks_total", "Completed poll-loop ticks")
TICK_DURATION = Histogram("pyncette_tick_duration_seconds", "Time one tick took")


def use_prometheus(
    app: Pyncette,
    measure_executions: bool = True,
    measure_repositories: bool = True,
    measure_ticks: bool = True,
) -> None:
    """Record pyncette's metrics for this app in the default Prometheus registry."""
    if measure_executions:
        app.use_middleware(_measure_execution)
    if measure_repositories:
        factory = app.repository_factory

        @contextlib.asynccontextmanager
        async def metered(**options: Any) -> AsyncIterator[Repository]:
            async with factory(**options) as repository:
                yield _MeteredRepository(repository)

        app.repository_factory = metered
    if measure_ticks:
        app._tick_observers.append(_observe_tick)


def _observe_tick(seconds: float) -> None:
    TICKS.inc()
    TICK_DURATION.observe(seconds)


async def _measure_execution(context: Context, next: Callable[[], Awaitable[None]]) -> None:
    name = context.task.template.name
    late = context.app_context.clock.now() - context.scheduled_at
    START_LATENESS.labels(name).observe(max(late, datetime.timedelta(0)).total_seconds())
    in_progress = EXECUTIONS_IN_PROGRESS.labels(name)
    in_progress.inc()
    started = time.perf_counter()
    outcome = "failure"
    try:
        await next()
        outcome = "success"
    finally:
        in_progress.dec()
        EXECUTION_DURATION.labels(name).observe(time.perf_counter() - started)
        EXECUTIONS.labels(name, outcome).inc()


class _MeteredRepository(RepositoryProxy):
    """Times every call of the repository it wraps."""

    async def around(self, operation: str, call: Awaitable[T]) -> T:
        in_progress = REPOSITORY_IN_PROGRESS.labels(operation)
        in_progress.inc()
        started = time.perf_counter()
        outcome = "failure"
        try:
            result = await call
            outcome = "success"
            return result
        finally:
            in_progress.dec()
            REPOSITORY_DURATION.labels(operation).observe(time.perf_counter() - started)
            REPOSITORY_OPERATIONS.labels(operation, outcome).inc()
