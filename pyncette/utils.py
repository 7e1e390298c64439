"""Helpers for task functions."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable

from pyncette.errors import LeaseLostException
from pyncette.model import Context, TaskFunc

logger = logging.getLogger(__name__)


def with_heartbeat(
    lease_remaining_ratio: float = 0.5, cancel_on_lease_lost: bool = False
) -> Callable[[TaskFunc], TaskFunc]:
    """Decorate a task so it heartbeats in the background while it runs.

    A heartbeat is sent whenever ``lease_remaining_ratio`` of the lease is left. If the
    lease is lost the background heartbeat stops; with ``cancel_on_lease_lost`` the task
    is also cancelled and the execution ends with :class:`LeaseLostException`.
    """
    if not 0 < lease_remaining_ratio < 1:
        raise ValueError(
            f"lease_remaining_ratio must be between 0 and 1, got {lease_remaining_ratio!r}"
        )

    def decorate(func: TaskFunc) -> TaskFunc:
        @functools.wraps(func)
        async def wrapper(context: Context) -> None:
            period = context.task.lease_duration.total_seconds() * (1 - lease_remaining_ratio)
            clock = context.app_context.clock
            work = asyncio.ensure_future(func(context))
            lost = False

            async def beat() -> None:
                nonlocal lost
                while True:
                    await clock.sleep(period)
                    try:
                        await context.heartbeat()
                    except LeaseLostException:
                        lost = True
                        logger.warning("Heartbeat of %r found the lease lost", context.task.name)
                        if cancel_on_lease_lost:
                            work.cancel()
                        return
                    except Exception:
                        logger.warning("Heartbeat of %r failed", context.task.name, exc_info=True)

            beater = asyncio.ensure_future(beat())
            try:
                await work
            except asyncio.CancelledError:
                if lost and cancel_on_lease_lost and not _cancelling():
                    raise LeaseLostException(context.task) from None
                raise
            finally:
                beater.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beater
                if not work.done():
                    work.cancel()

        return wrapper

    return decorate


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled (not just the work inside it)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
