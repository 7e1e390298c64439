"""What the commands share: how failures are reported, and running a coroutine."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click
from rich.console import Console

from pyncette.errors import PyncetteException

_SQLALCHEMY_LINK = re.compile(r" ?\(Background on this error at: [^)]*\)")
"""The link SQLAlchemy appends to its errors' text."""
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILURE = 1


class CommandFailed(click.ClickException):
    """The command could not do its job (exit status 1): shown as one ``Error:`` line."""

    exit_code = EXIT_FAILURE


def describe(error: BaseException) -> str:
    """``error`` as one line: its message for pyncette's own errors and ``ValueError``
    (which name the problem), else prefixed with the exception's type."""
    message = _SQLALCHEMY_LINK.sub("", " ".join(str(error).split()))
    if isinstance(error, (PyncetteException, ValueError)) and message:
        return message
    kind = type(error).__name__
    return f"{kind}: {message}" if message else kind


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on a new event loop (commands are synchronous click callbacks)."""
    return asyncio.run(main)


def app_argument() -> Callable[[F], F]:
    """The ``APP`` argument every app command takes."""
    return click.argument("app", metavar="APP")


def console() -> Console:
    """A console on the current stdout; when that is not a terminal (a pipe, a file),
    wide enough that tables are never cut to 80 columns."""
    terminal = Console()
    return terminal if terminal.is_terminal else Console(width=1_000)
