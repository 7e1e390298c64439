"""Run history: the items that keep each row's newest outcomes.

A row's history is a ring of ``keep`` items (:attr:`pyncette.repository.History.keep`)
in a partition of its own:

* ``partition_id``: ``<prefix>#history:<[group, name] as JSON>`` (or
  ``<prefix>#history:sha256:<hex digest of that JSON>`` when the key would exceed
  DynamoDB's 2048 bytes). A partition prefix has no ``#``, so no group's partition
  (``<prefix>:<group>``) is ever one of these; each row's ring has a partition key of its
  own, so history neither adds to the group partition's 10 GB item collection nor to
  its write rate;
* ``task_id``: the slot, ``run % keep``, as decimal text;
* ``run``: the entry's run number, by which entries are ordered;
* ``outcome``: the outcome text;
* ``expires_at``: epoch seconds (the write's ``now`` plus the retention) after which the
  entry is no longer read, and DynamoDB's time to live deletes it once it is enabled on
  this attribute.

Run numbers: the row item's ``run`` holds its newest entry's number. The commit (or
unlock) that stores an outcome with a history sets it to ``if_not_exists(run, <now in
epoch microseconds>) + 1`` in its own conditional request and has the new value
returned (a commit that deletes the row has the old item returned instead), so
consecutive runs fill consecutive slots and overwrite the oldest, and a row deleted and
created again later numbers its runs above the earlier ones. After the commit requests
of a call, its entries are written with ``BatchWriteItem``, 25 per request.

History items have no ``ready_at``, so the due-time index never holds them (no claim
sees them), no group's listing reads their partitions, and the 1.x adoption skips them
(:func:`is_history`).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import itertools
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from pyncette.clock import real_sleep
from pyncette.dynamodb.client import Caller
from pyncette.dynamodb.items import OUTCOME, PARTITION_ID, RUN, TASK_ID, Item
from pyncette.errors import BackendUnavailableError
from pyncette.timeutil import to_epoch_us

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)

EXPIRES_AT = "expires_at"
"""The attribute to enable DynamoDB's time to live on."""
BATCH_LIMIT = 25
"""Items per ``BatchWriteItem`` request (DynamoDB's limit)."""

_MARK = "#history:"
_MAX_PARTITION_KEY_BYTES = 2048
_HISTORY_PARTITION = re.compile(r"[A-Za-z0-9_.-]+#history:")
_US_PER_SECOND = 10**6


def history_partition(prefix: str, group: str, name: str) -> str:
    """The partition of the history of row ``name`` of ``group``."""
    row = json.dumps([group, name], ensure_ascii=False, separators=(",", ":"))
    partition_id = f"{prefix}{_MARK}{row}"
    if len(partition_id.encode()) > _MAX_PARTITION_KEY_BYTES:
        digest = hashlib.sha256(row.encode()).hexdigest()
        partition_id = f"{prefix}{_MARK}sha256:{digest}"
    return partition_id


def is_history(item: Item) -> bool:
    """Whether ``item`` is a history entry (of any partition prefix)."""
    partition_id: str = item[PARTITION_ID]["S"]
    return (
        _HISTORY_PARTITION.match(partition_id) is not None
        and RUN in item
        and EXPIRES_AT in item
        and OUTCOME in item
    )


def next_run(previous: int | None, now: datetime.datetime) -> int:
    """The number of the entry after ``previous`` (the row's ``run``; ``None`` when it
    has none), as the row's update computes it."""
    return (previous if previous is not None else to_epoch_us(now)) + 1


def expiry(now: datetime.datetime, retention: datetime.timedelta) -> int:
    """``now + retention`` in epoch seconds, rounded up."""
    return -(-to_epoch_us(now + retention) // _US_PER_SECOND)


@dataclass(frozen=True, slots=True)
class Entry:
    """One decoded history item."""

    run: int
    outcome: str
    expires_at: int

    @classmethod
    def from_item(cls, item: Item) -> Entry:
        return cls(int(item[RUN]["N"]), item[OUTCOME]["S"], int(item[EXPIRES_AT]["N"]))

    def to_item(self, partition_id: str, keep: int) -> Item:
        return {
            PARTITION_ID: {"S": partition_id},
            TASK_ID: {"S": str(self.run % keep)},
            RUN: {"N": str(self.run)},
            OUTCOME: {"S": self.outcome},
            EXPIRES_AT: {"N": str(self.expires_at)},
        }


class HistoryStore:
    """Writes and reads history items (see the module docstring)."""

    def __init__(self, client: DynamoDBClient, caller: Caller, table: str) -> None:
        self.client = client
        self.caller = caller
        self.table = table

    async def append(self, items: Sequence[Item]) -> None:
        """Put ``items`` (each replacing what its slot held), :data:`BATCH_LIMIT` per
        request, the requests concurrently.

        The commits the entries belong to are applied by then and must not be reported
        as failed, so entries that cannot be written (DynamoDB unreachable, throttling
        that does not end, a policy without ``dynamodb:BatchWriteItem``) are logged and
        dropped."""
        newest: dict[tuple[str, str], Item] = {}
        for item in items:  # one request must not name a key twice
            slot = (item[PARTITION_ID]["S"], item[TASK_ID]["S"])
            held = newest.get(slot)
            if held is None or int(held[RUN]["N"]) < int(item[RUN]["N"]):
                newest[slot] = item
        unique = list(newest.values())
        chunks = [unique[i : i + BATCH_LIMIT] for i in range(0, len(unique), BATCH_LIMIT)]
        if len(chunks) == 1:
            await self._put(chunks[0])
            return
        async with anyio.create_task_group() as tasks:
            for chunk in chunks:
                tasks.start_soon(self._put, chunk)

    async def _put(self, items: list[Item]) -> None:
        requests: Sequence[Any] = [{"PutRequest": {"Item": item}} for item in items]
        try:
            for attempt in itertools.count(1):
                response = await self.caller(
                    functools.partial(
                        self.client.batch_write_item, RequestItems={self.table: requests}
                    )
                )
                requests = response.get("UnprocessedItems", {}).get(self.table, [])
                if not requests:
                    return
                if attempt >= self.caller.attempts:
                    raise BackendUnavailableError(
                        f"DynamoDB {self.caller.where}: BatchWriteItem left items "
                        f"unprocessed {attempt} times"
                    )
                await real_sleep(self.caller.backoff.delay(attempt))
        except BackendUnavailableError as exc:
            logger.warning("Run history: %d entries were not written: %s", len(requests), exc)

    async def read(self, partition_id: str, *, now: int) -> list[Entry]:
        """The entries of a history partition not expired at ``now`` (epoch seconds),
        newest first."""
        request: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "#pk = :pk",
            "FilterExpression": "#exp > :now",
            "ExpressionAttributeNames": {"#pk": PARTITION_ID, "#exp": EXPIRES_AT},
            "ExpressionAttributeValues": {":pk": {"S": partition_id}, ":now": {"N": str(now)}},
            "ConsistentRead": True,
        }
        entries: list[Entry] = []
        while True:
            response = await self.caller(functools.partial(self.client.query, **request))
            entries.extend(Entry.from_item(item) for item in response.get("Items", []))
            last = response.get("LastEvaluatedKey")
            if last is None:
                break
            request["ExclusiveStartKey"] = last
        entries.sort(key=lambda entry: entry.run, reverse=True)
        return entries
