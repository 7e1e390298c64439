"""OpenTelemetry tracing: one span per execution.

Requires the ``opentelemetry`` extra (``opentelemetry-api`` only; configure an SDK and an
exporter as usual). Call :func:`use_opentelemetry` on the app. Each execution of a task
or of a dynamic instance becomes one span named ``pyncette <task name>`` (the template's
name for instances, so span names stay few), of kind ``INTERNAL``: nothing sent the
execution a message whose producer span it could continue, so it is the root of a
trace of its own, and the task's own spans (HTTP calls, queries) are its children.

Attributes:

* ``pyncette.task.name`` -- the task's name (the template's, for dynamic instances);
* ``pyncette.task.instance_name`` -- the instance's name (dynamic instances only);
* ``pyncette.task.scheduled_at`` -- when the run was due, ISO 8601, in the task's
  timezone;
* ``pyncette.task.execution_mode`` -- ``at_least_once`` or ``at_most_once``;
* ``pyncette.execution.outcome`` -- ``success``, ``failure``, ``lease_lost`` or
  ``cancelled``.

A task that raises gives an ``ERROR`` span with the exception recorded as an event and
``error.type`` set to the exception's class. A lost lease is not the task's failure
(another instance has the run now), so it leaves the status unset: the outcome says
``lease_lost`` and the span has a ``pyncette.lease_lost`` event. That holds both when
:class:`~pyncette.errors.LeaseLostException` escapes the task and when the task caught
it from a heartbeat and returned. A lease found lost only when the finished execution
is committed is not on the span (the span has ended by then); it is logged and reported
as the :class:`~pyncette.events.LeaseLost` event.
"""

from __future__ import annotations

import asyncio
import importlib.util

if importlib.util.find_spec("opentelemetry") is None:  # pragma: no cover - install
    raise ImportError(
        "Pyncette's tracing needs opentelemetry-api: pip install 'pyncette[opentelemetry]'"
    )

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

import pyncette
from pyncette.app import Pyncette
from pyncette.errors import LeaseLostException
from pyncette.model import Context, MiddlewareFunc, NextFunc

TRACER_NAME = "pyncette"
"""The instrumentation scope of the spans."""

TASK_NAME = "pyncette.task.name"
INSTANCE_NAME = "pyncette.task.instance_name"
SCHEDULED_AT = "pyncette.task.scheduled_at"
EXECUTION_MODE = "pyncette.task.execution_mode"
OUTCOME = "pyncette.execution.outcome"
ERROR_TYPE = "error.type"
LEASE_LOST_EVENT = "pyncette.lease_lost"


def tracing_middleware(tracer_provider: TracerProvider | None = None) -> MiddlewareFunc:
    """A middleware wrapping each execution in a span from ``tracer_provider`` (the
    global one when ``None``, looked up when the first span starts, so the SDK may be
    configured after this is called)."""
    tracer = trace.get_tracer(TRACER_NAME, pyncette.__version__, tracer_provider)

    async def opentelemetry_middleware(context: Context, next: NextFunc) -> None:
        task = context.task
        attributes: dict[str, str] = {
            TASK_NAME: task.template.name,
            SCHEDULED_AT: context.scheduled_at.isoformat(),
            EXECUTION_MODE: task.execution_mode.name.lower(),
        }
        if task.is_instance:
            attributes[INSTANCE_NAME] = task.name
        span = tracer.start_span(
            f"pyncette {task.template.name}",
            # An empty context: a root span, not a child of whatever was current when
            # the app started running (which would put every execution in one trace).
            context=otel_context.Context(),
            kind=SpanKind.INTERNAL,
            attributes=attributes,
        )
        held_lease = context.lease is not None
        with trace.use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            try:
                await next()
            except LeaseLostException as error:
                _lease_lost(span, str(error))
                raise
            except asyncio.CancelledError:
                span.set_attribute(OUTCOME, "cancelled")
                raise
            except Exception as error:
                span.set_attribute(OUTCOME, "failure")
                span.set_attribute(ERROR_TYPE, _qualified_name(type(error)))
                span.record_exception(error, escaped=True)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
                raise
            if held_lease and context.lease is None:  # a heartbeat lost it; the task went on
                _lease_lost(span, str(LeaseLostException(task)))
            else:
                span.set_attribute(OUTCOME, "success")

    return opentelemetry_middleware


def _lease_lost(span: Span, message: str) -> None:
    span.set_attribute(OUTCOME, "lease_lost")
    span.add_event(LEASE_LOST_EVENT, {"exception.message": message})


def _qualified_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def use_opentelemetry(app: Pyncette, tracer_provider: TracerProvider | None = None) -> None:
    """Trace this app's executions, one span each (a middleware, placed after the ones
    added so far: call this first to have the others' time inside the span).

    :param tracer_provider: where the spans go; the global tracer provider when ``None``
    """
    app.use_middleware(tracing_middleware(tracer_provider))
