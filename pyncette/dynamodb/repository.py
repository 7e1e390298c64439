"""The lease interface on one DynamoDB table (item layout in :mod:`.items`)."""

from __future__ import annotations

import datetime
import functools
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pyncette.dynamodb.client import Caller, ConditionFailed, gather
from pyncette.dynamodb.history import Entry, HistoryStore, expiry, history_partition, next_run
from pyncette.dynamodb.items import (
    DUE_AT,
    INDEX_NAME,
    LOCKED_BY,
    LOCKED_UNTIL,
    OUTCOME,
    PARTITION_ID,
    RUN,
    SCHEDULED_AT,
    TASK_ID,
    VERSION,
    Item,
    Row,
    decode_list_token,
    due_bound,
    due_key,
    encode_list_token,
    index_key,
    key,
    partition,
    timestamp,
)
from pyncette.dynamodb.partiql import Statements
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
    fold_registrations,
)
from pyncette.timeutil import to_epoch_us

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)
MAX_ROW_BYTES = 190_000
"""Name and spec of one row at most. DynamoDB's 400 KB limit counts an item in the table
and again in each local secondary index projecting it: the due-time index projects every
attribute, so a row must fit in half, with room left for its other attributes (DynamoDB
Local 1.25.1 takes at most 204,761 bytes of spec in this table, 409,561 without the
index)."""

MAX_WRITE_ATTEMPTS = 10
"""Read-modify-write rounds (register, unlock) before giving up under contention."""

_ONE = {"N": "1"}


