"""An HTTP endpoint for liveness probes: 200 while the app is healthy, 500 otherwise.

Requires the ``healthcheck`` extra (aiohttp). Every path answers, so a probe configured
for ``/``, ``/healthz`` or ``/health`` works alike. ``GET`` and ``HEAD`` get the verdict
(``HEAD`` without a body), any other method 405. Each connection serves one request and
is closed; one that has not sent a complete request within ``request_timeout`` seconds
is dropped, and a handler that takes longer than that counts as unhealthy. These
timeouts are real time, not the scheduler's clock.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

if importlib.util.find_spec("aiohttp") is None:  # pragma: no cover - depends on the install
    raise ImportError("The health check server needs aiohttp: pip install 'pyncette[healthcheck]'")

from aiohttp import web

from pyncette.pyncette import Pyncette, PyncetteContext

logger = logging.getLogger(__name__)

HealthcheckHandler = Callable[[PyncetteContext], Awaitable[bool]]
"""``async def handler(app_context) -> bool``: whether the app is healthy."""

REQUEST_TIMEOUT = 10.0
"""Default seconds a client has to send its request, and the handler has to decide."""
_ALLOWED_METHODS = ("GET", "HEAD")


async def default_healthcheck(app_context: PyncetteContext) -> bool:
    """Healthy while the last completed tick is less than two poll intervals old (never
    before the first tick). Time is the app's clock, so virtual-time tests see it."""
    last_tick = app_context.last_tick
    if last_tick is None:
        return False
    return app_context.clock.now() - last_tick < 2 * app_context.poll_interval


def use_healthcheck_server(
    app: Pyncette,
    port: int = 8080,
    bind_address: str | None = None,
    healthcheck_handler: HealthcheckHandler = default_healthcheck,
    *,
    request_timeout: float = REQUEST_TIMEOUT,
) -> None:
    """Serve the health endpoint on ``bind_address:port`` (all interfaces when ``None``)
    for as long as the app runs, as the fixture ``_healthcheck``.

    The answer is 200 when ``healthcheck_handler(app_context)`` returns true and 500 when
    it returns false, raises (logged) or takes longer than ``request_timeout`` seconds.
    """
    if request_timeout <= 0:
        raise ValueError(f"request_timeout must be positive, got {request_timeout!r}")

    async def verdict(app_context: PyncetteContext) -> bool:
        deadline = asyncio.timeout(request_timeout)
        try:
            async with deadline:
                return bool(await healthcheck_handler(app_context))
        except Exception:
            if deadline.expired():
                logger.warning("Health check handler took longer than %.1f s", request_timeout)
            else:
                logger.exception("Health check handler failed")
        return False

    async def healthcheck_fixture(app_context: PyncetteContext) -> AsyncIterator[asyncio.Server]:
        loop = asyncio.get_running_loop()
        deadlines: dict[web.RequestHandler, asyncio.TimerHandle] = {}

        async def respond(request: web.BaseRequest) -> web.StreamResponse:
            timer = deadlines.pop(request.protocol, None)
            if timer is not None:
                timer.cancel()
            if request.method not in _ALLOWED_METHODS:
                response = web.Response(
                    status=405,
                    text="Method not allowed\n",
                    headers={"Allow": ", ".join(_ALLOWED_METHODS)},
                )
            elif await verdict(app_context):
                response = web.Response(status=200, text="OK\n")
            else:
                response = web.Response(status=500, text="Unhealthy\n")
            response.force_close()
            return response

        def drop(handler: web.RequestHandler) -> None:
            if deadlines.pop(handler, None) is not None:
                handler.force_close()

        def connection() -> web.RequestHandler:
            handler = http()
            deadlines[handler] = loop.call_later(request_timeout, drop, handler)
            return handler

        # Probes come every few seconds: aiohttp's access log would drown the scheduler's.
        http = web.Server(respond, access_log=None)
        server = await loop.create_server(connection, bind_address, port)
        for sock in server.sockets:
            host, bound_port = sock.getsockname()[:2]
            logger.info("Health check listening on %s port %d", host, bound_port)
        try:
            yield server
        finally:
            server.close()
            for handler, timer in list(deadlines.items()):  # still waiting for a request
                timer.cancel()
                drop(handler)
            await http.shutdown(request_timeout)  # lets answers being decided finish
            await server.wait_closed()

    app.use_fixture("_healthcheck", healthcheck_fixture)
