"""The health-check server and the Prometheus metrics."""

from __future__ import annotations

import asyncio
import datetime
import socket

import pytest
from prometheus_client import REGISTRY

from backends import BackendConfig
from harness import FakeClock, make_app, running
from pyncette import Context, PyncetteContext
from pyncette.healthcheck import default_healthcheck, use_healthcheck_server
from pyncette.memory import memory_repository
from pyncette.prometheus import use_prometheus

pytestmark = pytest.mark.anyio
S = datetime.timedelta(seconds=1)
MEMORY = BackendConfig("memory", memory_repository, shared=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def request(port: int, line: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{line}\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    status = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return int(status.split()[1])


async def test_health_endpoint_follows_the_last_tick(clock: FakeClock) -> None:
    app = make_app(MEMORY, clock)
    port = free_port()
    use_healthcheck_server(app, port=port, bind_address="127.0.0.1")

    @app.task(interval=10 * S)
    async def job(context: Context) -> None: ...

    async with running(app) as ctx:
        await clock.advance(1)
        assert await request(port, "GET /health HTTP/1.1") == 200
        assert await request(port, "HEAD /health HTTP/1.1") == 200
        assert await request(port, "GET /other HTTP/1.1") == 404
        assert await request(port, "POST /health HTTP/1.1") == 405
        ctx.last_tick = clock.now() - 3 * S  # the loop is stuck: older than two polls
        assert await default_healthcheck(ctx) is False
        assert await request(port, "GET /health HTTP/1.1") == 500
    with pytest.raises(ConnectionRefusedError):
        await request(port, "GET /health HTTP/1.1")  # closed with the app


async def test_custom_health_handler(clock: FakeClock) -> None:
    app = make_app(MEMORY, clock)
    port = free_port()
    verdicts = [True, False]

    async def handler(app_context: PyncetteContext) -> bool:
        if not verdicts:
            raise RuntimeError("handler broke")
        return verdicts.pop(0)

    use_healthcheck_server(app, port=port, bind_address="127.0.0.1", healthcheck_handler=handler)
    async with app.create():
        assert [await request(port, "GET /health HTTP/1.0") for _ in range(3)] == [200, 500, 500]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_prometheus_metrics(clock: FakeClock) -> None:
    app = make_app(MEMORY, clock)
    use_prometheus(app)

    @app.task(interval=10 * S, name="metered_ok")
    async def ok(context: Context) -> None: ...

    @app.task(interval=10 * S, name="metered_bad")
    async def bad(context: Context) -> None:
        raise RuntimeError("boom")

    before = {
        "ok": sample("pyncette_executions_total", task_name="metered_ok", outcome="success"),
        "bad": sample("pyncette_executions_total", task_name="metered_bad", outcome="failure"),
        "claims": sample(
            "pyncette_repository_operations_total", operation="claim", outcome="success"
        ),
        "ticks": sample("pyncette_ticks_total"),
        "late": sample("pyncette_execution_lateness_seconds_count", task_name="metered_ok"),
    }
    async with running(app):
        await clock.advance(30)
    assert (
        sample("pyncette_executions_total", task_name="metered_ok", outcome="success")
        == before["ok"] + 3
    )
    assert (
        sample("pyncette_executions_total", task_name="metered_bad", outcome="failure")
        == before["bad"] + 1
    )
    assert (
        sample("pyncette_repository_operations_total", operation="claim", outcome="success")
        > before["claims"]
    )
    assert sample("pyncette_ticks_total") > before["ticks"]
    assert (
        sample("pyncette_execution_lateness_seconds_count", task_name="metered_ok")
        == before["late"] + 3
    )
    assert sample("pyncette_executions_in_progress", task_name="metered_ok") == 0
