"""What a workload costs on DynamoDB: requests and capacity units, from a recorded trace.

:class:`Recorder` notes every request the repository's boto3 client sends (through
botocore's events, so nothing in the request path changes) and which repository call
sent it (through :class:`TracedRepository`). :func:`project` then prices the trace as
DynamoDB bills it, for the way the repository writes today and for two ways of sending
the writes of one claim or one commit call together:

* :data:`SINGLE` -- as recorded: one conditional ``PutItem`` / ``UpdateItem`` /
  ``DeleteItem`` per row.
* :data:`PARTIQL` -- the same conditional writes as PartiQL statements, up to 25 per
  ``BatchExecuteStatement``. Each statement succeeds or fails on its own and is billed
  like the single-item write it replaces.
* :data:`TRANSACTION` -- up to 100 writes per ``TransactWriteItems``, billed twice. One
  refused condition cancels the whole request; it is then sent again without the refused
  rows. A cancelled request is charged its items once (the prepare phase; an
  assumption -- with one process nothing is refused, and the figure does not arise).

The outcome of each write (applied or refused) is the recorded one; only the packing
into requests changes. Billing rules used (DynamoDB's documented ones): a write costs
one write unit per started KB of the larger of the item before and after, at least 1,
and the same when its condition fails; every write that changes the ``ready_at`` local
secondary index key also writes the index, twice (remove the old entry, add the new
one), once for a new or deleted item, nothing when refused; a consistent query costs one
read unit per started 4 KB of all the items it returns. Item sizes follow DynamoDB's
rules for the attribute types pyncette stores (names plus values; numbers by digits).

Used by ``python -m benchmarks.dynamodb_trace``; see docs/backends/dynamodb.md.
"""

from __future__ import annotations

import contextvars
import math
import threading
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pyncette.dynamodb.items import DUE_AT, PARTITION_ID, TASK_ID, Item
from pyncette.repository import Repository, RepositoryProxy

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

T = TypeVar("T")

WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem"})
READS = frozenset({"Query", "GetItem", "Scan"})
BATCHED_CALLS = frozenset({"claim", "commit"})
"""Repository calls whose writes the batched plans pack together."""

_CALL: contextvars.ContextVar[tuple[int, str]] = contextvars.ContextVar(
    "pyncette_dynamodb_call", default=(0, "")
)


@dataclass(frozen=True, slots=True)
class Request:
    """One request as sent and answered."""

    call: int
    """Which repository call sent it (numbered from 1; 0: none)."""
    operation: str
    """That call's method name (``claim``, ``commit``, ...; ``""`` for none)."""
    api: str
    """The DynamoDB operation, e.g. ``PutItem``."""
    ok: bool
    """``False`` when DynamoDB refused it (a failed condition, or any other error)."""
    write_units: int = 0
    """Table write units as DynamoDB bills this single-item write."""
    index_writes: int = 0
    """Writes of the ``ready_at`` index entry this write caused (0, 1 or 2)."""
    index_units: int = 0
    """Write units of those index writes."""
    read_bytes: int = 0
    """Size of the items a read returned."""


@dataclass(frozen=True, slots=True)
class Cost:
    """Requests and capacity units of a trace under one plan."""

    plan: str
    requests: int
    write_units: int
    read_units: int

    def per(self, executions: int) -> tuple[float, float, float]:
        """Requests, write units and read units per execution."""
        n = max(executions, 1)
        return self.requests / n, self.write_units / n, self.read_units / n


SINGLE = "single"
PARTIQL = "partiql-batch"
TRANSACTION = "transaction"
PLANS = (SINGLE, PARTIQL, TRANSACTION)
BATCH_LIMIT = {PARTIQL: 25, TRANSACTION: 100}


