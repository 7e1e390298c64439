"""The Prometheus metrics: 1.x's names, types, labels and buckets, read back from the
default registry.

The metrics are process-wide singletons, so every test compares a snapshot taken before
with the values after, and uses task names of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import pytest
from prometheus_client import REGISTRY

from backends import BackendConfig
from harness import VirtualClock, make_app, running
from pyncette import Context, FailureMode
from pyncette.events import TickStarted
from pyncette.memory import memory_repository
from pyncette.prometheus import (
    prometheus_fixture,
    prometheus_middleware,
    use_prometheus,
    with_prometheus_repository,
)
from pyncette.repository import Repository, RepositoryProxy
from pyncette.task import STATIC_GROUP

pytestmark = pytest.mark.anyio
S = datetime.timedelta(seconds=1)
T = TypeVar("T")

OPERATIONS = {
    "poll_task",
    "poll_dynamic_task",
    "commit_task",
    "extend_lease",
    "unlock_task",
    "register_task",
    "unregister_task",
    "get_task_state",
    "list_task_states",
}
STALENESS_BUCKETS_1X = [
    *(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 25.0, 50.0, 75.0, 100.0),
    *(250.0, 500.0, 750.0, 1000.0, math.inf),
]


def samples() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
    }


class Delta:
    """How much each sample of the default registry moved since this was made."""

    def __init__(self) -> None:
        self.before = samples()

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return samples().get(key, 0.0) - self.before.get(key, 0.0)


def label_values(name: str, label: str) -> set[str]:
    return {dict(labels)[label] for sample, labels in samples() if sample == name} - {""}


async def test_executions_by_task_and_template(
    memory_backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(memory_backend, clock)
    use_prometheus(app)

    @app.task(interval=10 * S, name="prom_ok")
    async def ok(context: Context) -> None: ...

    @app.task(interval=10 * S, name="prom_bad")
    async def bad(context: Context) -> None:
        raise KeyError("boom")

    @app.dynamic_task(name="prom_template")
    async def template(context: Context) -> None: ...

    delta = Delta()
    async with running(app) as ctx:
        for instance in ("prom_instance_a", "prom_instance_b"):
            await ctx.schedule_task(template, instance, interval=10 * S)
        await clock.advance(30)

    assert delta("pyncette_tasks_total", task_name="prom_ok") == 3
    assert delta("pyncette_tasks_duration_seconds_count", task_name="prom_ok") == 3
    assert delta("pyncette_tasks_staleness_seconds_count", task_name="prom_ok") == 3
    assert delta("pyncette_tasks_total", task_name="prom_template") == 6  # both instances
    assert delta("pyncette_tasks_total", task_name="prom_bad") == 1  # locked until the lease ends
    assert (
        delta("pyncette_tasks_failures_total", task_name="prom_bad", exception_type="KeyError") == 1
    )
    assert delta("pyncette_tasks_duration_seconds_count", task_name="prom_bad") == 1
    for name in ("prom_ok", "prom_template"):
        failures = [
            labels
            for sample, labels in samples()
            if sample == "pyncette_tasks_failures_total" and ("task_name", name) in labels
        ]
        assert failures == []
    for name in ("prom_ok", "prom_bad", "prom_template"):
        assert delta("pyncette_tasks_in_progress", task_name=name) == 0
    assert not {
        name
        for name in label_values("pyncette_tasks_total", "task_name")
        if name.startswith("prom_instance")
    }


async def test_in_progress_while_an_execution_runs(
    memory_backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(memory_backend, clock)
    use_prometheus(app)
    release = asyncio.Event()

    @app.task(interval=10 * S, name="prom_slow")
    async def slow(context: Context) -> None:
        await release.wait()

    delta = Delta()
    async with running(app):
        await clock.advance(10)
        assert delta("pyncette_tasks_in_progress", task_name="prom_slow") == 1
        assert delta("pyncette_tasks_total", task_name="prom_slow") == 1  # counted as it starts
        assert delta("pyncette_tasks_duration_seconds_count", task_name="prom_slow") == 0
        release.set()
        await clock.settle()
        assert delta("pyncette_tasks_in_progress", task_name="prom_slow") == 0
        assert delta("pyncette_tasks_duration_seconds_count", task_name="prom_slow") == 1


async def test_staleness_is_start_minus_scheduled_time_on_the_app_clock(
    memory_backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(memory_backend, clock)
    use_prometheus(app)

    @app.dynamic_task(name="prom_late")
    async def late(context: Context) -> None: ...

    delta = Delta()
    async with running(app) as ctx:
        await ctx.schedule_task(late, "overdue", execute_at=clock.now() - 7 * S)
        await clock.advance(1)

    assert delta("pyncette_tasks_staleness_seconds_count", task_name="prom_late") == 1
    assert delta("pyncette_tasks_staleness_seconds_sum", task_name="prom_late") == 7.0
    bucket = "pyncette_tasks_staleness_seconds_bucket"
    assert delta(bucket, task_name="prom_late", le="5.0") == 0
    assert delta(bucket, task_name="prom_late", le="7.5") == 1
    assert delta(bucket, task_name="prom_late", le="+Inf") == 1
    bounds = sorted({float(dict(labels)["le"]) for name, labels in samples() if name == bucket})
    assert bounds == STALENESS_BUCKETS_1X


async def test_repository_operations_by_operation_and_task(
    memory_backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(memory_backend, clock)
    use_prometheus(app)

    @app.task(interval=10 * S, name="prom_static")
    async def static(context: Context) -> None: ...

    @app.partitioned_task(name="prom_parts", partition_count=4)
    async def parts(context: Context) -> None:
        await context.heartbeat()

    @app.dynamic_task(name="prom_year:2024", failure_mode=FailureMode.UNLOCK)
    async def retried(context: Context) -> None:
        raise RuntimeError("again")

    delta = Delta()
    async with running(app) as ctx:
        for instance in ("p1", "p2", "p3", "p4", "p5"):
            await ctx.schedule_task(parts, instance, interval=10 * S)
        await ctx.schedule_task(retried, "r", interval=10 * S)
        await clock.advance(10)
        assert await ctx.get_task(static) is not None
        assert await ctx.get_task(parts, "p1") is not None
        await ctx.list_tasks(parts)
        await ctx.unschedule_task(parts, "p2")

    expected = {
        ("register_task", STATIC_GROUP),
        ("poll_task", STATIC_GROUP),
        ("commit_task", STATIC_GROUP),
        ("get_task_state", STATIC_GROUP),
        ("register_task", "prom_parts"),
        ("poll_dynamic_task", "prom_parts"),
        ("extend_lease", "prom_parts"),
        ("commit_task", "prom_parts"),
        ("get_task_state", "prom_parts"),
        ("list_task_states", "prom_parts"),
        ("unregister_task", "prom_parts"),
        ("poll_dynamic_task", "prom_year:2024"),  # not mistaken for a partition
        ("unlock_task", "prom_year:2024"),
    }
    for operation, task_name in expected:
        labels = {"operation": operation, "task_name": task_name}
        calls = delta("pyncette_repository_ops_total", **labels)
        assert calls >= 1, labels
        assert delta("pyncette_repository_ops_duration_seconds_count", **labels) == calls
        assert delta("pyncette_repository_ops_in_progress", **labels) == 0
    assert label_values("pyncette_repository_ops_total", "operation") <= OPERATIONS
    task_names = label_values("pyncette_repository_ops_total", "task_name")
    assert {"prom_parts", "prom_year:2024"} <= task_names
    assert not {name for name in task_names if name.startswith("prom_parts:")}  # partitions
    assert "prom_year" not in task_names


class BackendDown(Exception):
    pass


class Breakable(RepositoryProxy):
    """Raises :class:`BackendDown` from every call while ``broken``."""

    broken = False

    async def around(self, operation: str, call: Awaitable[T]) -> T:
        if self.broken:
            close = getattr(call, "close", None)
            if close is not None:
                close()
            raise BackendDown(operation)
        return await call


async def test_failures_of_the_backend_and_of_ticks(clock: VirtualClock) -> None:
    proxies: list[Breakable] = []

    @contextlib.asynccontextmanager
    async def breakable(**options: Any) -> AsyncIterator[Repository]:
        async with memory_repository(**options) as repository:
            proxies.append(Breakable(repository))
            yield proxies[-1]

    app = make_app(BackendConfig("memory", breakable, shared=False), clock)
    use_prometheus(app)

    @app.task(interval=S, name="prom_unreachable")
    async def job(context: Context) -> None: ...

    delta = Delta()
    async with running(app):
        await clock.advance(2)
        proxies[0].broken = True
        await clock.advance(10)
        proxies[0].broken = False
        await clock.advance(30)

    labels = {"operation": "poll_task", "task_name": STATIC_GROUP}
    failed = delta("pyncette_repository_ops_failures_total", **labels, exception_type="BackendDown")
    assert failed >= 1
    assert delta("pyncette_repository_ops_total", **labels) > failed  # and the good ones
    assert delta("pyncette_repository_ops_in_progress", **labels) == 0
    tick_failures = delta("pyncette_ticks_failures_total", exception_type="BackendDown")
    assert tick_failures >= 1
    ticks = delta("pyncette_ticks_total")
    assert ticks > tick_failures
    assert delta("pyncette_ticks_duration_seconds_count") == ticks
    assert delta("pyncette_ticks_in_progress") == 0


async def test_measure_flags_in_1x_positional_order(
    memory_backend: BackendConfig, clock: VirtualClock
) -> None:
    runs: list[str] = []

    async def record(context: Context) -> None:
        runs.append(context.task.template.name)

    app = make_app(memory_backend, clock)
    use_prometheus(app, False, True, False)  # repository, ticks, tasks
    template = app.dynamic_task(name="prom_flags_ticks_only")(record)
    delta = Delta()
    async with running(app) as ctx:
        await ctx.schedule_task(template, "one", interval=10 * S)
        await clock.advance(10)
    assert runs == ["prom_flags_ticks_only"]
    assert delta("pyncette_ticks_total") >= 1
    assert delta("pyncette_tasks_total", task_name="prom_flags_ticks_only") == 0
    assert "prom_flags_ticks_only" not in label_values("pyncette_repository_ops_total", "task_name")

    app = make_app(memory_backend, clock)
    use_prometheus(app, measure_ticks=False)
    template = app.dynamic_task(name="prom_flags_no_ticks")(record)
    delta = Delta()
    async with running(app) as ctx:
        await ctx.schedule_task(template, "one", interval=10 * S)
        await clock.advance(10)
    assert runs[1:] == ["prom_flags_no_ticks"]
    assert delta("pyncette_ticks_total") == 0
    assert delta("pyncette_tasks_total", task_name="prom_flags_no_ticks") == 1
    ops = {"operation": "poll_dynamic_task", "task_name": "prom_flags_no_ticks"}
    assert delta("pyncette_repository_ops_total", **ops) >= 1


async def test_helpers_compose_as_in_1x(clock: VirtualClock) -> None:
    backend = BackendConfig("memory", with_prometheus_repository(memory_repository), shared=False)
    app = make_app(backend, clock)
    app.use_fixture("_prometheus", prometheus_fixture)
    app.use_middleware(prometheus_middleware)
    ticks: list[TickStarted] = []
    app.subscribe(ticks.append, TickStarted)

    @app.partitioned_task(name="prom_composed", partition_count=3)
    async def composed(context: Context) -> None: ...

    delta = Delta()
    async with running(app) as ctx:
        await ctx.schedule_task(composed, "x", interval=10 * S)
        await clock.advance(10)
    assert delta("pyncette_tasks_total", task_name="prom_composed") == 1
    ops = {"operation": "poll_dynamic_task", "task_name": "prom_composed"}
    assert delta("pyncette_repository_ops_total", **ops) >= 3  # every partition
    assert len(ticks) >= 1
    assert delta("pyncette_ticks_total") == len(ticks)

    # Each run of the app measures its own ticks, once: the fixture unsubscribes on exit.
    async with running(app):
        await clock.advance(10)
    assert delta("pyncette_ticks_total") == len(ticks)
    assert delta("pyncette_ticks_duration_seconds_count") == len(ticks)
    assert delta("pyncette_ticks_in_progress") == 0


async def test_with_prometheus_repository_labels_by_group() -> None:
    delta = Delta()
    async with with_prometheus_repository(memory_repository)() as repository:
        await repository.get("prom_direct:3", "x")  # partition 3 of prom_direct
        await repository.get("prom_direct_plain", "x")
        await repository.get(STATIC_GROUP, "x")
        await repository.list("prom_direct:0", limit=10)
    get = "get_task_state"
    assert delta("pyncette_repository_ops_total", operation=get, task_name="prom_direct") == 1
    assert delta("pyncette_repository_ops_total", operation=get, task_name="prom_direct_plain") == 1
    assert delta("pyncette_repository_ops_total", operation=get, task_name=STATIC_GROUP) == 1
    listed = {"operation": "list_task_states", "task_name": "prom_direct"}
    assert delta("pyncette_repository_ops_total", **listed) == 1


async def test_metric_names_types_and_labels_are_1x(
    memory_backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(memory_backend, clock)
    use_prometheus(app)

    @app.task(interval=10 * S, name="prom_shape")
    async def shape(context: Context) -> None:
        raise ValueError("for the failure series")

    async with running(app):
        await clock.advance(10)

    expected = {
        "pyncette_tasks": ("counter", {"task_name"}),
        "pyncette_tasks_duration_seconds": ("histogram", {"task_name"}),
        "pyncette_tasks_failures": ("counter", {"task_name", "exception_type"}),
        "pyncette_tasks_in_progress": ("gauge", {"task_name"}),
        "pyncette_tasks_staleness_seconds": ("histogram", {"task_name"}),
        "pyncette_repository_ops": ("counter", {"operation", "task_name"}),
        "pyncette_repository_ops_duration_seconds": ("histogram", {"operation", "task_name"}),
        "pyncette_repository_ops_in_progress": ("gauge", {"operation", "task_name"}),
        "pyncette_ticks": ("counter", set()),
        "pyncette_ticks_duration_seconds": ("histogram", set()),
        "pyncette_ticks_in_progress": ("gauge", set()),
    }
    families = {family.name: family for family in REGISTRY.collect()}
    for name, (kind, labels) in expected.items():
        family = families[name]
        assert family.type == kind, name
        assert family.samples, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)
    failure_families = {
        "pyncette_repository_ops_failures": {"operation", "task_name", "exception_type"},
        "pyncette_ticks_failures": {"exception_type"},
    }
    for name, labels in failure_families.items():
        assert families[name].type == "counter"
        assert all(set(sample.labels) == labels for sample in families[name].samples)
    pyncette_families = {name for name in families if name.startswith("pyncette_")}
    assert pyncette_families == set(expected) | set(failure_families)
