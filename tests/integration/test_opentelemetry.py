"""The OpenTelemetry middleware: one span per execution, read back from the SDK's
in-memory exporter.

Most tests give the app a tracer provider of their own. The global tracer provider can
be set only once per process, so one module-scoped provider is made global for the tests
of the default (``tracer_provider=None``) and of an app that is not traced.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from backends import BackendConfig
from harness import VirtualClock, make_app, running
from pyncette import Context, ExecutionMode
from pyncette.errors import LeaseLostException
from pyncette.otel import use_opentelemetry

pytestmark = pytest.mark.anyio
S = datetime.timedelta(seconds=1)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


_GLOBAL_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def global_exporter() -> InMemorySpanExporter:
    """An exporter behind the process's global tracer provider (set once, here)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_GLOBAL_EXPORTER))
        trace.set_tracer_provider(provider)
    return _GLOBAL_EXPORTER


def pyncette_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name.startswith("pyncette ")]


def attributes(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


async def test_one_span_per_execution(
    memory_backend: BackendConfig,
    clock: VirtualClock,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    app = make_app(memory_backend, clock)
    use_opentelemetry(app, provider)
    seen: list[datetime.datetime] = []

    @app.task(interval=10 * S)
    async def report(context: Context) -> None:
        seen.append(context.scheduled_at)

    async with running(app):
        await clock.advance(30)

    spans = pyncette_spans(exporter)
    assert len(seen) == 3
    assert len(spans) == len(seen)
    assert [attributes(span) for span in spans] == [
        {
            "pyncette.task.name": "report",
            "pyncette.task.scheduled_at": scheduled_at.isoformat(),
            "pyncette.task.execution_mode": "at_least_once",
            "pyncette.execution.outcome": "success",
        }
        for scheduled_at in seen
    ]
    for span in spans:
        assert span.name == "pyncette report"
        assert span.kind is SpanKind.INTERNAL
        assert span.status.status_code is StatusCode.UNSET
        assert span.parent is None
        assert span.events == ()
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name == "pyncette"
    assert len({span.context.trace_id for span in spans if span.context}) == 3


async def test_a_failing_task_gives_an_error_span_with_the_exception(
    memory_backend: BackendConfig,
    clock: VirtualClock,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    app = make_app(memory_backend, clock)
    use_opentelemetry(app, provider)

    @app.task(interval=10 * S)
    async def broken(context: Context) -> None:
        raise KeyError("boom")

    async with running(app):
        await clock.advance(10)

    [span] = pyncette_spans(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "KeyError: 'boom'"
    assert attributes(span)["pyncette.execution.outcome"] == "failure"
    assert attributes(span)["error.type"] == "KeyError"
    [event] = span.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "KeyError"
    assert event.attributes["exception.message"] == "'boom'"
    assert "raise KeyError" in str(event.attributes["exception.stacktrace"])


async def test_a_dynamic_instance_carries_its_instance_name(
    memory_backend: BackendConfig,
    clock: VirtualClock,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    app = make_app(memory_backend, clock)
    use_opentelemetry(app, provider)

    @app.dynamic_task(execution_mode=ExecutionMode.AT_MOST_ONCE)
    async def reminder(context: Context) -> None: ...

    async with running(app) as ctx:
        await ctx.schedule_task(reminder, "alice", interval=10 * S)
        await ctx.schedule_task(reminder, "bob", interval=10 * S)
        await clock.advance(10)

    spans = pyncette_spans(exporter)
    assert {span.name for span in spans} == {"pyncette reminder"}
    assert sorted(str(attributes(span)["pyncette.task.instance_name"]) for span in spans) == [
        "alice",
        "bob",
    ]
    for span in spans:
        assert attributes(span)["pyncette.task.name"] == "reminder"
        assert attributes(span)["pyncette.task.execution_mode"] == "at_most_once"


async def test_a_lost_lease_is_marked_apart_from_failures(
    memory_backend: BackendConfig,
    clock: VirtualClock,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    app = make_app(memory_backend, clock)
    use_opentelemetry(app, provider)

    @app.dynamic_task()
    async def job(context: Context) -> None:
        await context.app_context.unschedule_task(context.task)  # the next heartbeat fails
        if context.task.name == "raising":
            await context.heartbeat()
        else:
            with pytest.raises(LeaseLostException):
                await context.heartbeat()

    async with running(app) as ctx:
        await ctx.schedule_task(job, "raising", interval=10 * S)
        await ctx.schedule_task(job, "catching", interval=10 * S)
        await clock.advance(10)

    spans = pyncette_spans(exporter)
    assert sorted(str(attributes(span)["pyncette.task.instance_name"]) for span in spans) == [
        "catching",
        "raising",
    ]
    for span in spans:
        assert span.status.status_code is StatusCode.UNSET
        assert attributes(span)["pyncette.execution.outcome"] == "lease_lost"
        assert "error.type" not in attributes(span)
        [event] = span.events
        assert event.name == "pyncette.lease_lost"
        assert event.attributes is not None
        assert "was lost" in str(event.attributes["exception.message"])


async def test_the_span_is_current_while_the_task_runs(
    memory_backend: BackendConfig,
    clock: VirtualClock,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    app = make_app(memory_backend, clock)
    use_opentelemetry(app, provider)
    tracer = provider.get_tracer("test")

    @app.task(interval=10 * S)
    async def in_loop(context: Context) -> None:
        with tracer.start_as_current_span("child of in_loop"):
            pass

    @app.task(interval=10 * S)
    def in_thread(context: Context) -> None:
        with tracer.start_as_current_span("child of in_thread"):
            pass

    # Executions start traces of their own, not children of what was current at start.
    with tracer.start_as_current_span("around the app"):
        async with running(app):
            await clock.advance(10)

    spans = {span.name: span for span in exporter.get_finished_spans()}
    for name in ("in_loop", "in_thread"):
        execution, child = spans[f"pyncette {name}"], spans[f"child of {name}"]
        assert execution.parent is None
        assert execution.context is not None
        assert child.parent is not None
        assert child.parent.span_id == execution.context.span_id


async def test_no_spans_unless_installed(
    memory_backend: BackendConfig, clock: VirtualClock, global_exporter: InMemorySpanExporter
) -> None:
    traced = make_app(memory_backend, clock)
    use_opentelemetry(traced)  # the global provider
    untraced = make_app(memory_backend, clock)

    @traced.task(interval=10 * S)
    async def traced_task(context: Context) -> None: ...

    @untraced.task(interval=10 * S)
    async def untraced_task(context: Context) -> None: ...

    global_exporter.clear()
    async with running(traced), running(untraced):
        await clock.advance(20)

    assert [span.name for span in pyncette_spans(global_exporter)] == ["pyncette traced_task"] * 2
