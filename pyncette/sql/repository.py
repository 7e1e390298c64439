"""The SQL implementation of the lease interface (SQLAlchemy Core, asyncio)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import hashlib
import logging
import operator
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Table, exc, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pyncette import retry
from pyncette.batching import chunks
from pyncette.clock import real_timeout
from pyncette.errors import BackendUnavailableError
from pyncette.model import ContinuationToken, Lease
from pyncette.repository import (
    ClaimResult,
    Commit,
    History,
    Page,
    Record,
    Registration,
    Repository,
    deliver_wake_up,
    fold_registrations,
    new_tuple,
    wake_up_message,
)
from pyncette.sql.engine import (
    Capabilities,
    HeldConnection,
    PooledConnections,
    run_retrying,
    translate_errors,
    unavailable,
)
from pyncette.sql.precompiled import DriverStatements
from pyncette.sql.statements import SWEEP_LIMIT, Statements
from pyncette.timeutil import EPOCH, duration_us, from_epoch_us, to_epoch_us

T = TypeVar("T")
logger = logging.getLogger(__name__)

KEEPALIVE = 30.0
"""Seconds between checks that the ``LISTEN`` connection still answers."""
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")

CHUNK = 200
"""Rows per statement in batched writes (keeps bound parameters well under every limit)."""
SWEEP_INTERVAL = datetime.timedelta(minutes=1)
"""How often (by the writes' ``now``) one repository sweeps expired history entries."""

ANALYSE_AFTER = 1_000
"""Rows registered through one repository after which it makes sure its table has been
analysed at least once (see ``Capabilities.analyse_fresh``)."""

ANALYSE_LOCK_TIMEOUT_MS = 200
"""How long that ``ANALYZE`` waits for its lock: if another session is analysing or
vacuuming the table, that one gathers the statistics and this one gives up."""

ANALYSE_TIMEOUT_MS = 5_000
"""How long that ``ANALYZE`` may take (it samples at most 30,000 rows at PostgreSQL's
default statistics target, whatever the table's size); past this it gives up."""


class SqlRepository(Repository):
    """Task rows in one SQL table (see :mod:`pyncette.sql.schema` for the layout).

    Round trips are what a call costs, so each method is as few statements as the
    dialect allows, and single statements run without ``BEGIN``/``COMMIT`` where that
    is free. Dialect differences are the :class:`~pyncette.sql.engine.Capabilities`
    flags only:

    * claim: on PostgreSQL one statement, ``WITH picked AS (SELECT … ORDER BY due_at
      LIMIT n FOR UPDATE SKIP LOCKED), claimed AS (UPDATE … RETURNING)``, which also
      returns ``next_due_at`` when fewer than ``n`` rows were due; on SQLite one
      autocommitted ``UPDATE … WHERE name IN (SELECT … ORDER BY due_at LIMIT n)
      RETURNING`` (a statement holds the file's write lock while it runs), after an
      unlocked look at ``MIN(due_at)`` unless the group's last claim was full; on MySQL
      ``SELECT … FOR UPDATE [SKIP LOCKED]`` then ``UPDATE … WHERE name IN (…)`` in one
      transaction (also SQLite's way before 3.35, in ``BEGIN IMMEDIATE``). Then an
      index-only ``MIN(due_at)`` gives ``next_due_at``, unless the claim was full (the
      core claims again at once).
    * commit: on PostgreSQL one ``UPDATE … FROM unnest(:names, :leases, :at)`` plus
      one ``DELETE … USING unnest(:names, :leases)`` per batch (array parameters);
      elsewhere one ``UPDATE … SET scheduled_at = CASE WHEN name = … END`` plus one
      ``DELETE``, both guarded by ``(name, locked_by) IN (…)``; with
      ``RETURNING`` they report what they changed; otherwise (MySQL) their row counts
      do, and only when a row was no longer held is the transaction rolled back and
      redone with the held rows locked and read first.
    * register: one upsert per chunk, changing only rows not held by a live lease
      (unless forced; whether it writes the sooner run or the new one is a ``CASE`` on
      the ``force`` parameter, on MySQL a variant of the statement): on PostgreSQL
      ``INSERT … SELECT … FROM unnest(…) ON CONFLICT DO UPDATE … WHERE … RETURNING``;
      elsewhere an ``executemany`` of the one-row ``INSERT … ON CONFLICT DO UPDATE …
      WHERE`` (SQLite; then a primary-key read of the rows still locked, the ones left
      alone) or ``INSERT … ON DUPLICATE KEY UPDATE`` with guarded assignments (MySQL;
      the driver sends it as one multi-row ``INSERT``) after locking the existing rows,
      which tells the live leases it will leave alone, and unlocking expired ones if
      there are any. Where that is one statement it runs without ``BEGIN``/``COMMIT``:
      on PostgreSQL always, and on SQLite for a single row, as the upsert ``RETURNING``
      the name if it wrote the row.
    * outcomes: a commit or unlock carrying one writes it in the same ``UPDATE`` (a
      ``COALESCE`` of the new value and the stored one); one without uses the statements
      above unchanged. With a :class:`~pyncette.repository.History`, the entries are
      appended and the rows' history trimmed to ``keep`` in the same transaction: on
      PostgreSQL in the same statement (data-modifying ``WITH`` parts), elsewhere as an
      ``INSERT`` and a ``DELETE`` after the guarded write. Entries past their retention
      are deleted by a sweep of at most :data:`~pyncette.sql.statements.SWEEP_LIMIT`
      of them, one statement of its own after a history write, at most once per
      :data:`SWEEP_INTERVAL` (again at the next write while it finds a full batch).
      Trimming and the sweep may meet on the same entries, so a history-carrying write
      chosen as a deadlock victim is run again (:data:`~pyncette.retry.CONFLICT`); on
      PostgreSQL the sweep skips locked entries and never waits.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        table: Table,
        history: Table,
        caps: Capabilities,
        *,
        where: str,
    ) -> None:
        self._engine = engine
        self._pooled = PooledConnections(engine)
        single = engine.execution_options(**caps.autocommit) if caps.autocommit else engine
        self._single: PooledConnections | HeldConnection = (
            HeldConnection(single) if caps.held_connection else PooledConnections(single)
        )
        self._caps = caps
        self._where = where
        self._sql = Statements(table, history, caps)
        self._driver = DriverStatements(engine.dialect) if caps.driver_statements else None
        self._next_sweep: datetime.datetime | None = None
        self._full: set[str] = set()
        """Groups whose last claim here was a full batch (SQLite skips its look)."""
        self._unanalysed: int | None = ANALYSE_AFTER if caps.analyse_fresh else None
        """Rows still to register before the table's statistics are checked (once)."""
        self._quoted = engine.dialect.identifier_preparer.format_table(table)
        # one channel per table; hashed, as channel names are identifiers of <= 63 bytes
        digest = hashlib.sha256(table.fullname.encode("utf-8")).hexdigest()[:24]
        self._channel = f"pyncette_{digest}"

    async def _run(
        self,
        operation: Callable[[AsyncConnection], Awaitable[T]],
        *,
        atomic: bool,
        attempts: int = 1,
    ) -> T:
        """The adapter edge: ``atomic`` operations get a real transaction; a dropped
        connection is retried once; a transaction the database rolled back as a conflict
        (see :func:`~pyncette.sql.engine.is_conflict`) is run again, up to ``attempts``
        times in all (:data:`~pyncette.retry.CONFLICT` back-off); unreachable storage is
        ``BackendUnavailableError``."""
        connections = self._pooled if atomic else self._single
        try:
            try:  # the usual case first: one run, without the retry machinery's calls
                return await connections.run(operation)
            except Exception as error:
                return await run_retrying(connections, operation, attempts=attempts, failed=error)
        except Exception as error:
            translated = unavailable(error, self._where)
            if translated is None:
                raise
            raise translated from error

    async def close(self) -> None:
        """Give back the connection held for single statements, if any (the pool itself
        is the engine's, closed by whoever made it)."""
        await self._single.close()

    # -- wake-ups (PostgreSQL LISTEN/NOTIFY) ---------------------------------------

    @property
    def wake_ups(self) -> bool:
        return self._caps.notify

    async def announce(self, group: str, due_at: datetime.datetime) -> None:
        if not self._caps.notify:
            return
        params = {"channel": self._channel, "payload": wake_up_message(group, due_at)}

        async def run(conn: AsyncConnection) -> None:
            await conn.execute(_NOTIFY, params)

        await self._run(run, atomic=False)

    async def listen(self, wake: Callable[[str, datetime.datetime], None]) -> None:
        """``LISTEN`` on a connection of its own, outside the pool (it is held for as
        long as the app runs), checked every :data:`KEEPALIVE` seconds."""
        if not self._caps.notify:
            raise NotImplementedError("LISTEN/NOTIFY is PostgreSQL's")
        import asyncpg

        args, kwargs = self._engine.dialect.create_connect_args(self._engine.url)
        async with translate_errors(self._where):
            connection = await asyncpg.connect(*args, **kwargs)
        closed = asyncio.Event()
        connection.add_termination_listener(lambda _: closed.set())
        try:
            await connection.add_listener(
                self._channel, lambda _c, _pid, _ch, payload: deliver_wake_up(payload, wake)
            )
            while True:
                with contextlib.suppress(TimeoutError):
                    async with real_timeout(KEEPALIVE):
                        await closed.wait()
                if closed.is_set():
                    raise ConnectionError("the LISTEN connection closed")
                async with real_timeout(KEEPALIVE):
                    await connection.fetchval("SELECT 1")
        finally:
            connection.terminate()

    # -- claims -------------------------------------------------------------------

    async def claim(
        self, group: str, *, now: datetime.datetime, limit: int, lease: Lease
    ) -> ClaimResult:
        params = {"group": group, "now": now, "limit": limit, "lease": lease}
        sql = self._sql

        async def one_statement(conn: AsyncConnection) -> ClaimResult:
            rows = (await conn.execute(sql.claim_one, params)).all()
            claimed = sorted((r for r in rows if r[0] is not None), key=lambda r: (r[4], r[0]))
            hint = next((r[3] for r in rows if r[0] is None), None)
            return ClaimResult(
                _claimed_records(claimed, lease), None if hint is None else from_epoch_us(hint)
            )

        row_locks = self._caps.row_locks
        now_us = to_epoch_us(now)

        async def scan(conn: AsyncConnection) -> ClaimResult:
            size = limit if row_locks else limit + 1
            rows = (await conn.execute(sql.claim_scan, {**params, "scan": size})).all()
            due = [row for row in rows[:limit] if row[3] <= now_us]
            records = _claimed_records([(*r[:3], now_us + r[4]) for r in due], lease)
            if records:
                names = [record.name for record in records]
                await conn.execute(sql.claim_named, {**params, "names": names})
            if row_locks:
                # a full batch makes the core claim again at once; it ignores the hint
                full = len(records) >= limit
                hint = None if full else await self._next_due(conn, params)
                return ClaimResult(records, hint)
            hints = [now_us + r[4] for r in due]
            if len(rows) > len(due):
                hints.append(rows[len(due)][3])
            return ClaimResult(records, from_epoch_us(min(hints)) if hints else None)

        async def returning(conn: AsyncConnection) -> ClaimResult:
            rows = list(await self._rows(conn, sql.claim_returning, params))
            # by scheduled time, then name: two stable sorts on single keys build no key
            # tuples (twice as fast on a batch of 100 as one sort on the pair)
            rows.sort(key=_FIRST)
            rows.sort(key=_SCHEDULED)
            records = _claimed_records(rows, lease)
            # a full batch makes the core claim again at once; it ignores the hint
            hint = None if len(records) >= limit else await self._next_due(conn, params)
            return ClaimResult(records, hint)

        if self._caps.one_statement_claim:
            return await self._run(one_statement, atomic=False)
        if self._caps.row_locks:
            return await self._run(scan, atomic=True)
        # SQLite: claiming takes the whole file's write lock, so look first without it,
        # unless the group's last claim was a full batch (more is most likely due)
        if group not in self._full:
            first = await self._run(lambda conn: self._next_due(conn, params), atomic=False)
            if first is None or first > now:
                return ClaimResult([], first)
        if self._caps.returning:
            taken = await self._run(returning, atomic=False)
        else:
            taken = await self._run(scan, atomic=True)
        if len(taken.records) >= limit:
            self._full.add(group)
        else:
            self._full.discard(group)
        return taken

    async def _rows(
        self, conn: AsyncConnection, statement: Any, params: dict[str, Any]
    ) -> Sequence[Any]:
        """The rows of a claim's or commit's ``statement``: run on the driver's own
        connection where :attr:`Capabilities.driver_statements` says so."""
        if self._driver is not None:
            return await self._driver.rows(conn, statement, params)
        return (await conn.execute(statement, params)).all()

    async def _next_due(
        self, conn: AsyncConnection, params: dict[str, Any]
    ) -> datetime.datetime | None:
        """The group's next claimable time (:attr:`Statements.next_due`)."""
        if self._driver is not None:
            ((micros,),) = await self._driver.rows(conn, self._sql.next_due, params)
            return None if micros is None else from_epoch_us(micros)
        return await _scalar(conn, self._sql.next_due, params)  # type: ignore[no-any-return]

    # -- commits ------------------------------------------------------------------

    async def commit(
        self, group: str, commits: Sequence[Commit], *, now: datetime.datetime
    ) -> list[str]:
        lost: list[str] = []
        unique = dict(zip(map(_NAME, commits), commits, strict=True))
        if len(unique) < len(commits):  # a row committed twice
            unique = {}
            for item in commits:
                if item.name in unique:
                    lost.append(item.name)  # the first one unlocks it; the rest are stale
                else:
                    unique[item.name] = item
        batch = list(unique.values())
        applied: set[str] = set()
        keeps_history = False
        for chunk in chunks(batch, CHUNK):
            # one statement per kind of write, unless history follows it (not PostgreSQL)
            history = set(map(_HISTORY, chunk)) != _NONE_ONLY and any(
                item.history is not None and item.outcome is not None for item in chunk
            )
            keeps_history |= history
            atomic = not self._caps.returning or (history and not self._caps.array_params)
            # trimming history may meet the retention sweep: a deadlock victim runs again
            attempts = retry.CONFLICT_ATTEMPTS if history else 1
            write = functools.partial(
                self._commit_chunk, group=group, chunk=chunk, now=now, history=history
            )
            try:
                applied |= await self._run(write, atomic=atomic, attempts=attempts)
            except _NotAllHeld:
                # rolled back; find out which rows are still held, then write those
                applied |= await self._run(
                    functools.partial(write, check_first=True),
                    atomic=True,
                    attempts=attempts,
                )
        if keeps_history:
            await self._sweep(now)
        if len(applied) == len(batch):
            return lost
        return [item.name for item in batch if item.name not in applied] + lost

    async def _commit_chunk(
        self,
        conn: AsyncConnection,
        group: str,
        chunk: Sequence[Commit],
        *,
        now: datetime.datetime,
        history: bool = True,
        check_first: bool = False,
    ) -> set[str]:
        """Without ``RETURNING`` (MySQL) the guarded writes run first, optimistically: if
        their row counts show every row was still held, all were applied; otherwise
        :class:`_NotAllHeld` rolls the transaction back and the caller runs it again with
        ``check_first``, which locks and reads the held rows before writing. ``history``
        says whether any commit of the chunk keeps run history (only then is it read)."""
        sql = self._sql
        if check_first:
            owned = set((await conn.execute(sql.select_owned, _owned(group, chunk))).scalars())
            chunk = [item for item in chunk if item.name in owned]
        moved: Sequence[Commit]
        done: Sequence[Commit]
        ends = list(map(_NEXT_AT, chunk)).count(None)
        if ends == len(chunk):  # one-offs, mostly
            moved, done = [], chunk
        elif ends == 0:
            moved, done = chunk, []
        else:
            moved = [item for item in chunk if item.next_at is not None]
            done = [item for item in chunk if item.next_at is None]
        applied: set[str] = set()
        if self._caps.array_params:
            if moved:
                arrays = {
                    "group": group,
                    "names": [item.name for item in moved],
                    "leases": [item.lease for item in moved],
                    "at": [to_epoch_us(item.next_at) for item in moved],  # type: ignore[arg-type]
                }
                stmt = sql.commit_moved
                if any(item.outcome is not None for item in moved):
                    stmt = sql.commit_moved_outcome
                    if any(_keeps_history(item) for item in moved):
                        stmt = sql.commit_moved_history
                    arrays.update(_history_arrays(moved, now))
                applied.update((await conn.execute(stmt, arrays)).scalars())
            if done:
                arrays = {
                    "group": group,
                    "names": [item.name for item in done],
                    "leases": [item.lease for item in done],
                }
                stmt = sql.commit_done
                if any(_keeps_history(item) for item in done):
                    stmt = sql.commit_done_history
                    arrays.update(_history_arrays(done, now))
                applied.update((await conn.execute(stmt, arrays)).scalars())
            return applied
        written = 0
        if moved:
            params = _owned(group, moved)
            outcome = any(item.outcome is not None for item in moved)
            for i, item in enumerate(moved):
                params[f"k{i}"] = item.name
                params[f"v{i}"] = item.next_at
                if outcome:
                    params[f"o{i}"] = item.outcome
            stmt = sql.commit_update(len(moved), outcome=outcome)
            written += await self._write(conn, stmt, params, applied)
        if done:
            params = _owned(group, done)
            written += await self._write(conn, sql.delete_owned, params, applied)
        if not self._caps.returning and not check_first and written != len(chunk):
            raise _NotAllHeld
        if not history:
            return applied
        entries = [item for item in chunk if item.name in applied and _keeps_history(item)]
        if entries:
            await self._append_history(conn, group, entries, now)
        return applied

    async def _write(
        self, conn: AsyncConnection, stmt: Any, params: dict[str, Any], applied: set[str]
    ) -> int:
        """Run a guarded batch write of the rows ``params["names"]``; add the names it
        applied to ``applied`` (all of them without ``RETURNING``, where the caller
        compares the row count returned with the rows it meant to write)."""
        if self._caps.returning:
            rows = await self._rows(conn, stmt, params)
            applied.update(map(_FIRST, rows))
            return len(rows)
        result = await conn.execute(stmt, params)
        applied.update(params["names"])
        return int(result.rowcount)

    async def _append_history(
        self,
        conn: AsyncConnection,
        group: str,
        entries: Sequence[Commit],
        now: datetime.datetime,
    ) -> None:
        """Add the entries of rows just written, then trim each row's history to its
        ``keep`` (one ``DELETE`` per distinct ``keep``; a batch usually has one)."""
        sql = self._sql
        rows = [
            {
                "group": group,
                "name": item.name,
                "expires": _expiry(now, item.history.retention),  # type: ignore[union-attr]
                "outcome": item.outcome,
            }
            for item in entries
        ]
        await conn.execute(sql.history_insert, rows)
        by_keep: dict[int, list[str]] = {}
        for item in entries:
            assert item.history is not None
            by_keep.setdefault(item.history.keep, []).append(item.name)
        for keep, names in by_keep.items():
            await conn.execute(sql.history_trim, {"group": group, "names": names, "keep": keep})

    async def _sweep(self, now: datetime.datetime) -> None:
        """Delete expired history entries, if :data:`SWEEP_INTERVAL` has passed since
        the last sweep (or it found more than it could take). Best effort: a failure
        is logged, and the next sweep tries again."""
        if self._next_sweep is not None and now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL

        async def run(conn: AsyncConnection) -> int:
            return (await conn.execute(self._sql.history_sweep, {"now": now})).rowcount

        try:
            deleted = await self._run(run, atomic=False)
        except (exc.DBAPIError, BackendUnavailableError) as error:
            logger.info("Sweeping expired run history failed; trying again later: %s", error)
            return
        if deleted >= SWEEP_LIMIT:
            self._next_sweep = None  # more to do: again at the next write

    async def extend(
        self, group: str, name: str, lease: Lease, *, locked_until: datetime.datetime
    ) -> bool:
        params = {"group": group, "key": name, "lease": lease, "until": locked_until}
        return await self._rowcount(self._sql.extend, params) == 1

    async def unlock(
        self,
        group: str,
        name: str,
        lease: Lease,
        *,
        outcome: str | None = None,
        history: History | None = None,
        now: datetime.datetime | None = None,
    ) -> bool:
        params: dict[str, Any] = {"group": group, "key": name, "lease": lease}
        if outcome is None:
            return await self._rowcount(self._sql.unlock, params) == 1
        if history is None or now is None:
            params["outcome"] = outcome
            return await self._rowcount(self._sql.unlock_outcome, params) == 1
        entry = Commit(name, lease, None, outcome, history)
        sql = self._sql

        async def run(conn: AsyncConnection) -> bool:
            if self._caps.array_params:
                arrays = {"group": group, "names": [name], "leases": [lease]}
                arrays.update(_history_arrays([entry], now))
                return bool((await conn.execute(sql.unlock_history, arrays)).all())
            unlocked = await conn.execute(sql.unlock_outcome, {**params, "outcome": outcome})
            if unlocked.rowcount != 1:
                return False
            await self._append_history(conn, group, [entry], now)
            return True

        done = await self._run(
            run, atomic=not self._caps.array_params, attempts=retry.CONFLICT_ATTEMPTS
        )
        await self._sweep(now)
        return done

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
        # a name given twice is one row written twice in order: fold it into one upsert
        batch = fold_registrations(registrations, force=force)
        skipped: set[str] = set()
        for chunk in chunks(batch, CHUNK):
            skipped |= await self._run(
                functools.partial(
                    self._register_chunk, group=group, chunk=chunk, now=now, force=force
                ),
                atomic=not self._one_statement_register(chunk),
                attempts=retry.CONFLICT_ATTEMPTS,
            )
        if self._unanalysed is not None:
            self._unanalysed -= len(batch)
            if self._unanalysed <= 0:
                self._unanalysed = None
                await self._analyse_if_never_analysed()
        return [reg.name for reg in registrations if reg.name in skipped]

    async def _analyse_if_never_analysed(self) -> None:
        """``ANALYZE`` the table if it has no statistics yet (PostgreSQL; see
        ``Capabilities.analyse_fresh``). Only an optimisation: if it fails (no privilege,
        another session holds the lock), registering has succeeded all the same."""
        name = self._quoted

        async def analyse(conn: AsyncConnection) -> bool:
            never = await conn.execute(
                text(
                    "SELECT coalesce(last_analyze, last_autoanalyze) IS NULL "
                    "FROM pg_stat_all_tables WHERE relid = CAST(:name AS regclass)"
                ),
                {"name": name},
            )
            if not never.scalar():
                return False
            await conn.execute(text(f"SET LOCAL lock_timeout = {ANALYSE_LOCK_TIMEOUT_MS:d}"))
            await conn.execute(text(f"SET LOCAL statement_timeout = {ANALYSE_TIMEOUT_MS:d}"))
            await conn.execute(text(f"ANALYZE {name}"))
            return True

        try:
            if await self._run(analyse, atomic=True):
                logger.debug("Analysed %s, which had no statistics yet", name)
        except (exc.DBAPIError, BackendUnavailableError) as error:
            logger.info(
                "Did not analyse %s (its first statistics; autovacuum will): %s", name, error
            )

    def _one_statement_register(self, chunk: Sequence[Registration]) -> bool:
        """Whether registering ``chunk`` is a single statement, atomic without a
        transaction around it (saving its ``BEGIN`` and ``COMMIT`` round trips):
        always with array parameters, and for one row where the upsert can return."""
        caps = self._caps
        return caps.array_params or (len(chunk) == 1 and caps.returning and caps.upsert_where)

    async def _register_chunk(
        self,
        conn: AsyncConnection,
        group: str,
        chunk: Sequence[Registration],
        *,
        now: datetime.datetime,
        force: bool,
    ) -> set[str]:
        sql = self._sql
        chunk = sorted(chunk, key=lambda reg: reg.name)  # one lock order for every writer
        shared: dict[str, Any] = {"group": group, "now": now, "force": force}
        if self._caps.array_params:
            arrays = {
                **shared,
                "names": [reg.name for reg in chunk],
                "specs": [reg.spec for reg in chunk],
                "at": [to_epoch_us(reg.scheduled_at) for reg in chunk],
                "durations": [duration_us(reg.lease_duration) for reg in chunk],
            }
            written = set((await conn.execute(sql.upsert(), arrays)).scalars())
            return {reg.name for reg in chunk if reg.name not in written}
        if self._one_statement_register(chunk):
            (reg,) = chunk
            row = {**shared, "name": reg.name, "spec": reg.spec, "at": reg.scheduled_at}
            row.update(duration=reg.lease_duration, locked_by=None)
            written = set((await conn.execute(sql.upsert_one(), row)).scalars())
            return {reg.name} - written
        names = {"group": group, "names": [reg.name for reg in chunk], "now": now}
        held: set[str] | None = None
        if not self._caps.upsert_where:
            # MySQL: lock the existing rows first, so no claim slips in before the upsert;
            # live leases are left alone, expired ones cleared (all of them when forced)
            existing = (await conn.execute(sql.lock_existing, names)).all()
            held = {r[0] for r in existing if r[1] is not None and r[2] > now}
            if not force and any(r[1] is not None and r[2] <= now for r in existing):
                await conn.execute(sql.clear_expired, names)
        rows = [
            {
                **shared,
                "name": reg.name,
                "spec": reg.spec,
                "at": reg.scheduled_at,
                "duration": reg.lease_duration,
                "locked_by": None,
            }
            for reg in chunk
        ]
        await conn.execute(sql.upsert(force=force), rows)
        if force:
            return set()
        if held is not None:
            return held
        # SQLite: the transaction holds the write lock; rows still locked were left alone
        return set((await conn.execute(sql.still_locked, names)).scalars())

    async def unregister(self, group: str, name: str) -> bool:
        return await self._rowcount(self._sql.unregister, {"group": group, "key": name}) == 1

    # -- reads --------------------------------------------------------------------

    async def get(self, group: str, name: str) -> Record | None:
        async def run(conn: AsyncConnection) -> Record | None:
            row = (await conn.execute(self._sql.get, {"group": group, "key": name})).first()
            return None if row is None else _record(row)

        return await self._run(run, atomic=False)

    async def history(self, group: str, name: str, *, limit: int) -> list[str]:
        params = {"group": group, "key": name, "limit": limit}

        async def run(conn: AsyncConnection) -> list[str]:
            return list((await conn.execute(self._sql.history, params)).scalars())

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


class _NotAllHeld(Exception):
    """An optimistic commit found a row no longer held; its transaction is rolled back."""


def _record(row: Any) -> Record:
    """``(name, spec, scheduled_at, due_at, locked_by, outcome)`` -> Record; ``due_at`` is
    the lease expiry while the row is locked."""
    locked_by = row[4]
    if locked_by is None:
        return Record(row[0], row[1], row[2], None, None, row[5])
    return Record(row[0], row[1], row[2], row[3], Lease(locked_by), row[5])


def _keeps_history(item: Commit) -> bool:
    return item.outcome is not None and item.history is not None


def _expiry(now: datetime.datetime, retention: datetime.timedelta) -> datetime.datetime:
    """When an entry written at ``now`` may be swept (the end of time if the retention
    is too long to add)."""
    try:
        return now + retention
    except OverflowError:
        return datetime.datetime.max.replace(tzinfo=datetime.UTC)


def _history_arrays(commits: Sequence[Commit], now: datetime.datetime) -> dict[str, Any]:
    """The ``outcomes``, ``keeps`` and ``expires`` arrays of PostgreSQL's outcome writes
    (``keeps`` NULL: no history entry)."""
    keeps: list[int | None] = []
    expires: list[int | None] = []
    for item in commits:
        history = item.history if item.outcome is not None else None
        keeps.append(None if history is None else history.keep)
        expires.append(None if history is None else to_epoch_us(_expiry(now, history.retention)))
    return {"outcomes": [item.outcome for item in commits], "keeps": keeps, "expires": expires}


_FIRST = operator.itemgetter(0)
_SCHEDULED = operator.itemgetter(2)
"""The scheduled time of a claimed row ``(name, spec, scheduled_at, …)``."""
_NAME = operator.attrgetter("name")
_LEASE = operator.attrgetter("lease")
_NEXT_AT = operator.attrgetter("next_at")
_HISTORY = operator.attrgetter("history")
_NONE_ONLY = {None}


def _claimed_records(rows: Sequence[Sequence[Any]], lease: Lease) -> list[Record]:
    """The records of claimed rows ``(name, spec, scheduled_at, due_at, …)``, times in
    epoch microseconds. The rows come sorted by scheduled time and mostly share their
    lease expiry, so a time equal to the previous row's reuses its conversion; each
    record is built without a call of its own."""
    records: list[Record] = []
    append = records.append
    scheduled_us = due_us = None
    scheduled = due = EPOCH
    for row in rows:
        if row[2] != scheduled_us:
            scheduled_us = row[2]
            scheduled = from_epoch_us(scheduled_us)
        if row[3] != due_us:
            due_us = row[3]
            due = scheduled if due_us == scheduled_us else from_epoch_us(due_us)
        append(new_tuple(Record, (row[0], row[1], scheduled, due, lease, None)))
    return records


def _owned(group: str, commits: Sequence[Commit]) -> dict[str, Any]:
    names = list(map(_NAME, commits))
    pairs = list(zip(names, map(_LEASE, commits), strict=True))
    return {"group": group, "names": names, "pairs": pairs}


async def _scalar(conn: AsyncConnection, statement: Any, params: dict[str, Any]) -> Any:
    return (await conn.execute(statement, params)).scalar()
