"""pyncette: a reliable distributed scheduler for asyncio."""

from __future__ import annotations

from pyncette.executor import DefaultExecutor, SynchronousExecutor
from pyncette.model import (
    Context,
    ContinuationToken,
    ExecutionMode,
    FailureMode,
    Lease,
    TaskPage,
    TaskState,
)
from pyncette.pyncette import Pyncette, PyncetteContext
from pyncette.task import Task

__all__ = [
    "Context",
    "ContinuationToken",
    "DefaultExecutor",
    "ExecutionMode",
    "FailureMode",
    "Lease",
    "Pyncette",
    "PyncetteContext",
    "SynchronousExecutor",
    "Task",
    "TaskPage",
    "TaskState",
]
