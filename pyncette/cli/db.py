"""``pyncette db``: the SQL backends' Alembic migrations, for a database URL or an app."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from pyncette.app import Pyncette
from pyncette.cli.common import CommandFailed
from pyncette.cli.loading import APP_HELP, describe_factory, load_app, sql_backend_of

F = TypeVar("F", bound=Callable[..., Any])


@click.group()
def db() -> None:
    """Create, upgrade and inspect the SQL backends' table (Alembic migrations).

    Give the database either as APP (the URL and table come from the app's backend
    options: SQLite with a file, PostgreSQL or MySQL/MariaDB) or with --url and --table.
    Each table has its own Alembic version table, `<table>_alembic_version`.
    """


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    """The database URL, password included (it only reaches Alembic's ``-x url=``)."""
    table: str


def app_target(app: Pyncette) -> Target:
    """The database and table the app's SQL backend uses, from its backend options."""
    from pyncette import mysql, postgres, sqlite

    backend = sql_backend_of(app)
    options = dict(app.backend_options)
    if backend == "sqlite":
        settings = sqlite.SqliteSettings.from_options(options)
        if settings.database == sqlite.MEMORY:
            raise CommandFailed(
                "The app keeps its tasks in memory (no sqlite_database): there is no table "
                "to migrate"
            )
        from sqlalchemy.engine import URL

        url = URL.create("sqlite+aiosqlite", database=settings.database)
        return Target(url.render_as_string(hide_password=False), settings.table_name)
    if backend in ("postgres", "mysql"):
        settings_type = postgres.PostgresSettings if backend == "postgres" else mysql.MySQLSettings
        sql = settings_type.from_options(options)
        return Target(sql.url.render_as_string(hide_password=False), sql.table_name)
    raise CommandFailed(
        f"The app's backend ({describe_factory(app)}) is not a SQL backend: `pyncette db` "
        "migrates the table of the SQLite, PostgreSQL and MySQL/MariaDB backends (for a "
        "factory of your own that uses one, give --url and --table)"
    )


def _target(
    app: str | None, url: str | None, table: str | None, *, required: bool = True
) -> Target | None:
    if app is not None and (url is not None or table is not None):
        raise click.UsageError("Give APP or --url/--table, not both")
    if app is not None:
        return app_target(load_app(app))
    if url is None:
        if table is not None or required:
            raise click.UsageError("Give APP, or the database as --url (or PYNCETTE_DB_URL)")
        return None
    from pyncette.sql.engine import normalize_url
    from pyncette.sql.names import validate_table_name

    normalize_url(url, "--url")  # a ValueError naming the problem, before Alembic runs
    from pyncette.sql.migrations import DEFAULT_TABLE

    return Target(url, validate_table_name("--table", table or DEFAULT_TABLE))


def _database_options(func: F) -> F:
    func = click.option(
        "--table",
        envvar="PYNCETTE_TABLE",
        help="The task table, with --url (default: pyncette; env PYNCETTE_TABLE).",
    )(func)
    func = click.option(
        "--url",
        envvar="PYNCETTE_DB_URL",
        help="Database URL: postgresql://user@host/db, mysql://user:pw@host/db or "
        "sqlite:///path/to/file (env PYNCETTE_DB_URL).",
    )(func)
    return click.argument("app", metavar="[APP]", required=False)(func)


class _ToStderr(logging.Handler):
    """Alembic's progress messages, on the command's stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


@contextlib.contextmanager
def _alembic(target: Target | None) -> Iterator[Any]:
    """An Alembic config for the bundled migrations (the packaged ``alembic.ini``'s
    settings, without its logging set-up: messages go to stderr while the command runs)
    whose ``-x`` arguments name ``target``; Alembic's errors become one line."""
    from alembic.config import Config
    from alembic.util import CommandError

    from pyncette.sql.migrations import script_location

    arguments = [f"url={target.url}", f"table={target.table}"] if target is not None else []
    config = Config(
        cmd_opts=argparse.Namespace(x=arguments), stdout=sys.stdout, output_buffer=sys.stdout
    )
    config.set_main_option("script_location", str(script_location()).replace("%", "%%"))
    logger = logging.getLogger("alembic")
    handler = _ToStderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield config
    except CommandError as error:
        raise CommandFailed(str(error)) from error
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@db.command(epilog=APP_HELP)
@_database_options
@click.option("--revision", "-r", default="head", show_default=True, help="Target revision.")
def upgrade(app: str | None, url: str | None, table: str | None, revision: str) -> None:
    """Create the table, or upgrade it to the newest revision.

    A Pyncette 1.x table of the same name is converted in place (it is kept as
    `<table>_pyncette1`).
    """
    from alembic import command

    with _alembic(_target(app, url, table)) as config:
        command.upgrade(config, revision)


@db.command(epilog=APP_HELP)
@_database_options
@click.option(
    "--revision",
    "-r",
    required=True,
    help="Target revision: `base` drops the table (giving a converted 1.x table its name "
    "back), `-1` steps back one revision.",
)
def downgrade(app: str | None, url: str | None, table: str | None, revision: str) -> None:
    """Downgrade the table to an older revision."""
    from alembic import command

    with _alembic(_target(app, url, table)) as config:
        command.downgrade(config, revision)


@db.command(epilog=APP_HELP)
@_database_options
@click.option("--verbose", "-v", is_flag=True, help="Show the revision's details.")
def current(app: str | None, url: str | None, table: str | None, verbose: bool) -> None:
    """Print the table's current revision (nothing when it has none)."""
    from alembic import command

    with _alembic(_target(app, url, table)) as config:
        command.current(config, verbose=verbose)


@db.command(epilog=APP_HELP)
@_database_options
@click.option("--verbose", "-v", is_flag=True, help="Show each revision's details.")
def history(app: str | None, url: str | None, table: str | None, verbose: bool) -> None:
    """List the migrations; with a database, mark the table's current revision."""
    from alembic import command

    target = _target(app, url, table, required=False)
    with _alembic(target) as config:
        command.history(config, verbose=verbose, indicate_current=target is not None)


@db.command(epilog=APP_HELP)
@_database_options
@click.option("--revision", "-r", default="head", show_default=True, help="Target revision.")
@click.option(
    "--from",
    "start",
    metavar="REVISION",
    help="Print only the steps after this revision (default: from an empty database).",
)
def sql(
    app: str | None, url: str | None, table: str | None, revision: str, start: str | None
) -> None:
    """Print the SQL of an upgrade instead of running it (Alembic's offline mode).

    For DBAs who create the table themselves: run the output, then start the app with
    `*_skip_table_create=True`. Only the URL's dialect matters (e.g. `--url
    postgresql://`); nothing is read from the database, so converting a Pyncette 1.x
    table is not part of the script: use `pyncette db upgrade` for that.
    """
    from alembic import command

    with _alembic(_target(app, url, table)) as config:
        command.upgrade(config, f"{start}:{revision}" if start else revision, sql=True)
