"""What a run's outcome looks like when stored: :class:`RunRecord` and its JSON text.

The core writes one with every commit or unlock that ends a run (see
:mod:`pyncette.worker`); backends store the text as given, with the row and, when the
app keeps a run history, in the row's history. Stored form (keys kept short, times in
microseconds since the epoch, absent keys mean ``None``)::

    {"s": "succeeded", "sch": 1893456000000000, "at": 1893456000250000,
     "d": 1250000, "a": 1, "by": "web-1:4711", "e": "ValueError: ..."}
"""

from __future__ import annotations

import datetime
import enum
import functools
import json
import os
import socket
from dataclasses import dataclass

from pyncette.timeutil import from_epoch_us

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)
MAX_ERROR_CHARS = 1000
"""Error texts are cut to this many characters (the stored row stays small)."""


class RunStatus(enum.StrEnum):
    """How a run ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """It raised (after its last retry); stored when its failure mode commits or
    unlocks. ``FailureMode.NONE`` writes nothing, so it records nothing either."""
    SKIPPED = "skipped"
    """Not run: found later than its ``misfire_grace_time`` (the reason is the error)."""
    STARTED = "started"
    """An at-most-once run: its schedule is committed before it starts, and nothing is
    written after it, so this is the last that is known of it."""


@dataclass(frozen=True)
class RunRecord:
    """One run of a task or instance, as stored (see :attr:`TaskState.last_run` and
    :meth:`PyncetteContext.task_history`)."""

    status: RunStatus
    scheduled_at: datetime.datetime
    """When the run was due."""
    started_at: datetime.datetime
    """When it started (for a skipped run: when it was found and skipped)."""
    duration: datetime.timedelta | None
    """How long it ran, by the app's clock; ``None`` for skipped and started runs."""
    attempt: int
    """The attempt that ended the run (1 unless ``retry=`` retried it)."""
    instance: str | None
    """Which process ran it: ``host:pid``."""
    error: str | None = None
    """``ExceptionType: message`` of a failed run (cut to :data:`MAX_ERROR_CHARS`), or why
    a run was skipped."""

    @property
    def finished_at(self) -> datetime.datetime | None:
        return None if self.duration is None else self.started_at + self.duration


def this_process() -> str:
    """The :attr:`RunRecord.instance` of runs of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def encode(
    status: RunStatus,
    *,
    scheduled_at: datetime.datetime,
    started_at: datetime.datetime,
    duration: datetime.timedelta | None,
    attempt: int,
    instance: str | None,
    error: str | None = None,
) -> str:
    """The stored text of a run (see the module docstring). Written for every run, so
    built by hand (the same JSON that :func:`json.dumps` would give, a few times faster)."""
    text = (
        f'{{"s":"{status!s}","sch":{(scheduled_at - _EPOCH) // _MICROSECOND},'
        f'"at":{(started_at - _EPOCH) // _MICROSECOND},"a":{attempt:d}'
    )
    if duration is not None:
        text += f',"d":{duration // _MICROSECOND}'
    if instance is not None:
        text += f',"by":{_quoted(instance)}'
    if error is not None:
        text += f',"e":{json.dumps(error, ensure_ascii=False)}'
    return text + "}"


@functools.lru_cache(maxsize=16)
def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def decode(text: str | None) -> RunRecord | None:
    """The run stored as ``text``; ``None`` for ``None`` or for text that is not one (a
    newer format, or damage: the state of a task is still readable without it)."""
    if text is None:
        return None
    try:
        fields = json.loads(text)
        duration = fields.get("d")
        return RunRecord(
            status=RunStatus(fields["s"]),
            scheduled_at=from_epoch_us(int(fields["sch"])),
            started_at=from_epoch_us(int(fields["at"])),
            duration=None if duration is None else datetime.timedelta(microseconds=int(duration)),
            attempt=int(fields["a"]),
            instance=_optional_text(fields.get("by")),
            error=_optional_text(fields.get("e")),
        )
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        return None


def _optional_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"expected text, got {value!r}")
