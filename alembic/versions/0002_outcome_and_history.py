"""Store run outcomes: an ``outcome`` column, and the run history table.

Revision ID: 0002
Revises: 0001
Create Date: 2025-06-01

Adds the nullable text column ``outcome`` to the task table (existing rows keep their
values and get ``NULL``) and creates ``<table>_history``: one row per outcome kept, with
an auto-increment ``id`` (write order), the row's ``task_group`` and ``name``,
``expires_at`` (microseconds since the epoch) and the ``outcome`` text; indexed on
``(task_group, name, id)`` for newest-first reads and per-row trimming, and on
``expires_at`` for the retention sweep. Like revision 0001 it spells the columns out
rather than importing the table definition.

Downgrading drops the history table and the column (their data is lost).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _text() -> sa.types.TypeEngine[str]:
    # TEXT stops at 64 KiB on MySQL/MariaDB
    return sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    table = context.config.attributes["pyncette_table"]
    history = f"{table}_history"

    def key() -> sa.types.TypeEngine[str]:
        # exact (byte-wise) comparison on MySQL/MariaDB: UTF-8 in VARBINARY
        return sa.String(255).with_variant(mysql.VARBINARY(1020), "mysql", "mariadb")

    op.add_column(table, sa.Column("outcome", _text(), nullable=True))
    op.create_table(
        history,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(),  # AUTO_INCREMENT on MySQL, the rowid on SQLite
            nullable=False,
        ),
        sa.Column("task_group", key(), nullable=False),
        sa.Column("name", key(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("outcome", _text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        quote=True,
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_index(f"ix_{history}_key", history, ["task_group", "name", "id"])
    op.create_index(f"ix_{history}_exp", history, ["expires_at"])


def downgrade() -> None:
    table = context.config.attributes["pyncette_table"]
    history = f"{table}_history"
    op.drop_index(f"ix_{history}_exp", table_name=history)
    op.drop_index(f"ix_{history}_key", table_name=history)
    op.drop_table(history)
    op.drop_column(table, "outcome")
