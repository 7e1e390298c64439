"""One OpenTelemetry span per execution, printed to the console.
Run: python examples/opentelemetry_tracing.py (needs opentelemetry-sdk)

In production, replace the console exporter with an OTLP one
(``opentelemetry-exporter-otlp``) in a ``BatchSpanProcessor``.
"""

from __future__ import annotations

import datetime

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from pyncette import Context, Pyncette
from pyncette.otel import use_opentelemetry


def one_line(span: ReadableSpan) -> str:
    trace_id = f"{span.context.trace_id:032x}"[:8] if span.context else "-"
    attributes = ", ".join(f"{key}={value!r}" for key, value in (span.attributes or {}).items())
    return f"trace {trace_id} span {span.name!r} {span.status.status_code.name} {attributes}\n"


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(formatter=one_line)))
trace.set_tracer_provider(provider)

app = Pyncette()
use_opentelemetry(app)  # the global tracer provider; or use_opentelemetry(app, provider)
tracer = trace.get_tracer("example")


@app.task(interval=datetime.timedelta(seconds=1))
async def report(context: Context) -> None:
    with tracer.start_as_current_span("build report"):  # a child of the execution's span
        pass


@app.task(interval=datetime.timedelta(seconds=2))
async def flaky(context: Context) -> None:
    raise RuntimeError("downstream unavailable")  # an ERROR span with the exception


if __name__ == "__main__":
    app.main()
