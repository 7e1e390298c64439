"""The statements of :class:`~pyncette.sql.repository.SqlRepository`, built once per table.

Built once and reused, so SQLAlchemy's compiled cache and the drivers' prepared
statements apply. With array parameters (PostgreSQL) every statement has a fixed shape;
elsewhere the only statement whose shape depends on the batch (the commit's ``CASE``
over ``n`` rows) is built once per size and kept, and registrations are one-row upserts
sent with ``executemany``.

Outcomes and history have statements of their own, used only by writes that carry them,
so a commit or unlock without an outcome runs exactly the statements it ran before they
existed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CompoundSelect,
    Delete,
    Executable,
    Insert,
    Integer,
    Select,
    String,
    Table,
    Text,
    TypeDecorator,
    Update,
    any_,
    bindparam,
    case,
    column,
    delete,
    func,
    insert,
    null,
    select,
    true,
    tuple_,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.dml import ReturningDelete, ReturningUpdate
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.sql.selectable import CTE

from pyncette.sql.engine import Capabilities
from pyncette.sql.schema import Micros, UtcMicros, key_type, text_type

SWEEP_LIMIT = 1000
"""Most expired history entries one retention sweep deletes."""


class Statements:
    """Bind parameters: ``group``, ``key`` (a row name), ``lease``, ``now``, ``limit``,
    ``until``, ``after``, ``names`` and ``pairs`` (lists of names and of ``(name, lease)``
    tuples: expanded, or one JSON array each where ``json_params``); ``CASE`` updates add
    ``k<i>`` and one value per column and row. PostgreSQL's batch writes take arrays
    instead (``names``, ``leases``, ``at``, ``specs``, ``durations``, ``outcomes``,
    ``keeps``, ``expires``), and upserts ``force``. Outcome writes add ``outcome``;
    history writes ``name``, ``expires``, ``keep``."""

    def __init__(self, table: Table, history: Table, caps: Capabilities) -> None:
        self.table = table
        self.history_table = history
        self.caps = caps
        c = table.c
        group = bindparam("group", type_=key_type())
        key = bindparam("key", type_=key_type())
        lease = bindparam("lease", type_=key_type())
        now = bindparam("now", type_=UtcMicros())
        limit = bindparam("limit", type_=Integer())
        self._in_group = c.task_group == group
        if caps.json_params:
            listed = func.json_each(bindparam("names", type_=JsonList())).table_valued("value")
            self._names = c.name.in_(select(listed.c.value))
            paired = func.json_each(bindparam("pairs", type_=JsonList())).table_valued("value")
            first, second = (func.json_extract(paired.c.value, f"$[{i}]") for i in (0, 1))
            paired_held = tuple_(c.name, c.locked_by).in_(select(first, second))
        else:
            self._names = c.name.in_(bindparam("names", type_=key_type(), expanding=True))
            paired_held = tuple_(c.name, c.locked_by).in_(bindparam("pairs", expanding=True))
        row = (c.name, c.spec, c.scheduled_at, c.due_at, c.locked_by, c.outcome)
        """What reads return; ``due_at`` is the lease expiry while ``locked_by`` is set."""

        # claim, PostgreSQL: lock the due rows, skipping other claimers', take them, and
        # in the same statement (only when fewer than ``limit`` were due) the group's
        # next claimable time: the sooner of the first row not yet due (an index-only
        # ``ORDER BY due_at LIMIT 1`` in the statement's snapshot) and the earliest new
        # lease expiry. Rows skipped as locked are another claimer's, and not counted.
        # The update finds the picked rows by their ``ctid``s, as one array: that can only
        # be a TID scan, where a join on the key is planned from row estimates and was a
        # hash join over the whole table once it was analysed (10 ms per claim of 100 at
        # 20,000 rows, against 1-2 ms). The rows are locked by ``picked``, so nothing
        # else moves them in between (a row another claimer changed since this
        # statement's snapshot is left out, to be claimed at the next poll).
        picked = (
            select(column("ctid"), c.name, c.due_at)
            .where(self._in_group, c.due_at <= now)
            .order_by(c.due_at)
            .limit(limit)
            .with_for_update(skip_locked=caps.skip_locked)
            .cte("picked")
        )
        # times come back as integer microseconds (``raw``): the repository converts a
        # batch's repeated values once each, instead of per row and column
        taken = (
            update(table)
            .where(column("ctid") == any_(func.array(select(picked.c.ctid).scalar_subquery())))
            .values(locked_by=lease, due_at=now + c.lease_duration_us)
            .returning(c.name, c.spec, raw(c.scheduled_at), raw(c.due_at))
            .cte("taken")
        )
        claimed = (
            select(*taken.c, raw(picked.c.due_at, "was"))
            .join_from(taken, picked, picked.c.name == taken.c.name)
            .cte("claimed")
        )
        beyond = (
            select(c.due_at)
            .where(self._in_group, c.due_at > now)
            .order_by(c.due_at)
            .limit(1)
            .scalar_subquery()
        )
        hint = func.least(beyond, select(func.min(claimed.c.due_at)).scalar_subquery())
        short = select(func.count()).select_from(picked).scalar_subquery() < limit
        self.claim_one: CompoundSelect[Any] = union_all(
            select(*claimed.c),
            select(null(), null(), null(), type_coerce(hint, BigInteger()), null()).where(short),
        )
        """Rows ``(name, spec, scheduled_at, locked_until, was_due_at)`` (times as integer
        microseconds), plus one row with ``name`` NULL whose fourth column is
        ``next_due_at`` when the claim was short."""
        # claim, elsewhere: in one transaction, scan by claimable time and take the due
        # rows by name. With row locks (MySQL) the scan locks only due rows (a locked row
        # not taken would make concurrent claimers skip it) and ``next_due`` follows;
        # without (SQLite, whole-file lock) it reads one row more, whose time is the hint.
        scan = select(c.name, c.spec, raw(c.scheduled_at), raw(c.due_at), raw(c.lease_duration_us))
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
        # claim, SQLite with RETURNING: one statement, run without BEGIN (a statement is
        # atomic under SQLite's write lock), takes the first ``limit`` due rows and returns
        # them as updated, ``due_at`` being the new lease expiry
        first_due = (
            select(c.name).where(self._in_group, c.due_at <= now).order_by(c.due_at).limit(limit)
        )
        self.claim_returning: ReturningUpdate[Any] = (
            update(table)
            .where(self._in_group, c.name.in_(first_due.scalar_subquery()))
            .values(locked_by=lease, due_at=now + c.lease_duration_us)
            .returning(c.name, c.spec, raw(c.scheduled_at), raw(c.due_at))
        )
        self.next_due: Select[Any] = select(func.min(c.due_at)).where(self._in_group)
        """The group's next claimable time (SQLite's unlocked look before a claim)."""

        # commit: rows named in :pairs and still held by the paired lease
        self._owned = self._in_group & self._names & paired_held
        owned = select(c.name).where(self._owned).order_by(c.name)
        self.select_owned: Select[Any] = owned.with_for_update() if caps.row_locks else owned
        delete_owned = delete(table).where(self._owned)
        self.delete_owned: Delete | ReturningDelete[Any] = (
            delete_owned.returning(c.name) if caps.returning else delete_owned
        )
        if caps.array_params:
            # the same with array parameters ``names``, ``leases`` and ``at`` (integer
            # microseconds) joined to the table by ``unnest``
            moved = _unnest(
                "moved", ("names", String()), ("leases", String()), ("at", BigInteger())
            )
            done = _unnest("done", ("names", String()), ("leases", String()))
            self.commit_moved: Executable = (
                update(table)
                .where(self._in_group, c.name == moved.c.names)
                .where(c.locked_by == moved.c.leases)
                .values(scheduled_at=moved.c.at, due_at=moved.c.at, locked_by=null())
                .returning(c.name)
            )
            self.commit_done: Executable = (
                delete(table)
                .where(self._in_group, c.name == done.c.names)
                .where(c.locked_by == done.c.leases)
                .returning(c.name)
            )

        by_key = (self._in_group, c.name == key)
        held = (*by_key, c.locked_by == lease)
        self.unlock_outcome: Update = (
            update(table)
            .where(*held)
            .values(
                locked_by=None,
                due_at=c.scheduled_at,
                outcome=bindparam("outcome", type_=text_type()),
            )
        )
        """:attr:`unlock`, also storing ``outcome``."""
        self._history_statements(group, key, now)
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

        # register: one upsert per chunk (see ``upsert``); off PostgreSQL, the rows still
        # locked afterwards (in the same transaction) are the ones it left alone
        self.still_locked: Select[Any] = select(c.name).where(
            self._in_group, self._names, c.locked_by.is_not(None)
        )
        self._case_updates: dict[tuple[str, int], Any] = {}
        self._upserts: dict[str, Executable] = {}
        self.clear_expired: Update = (
            update(table)
            .where(self._in_group, self._names, c.locked_by.is_not(None), c.due_at <= now)
            .values(locked_by=None, due_at=c.scheduled_at)
        )
        """Unlock the named rows whose lease expired (MySQL, before its upsert)."""
        self.lock_existing: Select[Any] = (
            select(c.name, c.locked_by, c.due_at)
            .where(self._in_group, self._names)
            .order_by(c.name)
            .with_for_update()
        )
        """The named rows, locked (MySQL, before its upsert)."""
        if caps.array_params:
            rows = _unnest(
                "reg",
                ("names", String()),
                ("specs", String()),
                ("at", BigInteger()),
                ("durations", BigInteger()),
            )
            source = select(
                group, rows.c.names, rows.c.specs, rows.c.at, rows.c.at, rows.c.durations, null()
            )
            self._upserts["upsert"] = self._guarded_upsert(
                postgresql.insert(table).from_select(
                    [
                        c.task_group,
                        c.name,
                        c.spec,
                        c.scheduled_at,
                        c.due_at,
                        c.lease_duration_us,
                        c.locked_by,
                    ],
                    source,
                )
            )

    def commit_update(self, size: int, *, outcome: bool = False) -> Update | ReturningUpdate[Any]:
        """Move ``size`` held rows to their next run (``v<i>``) and unlock them; with
        ``outcome``, also store ``o<i>`` as the row's outcome where it is not ``None``."""
        cache = ("commit+outcome" if outcome else "commit", size)
        stmt = self._case_updates.get(cache)
        if stmt is None:
            next_at = self._per_row(size, "v", UtcMicros())
            values: dict[str, Any] = {"scheduled_at": next_at, "due_at": next_at}
            values["locked_by"] = None
            if outcome:
                c = self.table.c
                values["outcome"] = func.coalesce(self._per_row(size, "o", text_type()), c.outcome)
            stmt = update(self.table).where(self._owned).values(values)
            if self.caps.returning:
                stmt = stmt.returning(self.table.c.name)
            self._case_updates[cache] = stmt
        return stmt

    # -- outcomes and history -----------------------------------------------------

    def _history_statements(
        self, group: BindParameter[str], key: BindParameter[str], now: BindParameter[Any]
    ) -> None:
        h = self.history_table.c
        self.history: Select[Any] = (
            select(h.outcome)
            .where(h.task_group == group, h.name == key)
            .order_by(h.id.desc())
            .limit(bindparam("limit", type_=Integer()))
        )
        """Newest first."""
        self.history_insert: Insert = insert(self.history_table).values(
            task_group=group,
            name=bindparam("name", type_=key_type()),
            expires_at=bindparam("expires", type_=UtcMicros()),
            outcome=bindparam("outcome", type_=text_type()),
        )
        """One entry per parameter set (``executemany``)."""
        # beyond ``keep``: the entries of the named rows ranked newest first
        rank = func.row_number().over(partition_by=h.name, order_by=h.id.desc())
        ranked = (
            select(h.id, rank.label("rank"))
            .where(
                h.task_group == group,
                h.name.in_(bindparam("names", type_=key_type(), expanding=True)),
            )
            .subquery("ranked")
        )
        beyond = ranked.c.rank > bindparam("keep", type_=Integer())
        self.history_trim: Executable = self._delete_entries(ranked, beyond)
        """Delete the entries of ``names`` beyond the newest ``keep`` of each."""
        expired = h.expires_at <= now
        if self.caps.delete_subquery:
            oldest = select(h.id).where(expired).order_by(h.expires_at).limit(SWEEP_LIMIT)
            if self.caps.row_locks:
                oldest = oldest.with_for_update(skip_locked=self.caps.skip_locked)
            self.history_sweep: Executable = self._delete_ids(oldest)
        else:
            self.history_sweep = (
                delete(self.history_table)
                .where(expired)
                .with_dialect_options(mysql_limit=SWEEP_LIMIT)
            )
        """Delete up to :data:`SWEEP_LIMIT` expired entries of any row (the retention
        sweep, which also reaches the history of deleted rows); on PostgreSQL passing
        over entries another transaction holds."""
        if self.caps.array_params:
            self._array_history_statements(group)

    def _delete_ids(self, ids: Select[Any]) -> Delete:
        """Delete the history entries whose ``id`` ``ids`` selects: on PostgreSQL as
        ``id = ANY(ARRAY(…))``, which looks each one up by key whatever the planner
        thinks of the subquery."""
        h = self.history_table.c
        if self.caps.array_params:
            return delete(self.history_table).where(h.id == any_(func.array(ids.scalar_subquery())))
        return delete(self.history_table).where(h.id.in_(ids))

    def _delete_entries(self, candidates: Any, doomed: ColumnElement[bool]) -> Executable:
        """Delete the entries of ``candidates`` (a subquery with an ``id`` column) that
        ``doomed`` selects."""
        if self.caps.delete_subquery:
            return self._delete_ids(select(candidates.c.id).where(doomed))
        # MySQL: a multi-table DELETE, driven by the (materialised) candidates
        h = self.history_table.c
        return delete(self.history_table).where(h.id == candidates.c.id, doomed)

    def _array_history_statements(self, group: BindParameter[str]) -> None:
        """PostgreSQL: each history-carrying write is one statement, the guarded write
        ``RETURNING`` the rows it changed with their ``outcomes``, ``keeps`` (the entries
        to keep; ``NULL`` writes no history) and ``expires`` (microseconds), plus
        data-modifying ``WITH`` parts that append those entries and trim the rows'
        history to ``keep``. The parts see the history as it was before the statement,
        so the entry being added is not counted there: ``keep - 1`` older ones stay."""
        c = self.table.c
        extra = (("outcomes", Text()), ("keeps", Integer()), ("expires", BigInteger()))

        moved = _unnest(
            "moved", ("names", String()), ("leases", String()), ("at", BigInteger()), *extra
        )
        move = (
            update(self.table)
            .where(self._in_group, c.name == moved.c.names, c.locked_by == moved.c.leases)
            .values(
                scheduled_at=moved.c.at,
                due_at=moved.c.at,
                locked_by=null(),
                outcome=func.coalesce(moved.c.outcomes, c.outcome),
            )
        )
        self.commit_moved_outcome: Executable = move.returning(c.name)
        """:attr:`commit_moved`, also storing ``outcomes`` (``NULL`` keeps the stored one)."""
        self.commit_moved_history: Executable = self._with_history(
            group, move.returning(c.name, moved.c.outcomes, moved.c.keeps, moved.c.expires)
        )

        done = _unnest("done", ("names", String()), ("leases", String()), *extra)
        self.commit_done_history: Executable = self._with_history(
            group,
            delete(self.table)
            .where(self._in_group, c.name == done.c.names, c.locked_by == done.c.leases)
            .returning(c.name, done.c.outcomes, done.c.keeps, done.c.expires),
        )

        unlocked = _unnest("unlocked", ("names", String()), ("leases", String()), *extra)
        self.unlock_history: Executable = self._with_history(
            group,
            update(self.table)
            .where(self._in_group, c.name == unlocked.c.names, c.locked_by == unlocked.c.leases)
            .values(
                locked_by=null(),
                due_at=c.scheduled_at,
                outcome=func.coalesce(unlocked.c.outcomes, c.outcome),
            )
            .returning(c.name, unlocked.c.outcomes, unlocked.c.keeps, unlocked.c.expires),
        )

    def _with_history(self, group: BindParameter[str], write: Any) -> Executable:
        """``WITH written AS (<write>), added AS (INSERT …), trimmed AS (DELETE …)
        SELECT name FROM written``."""
        h = self.history_table.c
        written: CTE = write.cte("written")
        w = written.c
        keeping = (w.keeps.is_not(None), w.outcomes.is_not(None))
        added = (
            insert(self.history_table)
            .from_select(
                ["task_group", "name", "expires_at", "outcome"],
                select(group, w.name, w.expires, w.outcomes).where(*keeping),
            )
            .cte("added")
        )
        # per written row, an index scan of its own entries, newest first, past the
        # ``keep - 1`` that stay (a LATERAL join: the cost follows the batch and
        # ``keep``, never the size of the history table)
        older = (
            select(h.id)
            .where(h.task_group == group, h.name == w.name)
            .order_by(h.id.desc())
            .offset(w.keeps - 1)
            .lateral("older")
        )
        doomed = select(older.c.id).select_from(written).join(older, true()).where(*keeping)
        trimmed = self._delete_ids(doomed).cte("trimmed")
        result: Executable = select(w.name).add_cte(added, trimmed)
        return result

    def upsert_one(self) -> Executable:
        """The one-row :meth:`upsert` with ``RETURNING`` the name when it wrote the row
        (SQLite 3.35+): a single registration is then one statement, atomic on its own."""
        stmt = self._upserts.get("one")
        if stmt is None:
            upsert = self.upsert()
            assert isinstance(upsert, Insert)
            stmt = self._upserts["one"] = upsert.returning(self.table.c.name)
        return stmt

    def upsert(self, *, force: bool = False) -> Executable:
        """Create or update rows: with array parameters ``names``, ``specs``, ``at`` and
        ``durations`` (PostgreSQL) one statement for the whole batch; elsewhere one row
        per parameter set (``name``, ``spec``, ``at``, ``duration``, ``locked_by`` =
        ``None``), run as one ``executemany``.

        An existing row is changed only when it is unlocked, its lease expired, or
        ``force``; then it gets the new spec and lease duration, no lease, and the sooner
        of the two runs, or when ``force`` the new run as given. With ``ON CONFLICT …
        WHERE`` that is the conflict's ``WHERE`` and a ``CASE`` on ``force`` (parameters
        ``group``, ``now``, ``force``; on PostgreSQL ``RETURNING`` names the rows
        written). ``ON DUPLICATE KEY UPDATE`` (MySQL) must stay free of parameters, or the
        driver cannot send an ``executemany`` as one multi-row ``INSERT``: the caller
        locks the existing rows (:attr:`lock_existing`) and clears expired leases
        (:attr:`clear_expired`) first, every assignment is guarded by
        ``locked_by IS NULL``, and the forced variant, a statement of its own, first
        clears the lease (``VALUES(locked_by)`` is NULL; MySQL assigns left to right)
        and takes ``VALUES(scheduled_at)`` as it is.
        """
        key = "forced" if force and not self.caps.upsert_where else "upsert"
        stmt = self._upserts.get(key)
        if stmt is None:
            at = bindparam("at", type_=UtcMicros())
            row = {
                "task_group": bindparam("group", type_=key_type()),
                "name": bindparam("name", type_=key_type()),
                "spec": bindparam("spec", type_=text_type()),
                "scheduled_at": at,
                "due_at": at,
                "lease_duration_us": bindparam("duration", type_=Micros()),
                "locked_by": bindparam("locked_by", type_=key_type()),
            }
            if self.caps.upsert_where:
                stmt = self._guarded_upsert(sqlite.insert(self.table).values(row))
            else:
                stmt = self._mysql_upsert(mysql.insert(self.table).values(row), force=force)
            self._upserts[key] = stmt
        return stmt

    def _guarded_upsert(self, stmt: Any) -> Executable:
        c = self.table.c
        new = stmt.excluded
        now = bindparam("now", type_=UtcMicros())
        force = bindparam("force", type_=Boolean())
        run = case(
            (force, new.scheduled_at),
            (c.scheduled_at <= new.scheduled_at, c.scheduled_at),
            else_=new.scheduled_at,
        )
        upsert = stmt.on_conflict_do_update(
            index_elements=[c.task_group, c.name],
            set_={
                "spec": new.spec,
                "lease_duration_us": new.lease_duration_us,
                "scheduled_at": run,
                "due_at": run,
                "locked_by": null(),
            },
            where=c.locked_by.is_(None) | (c.due_at <= now) | force,
        )
        result: Executable = upsert.returning(c.name) if self.caps.array_params else upsert
        return result

    def _mysql_upsert(self, stmt: Any, *, force: bool) -> Executable:
        c = self.table.c
        new = stmt.inserted
        ours = c.locked_by.is_(None)

        def keep(value: Any, old: Any) -> Any:
            return func.if_(ours, value, old)

        run = new.scheduled_at if force else func.least(c.scheduled_at, new.scheduled_at)
        assignments = [
            ("spec", keep(new.spec, c.spec)),
            ("lease_duration_us", keep(new.lease_duration_us, c.lease_duration_us)),
            ("scheduled_at", keep(run, c.scheduled_at)),
            ("due_at", keep(c.scheduled_at, c.due_at)),  # the scheduled_at just assigned
        ]
        if force:
            assignments.insert(0, ("locked_by", new.locked_by))
        result: Executable = stmt.on_duplicate_key_update(assignments)
        return result

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


class JsonList(TypeDecorator[Sequence[Any]]):
    """A list (of strings, or of tuples of strings) bound as its JSON text."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Sequence[Any] | None, dialect: Dialect) -> Any:
        return None if value is None else json.dumps(value)


def raw(column: Any, label: str | None = None) -> Any:
    """``column`` (a time or duration) read as the integer microseconds it is stored as."""
    return type_coerce(column, BigInteger()).label(label or column.name)


def _unnest(name: str, *arrays: tuple[str, Any]) -> Any:
    """``unnest(:a, :b, …) AS name(a, b, …)``: array parameters joined as rows."""
    params = [bindparam(key, type_=postgresql.ARRAY(type_)) for key, type_ in arrays]
    columns = [column(key, type_) for key, type_ in arrays]
    return func.unnest(*params).table_valued(*columns).render_derived(name=name)
