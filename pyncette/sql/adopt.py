"""Adopting a Pyncette 1.x table in place, for the table's first Alembic revision.

Pyncette 1.x kept its tasks in a table of its own layout (``name``, ``parent_name``,
``locked_until``, ``locked_by``, ``execute_after``, ``task_spec``). When the table the
app is configured with is such a table, the first revision (run at start-up under the
migration lock, or by ``alembic upgrade head``) converts it:

1. every row is read and converted (:func:`pyncette.legacy.convert`) without changing
   anything, so one row 1.x cannot have written stops the upgrade with
   :class:`~pyncette.legacy.Pyncette1DataError` naming it, the table untouched;
2. the 1.x table is renamed ``<table>_pyncette1`` (kept, so downgrading to ``base``
   restores it; drop it once satisfied);
3. the table is created as for a new app, and the converted rows are inserted, unlocked.

On PostgreSQL and SQLite all of it is one transaction. MySQL commits each DDL
statement, so a start-up interrupted between the rename and the end finds the 1.x rows
in ``<table>_pyncette1`` and no version recorded, and picks up from there.
"""

from __future__ import annotations

import datetime
import enum
import logging
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, inspect, text

from pyncette.legacy import DEFAULT_TABLE, Entry, check, convert
from pyncette.sql.names import backup_table_name
from pyncette.sql.schema import key_type, text_type
from pyncette.timeutil import duration_us, to_epoch_us

logger = logging.getLogger(__name__)

PAGE = 1000
"""1.x rows read, or converted rows inserted, per statement."""
PYNCETTE1_COLUMNS = frozenset(
    {"name", "parent_name", "locked_until", "locked_by", "execute_after", "task_spec"}
)
OWN_COLUMNS = frozenset(
    {"task_group", "name", "spec", "scheduled_at", "due_at", "lease_duration_us", "locked_by"}
)
"""The columns of revision 0001's table."""
_TABLE_OPTIONS = {
    "sqlite": "sqlite_table_name",
    "postgresql": "postgres_table_name",
    "mysql": "mysql_table_name",
}


class Shape(enum.Enum):
    MISSING = "missing"
    PYNCETTE1 = "a Pyncette 1.x table"
    OWN = "a pyncette table"
    OTHER = "some other table"


def shape_of(conn: Connection, table: str) -> Shape:
    """What ``table`` is, judged by its columns."""
    inspector = inspect(conn)
    if not inspector.has_table(table):
        return Shape.MISSING
    columns = {column["name"].lower() for column in inspector.get_columns(table)}
    if columns == PYNCETTE1_COLUMNS:
        return Shape.PYNCETTE1
    if columns >= OWN_COLUMNS:
        return Shape.OWN
    return Shape.OTHER


def _quote(conn: Connection, name: str) -> str:
    quoted: str = conn.dialect.identifier_preparer.quote(name)
    return quoted


def _pyncette1_table(table: str) -> Any:
    columns = ("name", "parent_name", "task_spec", "execute_after")
    return sa.table(table, *(sa.column(name) for name in columns))


def read_entries(conn: Connection, table: str) -> Iterator[Entry]:
    """The rows of the 1.x table ``table``, in name order, a page at a time."""
    t = _pyncette1_table(table)
    query = sa.select(t.c.name, t.c.parent_name, t.c.task_spec, t.c.execute_after)
    query = query.order_by(t.c.name).limit(PAGE)
    last: Any = None
    while True:
        page = query if last is None else query.where(t.c.name > last)
        rows = conn.execute(page).all()
        for name, parent, task_spec, after in rows:
            yield Entry(str(name), None if parent is None else str(parent), task_spec, after)
        if len(rows) < PAGE:
            return
        last = rows[-1][0]


def _count(conn: Connection, table: str) -> int:
    query = sa.select(sa.func.count()).select_from(sa.table(table))
    return int(conn.execute(query).scalar_one())


def _rename(conn: Connection, old: str, new: str) -> None:
    """Rename a table, and on PostgreSQL its primary key's index, whose default name
    (``<table>_pkey``) the table created in its place would want."""
    conn.execute(text(f"ALTER TABLE {_quote(conn, old)} RENAME TO {_quote(conn, new)}"))
    if conn.dialect.name != "postgresql":
        return
    key = inspect(conn).get_pk_constraint(new).get("name")
    if key == f"{old}_pkey":
        conn.execute(
            text(
                f"ALTER TABLE {_quote(conn, new)} RENAME CONSTRAINT {_quote(conn, key)} "
                f"TO {_quote(conn, f'{new}_pkey')}"
            )
        )


def _source(conn: Connection, table: str) -> str:
    return f"table {table!r} ({conn.dialect.name})"


