"""Create the task table.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

The table name is a parameter (``-x table=...``); this revision spells the columns out
rather than importing ``make_table``, so it stays what it was when later revisions
change the table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = context.config.attributes["pyncette_table"]

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


def downgrade() -> None:
    table = context.config.attributes["pyncette_table"]
    op.drop_index(f"ix_{table}_due_at", table_name=table)
    op.drop_table(table)
