"""The Redis implementation of the lease interface."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from redis import exceptions as rex
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterPubSub, RedisCluster

from pyncette.batching import chunks
from pyncette.errors import BackendUnavailableError
from pyncette.model import ContinuationToken, Lease
from pyncette.redis.keys import group_keys, history_key, wake_channel
from pyncette.redis.scripts import (
    CLAIM,
    COMMIT,
    EXTEND,
    LIST,
    REGISTER,
    UNLOCK,
    UNREGISTER,
    Script,
)
from pyncette.redis.wakeups import (
    node_versions,
    receive_plain,
    receive_sharded,
    shard_channels_supported,
)
from pyncette.repository import (
    ClaimResult,
    Commit,
    History,
    Page,
    Record,
    Registration,
    Repository,
    wake_up_message,
)
from pyncette.timeutil import batch_instants, duration_us, from_epoch_us, to_epoch_us

logger = logging.getLogger(__name__)

Client = Redis | RedisCluster

UNAVAILABLE: tuple[type[Exception], ...] = (
    rex.ConnectionError,
    rex.TimeoutError,
    rex.ClusterError,
    rex.TryAgainError,
    rex.ReadOnlyError,
    rex.OutOfMemoryError,
    rex.RedisClusterException,
)
"""Driver errors that mean storage could not be reached (or is failing over)."""

_CHUNK = 500
"""Rows per script call for batch writes, so one call never blocks Redis for long."""
MAX_IN_FLIGHT = 64
"""Commands one repository sends at once. redis-py's pools refuse (rather than queue) a
command beyond their size (100 connections per server), so calls wait here instead."""


def _dumps(batch: list[tuple[Any, ...]]) -> str:
    # Lua's cjson reads raw UTF-8; surrogates cannot be sent to Redis at all anyway.
    return json.dumps(batch, ensure_ascii=False, separators=(",", ":"))


def parse_row(name: str, value: bytes) -> Record:
    """Decode a stored row (layout in ``row.lua``)."""
    sched, _, till, size, rest = value.split(b",", 4)
    end = int(size)
    holder = rest[:end]
    outcome = None
    if rest[end : end + 1] == b"o":  # rows written before outcomes were stored have none
        comma = rest.index(b",", end)
        start = comma + 1
        end = start + int(rest[end + 1 : comma])
        outcome = rest[start:end].decode()
    spec = rest[end + 1 :].decode() if rest[end : end + 1] == b"s" else None
    locked_until = from_epoch_us(int(till)) if till else None
    locked_by = Lease(holder.decode()) if till else None
    return Record(name, spec, from_epoch_us(int(sched)), locked_until, locked_by, outcome)


def _history_args(history: History | None) -> tuple[int, int] | None:
    """``(keep, retention in milliseconds)`` for the scripts, or ``None`` when the policy
    keeps nothing."""
    if history is None or history.keep < 1:
        return None
    retention_ms = history.retention // datetime.timedelta(milliseconds=1)
    return None if retention_ms < 1 else (history.keep, retention_ms)


def _claimed(out: list[Any], lease: Lease) -> list[Record]:
    """Records from the claim script's reply (the hot path)."""
    moment = batch_instants()
    return [
        Record(name.decode(), None if spec is None else spec.decode(), moment(a), moment(b), lease)
        for name, a, b, spec in zip(out[1::4], out[2::4], out[3::4], out[4::4], strict=True)
    ]