def item_size(item: Item) -> int:
    """Bytes DynamoDB counts for ``item``: each attribute's name plus its value."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _value_size(value: dict[str, Any]) -> int:
    kind, content = next(iter(value.items()))
    if kind == "S":
        return len(str(content).encode())
    if kind == "N":
        digits = str(content).lstrip("-").replace(".", "").strip("0") or "0"
        return (len(digits) + 1) // 2 + 1
    if kind == "B":
        return len(content)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(len(k.encode()) + _value_size(v) + 1 for k, v in content.items())
    if kind == "L":
        return 3 + sum(_value_size(v) + 1 for v in content)
    return sum(len(str(v).encode()) for v in content)  # sets


def _units(size: int, unit: int) -> int:
    return max(1, math.ceil(size / unit))


@dataclass
class Recorder:
    """Collects :class:`Request` entries from the clients it is attached to; thread-safe
    (boto3 calls run in worker threads). ``recording`` can be switched off around set-up
    work that should not be counted."""

    requests: list[Request] = field(default_factory=list)
    recording: bool = True
    _sizes: dict[tuple[str, str], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, client: DynamoDBClient) -> None:
        events = client.meta.events
        events.register("before-parameter-build.dynamodb", self._before)
        events.register("after-call.dynamodb", self._after)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def _before(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["pyncette_params"] = dict(params)
        context["pyncette_call"] = _CALL.get()

    def _after(self, parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        params: dict[str, Any] | None = context.get("pyncette_params")
        if params is None:
            return
        call, operation = context["pyncette_call"]
        api: str = model.name
        ok = "Error" not in parsed
        with self._lock:
            request = self._price(call, operation, api, ok, params, parsed)
            if self.recording:
                self.requests.append(request)

    def _price(
        self,
        call: int,
        operation: str,
        api: str,
        ok: bool,
        params: dict[str, Any],
        parsed: dict[str, Any],
    ) -> Request:
        if api in READS:
            items: list[Item] = parsed.get("Items", [])
            if "Item" in parsed:
                items = [parsed["Item"]]
            for item in items:
                self._sizes[_key(item)] = item_size(item)
            return Request(call, operation, api, ok, read_bytes=sum(map(item_size, items)))
        if api not in WRITES:
            return Request(call, operation, api, ok)
        new = params.get("Item")
        key = _key(new if new is not None else params["Key"])
        before = self._sizes.get(key)
        refused_item = parsed.get("Item") if not ok else None
        if refused_item is not None:
            before = item_size(refused_item)
        after = item_size(new) if new is not None else None
        if api == "UpdateItem":
            after = before  # a claim's lease in, a commit's out: about the same size
        size = max(before or 0, after or 0)
        units = _units(size, 1024)
        if not ok:
            return Request(call, operation, api, ok, write_units=units)
        # What the write did to the index entry (keyed on ready_at).
        changes_index = api == "PutItem" and new is not None and DUE_AT in new
        if api == "UpdateItem":
            changes_index = DUE_AT in params.get("ExpressionAttributeNames", {}).values()
        index_writes = 0
        if api == "DeleteItem":
            index_writes = 1 if before is not None else 0
            self._sizes.pop(key, None)
        elif changes_index:
            index_writes = 2 if before is not None else 1
        if api == "PutItem" and after is not None:
            self._sizes[key] = after
        elif api == "UpdateItem" and before is not None:
            self._sizes[key] = before
        index_size = size if api != "DeleteItem" else (before or 0)
        return Request(
            call,
            operation,
            api,
            ok,
            write_units=units,
            index_writes=index_writes,
            index_units=index_writes * _units(index_size, 1024),
        )


def _key(item: Item) -> tuple[str, str]:
    return item[PARTITION_ID]["S"], item[TASK_ID]["S"]


class TracedRepository(RepositoryProxy):
    """Numbers each repository call, so that a :class:`Recorder` can tell which call
    sent each request (the number travels in a context variable into worker threads)."""

    def __init__(self, inner: Repository) -> None:
        super().__init__(inner)
        self._calls = 0

    async def around(self, operation: str, call: Awaitable[T]) -> T:
        self._calls += 1
        token = _CALL.set((self._calls, operation))
        try:
            return await call
        finally:
            _CALL.reset(token)


def _rounds(requests: Sequence[Request]) -> Iterator[tuple[bool, list[Request]]]:
    """Requests in order, cut into runs: ``(True, writes)`` for consecutive writes of one
    claim or commit call (a claim's writes between two of its queries), ``(False,
    [request])`` for everything else."""
    runs: dict[int, list[Request]] = {}
    for request in requests:
        batchable = request.operation in BATCHED_CALLS and request.api in WRITES
        if not batchable:
            pending = runs.pop(request.call, None)
            if pending:
                yield True, pending
            yield False, [request]
            continue
        runs.setdefault(request.call, []).append(request)
    for pending in runs.values():
        yield True, pending


def project(requests: Sequence[Request], plan: str) -> Cost:
    """What ``requests`` cost under ``plan`` (one of :data:`PLANS`); see the module
    docstring for the rules."""
    if plan not in PLANS:
        raise ValueError(f"Unknown plan {plan!r}; choose from {', '.join(PLANS)}")
    count = writes = reads = 0
    for batched, run in _rounds(requests):
        if not batched or plan == SINGLE:
            count += len(run)
            writes += sum(r.write_units + r.index_units for r in run)
            reads += sum(_units(r.read_bytes, 4096) for r in run if r.api in READS)
            continue
        limit = BATCH_LIMIT[plan]
        for start in range(0, len(run), limit):
            chunk = run[start : start + limit]
            applied = [r for r in chunk if r.ok]
            if plan == PARTIQL:
                count += 1
                writes += sum(r.write_units for r in chunk) + sum(r.index_units for r in applied)
                continue
            if len(applied) < len(chunk):
                count += 1  # cancelled: charged once per item
                writes += sum(r.write_units for r in chunk)
            if applied:
                count += 1
                writes += 2 * sum(r.write_units + r.index_units for r in applied)
    return Cost(plan, count, writes, reads)


def executions(requests: Sequence[Request]) -> int:
    """Rows committed in the trace: the applied writes of commit calls."""
    return sum(1 for r in requests if r.operation == "commit" and r.api in WRITES and r.ok)
