"""Converting the Pyncette 1.x data of the app's own namespace at start-up.

Pyncette 1.x kept, under ``pyncette:<namespace>:``, a hash per task
(``task:<canonical name>``: ``version``, ``execute_after``, ``locked_until``,
``locked_by``, ``task_spec``) and a sorted set indexing them (``index`` for static
tasks, ``index:<parent>`` per dynamic task or partition; members
``<time>_<hash key>``). None of it collides with this backend's keys (``pyncette:{...}``),
so it would be silently ignored; instead the first start-up in a namespace, under a
lock in the namespace, converts it:

1. the 1.x indexes are found with ``SCAN`` (every node of a cluster), and every entry
   is converted without writing anything: one that 1.x cannot have written stops the
   start-up with :class:`~pyncette.legacy.Pyncette1DataError` naming it, nothing changed;
2. each index's entries are registered in their groups (an existing row keeps the
   sooner run), then the 1.x hashes and the index are deleted;
3. a marker key, ``pyncette:{<namespace>:}:pyncette1``, records that the namespace was
   checked, so later start-ups cost one ``EXISTS``.

A start-up interrupted in step 2 leaves the indexes it had not finished, and the next
start-up converts those.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from pyncette.batching import chunks
from pyncette.clock import real_sleep
from pyncette.errors import BackendUnavailableError
from pyncette.legacy import REDIS_PAGE, Checker, Entry, convert, parse_parent
from pyncette.redis.keys import PREFIX
from pyncette.redis.repository import UNAVAILABLE, Client, RedisRepository
from pyncette.repository import Registration

logger = logging.getLogger(__name__)

LOCK_TTL_MS = 60_000
"""The conversion lock's expiry, renewed as the conversion goes: another instance takes
over if the one converting dies."""
LOCK_POLL = 0.1
"""Seconds between looks at the lock while another instance converts."""


def marker_key(namespace: str) -> str:
    return f"{PREFIX}:{{{namespace}:}}:pyncette1"


def lock_key(namespace: str) -> str:
    return f"{PREFIX}:{{{namespace}:}}:pyncette1-lock"


def legacy_prefix(namespace: str) -> str:
    """What every 1.x key of ``namespace`` starts with."""
    return f"{PREFIX}:{namespace}:"


async def read_index(client: Client, prefix: str, parent: str | None) -> list[Entry]:
    """The entries of 1.x's index of ``parent`` (``None``: of the static tasks) whose
    hash still exists, a page at a time."""
    index = f"{prefix}index" if parent is None else f"{prefix}index:{parent}"
    entries: list[Entry] = []
    for start in itertools.count(0, REDIS_PAGE):
        members: list[Any] = await client.zrange(index, start, start + REDIS_PAGE - 1)
        # a member is "<execute_after or locked_until>_<key of the task's hash>"
        keys = [bytes(member).decode().split("_", 1)[-1] for member in members]
        values: list[list[Any]] = await asyncio.gather(
            *(client.hmget(key, "version", "execute_after", "task_spec") for key in keys)
        )
        for key, (version, execute_after, task_spec) in zip(keys, values, strict=True):
            if version is None and task_spec is None:
                continue  # removed since the index was read
            if not key.startswith(f"{prefix}task:"):
                continue  # not a hash of this namespace: 1.x never indexes one
            name = key.removeprefix(f"{prefix}task:")
            spec = None if task_spec is None else bytes(task_spec).decode()
            entries.append(Entry(name, parent, spec, execute_after))
        if len(members) < REDIS_PAGE:
            return entries
    raise AssertionError("unreachable")


async def _indexes(client: Client, prefix: str) -> list[tuple[str, str | None]]:
    """The 1.x indexes under ``prefix``: (key, parent or ``None`` for static tasks)."""
    found: dict[str, str | None] = {}
    # (no TYPE filter in the SCAN: Redis 5 does not know it; index keys are few)
    async for raw in client.scan_iter(match=f"{prefix}index*", count=1000):
        key = bytes(raw).decode()
        if key == f"{prefix}index":
            parent = None
        elif key.startswith(f"{prefix}index:"):
            parent = key.removeprefix(f"{prefix}index:")
            try:
                parse_parent(parent)
            except ValueError:
                continue  # another namespace's key that only starts like ours
        else:
            continue
        if await client.type(key) == b"zset":
            found[key] = parent
    return sorted(found.items())


async def adopt_pyncette1(repository: RedisRepository) -> int | None:
    """Convert the 1.x data of the repository's namespace, once per namespace (see the
    module docstring). Returns how many tasks were converted, or ``None`` if the
    namespace had been checked before."""
    client, namespace = repository.client, repository.namespace
    try:
        return await _adopt(repository, client, namespace)
    except UNAVAILABLE as exc:
        raise BackendUnavailableError(f"Redis is unavailable: {exc}") from exc


async def _adopt(repository: RedisRepository, client: Client, namespace: str) -> int | None:
    marker, lock = marker_key(namespace), lock_key(namespace)
    if await client.exists(marker):
        return None
    token = uuid.uuid4().hex
    while not await client.set(lock, token, nx=True, px=LOCK_TTL_MS):
        if await client.exists(marker):
            return None
        await real_sleep(LOCK_POLL)  # another instance converts: no part of the schedule
    try:
        if await client.exists(marker):
            return None
        prefix = legacy_prefix(namespace)
        source = f"Redis namespace {namespace!r} (keys {prefix}*)"
        indexes = await _indexes(client, prefix)
        now = datetime.datetime.now(datetime.UTC)
        checker = Checker(now)
        for _, parent in indexes:
            checker.add(await read_index(client, prefix, parent))
            await client.pexpire(lock, LOCK_TTL_MS)
        checker.done(source)
        converted = 0
        for index, parent in indexes:
            entries = await read_index(client, prefix, parent)
            await _register(repository, entries, now)
            await _delete(client, [f"{prefix}task:{entry.key}" for entry in entries])
            await client.unlink(index)
            await client.pexpire(lock, LOCK_TTL_MS)
            converted += len(entries)
        record = {"checked_at": now.isoformat(), "converted": converted}
        await client.set(marker, json.dumps(record))
        if converted:
            logger.info(
                "Converted %d Pyncette 1.x tasks in %s; the 1.x keys were removed",
                converted,
                source,
            )
        return converted
    finally:
        with contextlib.suppress(*UNAVAILABLE):
            if await client.get(lock) == token.encode():
                await client.delete(lock)


async def _register(
    repository: RedisRepository, entries: Sequence[Entry], now: datetime.datetime
) -> None:
    by_group: dict[str, list[Registration]] = {}
    for entry in entries:
        group, registration = convert(entry, now)
        by_group.setdefault(group, []).append(registration)
    for group, registrations in by_group.items():
        await repository.register(group, registrations, now=now, force=False)


async def _delete(client: Client, keys: Sequence[str]) -> None:
    for chunk in chunks(keys, REDIS_PAGE):
        await client.unlink(*chunk)
