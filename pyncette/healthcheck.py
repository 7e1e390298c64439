"""An HTTP health endpoint: ``GET /health`` answers 200 while the poll loop is ticking."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from pyncette.pyncette import Pyncette, PyncetteContext

logger = logging.getLogger(__name__)

HealthcheckHandler = Callable[[PyncetteContext], Awaitable[bool]]
_MAX_REQUEST_HEAD = 8192


async def default_healthcheck(app_context: PyncetteContext) -> bool:
    """Healthy while the last completed tick is at most two poll intervals old."""
    last_tick = app_context.last_tick
    if last_tick is None:
        return False
    age = app_context.clock.now() - last_tick
    return age <= 2 * app_context.app.poll_interval


def use_healthcheck_server(
    app: Pyncette,
    port: int = 8080,
    bind_address: str | None = None,
    healthcheck_handler: HealthcheckHandler = default_healthcheck,
) -> None:
    """Serve ``GET /health`` on ``bind_address:port`` for as long as the app runs.

    The answer is 200 when ``healthcheck_handler(app_context)`` returns true and 500
    otherwise (also when it raises). Other paths get 404, other methods 405.
    """

    async def serve(app_context: PyncetteContext) -> AsyncIterator[asyncio.Server]:
        async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                status = await _status(head[:_MAX_REQUEST_HEAD], app_context, healthcheck_handler)
                body = {200: b"OK\n", 404: b"Not found\n", 405: b"Method not allowed\n"}.get(
                    status, b"Unhealthy\n"
                )
                reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(
                    status, "Internal Server Error"
                )
                writer.write(
                    f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

        server = await asyncio.start_server(respond, bind_address, port)
        logger.info("Health check listening on %s:%d", bind_address or "*", port)
        try:
            yield server
        finally:
            server.close()
            await server.wait_closed()

    app._fixtures.append(("__healthcheck_server", serve))


async def _status(head: bytes, app_context: PyncetteContext, handler: HealthcheckHandler) -> int:
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) < 2:
        return 405
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if target != b"/health":
        return 404
    if method not in (b"GET", b"HEAD"):
        return 405
    try:
        healthy = await handler(app_context)
    except Exception:
        logger.exception("Health check handler failed")
        healthy = False
    return 200 if healthy else 500