def before_create(conn: Connection, table: str, now: datetime.datetime) -> bool:
    """Make way for creating ``table``: move a 1.x table of that name aside (checking
    its rows first). Return whether there are 1.x rows for :func:`fill` to convert.

    Raises ``ValueError`` if ``table`` exists and cannot be adopted, and
    :class:`~pyncette.legacy.Pyncette1DataError` if its rows cannot be converted."""
    backup = backup_table_name(table)
    shape = shape_of(conn, table)
    if shape is Shape.PYNCETTE1:
        if shape_of(conn, backup) is not Shape.MISSING:
            raise ValueError(
                f"Table {table!r} holds Pyncette 1.x tasks, to be converted in place with "
                f"the original kept as {backup!r}, but {backup!r} exists already: drop or "
                "rename it, then start again"
            )
        count = check(read_entries(conn, table), now, _source(conn, table))
        logger.info(
            "Converting the Pyncette 1.x table %r (%d tasks); the original is kept as %r",
            table,
            count,
            backup,
        )
        _rename(conn, table, backup)
        return True
    if shape is Shape.MISSING:
        if shape_of(conn, backup) is Shape.PYNCETTE1:
            # renamed by a conversion that did not finish (MySQL commits DDL at once)
            logger.info("Resuming the conversion of the Pyncette 1.x table %r", backup)
            check(read_entries(conn, backup), now, _source(conn, backup))
            return True
        _mention_default_table(conn, table)
        return False
    option = f"{_TABLE_OPTIONS.get(conn.dialect.name, 'table name')} (or -x table=)"
    if shape is Shape.OWN:
        if shape_of(conn, backup) is Shape.PYNCETTE1 and _count(conn, table) == 0:
            # created by a conversion that did not finish: start it again
            logger.info("Resuming the conversion of the Pyncette 1.x table %r", backup)
            check(read_entries(conn, backup), now, _source(conn, backup))
            conn.execute(text(f"DROP TABLE {_quote(conn, table)}"))
            return True
        # revision 0002 added the outcome column (and the history table)
        names = {column["name"].lower() for column in inspect(conn).get_columns(table)}
        revision = "0002" if "outcome" in names else "0001"
        raise ValueError(
            f"Table {table!r} has pyncette's layout, but its version table "
            f"{table}_alembic_version records no revision: if it is at revision {revision}, "
            f"record that with `alembic -x url=... -x table=... stamp {revision}`; otherwise "
            f"choose another {option}"
        )
    columns = sorted(column["name"] for column in inspect(conn).get_columns(table))
    raise ValueError(
        f"Table {table!r} exists but is neither a pyncette table nor a Pyncette 1.x table "
        f"(its columns: {', '.join(columns)}); choose another {option}"
    )


def _layout(table: str) -> Any:
    """The table as revision 0001 creates it, for inserting converted rows."""
    return sa.table(
        table,
        sa.column("task_group", key_type()),
        sa.column("name", key_type()),
        sa.column("spec", text_type()),
        sa.column("scheduled_at", sa.BigInteger()),
        sa.column("due_at", sa.BigInteger()),
        sa.column("lease_duration_us", sa.BigInteger()),
        sa.column("locked_by", key_type()),
    )


def fill(conn: Connection, table: str, now: datetime.datetime) -> int:
    """Insert the converted rows of ``<table>_pyncette1`` into the new ``table``
    (after :func:`before_create` returned true and the table was created)."""
    backup = backup_table_name(table)
    insert = sa.insert(_layout(table))
    batch: list[dict[str, Any]] = []
    count = 0
    for entry in read_entries(conn, backup):
        group, row = convert(entry, now)
        at = to_epoch_us(row.scheduled_at)
        batch.append(
            {
                "task_group": group,
                "name": row.name,
                "spec": row.spec,
                "scheduled_at": at,
                "due_at": at,
                "lease_duration_us": duration_us(row.lease_duration),
                "locked_by": None,
            }
        )
        if len(batch) >= PAGE:
            conn.execute(insert, batch)
            count += len(batch)
            batch = []
    if batch:
        conn.execute(insert, batch)
        count += len(batch)
    logger.info(
        "Converted %d Pyncette 1.x tasks into table %r; the 1.x table is kept as %r "
        "(drop it once satisfied)",
        count,
        table,
        backup,
    )
    return count


def restore(conn: Connection, table: str) -> None:
    """After ``table`` was dropped (downgrade to ``base``): give the 1.x table it was
    converted from, if kept, its name back."""
    backup = backup_table_name(table)
    if shape_of(conn, backup) is Shape.PYNCETTE1 and shape_of(conn, table) is Shape.MISSING:
        _rename(conn, backup, table)
        logger.info("Restored the Pyncette 1.x table %r from %r", table, backup)


def _mention_default_table(conn: Connection, table: str) -> None:
    """A new table is about to be created beside 1.x's default one: say how to carry
    its tasks over, since they are not read otherwise."""
    if table == DEFAULT_TABLE or shape_of(conn, DEFAULT_TABLE) is not Shape.PYNCETTE1:
        return
    option = _TABLE_OPTIONS.get(conn.dialect.name, "table name")
    logger.warning(
        "This database holds the Pyncette 1.x table %r (%d tasks), which this app (table "
        "%r) does not read. To carry its tasks over, configure %s=%r (converted in place "
        "at start-up), or import its dynamic instances with "
        "pyncette.legacy.import_pyncette1_sql(ctx, url, table=%r)",
        DEFAULT_TABLE,
        _count(conn, DEFAULT_TABLE),
        table,
        option,
        DEFAULT_TABLE,
        DEFAULT_TABLE,
    )


def pyncette1_problem(conn: Connection, table: str) -> str | None:
    """Why ``table`` cannot be used as it is, if it is a 1.x table (not converted)."""
    if shape_of(conn, table) is not Shape.PYNCETTE1:
        return None
    return f"Table {table!r} is a Pyncette 1.x table that has not been converted yet"
