"""Prometheus metrics under the names and labels of Pyncette 1.x, so that its dashboards
and alerts keep working.

Requires the ``prometheus`` extra. Call :func:`use_prometheus` on the app and expose the
default registry the usual way (e.g. ``prometheus_client.start_http_server``). Each kind
of operation has four metrics, ``pyncette_<kind>_total`` (started),
``pyncette_<kind>_duration_seconds``, ``pyncette_<kind>_failures_total`` (by
``exception_type``) and ``pyncette_<kind>_in_progress``, for three kinds:

* ``tasks`` -- executions, labelled ``task_name`` (the template's name for dynamic
  instances, so series do not grow with instances), plus
  ``pyncette_tasks_staleness_seconds``: actual start minus scheduled time, on the app's
  clock;
* ``repository_ops`` -- backend calls, labelled ``operation`` and ``task_name``: the
  dynamic task a call touches, or ``__static__`` for the calls on static tasks, which
  share one group of rows (a tick claims them all in one call);
* ``ticks`` -- passes of the poll loop, unlabelled.

Backend calls are named as 1.x named its repository methods: ``poll_task`` (claiming due
static tasks), ``poll_dynamic_task`` (claiming due instances of a dynamic task or of one
partition), ``commit_task``, ``extend_lease``, ``unlock_task``, ``register_task``,
``unregister_task``, ``get_task_state`` and ``list_task_states``.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

if importlib.util.find_spec("prometheus_client") is None:  # pragma: no cover - install
    raise ImportError(
        "Pyncette's metrics need prometheus-client: pip install 'pyncette[prometheus]'"
    )

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from pyncette.events import TickFinished, TickStarted
from pyncette.model import Context
from pyncette.pyncette import Pyncette, PyncetteContext
from pyncette.repository import (
    Repository,
    RepositoryFactory,
    RepositoryProxy,
)
from pyncette.task import STATIC_GROUP

T = TypeVar("T")
M = TypeVar("M", bound=MetricWrapperBase)

STALENESS_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 25.0, 50.0, 75.0,
    100.0, 250.0, 500.0, 750.0, 1000.0, math.inf,
)  # fmt: skip
"""Buckets of ``pyncette_tasks_staleness_seconds``, as in 1.x."""


class OperationMetricSet:
    """The four metrics of one kind of operation, ``pyncette_<operation_name>_*``: how
    many started, how long they took, how many raised (by ``exception_type``) and how
    many are running."""

    def __init__(self, operation_name: str, labels: Sequence[str]) -> None:
        prefix = f"pyncette_{operation_name}"
        self.labelnames = tuple(labels)
        self.requests = Counter(
            f"{prefix}_total", f"Started {operation_name} operations", self.labelnames
        )
        self.requests_duration = Histogram(
            f"{prefix}_duration_seconds", f"Time {operation_name} operations took", self.labelnames
        )
        self.exceptions = Counter(
            f"{prefix}_failures_total",
            f"Failed {operation_name} operations by exception type",
            [*self.labelnames, "exception_type"],
        )
        self.requests_in_progress = Gauge(
            f"{prefix}_in_progress", f"{operation_name} operations running now", self.labelnames
        )

    def started(self, **labels: str) -> None:
        """One operation began (for operations that report their end separately)."""
        _child(self.requests, labels).inc()
        _child(self.requests_in_progress, labels).inc()

    def finished(self, duration: float, error: BaseException | None = None, **labels: str) -> None:
        """One operation begun with :meth:`started` ended, raising ``error`` unless ``None``."""
        _child(self.requests_in_progress, labels).dec()
        _child(self.requests_duration, labels).observe(duration)
        if error is not None:
            self.exceptions.labels(**labels, exception_type=type(error).__name__).inc()

    @contextlib.asynccontextmanager
    async def measure(self, **labels: str) -> AsyncIterator[None]:
        """Measure the block as one operation (being cancelled is not a failure)."""
        self.started(**labels)
        began = time.perf_counter()
        error: Exception | None = None
        try:
            yield
        except Exception as exc:
            error = exc
            raise
        finally:
            self.finished(time.perf_counter() - began, error, **labels)


def _child(metric: M, labels: dict[str, str]) -> M:
    return metric.labels(**labels) if labels else metric


TASKS = OperationMetricSet("tasks", ["task_name"])
TASK_STALENESS = Histogram(
    "pyncette_tasks_staleness_seconds",
    "Actual start of task executions minus their scheduled time",
    ["task_name"],
    buckets=STALENESS_BUCKETS,
)
REPOSITORY_OPS = OperationMetricSet("repository_ops", ["operation", "task_name"])
TICKS = OperationMetricSet("ticks", [])


# -- executions ---------------------------------------------------------------------------


async def prometheus_middleware(context: Context, next: Callable[[], Awaitable[None]]) -> None:
    """Middleware measuring each execution (``pyncette_tasks_*``) and its staleness."""
    task_name = context.task.template.name
    late = context.app_context.clock.now() - context.scheduled_at
    TASK_STALENESS.labels(task_name).observe(max(late, datetime.timedelta(0)).total_seconds())
    async with TASKS.measure(task_name=task_name):
        await next()


# -- ticks --------------------------------------------------------------------------------


async def prometheus_fixture(app_context: PyncetteContext) -> AsyncIterator[None]:
    """Fixture measuring the poll loop's ticks (``pyncette_ticks_*``) while the app runs:
    ``app.use_fixture("_prometheus", prometheus_fixture)``."""
    open_ticks = 0

    def on_start(event: TickStarted) -> None:
        nonlocal open_ticks
        open_ticks += 1
        TICKS.started()

    def on_finish(event: TickFinished) -> None:
        nonlocal open_ticks
        if open_ticks:  # else it started before this fixture subscribed
            open_ticks -= 1
            TICKS.finished(event.duration, event.error)

    unsubscribe_start = app_context.app.subscribe(on_start, TickStarted)
    unsubscribe_finish = app_context.app.subscribe(on_finish, TickFinished)
    try:
        yield
    finally:
        unsubscribe_start()
        unsubscribe_finish()
        # A tick cut short by cancellation never reports its end.
        TICKS.requests_in_progress.dec(open_ticks)


# -- the repository -----------------------------------------------------------------------

_PARTITION = re.compile(r"(?s)(.+):\d+")


def _template_of_group(group: str) -> str:
    """The task name of a group, for a repository that does not know the app: a dynamic
    task's name, its partitions' ``<name>:<partition>`` stripped to ``<name>``."""
    if group == STATIC_GROUP:
        return group
    partition = _PARTITION.fullmatch(group)
    return partition.group(1) if partition else group


def _app_template_names(app: Pyncette) -> Callable[[str], str]:
    """The task name of a group, as the app's dynamic tasks define their groups (exact
    even for a dynamic task whose own name ends in ``:<number>``)."""
    known: dict[str, str] = {STATIC_GROUP: STATIC_GROUP}

    def task_name(group: str) -> str:
        name = known.get(group)
        if name is None:
            for task in app.tasks.values():
                if task.dynamic:
                    known.update(dict.fromkeys(task.all_groups(), task.name))
            name = known.setdefault(group, _template_of_group(group))
        return name

    return task_name


_OPERATION_LABELS = {
    "commit": "commit_task",
    "extend": "extend_lease",
    "unlock": "unlock_task",
    "register": "register_task",
    "unregister": "unregister_task",
    "get": "get_task_state",
    "list": "list_task_states",
}
"""This project's repository methods under the names of the 1.x calls they replace."""


