"""Validation of options given as keyword arguments: one set of rules for the app and
every backend, each failure a ``ValueError`` that names the option and what it got.

Every backend turns its options into a frozen settings dataclass with
``XSettings.from_options(options)``: :func:`pyncette.repository.check_options` first
(misspelt names), then these validators, one per option. Flags take the same spellings
everywhere (:func:`boolean`), as do durations (:func:`positive_seconds`) and counts
(:func:`integer`).
"""

from __future__ import annotations

import datetime
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from pyncette.urls import mask_url

MAX_SECONDS = 366 * 86400.0
"""The longest app-level duration (poll interval) accepted: a year."""
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
    if seconds > MAX_SECONDS:
        raise ValueError(f"{option} must be at most {MAX_SECONDS:.0f} s (a year), got {value!r}")
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


def optional_boolean(option: str, value: object) -> bool | None:
    """A flag that may be left unset (``None``: decide by looking), else :func:`boolean`."""
    return None if value is None else boolean(option, value)


def integer(option: str, value: object, *, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer within ``minimum``..``maximum``, or a string of digits (configuration
    read from the environment arrives as text); ``bool`` is not an integer here."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{option} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{option} must be {bound}, got {value}")
    return value


def text(option: str, value: object) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{option} must be a non-empty string, got {value!r}")
    return value


def optional_text(option: str, value: object) -> str | None:
    """A string that may be ``None`` or empty (an empty password, say)."""
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{option} must be a string, got {type(value).__name__}")


def matching(option: str, value: object, pattern: re.Pattern[str], rule: str) -> str:
    """A string that ``pattern`` matches in full; ``rule`` says in words what that is."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{option} must be {rule}, got {value!r}")
    return value


def url(option: str, value: object, *, schemes: Sequence[str], host: bool) -> str:
    """A URL with one of ``schemes`` (and a host name, if ``host``); a password in it is
    masked in the error."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{option} must be a non-empty URL string, got {value!r}")
    try:
        parts = urllib.parse.urlsplit(value)
        hostname = parts.hostname
    except ValueError:
        raise ValueError(f"{option} is not a URL: {mask_url(value)!r}") from None
    if parts.scheme not in schemes or (host and not hostname):
        kinds = ", ".join(f"{scheme}://" for scheme in schemes)
        raise ValueError(
            f"{option} must be a URL with scheme one of {kinds}"
            f"{' and a host name' if host else ''}, got {mask_url(value)!r} "
            f"(scheme {parts.scheme!r})"
        )
    return value


MAX_RUN_HISTORY = 1000
"""The most runs ``run_history=`` may keep per task or instance."""


@dataclass(frozen=True, slots=True)
class AppSettings:
    """The app's own options, validated when the app starts (``app.create()``)."""

    poll_interval: datetime.timedelta
    concurrency_limit: int
    batch_size: int
    instant_wakeups: bool = False
    run_history: int = 0
    run_history_retention: datetime.timedelta = datetime.timedelta(days=7)

    @classmethod
    def from_options(
        cls,
        *,
        poll_interval: object,
        concurrency_limit: object,
        batch_size: object,
        instant_wakeups: object = False,
        run_history: object = 0,
        run_history_retention: object = datetime.timedelta(days=7),
    ) -> AppSettings:
        if not isinstance(run_history_retention, datetime.timedelta):
            raise ValueError(
                f"run_history_retention must be a timedelta, got {run_history_retention!r}"
            )
        if run_history_retention <= datetime.timedelta(0):
            raise ValueError(f"run_history_retention must be positive, got {run_history_retention}")
        return cls(
            poll_interval=datetime.timedelta(
                seconds=positive_seconds("poll_interval", poll_interval)
            ),
            concurrency_limit=positive_int("concurrency_limit", concurrency_limit),
            batch_size=positive_int("batch_size", batch_size),
            instant_wakeups=boolean("instant_wakeups", instant_wakeups),
            run_history=integer("run_history", run_history, minimum=0, maximum=MAX_RUN_HISTORY),
            run_history_retention=run_history_retention,
        )
