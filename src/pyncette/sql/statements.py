"""The statements of :class:`~pyncette.sql.repository.SqlRepository`, built once per table.

Built once and reused, so SQLAlchemy's compiled cache and the drivers' prepared
statements apply; the only statements whose shape depends on the batch (``CASE`` over
``n`` rows) are built once per size and kept.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Delete,
    Insert,
    Integer,
    Select,
    Table,
    Update,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.sql.dml import ReturningDelete, ReturningUpdate
from sqlalchemy.sql.elements import BindParameter

from pyncette.sql.engine import Capabilities
from pyncette.sql.schema import Micros, UtcMicros, key_type, text_type


class Statements:
    """Bind parameters: ``group``, ``key`` (a row name), ``lease``, ``now``, ``limit``,
    ``until``, ``after``, ``names`` (expanding) and ``pairs`` (expanding ``(name,
    lease)`` tuples); ``CASE`` updates add ``k<i>`` and one value per column and row."""

    def __init__(self, table: Table, caps: Capabilities) -> None:
        self.table = table
        self.caps = caps
        c = table.c
        group = bindparam("group", type_=key_type())
        key = bindparam("key", type_=key_type())
        lease = bindparam("lease", type_=key_type())
        now = bindparam("now", type_=UtcMicros())
        limit = bindparam("limit", type_=Integer())
        names = bindparam("names", type_=key_type(), expanding=True)
        pairs: BindParameter[Any] = bindparam("pairs", expanding=True)
        self._in_group = c.task_group == group
        self._names = c.name.in_(names)
        row = (c.name, c.spec, c.scheduled_at, c.due_at, c.locked_by)
        """What reads return; ``due_at`` is the lease expiry while ``locked_by`` is set."""

        # claim, PostgreSQL: lock the due rows, skipping other claimers', and take them
        due = (
            select(c.task_group, c.name, c.due_at)
            .where(self._in_group, c.due_at <= now)
            .order_by(c.due_at)
            .limit(limit)
            .with_for_update(skip_locked=caps.skip_locked)
            .subquery("picked")
        )
        self.claim_one: ReturningUpdate[Any] = (
            update(table)
            .where(c.task_group == due.c.task_group, c.name == due.c.name)
            .values(locked_by=lease, due_at=now + c.lease_duration_us)
            .returning(c.name, c.spec, c.scheduled_at, c.due_at, due.c.due_at)
        )
        # claim, elsewhere: in one transaction, scan by claimable time and take the due
        # rows by name. With row locks (MySQL) the scan locks only due rows (a locked row
        # not taken would make concurrent claimers skip it) and ``next_due`` follows;
        # without (SQLite, whole-file lock) it reads one row more, whose time is the hint.
        scan = select(c.name, c.spec, c.scheduled_at, c.due_at, c.lease_duration_us)
        if caps.row_locks:
            scan = scan.where(c.due_at <= now).with_for_update(skip_locked=caps.skip_locked)
        self.claim_scan: Select[Any] = (
            scan.where(self._in_group).order_by(c.due_at).limit(bindparam("scan", type_=Integer()))
        )
        self.claim_named: Update = (
            update(table)
            .where(self._in_group, self._names)
            .values(locked_by=lease, due_at=now + c.lease_duration_us)
        )
        self.next_due: Select[Any] = select(func.min(c.due_at)).where(self._in_group)

        # commit: rows named in :pairs and still held by the paired lease
        self._owned = self._in_group & self._names & tuple_(c.name, c.locked_by).in_(pairs)
        owned = select(c.name).where(self._owned).order_by(c.name)
        self.select_owned: Select[Any] = owned.with_for_update() if caps.row_locks else owned
        delete_owned = delete(table).where(self._owned)
        self.delete_owned: Delete | ReturningDelete[Any] = (
            delete_owned.returning(c.name) if caps.returning else delete_owned
        )

        by_key = (self._in_group, c.name == key)
        held = (*by_key, c.locked_by == lease)
        self.get: Select[Any] = select(*row).where(*by_key)
        self.extend: Update = (
            update(table).where(*held).values(due_at=bindparam("until", type_=UtcMicros()))
        )
        self.unlock: Update = (
            update(table).where(*held).values(locked_by=None, due_at=c.scheduled_at)
        )
        self.unregister: Delete = delete(table).where(*by_key)
        self.list_first: Select[Any] = (
            select(*row).where(self._in_group).order_by(c.name).limit(limit)
        )
        self.list_after: Select[Any] = (
            select(*row)
            .where(self._in_group, c.name > bindparam("after", type_=key_type()))
            .order_by(c.name)
            .limit(limit)
        )

        # register: lock what exists, insert the rest
        existing = (
            select(c.name, c.scheduled_at, c.due_at, c.locked_by)
            .where(self._in_group, self._names)
            .order_by(c.name)
        )
        self.select_existing: Select[Any] = (
            existing.with_for_update() if caps.row_locks else existing
        )
        self.insert: Insert = insert(table)
        self._case_updates: dict[tuple[str, int], Update | ReturningUpdate[Any]] = {}

    def commit_update(self, size: int) -> Update | ReturningUpdate[Any]:
        """Move ``size`` held rows to their next run (``v<i>``) and unlock them."""
        stmt = self._case_updates.get(("commit", size))
        if stmt is None:
            next_at = self._per_row(size, "v", UtcMicros())
            stmt = (
                update(self.table)
                .where(self._owned)
                .values(scheduled_at=next_at, due_at=next_at, locked_by=None)
            )
            if self.caps.returning:
                stmt = stmt.returning(self.table.c.name)
            self._case_updates["commit", size] = stmt
        return stmt

    def register_update(self, size: int) -> Update | ReturningUpdate[Any]:
        """Set spec (``s<i>``), lease duration (``d<i>``) and run (``at<i>``) of ``size``
        existing rows and unlock them."""
        stmt = self._case_updates.get(("register", size))
        if stmt is None:
            at = self._per_row(size, "at", UtcMicros())
            stmt = (
                update(self.table)
                .where(self._in_group, self._names)
                .values(
                    spec=self._per_row(size, "s", text_type()),
                    lease_duration_us=self._per_row(size, "d", Micros()),
                    scheduled_at=at,
                    due_at=at,
                    locked_by=None,
                )
            )
            self._case_updates["register", size] = stmt
        return stmt

    def _per_row(self, size: int, prefix: str, type_: Any) -> Any:
        """``CASE WHEN name = :k0 THEN :<prefix>0 … END``."""
        name = self.table.c.name
        return case(
            *(
                (
                    name == bindparam(f"k{i}", type_=key_type()),
                    bindparam(f"{prefix}{i}", type_=type_),
                )
                for i in range(size)
            )
        )
