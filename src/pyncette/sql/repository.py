"""The SQL implementation of the lease interface (SQLAlchemy Core, asyncio)."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Table
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pyncette.model import ContinuationToken, Lease
from pyncette.repository import ClaimResult, Commit, Page, Record, Registration, Repository
from pyncette.sql.engine import Capabilities, retry_dropped, translate_errors
from pyncette.sql.statements import Statements

T = TypeVar("T")

CHUNK = 200
"""Rows per statement in batched writes (keeps bound parameters well under every limit)."""
REGISTER_ATTEMPTS = 5
"""A registration racing another instance's insert of the same new row is retried."""


class SqlRepository(Repository):
    """Task rows in one SQL table (see :mod:`pyncette.sql.schema` for the layout).

    Round trips are what a call costs, so each method is as few statements as the
    dialect allows, and single statements run without ``BEGIN``/``COMMIT`` where that
    is free. Dialect differences are the :class:`~pyncette.sql.engine.Capabilities`
    flags only:

    * claim: on PostgreSQL one ``UPDATE … FROM (SELECT … ORDER BY due_at LIMIT n FOR
      UPDATE SKIP LOCKED) RETURNING``; elsewhere ``SELECT … FOR UPDATE [SKIP LOCKED]``
      then ``UPDATE … WHERE name IN (…)`` in one transaction (SQLite's ``BEGIN
      IMMEDIATE`` stands in for row locks). Then an index-only ``MIN(due_at)`` gives
      ``next_due_at``.
    * commit: one ``UPDATE … SET scheduled_at = CASE WHEN name = … END`` plus one
      ``DELETE`` per batch, both guarded by ``(name, locked_by) IN (…)``; with
      ``RETURNING`` they report what they changed, otherwise (MySQL) the owned rows
      are locked and read first in the same transaction.
    * register: lock the existing rows, then one multi-row ``INSERT`` for the new ones
      and one ``CASE`` ``UPDATE`` for the rest.
    """

    def __init__(
        self, engine: AsyncEngine, table: Table, caps: Capabilities, *, where: str
    ) -> None:
        self._engine = engine
        self._single = engine.execution_options(**caps.autocommit) if caps.autocommit else engine
        self._caps = caps
        self._where = where
        self._sql = Statements(table, caps)

    async def _run(
        self, operation: Callable[[AsyncConnection], Awaitable[T]], *, atomic: bool
    ) -> T:
        """The adapter edge: ``atomic`` operations get a real transaction; a dropped
        connection is retried once; unreachable storage is ``BackendUnavailableError``."""
        async with translate_errors(self._where):
            return await retry_dropped(self._engine if atomic else self._single, operation)

    # -- claims -------------------------------------------------------------------

    async def claim(
        self, group: str, *, now: datetime.datetime, limit: int, lease: Lease
    ) -> ClaimResult:
        params = {"group": group, "now": now, "limit": limit, "lease": lease}
        sql = self._sql

        async def one_statement(conn: AsyncConnection) -> ClaimResult:
            rows = list((await conn.execute(sql.claim_one, params)).all())
            rows.sort(key=lambda r: (r[4], r[0]))
            next_due = (await conn.execute(sql.next_due, params)).scalar()
            return ClaimResult([Record(r[0], r[1], r[2], r[3], lease) for r in rows], next_due)

        row_locks = self._caps.row_locks

        async def scan(conn: AsyncConnection, *, take: bool) -> ClaimResult | None:
            size = limit if row_locks else limit + 1
            rows = (await conn.execute(sql.claim_scan, {**params, "scan": size})).all()
            due = [row for row in rows[:limit] if row[3] <= now]
            if due and not take:
                return None
            records = [Record(r[0], r[1], r[2], now + r[4], lease) for r in due]
            if records:
                names = [record.name for record in records]
                await conn.execute(sql.claim_named, {**params, "names": names})
            if row_locks:
                return ClaimResult(records, (await conn.execute(sql.next_due, params)).scalar())
            hints = [now + r[4] for r in due]
            if len(rows) > len(due):
                hints.append(rows[len(due)][3])
            return ClaimResult(records, min(hints) if hints else None)

        if self._caps.one_statement_claim:
            return await self._run(one_statement, atomic=False)
        if not self._caps.row_locks:
            # SQLite: claiming takes the whole file's write lock, so look first without it
            idle = await self._run(functools.partial(scan, take=False), atomic=False)
            if idle is not None:
                return idle
        taken = await self._run(functools.partial(scan, take=True), atomic=True)
        assert taken is not None
        return taken

    # -- commits ------------------------------------------------------------------

    async def commit(
        self, group: str, commits: Sequence[Commit], *, now: datetime.datetime
    ) -> list[str]:
        lost: list[str] = []
        unique: dict[str, Commit] = {}
        for item in commits:
            if item.name in unique:
                lost.append(item.name)  # the first one unlocks it; the rest are stale
            else:
                unique[item.name] = item
        batch = list(unique.values())
        applied: set[str] = set()
        for start in range(0, len(batch), CHUNK):
            chunk = batch[start : start + CHUNK]
            applied |= await self._run(
                lambda conn, chunk=chunk: self._commit_chunk(conn, group, chunk),  # type: ignore[misc]
                atomic=not self._caps.returning,
            )
        return [item.name for item in batch if item.name not in applied] + lost

    async def _commit_chunk(
        self, conn: AsyncConnection, group: str, chunk: list[Commit]
    ) -> set[str]:
        sql = self._sql
        returning = self._caps.returning
        if not returning:
            owned = set((await conn.execute(sql.select_owned, _owned(group, chunk))).scalars())
            chunk = [item for item in chunk if item.name in owned]
        moved = [item for item in chunk if item.next_at is not None]
        done = [item for item in chunk if item.next_at is None]
        applied: set[str] = set()
        if moved:
            params = _owned(group, moved)
            for i, item in enumerate(moved):
                params[f"k{i}"] = item.name
                params[f"v{i}"] = item.next_at
            result = await conn.execute(sql.commit_update(len(moved)), params)
            applied.update(result.scalars() if returning else params["names"])
        if done:
            params = _owned(group, done)
            result = await conn.execute(sql.delete_owned, params)
            applied.update(result.scalars() if returning else params["names"])
        return applied

    async def extend(
        self, group: str, name: str, lease: Lease, *, locked_until: datetime.datetime
    ) -> bool:
        params = {"group": group, "key": name, "lease": lease, "until": locked_until}
        return await self._rowcount(self._sql.extend, params) == 1

    async def unlock(self, group: str, name: str, lease: Lease) -> bool:
        params = {"group": group, "key": name, "lease": lease}
        return await self._rowcount(self._sql.unlock, params) == 1

    async def _rowcount(self, stmt: Any, params: dict[str, Any]) -> int:
        async def run(conn: AsyncConnection) -> int:
            return (await conn.execute(stmt, params)).rowcount

        return await self._run(run, atomic=False)

    # -- registration -------------------------------------------------------------

    async def register(
        self,
        group: str,
        registrations: Sequence[Registration],
        *,
        now: datetime.datetime,
        force: bool,
    ) -> list[str]:
        merged: dict[str, Registration] = {}
        for reg in registrations:
            earlier = merged.get(reg.name)
            if earlier is not None and earlier.scheduled_at < reg.scheduled_at:
                reg = Registration(reg.name, reg.spec, earlier.scheduled_at, reg.lease_duration)
            merged[reg.name] = reg
        batch = list(merged.values())
        skipped: set[str] = set()
        for start in range(0, len(batch), CHUNK):
            chunk = batch[start : start + CHUNK]
            for attempt in range(1, REGISTER_ATTEMPTS + 1):
                try:
                    skipped |= await self._run(
                        lambda conn, chunk=chunk: self._register_chunk(  # type: ignore[misc]
                            conn, group, chunk, now=now, force=force
                        ),
                        atomic=True,
                    )
                    break
                except IntegrityError:
                    if attempt == REGISTER_ATTEMPTS:
                        raise
        return [reg.name for reg in registrations if reg.name in skipped]

    async def _register_chunk(
        self,
        conn: AsyncConnection,
        group: str,
        chunk: list[Registration],
        *,
        now: datetime.datetime,
        force: bool,
    ) -> set[str]:
        sql = self._sql
        params: dict[str, Any] = {"group": group, "names": [reg.name for reg in chunk]}
        existing = {r[0]: r for r in (await conn.execute(sql.select_existing, params)).all()}
        skipped: set[str] = set()
        inserts: list[dict[str, Any]] = []
        updates: list[tuple[Registration, datetime.datetime]] = []
        for reg in chunk:
            row = existing.get(reg.name)  # (name, scheduled_at, due_at, locked_by)
            if row is None:
                inserts.append(
                    {
                        "task_group": group,
                        "name": reg.name,
                        "spec": reg.spec,
                        "scheduled_at": reg.scheduled_at,
                        "due_at": reg.scheduled_at,
                        "lease_duration_us": reg.lease_duration,
                        "locked_by": None,
                    }
                )
            elif row[3] is not None and row[2] > now and not force:
                skipped.add(reg.name)
            else:
                updates.append((reg, min(row[1], reg.scheduled_at)))
        if inserts:
            await conn.execute(sql.insert, inserts)
        if updates:
            update_params: dict[str, Any] = {
                "group": group,
                "names": [reg.name for reg, _ in updates],
            }
            for i, (reg, at) in enumerate(updates):
                update_params[f"k{i}"] = reg.name
                update_params[f"s{i}"] = reg.spec
                update_params[f"d{i}"] = reg.lease_duration
                update_params[f"at{i}"] = at
            await conn.execute(sql.register_update(len(updates)), update_params)
        return skipped

    async def unregister(self, group: str, name: str) -> bool:
        return await self._rowcount(self._sql.unregister, {"group": group, "key": name}) == 1

    # -- reads --------------------------------------------------------------------

    async def get(self, group: str, name: str) -> Record | None:
        async def run(conn: AsyncConnection) -> Record | None:
            row = (await conn.execute(self._sql.get, {"group": group, "key": name})).first()
            return None if row is None else _record(row)

        return await self._run(run, atomic=False)

    async def list(
        self,
        group: str,
        *,
        limit: int,
        continuation_token: ContinuationToken | None = None,
    ) -> Page:
        params: dict[str, Any] = {"group": group, "limit": limit + 1}
        stmt = self._sql.list_first
        if continuation_token is not None:
            stmt = self._sql.list_after
            params["after"] = continuation_token

        async def run(conn: AsyncConnection) -> Page:
            rows = (await conn.execute(stmt, params)).all()
            records = [_record(row) for row in rows[:limit]]
            more = len(rows) > limit and records
            return Page(records, ContinuationToken(records[-1].name) if more else None)

        return await self._run(run, atomic=False)


def _record(row: Any) -> Record:
    """``(name, spec, scheduled_at, due_at, locked_by)`` -> Record; ``due_at`` is the
    lease expiry while the row is locked."""
    locked_by = row[4]
    if locked_by is None:
        return Record(row[0], row[1], row[2], None, None)
    return Record(row[0], row[1], row[2], row[3], Lease(locked_by))


def _owned(group: str, commits: Sequence[Commit]) -> dict[str, Any]:
    return {
        "group": group,
        "names": [item.name for item in commits],
        "pairs": [(item.name, item.lease) for item in commits],
    }