class RedisRepository(Repository):
    """Rows of a group in one hash, with sorted sets indexing them by claimable time and
    by name; every change is one Lua script run atomically on the server (EVALSHA,
    falling back to EVAL when the server's script cache lost it). A row's last outcome
    is part of its hash value; its run history is a capped list of its own that expires
    after its retention. All keys of a group share a hash tag, so it works on Redis
    Cluster as on a single server."""

    def __init__(self, client: Client, namespace: str = "") -> None:
        self._client = client
        self._namespace = namespace
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._shard_channels: bool | None = None

    @property
    def client(self) -> Client:
        """The redis-py client this repository talks through."""
        return self._client

    @property
    def namespace(self) -> str:
        return self._namespace

    async def _execute(self, *args: Any, **options: Any) -> Any:
        """Run one command; the one place driver errors become pyncette's."""
        try:
            async with self._in_flight:
                return await self._client.execute_command(*args, **options)
        except UNAVAILABLE as exc:
            raise BackendUnavailableError(f"Redis is unavailable: {exc}") from exc
        except rex.ResponseError as exc:
            if str(exc).startswith("BUSY"):  # another client's script is hogging the server
                raise BackendUnavailableError(f"Redis is busy: {exc}") from exc
            raise

    async def _run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await self._execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except rex.NoScriptError:
            logger.info("Loading Lua script %r into Redis", script.name)
            return await self._execute("EVAL", script.source, len(keys), *keys, *args)

    # -- wake-ups (pub/sub) -----------------------------------------------------------

    @property
    def wake_ups(self) -> bool:
        return True

    async def _sharded(self) -> bool:
        """Whether wake-ups go over a shard channel: on a cluster whose nodes all run
        Redis 7.0 or later, asked once (``INFO server`` on every primary)."""
        if self._shard_channels is None:
            if not isinstance(self._client, RedisCluster):
                self._shard_channels = False
            else:
                try:
                    info = await self._execute(
                        "INFO", "server", target_nodes=RedisCluster.PRIMARIES
                    )
                    versions = node_versions(info)
                except rex.ResponseError as exc:  # INFO renamed or denied
                    logger.info("Cannot read the Redis version (%s); using plain pub/sub", exc)
                    versions = []
                self._shard_channels = shard_channels_supported(versions)
                if not self._shard_channels:
                    logger.info(
                        "Redis Cluster %s has no sharded pub/sub; wake-ups use PUBLISH",
                        ", ".join(versions) or "(version unknown)",
                    )
        return self._shard_channels

    async def announce(self, group: str, due_at: datetime.datetime) -> None:
        command = "SPUBLISH" if await self._sharded() else "PUBLISH"
        await self._execute(command, wake_channel(self._namespace), wake_up_message(group, due_at))

    async def listen(self, wake: Callable[[str, datetime.datetime], None]) -> None:
        """On a connection of its own: ``SSUBSCRIBE`` on a cluster (see
        :mod:`pyncette.redis.wakeups`), ``SUBSCRIBE`` otherwise (on a cluster older than
        7.0, to one node: the cluster bus forwards every ``PUBLISH`` to all of them)."""
        channel = wake_channel(self._namespace)
        sharded = await self._sharded()
        pubsub = self._client.pubsub()
        try:
            if sharded and isinstance(pubsub, ClusterPubSub):
                await receive_sharded(pubsub, channel, wake)
            else:
                await receive_plain(pubsub, channel, wake)
        except rex.AskError as exc:  # SSUBSCRIBE sent to a node that no longer owns the slot
            if isinstance(exc, rex.MovedError) and isinstance(self._client, RedisCluster):
                await self._client.nodes_manager.move_slot(exc)  # the next try goes there
            raise BackendUnavailableError(f"Redis wake-up channel moved: {exc}") from exc
        except UNAVAILABLE as exc:
            raise BackendUnavailableError(f"Redis wake-up channel: {exc}") from exc
        finally:
            close: Any = pubsub.aclose  # typed since redis 8.2, untyped before
            await close()

    async def claim(
        self, group: str, *, now: datetime.datetime, limit: int, lease: Lease
    ) -> ClaimResult:
        keys = group_keys(self._namespace, group)
        at = to_epoch_us(now)
        records: list[Record] = []
        while True:
            # one script call per chunk keeps Lua's unpack() within its limits
            size = min(limit - len(records), _CHUNK)
            out = await self._run(CLAIM, keys[:2], (at, size, lease))
            records += _claimed(out, lease)
            if len(out) < 1 + 4 * size or len(records) >= limit:
                return ClaimResult(records, None if out[0] is None else from_epoch_us(out[0]))

    async def commit(
        self, group: str, commits: Sequence[Commit], *, now: datetime.datetime
    ) -> list[str]:
        keys = group_keys(self._namespace, group)
        lost: list[str] = []
        for chunk in chunks(commits, _CHUNK):
            batch: list[tuple[Any, ...]] = []
            histories: list[str] = []
            for c in chunk:
                entry: tuple[Any, ...] = (
                    c.name,
                    c.lease,
                    False if c.next_at is None else to_epoch_us(c.next_at),
                )
                if c.outcome is not None:
                    entry += (c.outcome,)
                    history = _history_args(c.history)
                    if history is not None:
                        entry += history
                        histories.append(history_key(self._namespace, group, c.name))
                batch.append(entry)
            out = await self._run(COMMIT, (*keys, *histories), (_dumps(batch),))
            lost += (name.decode() for name in out)
        return lost

    async def extend(
        self, group: str, name: str, lease: Lease, *, locked_until: datetime.datetime
    ) -> bool:
        keys = group_keys(self._namespace, group)
        return bool(await self._run(EXTEND, keys[:2], (name, lease, to_epoch_us(locked_until))))

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
        keys: tuple[str, ...] = group_keys(self._namespace, group)[:2]
        args: tuple[Any, ...] = (name, lease)
        if outcome is not None:
            args += (outcome,)
            kept = _history_args(history)
            if kept is not None:
                keys += (history_key(self._namespace, group, name),)
                args += kept
        return bool(await self._run(UNLOCK, keys, args))

    async def register(
        self,
        group: str,
        registrations: Sequence[Registration],
        *,
        now: datetime.datetime,
        force: bool,
    ) -> list[str]:
        keys = group_keys(self._namespace, group)
        skipped: list[str] = []
        for chunk in chunks(registrations, _CHUNK):
            batch = [
                (
                    r.name,
                    to_epoch_us(r.scheduled_at),
                    duration_us(r.lease_duration),
                    False if r.spec is None else r.spec,
                )
                for r in chunk
            ]
            args = (to_epoch_us(now), "1" if force else "0", _dumps(batch))
            out = await self._run(REGISTER, keys, args)
            skipped += (name.decode() for name in out)
        return skipped

    async def unregister(self, group: str, name: str) -> bool:
        return bool(await self._run(UNREGISTER, group_keys(self._namespace, group), (name,)))

    async def get(self, group: str, name: str) -> Record | None:
        value = await self._execute("HGET", group_keys(self._namespace, group).rows, name)
        return None if value is None else parse_row(name, value)

    async def history(self, group: str, name: str, *, limit: int) -> list[str]:
        key = history_key(self._namespace, group, name)
        out = await self._execute("LRANGE", key, 0, limit - 1)
        return [entry.decode() for entry in out]

    async def list(
        self,
        group: str,
        *,
        limit: int,
        continuation_token: ContinuationToken | None = None,
    ) -> Page:
        keys = group_keys(self._namespace, group)
        start = "-" if continuation_token is None else "(" + continuation_token
        out = await self._run(LIST, (keys.rows, keys.names), (start, limit))
        records = [parse_row(out[i].decode(), out[i + 1]) for i in range(1, len(out), 2)]
        token = None if out[0] is None else ContinuationToken(out[0].decode())
        return Page(records, token)
