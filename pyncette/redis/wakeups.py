"""Wake-ups over Redis pub/sub: a plain channel on one server, a shard channel on a cluster.

``PUBLISH`` on a cluster is broadcast over the cluster bus to every node; a shard channel
(``SPUBLISH``/``SSUBSCRIBE``, Redis 7.0 and later) lives on the node that owns its slot
and its messages stay there. The channel (``wake_channel``) has one fixed slot, as its
name carries the namespace's hash tag. A cluster with any node older than 7.0 keeps
plain pub/sub.

A listener never follows its channel: when the slot moves (resharding, failover) the
node ends the subscription (a server-sent ``sunsubscribe``) or drops the connection, and
the listener raises :class:`BackendUnavailableError` so that the core subscribes again,
on the slot's new owner. Wake-ups sent meanwhile are lost, which polling covers.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NoReturn

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub

from pyncette.errors import BackendUnavailableError
from pyncette.repository import deliver_wake_up

logger = logging.getLogger(__name__)

KEEPALIVE = 30.0
"""Seconds a subscribed connection may stay silent before it is pinged; a ping left
unanswered as long again means the connection is dead (the server stopped, or the
network dropped it without a reset), and the listener raises."""
SHARDED_SINCE = (7, 0)
"""The first Redis version with ``SPUBLISH``/``SSUBSCRIBE``."""

Wake = Callable[[str, datetime.datetime], None]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def shard_channels_supported(versions: Iterable[str]) -> bool:
    """Whether every node, by its ``redis_version``, has sharded pub/sub (``False`` for
    an empty or unreadable list: plain pub/sub works everywhere)."""
    parsed = [_version(version) for version in versions]
    return bool(parsed) and all(len(v) == 2 and v >= SHARDED_SINCE for v in parsed)


def node_versions(info: Any) -> list[str]:
    """The ``redis_version`` of each node in a cluster client's ``INFO server`` reply (a
    dict per node, or one dict when only one node answered)."""
    replies = [info] if isinstance(info, dict) and "redis_version" in info else info.values()
    return [str(reply.get("redis_version", "")) for reply in replies]


async def _receive(
    get: Callable[[float], Awaitable[dict[str, Any] | None]],
    ping: Callable[[], Awaitable[object]],
    wake: Wake,
    *,
    data: str,
    ended: str,
) -> NoReturn:
    """Deliver each ``data`` message until the channel fails; ping after ``KEEPALIVE``
    seconds of silence and raise when that ping gets no reply in as long."""
    pinged = False
    while True:
        message = await get(KEEPALIVE)
        if message is None:
            # A health-check reply redis-py swallowed also reads as None; it can only
            # precede our ping's reply if the server left it unanswered for KEEPALIVE.
            if pinged:
                raise BackendUnavailableError(
                    f"Redis wake-up channel: no reply to a ping in {KEEPALIVE:g} s"
                )
            await ping()
            pinged = True
            continue
        pinged = False
        kind = message["type"]
        if kind == data:
            deliver_wake_up(message["data"], wake)
        elif kind == ended:
            raise BackendUnavailableError(
                f"Redis wake-up channel: the server ended the subscription ({kind})"
            )


async def receive_plain(pubsub: PubSub, channel: str, wake: Wake) -> NoReturn:
    """``SUBSCRIBE`` to ``channel`` and deliver what arrives (one server, or a cluster
    whose bus forwards every ``PUBLISH`` to the node this connection went to)."""
    await pubsub.subscribe(channel)

    async def get(seconds: float) -> dict[str, Any] | None:
        message: dict[str, Any] | None = await pubsub.get_message(timeout=seconds)
        return message

    await _receive(get, pubsub.ping, wake, data="message", ended="unsubscribe")


async def receive_sharded(pubsub: ClusterPubSub, channel: str, wake: Wake) -> NoReturn:
    """``SSUBSCRIBE`` to ``channel`` on the node owning its slot and deliver what
    arrives."""
    await pubsub.ssubscribe(channel)
    # One shard channel, so one node's connection; pings go down that connection.
    (node,) = pubsub.node_pubsub_mapping.values()

    async def get(seconds: float) -> dict[str, Any] | None:
        return await pubsub.get_sharded_message(timeout=seconds)

    await _receive(get, node.ping, wake, data="smessage", ended="sunsubscribe")
