"""Helpers shared by several test modules (so no test module imports another)."""

from __future__ import annotations

import datetime
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, MetaData

from pyncette.model import Lease
from pyncette.repository import Registration
from pyncette.sql.schema import make_table

ROOT = Path(__file__).resolve().parent.parent
"""The repository's root folder; tests read nothing outside it."""

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
S = datetime.timedelta(seconds=1)
LEASE = datetime.timedelta(seconds=60)
A, B = Lease("lease-a"), Lease("lease-b")


def reg(
    name: str, at: datetime.datetime, spec: str | None = None, lease: datetime.timedelta = LEASE
) -> Registration:
    """A row to register, as the contract tests write them."""
    return Registration(name=name, spec=spec, scheduled_at=at, lease_duration=lease)


def schema_diff(conn: Connection, table: str) -> list[Any]:
    """What Alembic's ``compare_metadata`` finds between ``table`` in the database and
    pyncette's table definition (empty when they match)."""
    metadata = MetaData()
    make_table(metadata, table)
    context = MigrationContext.configure(
        conn,
        opts={
            "version_table": f"{table}_alembic_version",
            "include_name": lambda name, kind, _parents: kind != "table" or name == table,
        },
    )
    diff: list[Any] = compare_metadata(context, metadata)
    return diff


def alembic_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``alembic`` command from the repository root."""
    executable = shutil.which("alembic", path=str(Path(sys.executable).parent))
    command = [executable] if executable else [sys.executable, "-m", "alembic"]
    return subprocess.run(
        [*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
