"""Table-name rules shared by the SQL backends; importable without SQLAlchemy, so option
validation (and the in-memory default) stays light."""

from __future__ import annotations

import re

from pyncette.options import matching

DEFAULT_TABLE = "pyncette"
MAX_TABLE_NAME = 47
"""63 (PostgreSQL's identifier limit) minus the ``_alembic_version`` suffix (and more than
the ``_pyncette1`` suffix plus PostgreSQL's ``_pkey``)."""
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def validate_table_name(option: str, value: object) -> str:
    """Return ``value`` if it is a plain SQL identifier, else raise ``ValueError``."""
    name = matching(
        option,
        value,
        _TABLE_NAME,
        "a plain identifier (letters, digits and underscores, not starting with a digit)",
    )
    if len(name) > MAX_TABLE_NAME:
        raise ValueError(
            f"{option} must be at most {MAX_TABLE_NAME} characters long, got {len(name)}"
        )
    return name


def version_table_name(table: str) -> str:
    """The table's own Alembic version table (never the application's ``alembic_version``)."""
    return f"{table}_alembic_version"


def due_index_name(table: str) -> str:
    return f"ix_{table}_due_at"


def backup_table_name(table: str) -> str:
    """Where a Pyncette 1.x table converted in place is kept (1.x names had no digits)."""
    return f"{table}_pyncette1"