class _MeteredRepository(RepositoryProxy):
    """Measures every call of the repository it wraps as ``pyncette_repository_ops_*``."""

    def __init__(self, inner: Repository, task_name_of: Callable[[str], str]) -> None:
        super().__init__(inner)
        self.task_name_of = task_name_of

    async def around_group(self, operation: str, group: str, call: Awaitable[T]) -> T:
        if operation == "claim":
            label = "poll_task" if group == STATIC_GROUP else "poll_dynamic_task"
        else:
            label = _OPERATION_LABELS.get(operation, operation)
        async with REPOSITORY_OPS.measure(operation=label, task_name=self.task_name_of(group)):
            return await call


def _metered_factory(
    repository_factory: RepositoryFactory, task_name_of: Callable[[str], str]
) -> RepositoryFactory:
    @contextlib.asynccontextmanager
    async def metered(**options: Any) -> AsyncIterator[Repository]:
        async with repository_factory(**options) as repository:
            yield _MeteredRepository(repository, task_name_of)

    metered.__wrapped__ = repository_factory  # type: ignore[attr-defined]  # what it wraps
    return metered


def with_prometheus_repository(repository_factory: RepositoryFactory) -> RepositoryFactory:
    """``repository_factory``, its repositories measured as ``pyncette_repository_ops_*``.

    Not knowing the app, it takes a group's trailing ``:<number>`` for a partition (a
    dynamic task named ``report:2024`` is labelled ``report``); :func:`use_prometheus`
    labels from the app's own tasks instead.
    """
    return _metered_factory(repository_factory, _template_of_group)


# -- all together -------------------------------------------------------------------------


def use_prometheus(
    app: Pyncette,
    measure_repository: bool = True,
    measure_ticks: bool = True,
    measure_tasks: bool = True,
) -> None:
    """Record this app's metrics in the default Prometheus registry.

    :param measure_repository: measure backend calls (wraps ``app.repository_factory``,
        so call this after setting it)
    :param measure_ticks: measure the poll loop's ticks (the fixture ``_prometheus``)
    :param measure_tasks: measure executions (a middleware, placed after the ones added
        so far)
    """
    if measure_repository:
        app.repository_factory = _metered_factory(app.repository_factory, _app_template_names(app))
    if measure_ticks:
        app.use_fixture("_prometheus", prometheus_fixture)
    if measure_tasks:
        app.use_middleware(prometheus_middleware)
