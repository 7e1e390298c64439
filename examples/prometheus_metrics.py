"""Prometheus metrics with Pyncette 1.x's names. Run: python examples/prometheus_metrics.py

Scrape http://127.0.0.1:9100/metrics (set PORT to use another port) for
``pyncette_tasks_total``, ``pyncette_tasks_staleness_seconds``,
``pyncette_repository_ops_total`` and ``pyncette_ticks_total``.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import AsyncIterator

from prometheus_client import start_http_server

from pyncette import Context, Pyncette, PyncetteContext
from pyncette.prometheus import use_prometheus

PORT = int(os.environ.get("PORT", "9100"))

app = Pyncette()
use_prometheus(app)


@app.fixture()
async def metrics_server(app_context: PyncetteContext) -> AsyncIterator[None]:
    server, thread = start_http_server(PORT, addr="127.0.0.1")
    yield
    server.shutdown()
    thread.join()


@app.task(interval=datetime.timedelta(seconds=1))
async def report(context: Context) -> None:
    print(f"report ran; metrics on port {PORT}", flush=True)


if __name__ == "__main__":
    app.main()
