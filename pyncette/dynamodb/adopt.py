"""Converting Pyncette 1.x items under the app's own partition prefix at start-up.

Pyncette 1.x used the same table schema with partitions ``<prefix>:<parent>`` for the
instances of a dynamic task (or of one partition) and ``<prefix>:<task>`` for each
static task (``:`` in its prefix doubled), and range keys ``<parent>:<instance>`` or
``<task>``. When a 1.x app used the prefix this app uses, its items share this app's
partitions, and they are what the app should run; so the first start-up with a prefix,
under a lock item, converts them:

1. the table is scanned for items pyncette did not write; every one under this prefix is
   converted without writing anything, and one 1.x cannot have written stops the
   start-up with :class:`~pyncette.legacy.Pyncette1DataError` naming it, nothing changed;
2. they are registered as rows of their groups (an existing row keeps the sooner run),
   then deleted, a page at a time;
3. a marker item records that the prefix was checked, so later start-ups cost one read.

Items under other prefixes are another app's, and left alone; if any look like Pyncette
1.x's, a warning names them and the importer that carries them over. A table the
start-up has just created has nothing to convert and is not scanned. The lock and
marker items live in the partition ``<prefix>:``, which no group uses, and have no
due time (:data:`~pyncette.dynamodb.items.DUE_AT`), so no index query ever sees them.
Run history items (:mod:`.history`) are pyncette's, and never taken for 1.x items.
"""

from __future__ import annotations

import datetime
import functools
import logging
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
import botocore.exceptions as bex

from pyncette.clock import real_sleep
from pyncette.dynamodb.client import ConditionFailed
from pyncette.dynamodb.history import is_history
from pyncette.dynamodb.items import PARTITION_ID, TASK_ID, Item, Row, key, partition
from pyncette.errors import BackendUnavailableError
from pyncette.legacy import Checker, Entry, convert
from pyncette.repository import Registration

if TYPE_CHECKING:
    from pyncette.dynamodb.repository import DynamoDBRepository

logger = logging.getLogger(__name__)

MARKER = "pyncette1"
LOCK = "pyncette1-lock"
LOCK_SECONDS = 60
"""The lock's expiry, renewed as the conversion goes: another instance takes over if
the one converting dies."""
LOCK_POLL = 0.2
"""Seconds between looks at the lock while another instance converts."""


def _is_control(item: Item) -> bool:
    """A marker or lock item (of this app's prefix or another's)."""
    return item[PARTITION_ID]["S"].endswith(":") and item[TASK_ID]["S"] in (MARKER, LOCK)


def control_partition(prefix: str) -> str:
    """The partition of the marker and lock items: group ``""``, which no task has."""
    return partition(prefix, "")


async def adopt_pyncette1(repository: DynamoDBRepository, *, created: bool) -> int | None:
    """Convert the 1.x items under the repository's prefix, once per prefix (see the
    module docstring); ``created``: the table was just created. Returns how many were
    converted, or ``None`` if the prefix had been checked before."""
    return await _Adoption(repository).run(created)


