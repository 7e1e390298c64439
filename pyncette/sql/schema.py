"""The task table, defined once for every SQL dialect.

Layout and why:

* ``(task_group, name)`` is the primary key: every call touches one group, and a
  ``get`` / ``commit`` is a primary-key lookup.
* Times are ``BIGINT`` microseconds since the Unix epoch (:class:`UtcMicros`, through
  :mod:`pyncette.timeutil`, as Redis stores them). That is
  unambiguous UTC on every dialect (no session time zone, no ``TIMESTAMP`` vs
  ``DATETIME`` quirks), keeps microseconds, and makes ``locked_until = :now +
  lease_duration_us`` plain integer arithmetic that every dialect evaluates alike.
* ``due_at`` is the time the row becomes claimable: the lease expiry while the row is
  locked (``locked_by`` set), ``scheduled_at`` otherwise. There is no separate
  ``locked_until`` column: it *is* ``due_at`` while ``locked_by`` is set, so the two can
  never disagree. The index ``(task_group, due_at)`` makes a claim a range scan over
  the due rows only, and the group's next due time an index-only ``MIN``.
* Names, groups and lease tokens compare byte for byte: on MySQL/MariaDB they are
  ``VARBINARY`` holding UTF-8 (:class:`Utf8Bytes`), because every ``utf8mb4``
  collation either folds case or pads trailing spaces, either of which would merge
  distinct task names. The text ``spec`` column is ``MEDIUMTEXT`` there, as ``TEXT``
  stops at 64 KiB.
* ``outcome`` (revision 0002) is the last run's outcome, opaque text written by the core
  in the same statement as the commit or unlock that carries it; ``NULL`` until then.

The history table ``<table>_history`` (revision 0002, :func:`make_history_table`) holds
one row per outcome written with a :class:`~pyncette.repository.History`:

* ``id`` is an auto-increment key; a row's entries are only ever written by the holder
  of its lease, one at a time, so ``id`` order is write order, and newest first is
  ``ORDER BY id DESC`` over the index ``(task_group, name, id)``, which also serves the
  per-row trimming of entries beyond ``keep``.
* ``expires_at`` is the write's ``now`` plus the entry's retention, so one sweep over the
  index ``(expires_at)`` drops expired entries of every row, tasks with different
  retentions and rows deleted since alike.
* No foreign key to the task table: history outlives a deleted row.

Alembic (``alembic/versions``) creates this table; ``make_table`` is what the
repository queries and what the migration tests compare the database against.
"""

from __future__ import annotations

import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Dialect,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.types import TypeDecorator, TypeEngine

from pyncette.sql.names import (
    due_index_name,
    history_expiry_index_name,
    history_key_index_name,
    history_table_name,
    validate_table_name,
)
from pyncette.timeutil import duration_us, from_epoch_us, to_epoch_us


class UtcMicros(TypeDecorator[datetime.datetime]):
    """An aware datetime stored as integer microseconds since the epoch, read back as UTC
    (array parameters, which bind raw, take :func:`~pyncette.timeutil.to_epoch_us`)."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime.datetime | None, dialect: Dialect) -> Any:
        return None if value is None else to_epoch_us(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime.datetime | None:
        return None if value is None else from_epoch_us(value)


class Micros(TypeDecorator[datetime.timedelta]):
    """A duration stored as integer microseconds."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime.timedelta | None, dialect: Dialect) -> Any:
        return None if value is None else duration_us(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime.timedelta | None:
        return None if value is None else datetime.timedelta(microseconds=value)


class Utf8Bytes(TypeDecorator[str]):
    """A string stored as its UTF-8 bytes in ``VARBINARY``: exact comparison, codepoint order."""

    impl = mysql.VARBINARY
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> Any:
        return None if value is None else value.encode()

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else bytes(value).decode()


def key_type() -> TypeEngine[str]:
    """Up to 255 characters, compared exactly (``VARBINARY`` of UTF-8 on MySQL/MariaDB)."""
    return String(255).with_variant(Utf8Bytes(1020), "mysql", "mariadb")


def text_type() -> TypeEngine[str]:
    return Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


TABLE_OPTIONS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def make_table(metadata: MetaData, name: str) -> Table:
    """Define the task table ``name`` in ``metadata``."""
    validate_table_name("table name", name)
    return Table(
        name,
        metadata,
        Column("task_group", key_type(), nullable=False),
        Column("name", key_type(), nullable=False),
        Column("spec", text_type(), nullable=True),
        Column("scheduled_at", UtcMicros(), nullable=False),
        Column("due_at", UtcMicros(), nullable=False),
        Column("lease_duration_us", Micros(), nullable=False),
        Column("locked_by", key_type(), nullable=True),
        Column("outcome", text_type(), nullable=True),
        PrimaryKeyConstraint("task_group", "name"),
        Index(due_index_name(name), "task_group", "due_at"),
        quote=True,
        **TABLE_OPTIONS,
    )


def history_id_type() -> TypeEngine[int]:
    """``BIGINT`` (``INTEGER`` on SQLite, where only an ``INTEGER PRIMARY KEY`` is the
    auto-assigned rowid)."""
    return BigInteger().with_variant(Integer(), "sqlite")


def make_history_table(metadata: MetaData, table: str) -> Table:
    """Define the run history of the task table ``table`` in ``metadata``."""
    validate_table_name("table name", table)
    return Table(
        history_table_name(table),
        metadata,
        # an identity column on PostgreSQL: INSERT on the table is all it needs, unlike
        # BIGSERIAL's sequence; AUTO_INCREMENT on MySQL, the rowid on SQLite
        Column("id", history_id_type(), Identity(), nullable=False),
        Column("task_group", key_type(), nullable=False),
        Column("name", key_type(), nullable=False),
        Column("expires_at", UtcMicros(), nullable=False),
        Column("outcome", text_type(), nullable=False),
        PrimaryKeyConstraint("id"),
        Index(history_key_index_name(table), "task_group", "name", "id"),
        Index(history_expiry_index_name(table), "expires_at"),
        quote=True,
        **TABLE_OPTIONS,
    )
