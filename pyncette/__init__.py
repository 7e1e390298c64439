"""pyncette: a reliable distributed scheduler for asyncio."""

from __future__ import annotations

import importlib.metadata

from pyncette.executor import DefaultExecutor, SynchronousExecutor
from pyncette.model import (
    Context,
    ContinuationToken,
    ExecutionMode,
    FailureMode,
    Lease,
    Retry,
    TaskPage,
    TaskState,
)
from pyncette.outcome import RunRecord, RunStatus
from pyncette.pyncette import Pyncette, PyncetteContext
from pyncette.task import Task

try:
    __version__ = importlib.metadata.version("pyncette")
except importlib.metadata.PackageNotFoundError:  # imported from a source tree, not installed
    __version__ = "0+unknown"

__all__ = [
    "Context",
    "ContinuationToken",
    "DefaultExecutor",
    "ExecutionMode",
    "FailureMode",
    "Lease",
    "Pyncette",
    "PyncetteContext",
    "Retry",
    "RunRecord",
    "RunStatus",
    "SynchronousExecutor",
    "Task",
    "TaskPage",
    "TaskState",
]
