"""The ``pyncette`` command (also ``python -m pyncette``).

Exit status 0 on success, 1 when the command fails (an unhealthy app, a task that is
not there, an error from the backend) and 2 for usage errors. Failures are one
``Error:`` line on stderr; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

from typing import Any

import click

from pyncette.cli.common import CommandFailed, describe
from pyncette.cli.db import db
from pyncette.cli.healthcheck import healthcheck
from pyncette.cli.importer import import_1x
from pyncette.cli.run import run
from pyncette.cli.tasks import tasks

__all__ = ["cli", "main"]


class _Commands(click.Group):
    """The root group: turns any exception a command raises into a one-line failure,
    unless ``--debug`` was given."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as error:
            if ctx.params.get("debug"):
                raise
            raise CommandFailed(describe(error)) from error


def _version() -> str:
    from pyncette import __version__

    return __version__


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=_version(), prog_name="pyncette")
@click.option(
    "--debug",
    is_flag=True,
    envvar="PYNCETTE_DEBUG",
    help="Show the traceback of a failure (env PYNCETTE_DEBUG).",
)
def cli(debug: bool) -> None:
    """pyncette: run a scheduler app and manage its tasks and database."""


cli.add_command(run)
cli.add_command(tasks)
cli.add_command(db)
cli.add_command(import_1x)
cli.add_command(healthcheck)


def main() -> None:
    """The console script's entry point."""
    cli(prog_name="pyncette")
