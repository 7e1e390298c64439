"""The health-check server, over real HTTP on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import socket

import pytest

from backends import BackendConfig
from harness import VirtualClock, make_app, running
from pyncette import Context, PyncetteContext
from pyncette.healthcheck import default_healthcheck, use_healthcheck_server

pytestmark = pytest.mark.anyio
S = datetime.timedelta(seconds=1)
REAL_TIMEOUT = 5.0
"""Real seconds a test waits for the server before failing (the app's clock is virtual)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def request(method: str, path: str = "/") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` and read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(REAL_TIMEOUT):
            return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def http(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of the answer to ``data``."""
    head, _, body = (await exchange(port, data)).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


async def test_any_path_answers_get_and_head(
    memory_backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(memory_backend, clock)
    port = free_port()
    use_healthcheck_server(app, port, "127.0.0.1")  # 1.x's positional order

    @app.task(interval=10 * S)
    async def job(context: Context) -> None: ...

    async with running(app):
        await clock.advance(1)
        for path in ("/", "/health", "/healthz", "/ready?verbose=1"):
            status, headers, body = await http(port, request("GET", path))
            assert (status, body) == (200, b"OK\n"), path
            assert headers["connection"] == "close"
        status, headers, body = await http(port, request("HEAD", "/healthz"))
        assert (status, body) == (200, b"")
        for method in ("POST", "PUT", "DELETE", "OPTIONS"):
            status, headers, body = await http(port, request(method, "/health"))
            assert status == 405, method
            assert headers["allow"] == "GET, HEAD"


async def test_default_rule_is_two_poll_intervals_on_the_app_clock(
    memory_backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(memory_backend, clock, poll_interval=5 * S)
    port = free_port()
    use_healthcheck_server(app, port=port, bind_address="127.0.0.1")

    async with app.create() as ctx:
        assert ctx.last_tick is None  # not polling yet
        assert await default_healthcheck(ctx) is False
        assert (await http(port, request("GET")))[0] == 500

    async with running(app) as ctx:
        await clock.advance(1)
        assert (await http(port, request("GET")))[0] == 200
        ctx.last_tick = clock.now() - 10 * S + datetime.timedelta(milliseconds=1)
        assert await default_healthcheck(ctx) is True
        assert (await http(port, request("GET")))[0] == 200
        ctx.last_tick = clock.now() - 10 * S  # the loop is stuck: two polls without a tick
        assert await default_healthcheck(ctx) is False
        status, _, body = await http(port, request("GET", "/healthz"))
        assert (status, body) == (500, b"Unhealthy\n")
        status, _, body = await http(port, request("HEAD"))
        assert (status, body) == (500, b"")


async def test_custom_handler_decides_and_its_failures_are_unhealthy(
    memory_backend: BackendConfig, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(memory_backend, clock)
    port = free_port()
    verdicts: list[bool | str] = [True, False, "raise", "hang", "own timeout", True]
    seen: list[PyncetteContext] = []
    never = asyncio.Event()

    async def handler(app_context: PyncetteContext) -> bool:
        seen.append(app_context)
        verdict = verdicts.pop(0)
        if verdict == "raise":
            raise RuntimeError("handler broke")
        if verdict == "hang":
            await never.wait()
        if verdict == "own timeout":
            raise TimeoutError("the handler's own query timed out")
        return bool(verdict)

    use_healthcheck_server(app, port, "127.0.0.1", healthcheck_handler=handler, request_timeout=0.3)
    async with app.create() as ctx:
        with caplog.at_level(logging.WARNING, logger="pyncette.healthcheck"):
            statuses = [(await http(port, request("GET")))[0] for _ in range(6)]
    assert statuses == [200, 500, 500, 500, 500, 200]
    assert seen == [ctx] * 6
    failures = [record for record in caplog.records if record.name == "pyncette.healthcheck"]
    levels = [record.levelno for record in failures]
    assert levels == [logging.ERROR, logging.WARNING, logging.ERROR]
    assert failures[0].exc_info is not None and "handler broke" in str(failures[0].exc_info[1])
    assert "longer than 0.3 s" in failures[1].getMessage()
    assert failures[2].exc_info is not None and failures[2].exc_info[0] is TimeoutError


async def test_stalled_clients_are_dropped(
    memory_backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(memory_backend, clock)
    port = free_port()
    use_healthcheck_server(
        app, port, "127.0.0.1", healthcheck_handler=lambda _: _true(), request_timeout=0.3
    )
    loop = asyncio.get_running_loop()
    async with app.create():
        for stalled in (b"", b"GET /health HTTP/1.1\r\nHost: loc"):
            began = loop.time()
            assert await exchange(port, stalled) == b""  # closed without an answer
            assert 0.25 <= loop.time() - began < REAL_TIMEOUT
        # A stalled client holds nothing up: others are answered meanwhile.
        _, idle = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert (await http(port, request("GET")))[0] == 200
        finally:
            idle.close()
            with contextlib.suppress(ConnectionError):
                await idle.wait_closed()


async def _true() -> bool:
    return True


async def test_server_lives_as_long_as_the_app(
    memory_backend: BackendConfig, clock: VirtualClock
) -> None:
    app = make_app(memory_backend, clock)
    port = free_port()
    use_healthcheck_server(app, port, "127.0.0.1", lambda _: _true())
    loop = asyncio.get_running_loop()
    with pytest.raises(ConnectionRefusedError):
        await http(port, request("GET"))  # not before the app starts
    async with app.create():
        assert (await http(port, request("GET")))[0] == 200
        reader, idle = await asyncio.open_connection("127.0.0.1", port)
        leaving = loop.time()
    assert loop.time() - leaving < 1.0  # an idle client does not hold up the app's exit
    try:
        async with asyncio.timeout(REAL_TIMEOUT):
            assert await reader.read() == b""  # open connections are closed too
    finally:
        idle.close()
        with contextlib.suppress(ConnectionError):
            await idle.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await http(port, request("GET"))  # closed with the app
    with pytest.raises(ValueError, match="_healthcheck"):
        use_healthcheck_server(app, free_port())  # one server per app, as 1.x
    with pytest.raises(ValueError, match="request_timeout"):
        use_healthcheck_server(app, free_port(), request_timeout=0)
