"""Table-name rules shared by the SQL backends; importable without SQLAlchemy, so option
validation (and the in-memory default) stays light.

A table name ``<table>`` also names the objects that belong to it: its version table,
its history table (with that table's key, indexes and, on PostgreSQL, id sequence), the
kept Pyncette 1.x table. Each must fit the shortest identifier limit of the supported
databases (PostgreSQL's 63 bytes, which it would silently truncate), so the table name
may be at most that limit minus the longest suffix.
"""

from __future__ import annotations

import re

from pyncette.options import matching

DEFAULT_TABLE = "pyncette"
IDENTIFIER_LIMIT = 63
"""PostgreSQL's identifier limit (MySQL allows 64, SQLite has none)."""
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def version_table_name(table: str) -> str:
    """The table's own Alembic version table (never the application's ``alembic_version``)."""
    return f"{table}_alembic_version"


def due_index_name(table: str) -> str:
    return f"ix_{table}_due_at"


def backup_table_name(table: str) -> str:
    """Where a Pyncette 1.x table converted in place is kept (1.x names had no digits)."""
    return f"{table}_pyncette1"


def history_table_name(table: str) -> str:
    """The table's run history (revision 0002)."""
    return f"{table}_history"


def history_key_index_name(table: str) -> str:
    """The history index on ``(task_group, name, id)``: newest-first reads per row."""
    return f"ix_{history_table_name(table)}_key"


def history_expiry_index_name(table: str) -> str:
    """The history index on ``expires_at``: the retention sweep."""
    return f"ix_{history_table_name(table)}_exp"


def derived_names(table: str) -> list[str]:
    """Every identifier pyncette derives from ``table`` (including PostgreSQL's default
    names for the keys and the history id sequence)."""
    history = history_table_name(table)
    return [
        table,
        f"{table}_pkey",
        version_table_name(table),
        due_index_name(table),
        backup_table_name(table),
        f"{backup_table_name(table)}_pkey",
        history,
        f"{history}_pkey",
        f"{history}_id_seq",
        history_key_index_name(table),
        history_expiry_index_name(table),
    ]


MAX_TABLE_NAME = IDENTIFIER_LIMIT - max(len(name) for name in derived_names(""))
"""47: 63 minus the longest suffix, ``_alembic_version``."""


def validate_table_name(option: str, value: object) -> str:
    """Return ``value`` if it is a plain SQL identifier short enough for every name
    derived from it, else raise ``ValueError``."""
    name = matching(
        option,
        value,
        _TABLE_NAME,
        "a plain identifier (letters, digits and underscores, not starting with a digit)",
    )
    if len(name) > MAX_TABLE_NAME:
        longest = max(derived_names(name), key=len)
        raise ValueError(
            f"{option} must be at most {MAX_TABLE_NAME} characters long, got {len(name)} "
            f"(the tables and indexes named after it, such as {longest!r}, must fit "
            f"{IDENTIFIER_LIMIT} characters)"
        )
    return name
