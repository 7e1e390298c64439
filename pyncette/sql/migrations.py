"""Alembic owns the table: the programmatic upgrade run at start-up, and ``env.py``'s body.

Each pyncette table is versioned on its own (``<table>_alembic_version``), so it never
meets the application's own ``alembic_version`` history. The table name reaches the
migration scripts through ``config.attributes["pyncette_table"]``; from the command
line it is ``-x table=...`` or ``PYNCETTE_TABLE``, and the database ``-x url=...`` or
``PYNCETTE_DB_URL``.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy import Column, Connection, MetaData, String, Table, inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from pyncette.sql.adopt import pyncette1_problem
from pyncette.sql.engine import create_engine, detect_capabilities, migration_lock, normalize_url
from pyncette.sql.names import DEFAULT_TABLE as DEFAULT_TABLE  # (pyncette.cli reads it here)
from pyncette.sql.names import history_table_name, validate_table_name, version_table_name
from pyncette.sql.schema import make_history_table, make_table
from pyncette.urls import mask_url

TABLE_ATTRIBUTE = "pyncette_table"
CONNECTION_ATTRIBUTE = "connection"


def script_location() -> Path:
    """The ``alembic`` directory: inside the installed package, or at the source root."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_alembic" / "alembic", package.parent / "alembic"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("pyncette's alembic migrations are not installed")


def alembic_ini() -> Path:
    """The ``alembic.ini`` to pass as ``alembic -c`` when running outside the source tree."""
    return script_location().parent / "alembic.ini"


def upgrade_command(url: str, table: str) -> str:
    """The shell command that creates or upgrades ``table`` (``url`` must be masked)."""
    return f"alembic -x url='{url}' -x table={table} upgrade head"


def upgrade(connection: Connection, table: str) -> None:
    """Upgrade ``table`` to the newest revision on ``connection`` (no open transaction).

    Runs under a database-wide lock, so concurrent callers queue and all succeed.
    """
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.attributes[TABLE_ATTRIBUTE] = table
    config.attributes[CONNECTION_ATTRIBUTE] = connection
    command.upgrade(config, "head")


def table_exists(connection: Connection, table: str) -> bool:
    return inspect(connection).has_table(table)


def missing_upgrade(connection: Connection, table: str) -> str | None:
    """What the newest revision adds that the existing ``table`` lacks, if anything."""
    inspector = inspect(connection)
    columns = {column["name"].lower() for column in inspector.get_columns(table)}
    if "outcome" not in columns:
        return "no outcome column"
    if not inspector.has_table(history_table_name(table)):
        return f"no history table {history_table_name(table)!r}"
    return None


_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _process_lock() -> asyncio.Lock:
    """Alembic keeps the running migration in module globals (``alembic.context``,
    ``alembic.op``), so two upgrades in one process must not interleave."""
    loop = asyncio.get_running_loop()
    lock = _LOCKS.get(loop)
    if lock is None:
        lock = _LOCKS[loop] = asyncio.Lock()
    return lock


async def ensure_table(
    engine: AsyncEngine, table: str, *, skip_table_create: bool, option: str
) -> None:
    """Upgrade the table at start-up, or with ``skip_table_create`` check that it exists."""
    if not skip_table_create:
        async with _process_lock(), engine.connect() as conn:
            await conn.run_sync(upgrade, table)
            await conn.commit()
        return
    async with engine.connect() as conn:
        if not await conn.run_sync(table_exists, table):
            raise ValueError(
                f"Table {table!r} does not exist and {option} is set. Create it with "
                f"`{upgrade_command(mask_url(engine.url), table)}` (from the pyncette source "
                f"root, or add `-c {alembic_ini()}`), or unset {option}."
            )
        problem = await conn.run_sync(pyncette1_problem, table)
        if problem is not None:
            raise ValueError(
                f"{problem} and {option} is set. Convert it in place with "
                f"`{upgrade_command(mask_url(engine.url), table)}` (from the pyncette source "
                f"root, or add `-c {alembic_ini()}`), or unset {option} to have it "
                "converted at start-up."
            )
        missing = await conn.run_sync(missing_upgrade, table)
        if missing is not None:
            raise ValueError(
                f"Table {table!r} is at an older revision ({missing}) and {option} is set. "
                f"Upgrade it with `{upgrade_command(mask_url(engine.url), table)}` (from the "
                f"pyncette source root, or add `-c {alembic_ini()}`), or unset {option} to "
                "have it upgraded at start-up."
            )


def _create_version_table(connection: Connection, table: str) -> None:
    """Create the version table as Alembic would, but with an unnamed primary key.

    Alembic names the key ``<version table>_pkc``: MySQL ignores names of primary keys
    (they are all ``PRIMARY``) and answers with a note that drivers log as a warning, and
    for the longest table names it exceeds PostgreSQL's 63 characters, where the name the
    database chooses itself is shortened to fit. The table is the same either way;
    Alembic finds it and uses it.
    """
    versions = Table(
        version_table_name(table),
        MetaData(),
        Column("version_num", String(32), primary_key=True, nullable=False),
    )
    versions.create(connection, checkfirst=True)


def run_env() -> None:
    """The body of ``alembic/env.py``."""
    config = context.config
    arguments = context.get_x_argument(as_dictionary=True)
    table = config.attributes.get(TABLE_ATTRIBUTE) or arguments.get(
        "table", os.environ.get("PYNCETTE_TABLE", DEFAULT_TABLE)
    )
    try:
        table = validate_table_name("table", table)
    except ValueError as error:  # from the command line: a message, not a traceback
        raise CommandError(str(error)) from None
    config.attributes[TABLE_ATTRIBUTE] = table
    metadata = MetaData()
    make_table(metadata, table)
    make_history_table(metadata, table)

    def migrate(connection: Connection) -> None:
        with migration_lock(connection, table, detect_capabilities(connection.dialect)):
            _create_version_table(connection, table)
            context.configure(
                connection=connection,
                target_metadata=metadata,
                version_table=version_table_name(table),
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()

    connection = config.attributes.get(CONNECTION_ATTRIBUTE)
    if connection is not None:
        migrate(connection)
        return
    raw_url = arguments.get("url") or os.environ.get("PYNCETTE_DB_URL")
    if not raw_url:
        raise CommandError(
            "No database given: pass it as `-x url=...` (e.g. `alembic -x "
            "url=postgresql://user@host/db -x table=pyncette upgrade head`) or set "
            "PYNCETTE_DB_URL"
        )
    try:
        url = normalize_url(raw_url, "url")
    except ValueError as error:
        raise CommandError(str(error)) from None
    if context.is_offline_mode():
        context.configure(
            url=url,
            target_metadata=metadata,
            version_table=version_table_name(table),
            literal_binds=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return

    async def online() -> None:
        engine = create_engine(url, pool_size=1)
        try:
            async with engine.connect() as conn:
                await conn.run_sync(migrate)
        finally:
            await engine.dispose()

    asyncio.run(online())