class _Adoption:
    def __init__(self, repository: DynamoDBRepository) -> None:
        self.repository = repository
        self.client = repository.client
        self.call = repository.caller
        self.table = repository.table
        self.prefix = repository.prefix
        self.control = control_partition(self.prefix)
        self.source = f"DynamoDB table {self.table!r}, partition prefix {self.prefix!r}"

    async def _get(self, partition_id: str, name: str) -> Item | None:
        response = await self.call(
            lambda: self.client.get_item(
                TableName=self.table, Key=key(partition_id, name), ConsistentRead=True
            )
        )
        item: Item | None = response.get("Item")
        return item

    async def _put(self, item: Item, condition: str | None = None, **values: Any) -> None:
        request: dict[str, Any] = {"TableName": self.table, "Item": item}
        if condition is not None:
            request["ConditionExpression"] = condition
        if values:
            request["ExpressionAttributeValues"] = values
        await self.call(functools.partial(self.client.put_item, **request))

    async def run(self, created: bool) -> int | None:
        if await self._get(self.control, MARKER) is not None:
            return None
        if created:
            await self._mark(0)
            return 0
        token = uuid.uuid4().hex
        while not await self._lock(token):
            if await self._get(self.control, MARKER) is not None:
                return None
            await real_sleep(LOCK_POLL)  # another instance converts: no part of the schedule
        try:
            if await self._get(self.control, MARKER) is not None:
                return None
            try:
                converted = await self._convert(token)
            except BackendUnavailableError as exc:
                cause = exc.__cause__
                if not (
                    isinstance(cause, bex.ClientError)
                    and cause.response.get("Error", {}).get("Code") == "AccessDeniedException"
                ):
                    raise
                logger.warning(
                    "%s: cannot look for Pyncette 1.x items (is dynamodb:Scan allowed?); "
                    "any there are ignored: %s",
                    self.source,
                    exc,
                )
                return None
            await self._mark(converted)
            return converted
        finally:
            with anyio.CancelScope(shield=True):
                await self._unlock(token)

    async def _lock(self, token: str) -> bool:
        now = datetime.datetime.now(datetime.UTC).timestamp()
        item = {
            **key(self.control, LOCK),
            "holder": {"S": token},
            "expires": {"N": str(int(now) + LOCK_SECONDS)},
        }
        try:
            await self._put(
                item,
                "attribute_not_exists(task_id) OR expires < :now OR holder = :me",
                **{":now": {"N": str(int(now))}, ":me": {"S": token}},
            )
        except ConditionFailed:
            return False
        return True

    async def _unlock(self, token: str) -> None:
        try:
            await self.call(
                lambda: self.client.delete_item(
                    TableName=self.table,
                    Key=key(self.control, LOCK),
                    ConditionExpression="holder = :me",
                    ExpressionAttributeValues={":me": {"S": token}},
                )
            )
        except (ConditionFailed, BackendUnavailableError):
            logger.debug("%s: conversion lock already gone", self.source)

    async def _mark(self, converted: int) -> None:
        now = datetime.datetime.now(datetime.UTC).isoformat()
        item = {
            **key(self.control, MARKER),
            "checked_at": {"S": now},
            "converted": {"N": str(converted)},
        }
        await self._put(item)

    async def _pages(self) -> AsyncIterator[list[Item]]:
        """The table's items that pyncette did not write, a scan page at a time (run
        history items, of any prefix, are pyncette's too)."""
        request: dict[str, Any] = {
            "TableName": self.table,
            "ConsistentRead": True,
            "FilterExpression": (
                "attribute_not_exists(scheduled_at) OR attribute_not_exists(lease_duration)"
            ),
        }
        while True:
            page = await self.call(lambda: self.client.scan(**request))
            items = page.get("Items", [])
            yield [item for item in items if not _is_control(item) and not is_history(item)]
            if "LastEvaluatedKey" not in page:
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _entry(self, item: Item) -> Entry | None:
        """``item`` as a 1.x entry of this prefix; ``None`` if it is not under it."""
        partition_id: str = item[PARTITION_ID]["S"]
        own = f"{self.prefix}:"
        suffix = partition_id.removeprefix(own)
        # a doubled ':' after the prefix belongs to a 1.x prefix that only starts like ours
        if suffix == partition_id or not suffix or suffix.startswith(":"):
            return None
        name: str = item[TASK_ID]["S"]
        spec = item.get("task_spec", {}).get("S")
        after = item.get("execute_after", {}).get("S")
        return Entry(name, None if name == suffix else suffix, spec, after)

    async def _collision(self, entry: Entry, now: datetime.datetime) -> str | None:
        """Why the row ``entry`` becomes would overwrite another 1.x item, if it would:
        an instance named ``<parent>:<x>`` lands on the range key of 1.x's instance
        ``x`` of the same parent."""
        if entry.parent is None:
            return None
        try:
            group, row = convert(entry, now)
        except ValueError:
            return None  # reported by the checker
        if not row.name.startswith(f"{entry.parent}:"):
            return None
        found = await self._get(partition(self.prefix, group), row.name)
        if found is None or Row.is_row(found):
            return None
        return f"as {row.name!r} it would take the place of the 1.x item {row.name!r}"

    async def _convert(self, token: str) -> int:
        now = datetime.datetime.now(datetime.UTC)
        checker = Checker(now)
        foreign: list[str] = []
        async for items in self._pages():
            entries: list[Entry] = []
            for item in items:
                entry = self._entry(item)
                if entry is None:
                    foreign.append(item[PARTITION_ID]["S"])
                    continue
                entries.append(entry)
                why = await self._collision(entry, now)
                if why is not None:
                    checker.bad[entry.key] = why
            checker.add(entries)
            await self._lock(token)
        checker.done(self.source)
        converted = 0
        async for items in self._pages():
            pairs = [(item, self._entry(item)) for item in items]
            moves = [(item, entry) for item, entry in pairs if entry is not None]
            by_group: dict[str, list[Registration]] = {}
            for _, entry in moves:
                group, row = convert(entry, now)
                by_group.setdefault(group, []).append(row)
            for group, rows in by_group.items():
                await self.repository.register(group, rows, now=now, force=False)
            async with anyio.create_task_group() as tasks:
                for item, _ in moves:
                    tasks.start_soon(self._delete, item)
            converted += len(moves)
            await self._lock(token)
        if converted:
            logger.info("Converted %d Pyncette 1.x items of %s", converted, self.source)
        if foreign:
            self._mention(foreign)
        return converted

    async def _delete(self, item: Item) -> None:
        partition_id, name = item[PARTITION_ID]["S"], item[TASK_ID]["S"]
        await self.call(
            lambda: self.client.delete_item(TableName=self.table, Key=key(partition_id, name))
        )

    def _mention(self, partitions: list[str]) -> None:
        example = sorted(partitions)[0]
        prefix = "''" if example.startswith(":") else "<the 1.x app's dynamodb_partition_prefix>"
        logger.warning(
            "DynamoDB table %r holds %d items pyncette did not write outside this app's "
            "partition prefix %r (such as partition %r): Pyncette 1.x data of another "
            "prefix? They are left alone; to carry them over, run "
            "pyncette.legacy.import_pyncette1_dynamodb(ctx, table_name=%r, region_name=%r, "
            "endpoint=..., partition_prefix=%s)",
            self.table,
            len(partitions),
            self.prefix,
            example,
            self.table,
            self.client.meta.region_name,
            prefix,
        )
