"""Validation of options given as keyword arguments: one set of rules for the app and
every backend, each failure a ``ValueError`` that names the option and what it got."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def positive_seconds(option: str, value: object) -> float:
    """A duration as seconds: a ``timedelta``, or a number of seconds; must be > 0."""
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValueError(f"{option} must be a timedelta or a number of seconds, got {value!r}")
    if not seconds > 0:
        raise ValueError(f"{option} must be positive, got {value!r}")
    return seconds


def positive_int(option: str, value: object) -> int:
    """An integer of at least 1 (``bool`` is not an integer here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{option} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{option} must be at least 1, got {value}")
    return value


def boolean(option: str, value: object) -> bool:
    """A flag: ``True``/``False``, or one of the usual spellings in a string (``"yes"``,
    ``"0"``...), as configuration read from the environment arrives."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError(f"{option} must be a boolean, got {value!r}")


@dataclass(frozen=True, slots=True)
class AppSettings:
    """The app's own options, validated when the app starts (``app.create()``)."""

    poll_interval: datetime.timedelta
    concurrency_limit: int
    batch_size: int

    @classmethod
    def from_options(
        cls, *, poll_interval: object, concurrency_limit: object, batch_size: object
    ) -> AppSettings:
        return cls(
            poll_interval=datetime.timedelta(
                seconds=positive_seconds("poll_interval", poll_interval)
            ),
            concurrency_limit=positive_int("concurrency_limit", concurrency_limit),
            batch_size=positive_int("batch_size", batch_size),
        )