class DynamoDBRepository(Repository):
    """Each group is one partition of the table; claims read the local secondary index
    on the rows' due time (:data:`~pyncette.dynamodb.items.DUE_AT`) in order and lock
    each candidate with a PutItem conditioned on the version it read, so of two racing
    claims exactly one wins each row. Commits, heartbeats and unlocks are conditioned on
    ``locked_by`` holding the caller's lease, and store the run's outcome on the row in
    the same request; run history entries follow in ``BatchWriteItem`` requests (see
    :mod:`.history`). Writes of one call are sent concurrently, in worker threads. Items
    in the partitions that pyncette did not write are ignored, never changed.

    With ``statements`` (a server that runs PartiQL batches correctly, see
    :mod:`.partiql`), the claims' locks and the commits that write no history are sent
    as conditional statements 25 to a request instead of one item per request; the
    conditions, and so the outcome, are the same."""

    def __init__(
        self,
        client: DynamoDBClient,
        caller: Caller,
        table: str,
        prefix: str,
        statements: Statements | None = None,
    ) -> None:
        self.client = client
        self.caller = caller
        self.table = table
        self.prefix = prefix
        self.statements = statements
        self.wall_clock: Callable[[], float] = time.time
        """Epoch seconds against which history entries count as expired: DynamoDB's time
        to live deletes them by the real time, whatever clock the app runs on."""
        self._history = HistoryStore(client, caller, table)
        self._warned_foreign = False

    def _row(self, item: Item | None) -> Row | None:
        """``item`` as a row; ``None`` for no item, or for one pyncette did not write
        (noted once: Pyncette 1.x's, under the same partition prefix?), which every
        caller then leaves alone."""
        if item is None:
            return None
        if Row.is_row(item):
            return Row.from_item(item)
        if not self._warned_foreign:
            self._warned_foreign = True
            logger.warning(
                "DynamoDB table %r: partition %r holds items pyncette did not write, such "
                "as %r (Pyncette 1.x's, under the same partition prefix?); they are "
                "ignored. Give this app another dynamodb_partition_prefix.",
                self.table,
                item[PARTITION_ID]["S"],
                item[TASK_ID]["S"],
            )
        return None

    def _partition(self, group: str) -> str:
        return partition(self.prefix, group)

    # -- claims -------------------------------------------------------------------------

    async def claim(
        self, group: str, *, now: datetime.datetime, limit: int, lease: Lease
    ) -> ClaimResult:
        partition_id = self._partition(group)
        bound = due_bound(now)
        claimed: list[Record] = []
        start: Item | None = None
        while True:
            want = limit - len(claimed)
            items, more = await self._index_page(partition_id, want + 1, start)
            candidates: list[Item] = []
            for item in items[:want]:
                if item[DUE_AT]["S"] >= bound:
                    break
                candidates.append(item)
            beyond = items[len(candidates) :]
            if candidates:
                claimed.extend(await self._lock_all(partition_id, candidates, now, lease))
            if len(claimed) < limit and candidates:
                # Some candidates went to other instances: look further down the index
                # unless it is known to hold nothing more that is due.
                due_beyond = beyond[0][DUE_AT]["S"] < bound if beyond else more
                if due_beyond:
                    start = index_key(partition_id, candidates[-1])
                    continue
            after = self._row(beyond[0]) if beyond else None
            next_due = after.due_at if after is not None else None
            return ClaimResult(claimed, next_due)

    async def _index_page(
        self, partition_id: str, limit: int, start: Item | None
    ) -> tuple[list[Item], bool]:
        """Up to ``limit`` items of the partition in index order, after ``start``; and
        whether DynamoDB stopped early (more items may follow)."""
        request: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": INDEX_NAME,
            "KeyConditionExpression": "#pk = :pk",
            "ExpressionAttributeNames": {"#pk": PARTITION_ID},
            "ExpressionAttributeValues": {":pk": {"S": partition_id}},
            "Limit": limit,
            "ConsistentRead": True,
        }
        if start is not None:
            request["ExclusiveStartKey"] = start
        response = await self.caller(lambda: self.client.query(**request))
        items: list[Item] = response.get("Items", [])
        return items, "LastEvaluatedKey" in response

    async def _lock_all(
        self, partition_id: str, items: Sequence[Item], now: datetime.datetime, lease: Lease
    ) -> list[Record]:
        """Lock those of ``items`` that are due and unchanged since the query."""
        if self.statements is None:
            locked = await gather([self._lock(partition_id, item, now, lease) for item in items])
            return [record for record in locked if record is not None]
        rows = [row for row in map(self._row, items) if row is not None and row.due_at <= now]
        if not rows:
            return []
        statements = self.statements
        until = [now + row.lease_duration for row in rows]
        applied = await statements.apply(
            [
                statements.lock(
                    partition_id,
                    row.name,
                    row.version,
                    lease,
                    timestamp(locked_until),
                    due_key(locked_until, row.name),
                )
                for row, locked_until in zip(rows, until, strict=True)
            ],
            resend=False,
        )
        return [
            Record(row.name, row.spec, row.scheduled_at, locked_until, lease, row.outcome)
            for row, locked_until, ok in zip(rows, until, applied, strict=True)
            if ok
        ]

    async def _lock(
        self, partition_id: str, item: Item, now: datetime.datetime, lease: Lease
    ) -> Record | None:
        """Lock one candidate: write it back with the new lease, conditioned on the
        version the query returned. The query projects every attribute, so a whole-item
        put is exact (an UpdateItem costs the same capacity, but far more on moto)."""
        row = self._row(item)
        if row is None or row.due_at > now:
            return None
        locked_until = now + row.lease_duration
        locked = {
            **item,
            LOCKED_BY: {"S": lease},
            LOCKED_UNTIL: {"S": timestamp(locked_until)},
            DUE_AT: {"S": due_key(locked_until, row.name)},
            VERSION: {"N": str(row.version + 1)},
        }
        try:
            await self.caller(
                lambda: self.client.put_item(
                    TableName=self.table,
                    Item=locked,
                    ConditionExpression="#v = :v",
                    ExpressionAttributeNames={"#v": VERSION},
                    ExpressionAttributeValues={":v": {"N": str(row.version)}},
                )
            )
        except ConditionFailed:
            return None  # changed since the query: claimed, committed or re-registered
        return Record(row.name, row.spec, row.scheduled_at, locked_until, lease, row.outcome)

    # -- lease holders ------------------------------------------------------------------

    async def commit(
        self, group: str, commits: Sequence[Commit], *, now: datetime.datetime
    ) -> list[str]:
        if not commits:
            return []
        # A commit that counts a run for the history needs the row's run number back,
        # which only UpdateItem returns; the others go in PartiQL batches if the server
        # runs them. Both kinds are sent together, and each runs to its end.
        batched: list[int] = []
        single: list[int] = []
        for i, c in enumerate(commits):
            counts = c.history is not None and c.outcome is not None
            (single if counts or self.statements is None else batched).append(i)
        lost: set[int] = set()

        async def send_batched() -> None:
            applied = await self._commit_batched(group, [commits[i] for i in batched])
            lost.update(i for i, ok in zip(batched, applied, strict=True) if not ok)

        async def send_single() -> None:
            results = await gather([self._commit(group, commits[i], now) for i in single])
            entries = [entry for _, entry in results if entry is not None]
            if entries:
                await self._history.append(entries)
            lost.update(i for i, (ok, _) in zip(single, results, strict=True) if not ok)

        await gather(
            [send() for send, part in ((send_batched, batched), (send_single, single)) if part]
        )
        return [commit.name for i, commit in enumerate(commits) if i in lost]

    async def _commit_batched(self, group: str, commits: Sequence[Commit]) -> list[bool]:
        """Apply commits that write no history as PartiQL batches; whether each applied."""
        assert self.statements is not None
        statements = self.statements
        partition_id = self._partition(group)
        return await statements.apply(
            [
                statements.delete(partition_id, c.name, c.lease)
                if c.next_at is None
                else statements.reschedule(
                    partition_id,
                    c.name,
                    c.lease,
                    timestamp(c.next_at),
                    due_key(c.next_at, c.name),
                    c.outcome,
                )
                for c in commits
            ]
        )

    async def _commit(
        self, group: str, commit: Commit, now: datetime.datetime
    ) -> tuple[bool, Item | None]:
        """Apply one commit; whether it applied, and the history entry to write for it."""
        outcome = commit.outcome
        history = commit.history if outcome is not None else None
        update: str | None = None  # delete the row
        values: Item = {}
        if commit.next_at is not None:
            sets, stored = _stored_outcome(outcome, history, now)
            update = f"SET #sa = :sa, #da = :da{sets} REMOVE #lb, #lu ADD #v :one"
            values = {
                ":sa": {"S": timestamp(commit.next_at)},
                ":da": {"S": due_key(commit.next_at, commit.name)},
                **stored,
            }
        written = await self._write_held(
            self._partition(group),
            commit.name,
            commit.lease,
            update,
            values,
            returns=history is not None,
        )
        if written is None:
            return False, None
        if history is None or outcome is None:
            return True, None
        if update is None:  # ``written`` is the deleted item
            previous = written.get(RUN)
            run = next_run(int(previous["N"]) if previous is not None else None, now)
        else:
            run = int(written[RUN]["N"])
        return True, self._entry(group, commit.name, run, outcome, history, now)

    def _entry(
        self,
        group: str,
        name: str,
        run: int,
        outcome: str,
        history: History,
        now: datetime.datetime,
    ) -> Item:
        entry = Entry(run, outcome, expiry(now, history.retention))
        return entry.to_item(history_partition(self.prefix, group, name), history.keep)

    async def extend(
        self, group: str, name: str, lease: Lease, *, locked_until: datetime.datetime
    ) -> bool:
        written = await self._write_held(
            self._partition(group),
            name,
            lease,
            "SET #lu = :lu, #da = :da ADD #v :one",
            {":lu": {"S": timestamp(locked_until)}, ":da": {"S": due_key(locked_until, name)}},
        )
        return written is not None

    async def _write_held(
        self,
        partition_id: str,
        name: str,
        lease: Lease,
        update: str | None,
        values: Item | None = None,
        *,
        returns: bool = False,
    ) -> Item | None:
        """Apply ``update`` (with ``values``, and ``:one`` for counting the write in
        ``version``), or delete the row when ``update`` is ``None``, if ``lease`` holds
        the row; ``None``, changing nothing, if it does not. Otherwise the attributes
        the write returned: with ``returns``, the updated ones (or the deleted item)."""
        guard = "#lb = :lb"
        request: dict[str, Any] = {
            "TableName": self.table,
            "Key": key(partition_id, name),
            "ConditionExpression": guard,
            "ExpressionAttributeNames": _names(*_ALIAS.findall(f"{guard} {update or ''}")),
            "ExpressionAttributeValues": {":lb": {"S": lease}, **(values or {})},
        }
        write: Callable[..., Any] = self.client.delete_item
        if update is not None:
            write = self.client.update_item
            request["UpdateExpression"] = update
            request["ExpressionAttributeValues"][":one"] = _ONE
        if returns:
            request["ReturnValues"] = "ALL_OLD" if update is None else "UPDATED_NEW"
        try:
            response = await self.caller(functools.partial(write, **request))
        except ConditionFailed:
            return None
        attributes: Item = response.get("Attributes", {})
        return attributes

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
        partition_id = self._partition(group)
        if outcome is None or now is None:
            history = None
        sets, values = _stored_outcome(outcome, history, now)
        # The index key goes back to scheduled_at, which only a read can tell; the write
        # is then conditioned on both the lease and the scheduled_at it was computed from.
        row = await self._read(partition_id, name)
        for _ in range(MAX_WRITE_ATTEMPTS):
            if row is None or row.locked_by != lease:
                return False
            scheduled_at = row.scheduled_at
            update = f"SET #da = :da{sets} REMOVE #lb, #lu ADD #v :one"
            condition = "#lb = :lb AND #sa = :sa"
            request: dict[str, Any] = {
                "TableName": self.table,
                "Key": key(partition_id, name),
                "UpdateExpression": update,
                "ConditionExpression": condition,
                "ExpressionAttributeNames": _names(*_ALIAS.findall(f"{update} {condition}")),
                "ExpressionAttributeValues": {
                    ":lb": {"S": lease},
                    ":sa": {"S": timestamp(scheduled_at)},
                    ":da": {"S": due_key(scheduled_at, name)},
                    ":one": _ONE,
                    **values,
                },
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
            if history is not None:
                request["ReturnValues"] = "UPDATED_NEW"
            try:
                response = await self.caller(functools.partial(self.client.update_item, **request))
            except ConditionFailed as refused:
                row = self._row(refused.item)
                continue
            if history is not None and outcome is not None and now is not None:
                run = int(response["Attributes"][RUN]["N"])
                await self._history.append([self._entry(group, name, run, outcome, history, now)])
            return True
        raise BackendUnavailableError(
            f"DynamoDB {self.caller.where}: unlock of {name!r} kept racing"
        )

    # -- registration -------------------------------------------------------------------

    async def register(
        self,
        group: str,
        registrations: Sequence[Registration],
        *,
        now: datetime.datetime,
        force: bool,
    ) -> list[str]:
        if not registrations:
            return []
        for registration in registrations:
            size = len(registration.name.encode()) + len((registration.spec or "").encode())
            if size > MAX_ROW_BYTES:
                raise ValueError(
                    f"Task {registration.name!r} is too large for DynamoDB: its name and spec "
                    f"take {size} bytes, and at most {MAX_ROW_BYTES} fit in one item (DynamoDB "
                    "counts an item twice against its 400 KB limit: in the table and in its "
                    "due-time index)"
                )
        partition_id = self._partition(group)
        # Rows are written concurrently, so a name given twice is folded into one write
        # first: the later registration, keeping the sooner run unless forced.
        batch = fold_registrations(registrations, force=force)
        untouched = await gather([self._register(partition_id, r, now, force) for r in batch])
        skipped = {r.name for r, left in zip(batch, untouched, strict=True) if left}
        return [r.name for r in registrations if r.name in skipped]

    async def _register(
        self, partition_id: str, registration: Registration, now: datetime.datetime, force: bool
    ) -> bool:
        """Create or update one row; ``True`` if a live lease left it untouched.

        The first write assumes the row is new; if it exists, DynamoDB returns it with the
        refusal and the update (the sooner run, or the new one when forced) is written
        conditioned on the version seen."""
        row = Row.new(registration)
        old: Row | None = None
        for _ in range(MAX_WRITE_ATTEMPTS):
            if old is None:
                row.version = 1
                row.outcome = row.run = None
                condition = "attribute_not_exists(#tid)"
                names = {"#tid": TASK_ID}
                values: dict[str, Any] = {}
            else:
                if old.locked_until is not None and old.locked_until > now and not force:
                    return True
                if not force:
                    row.scheduled_at = min(old.scheduled_at, registration.scheduled_at)
                row.version = old.version + 1
                row.outcome, row.run = old.outcome, old.run  # not the registration's to change
                condition = "#v = :v"
                names = {"#v": VERSION}
                values = {":v": {"N": str(old.version)}}
            request: dict[str, Any] = {
                "TableName": self.table,
                "Item": row.to_item(partition_id),
                "ConditionExpression": condition,
                "ExpressionAttributeNames": names,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
            if values:
                request["ExpressionAttributeValues"] = values
            try:
                await self.caller(functools.partial(self.client.put_item, **request))
            except ConditionFailed as refused:
                old = self._row(refused.item)
                continue
            return False
        raise BackendUnavailableError(
            f"DynamoDB {self.caller.where}: registering {registration.name!r} kept racing"
        )

    async def unregister(self, group: str, name: str) -> bool:
        response = await self.caller(
            lambda: self.client.delete_item(
                TableName=self.table, Key=key(self._partition(group), name), ReturnValues="ALL_OLD"
            )
        )
        return "Attributes" in response

    # -- reads --------------------------------------------------------------------------

    async def _read(self, partition_id: str, name: str) -> Row | None:
        response = await self.caller(
            lambda: self.client.get_item(
                TableName=self.table, Key=key(partition_id, name), ConsistentRead=True
            )
        )
        return self._row(response.get("Item"))

    async def get(self, group: str, name: str) -> Record | None:
        row = await self._read(self._partition(group), name)
        return row.record() if row is not None else None

    async def history(self, group: str, name: str, *, limit: int) -> list[str]:
        partition_id = history_partition(self.prefix, group, name)
        entries = await self._history.read(partition_id, now=int(self.wall_clock()))
        return [entry.outcome for entry in entries[:limit]]

    async def list(
        self,
        group: str,
        *,
        limit: int,
        continuation_token: ContinuationToken | None = None,
    ) -> Page:
        partition_id = self._partition(group)
        request: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "#pk = :pk",
            "ExpressionAttributeNames": {"#pk": PARTITION_ID},
            "ExpressionAttributeValues": {":pk": {"S": partition_id}},
            "Limit": limit + 1,  # one more, to know whether a next page exists
            "ConsistentRead": True,
        }
        if continuation_token is not None:
            request["ExclusiveStartKey"] = key(partition_id, decode_list_token(continuation_token))
        response = await self.caller(lambda: self.client.query(**request))
        items: list[Item] = response.get("Items", [])
        page = items[:limit]
        token = None
        if page and (len(items) > limit or "LastEvaluatedKey" in response):
            token = encode_list_token(page[-1][TASK_ID]["S"])
        rows = [self._row(item) for item in page]
        return Page([row.record() for row in rows if row is not None], token)


_NAMES = {
    "#sa": SCHEDULED_AT,
    "#da": DUE_AT,
    "#lb": LOCKED_BY,
    "#lu": LOCKED_UNTIL,
    "#v": VERSION,
    "#out": OUTCOME,
    "#run": RUN,
}


_ALIAS = re.compile(r"#\w+")


def _names(*aliases: str) -> dict[str, str]:
    return {alias: _NAMES[alias] for alias in aliases}


def _stored_outcome(
    outcome: str | None, history: History | None, now: datetime.datetime | None
) -> tuple[str, Item]:
    """The ``SET`` clauses (each after a comma) and values that store ``outcome`` on the
    row and, with ``history``, count its run (see :mod:`.history`)."""
    if outcome is None:
        return "", {}
    sets = ", #out = :out"
    values: Item = {":out": {"S": outcome}}
    if history is not None and now is not None:
        sets += ", #run = if_not_exists(#run, :start) + :one"
        values[":start"] = {"N": str(to_epoch_us(now))}
    return sets, values
