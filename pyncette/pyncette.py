"""Pyncette 1.x's home of the app, its context and the time source.

The implementation lives in :mod:`pyncette.app` (declaring), :mod:`pyncette.context`
(the running app), :mod:`pyncette.worker` (the poll loop) and :mod:`pyncette.manager`
(stored tasks). This module keeps the names 1.x programs and their test harnesses use:
the default clock reads the time only through :func:`_current_time` here, looked up at
each call, so patching it (and ``asyncio.sleep`` / ``asyncio.wait_for``) drives the whole
scheduler in virtual time.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from pyncette.app import Pyncette
from pyncette.clock import system_time
from pyncette.context import PyncetteContext

_current_time: Callable[[], datetime.datetime] = system_time
"""The current time, aware UTC. The default clock reads time only through this."""


__all__ = ["Pyncette", "PyncetteContext", "_current_time"]
