"""Create the task table, converting a Pyncette 1.x table of the same name.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

The table name is a parameter (``-x table=...``); this revision spells the columns out
rather than importing ``make_table``, so it stays what it was when later revisions
change the table.

A Pyncette 1.x table may already stand where the table goes (1.x created
``pyncette_tasks`` by default, and the documented configuration names it). It is
adopted, not refused: its rows are checked, it is renamed ``<table>_pyncette1``, the
table is created, and the rows are converted into it (see :mod:`pyncette.sql.adopt`).
With ``--sql`` (offline) nothing can be read, so only the table is created.

Downgrading drops the table and, if a 1.x table was converted, gives it back its name:
the 1.x data as it was at the upgrade, without what the app did since.
"""

from __future__ import annotations

import datetime

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import mysql

from pyncette.sql import adopt

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = context.config.attributes["pyncette_table"]
    now = datetime.datetime.now(datetime.UTC)
    convert = not context.is_offline_mode() and adopt.before_create(op.get_bind(), table, now)

    def key() -> sa.types.TypeEngine[str]:
        # exact (byte-wise) comparison on MySQL/MariaDB: UTF-8 in VARBINARY
        return sa.String(255).with_variant(mysql.VARBINARY(1020), "mysql", "mariadb")

    op.create_table(
        table,
        sa.Column("task_group", key(), nullable=False),
        sa.Column("name", key(), nullable=False),
        sa.Column(
            "spec", sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb"), nullable=True
        ),
        sa.Column("scheduled_at", sa.BigInteger(), nullable=False),
        sa.Column("due_at", sa.BigInteger(), nullable=False),
        sa.Column("lease_duration_us", sa.BigInteger(), nullable=False),
        sa.Column("locked_by", key(), nullable=True),
        sa.PrimaryKeyConstraint("task_group", "name"),
        quote=True,
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_index(f"ix_{table}_due_at", table, ["task_group", "due_at"])
    if convert:
        adopt.fill(op.get_bind(), table, now)


def downgrade() -> None:
    table = context.config.attributes["pyncette_table"]
    op.drop_index(f"ix_{table}_due_at", table_name=table)
    op.drop_table(table)
    if not context.is_offline_mode():
        adopt.restore(op.get_bind(), table)
