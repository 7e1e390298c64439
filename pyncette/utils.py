"""Helpers for task functions."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable

from pyncette.clock import Clock, DefaultClock
from pyncette.errors import LeaseLostException
from pyncette.model import Context, Decorator, TaskFunc

logger = logging.getLogger(__name__)

DEFAULT_LEASE_REMAINING_RATIO = 0.5


def with_heartbeat(
    lease_remaining_ratio: float = DEFAULT_LEASE_REMAINING_RATIO,
    cancel_on_lease_lost: bool = False,
) -> Decorator[TaskFunc]:
    """Decorate a task so that it heartbeats in the background while it runs.

    A heartbeat is sent every ``lease_remaining_ratio * lease_duration`` (between 0 and
    1; 0.5 by default). An error while heartbeating is logged and the next beat tries
    again; once a heartbeat finds the lease lost, heartbeating stops, and with
    ``cancel_on_lease_lost`` the task is cancelled too (the execution then ends with
    :class:`~pyncette.errors.LeaseLostException` and is not committed). A plain ``def``
    task runs in a worker thread while the heartbeats go on.
    """
    if not 0 < lease_remaining_ratio < 1:
        raise ValueError(
            f"lease_remaining_ratio must be between 0 and 1, got {lease_remaining_ratio!r}"
        )

    def decorate(func: TaskFunc) -> TaskFunc:
        @functools.wraps(func)
        async def wrapper(context: Context) -> None:
            from pyncette.worker import call_function

            period = context.task.lease_duration.total_seconds() * lease_remaining_ratio
            sleep = _clock_of(context).sleep
            body = asyncio.ensure_future(_awaited(call_function(func, context)))
            lost = False

            async def beat() -> None:
                nonlocal lost
                while True:
                    await sleep(period)
                    try:
                        await asyncio.shield(context.heartbeat())
                    except LeaseLostException:
                        lost = True
                        logger.warning("Heartbeat of %s found the lease lost", context.task)
                        if cancel_on_lease_lost:
                            body.cancel()
                        return
                    except Exception:
                        logger.warning(
                            "Heartbeat of %s failed; trying again at the next beat",
                            context.task,
                            exc_info=True,
                        )

            beater = asyncio.ensure_future(beat())
            try:
                await body
            except asyncio.CancelledError:
                if lost and cancel_on_lease_lost and not _cancelling():
                    raise LeaseLostException(context.task) from None
                raise
            finally:
                beater.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beater
                if not body.done():
                    body.cancel()

        return wrapper

    return decorate


async def _awaited(awaitable: Awaitable[None]) -> None:
    await awaitable


def _clock_of(context: Context) -> Clock:
    """The clock of the app running ``context``: the injected one, or the default clock
    (``asyncio.sleep`` looked up at call time) when the context is a stand-in, as in
    tests that call a decorated task with a mock context."""
    from pyncette.context import PyncetteContext

    app_context = getattr(context, "app_context", None)
    if isinstance(app_context, PyncetteContext):
        return app_context.clock
    return DefaultClock()


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled (not just the work inside it)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
