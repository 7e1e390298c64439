"""Opening the redis-py client: a single server or a cluster, with retries."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from redis import exceptions as rex
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff

from pyncette import retry
from pyncette.errors import BackendUnavailableError
from pyncette.redis.repository import UNAVAILABLE, Client
from pyncette.redis.settings import RedisSettings

logger = logging.getLogger(__name__)

HEALTH_CHECK_INTERVAL = 30
"""Seconds a pooled connection may idle before it is PINGed ahead of its next use."""


@dataclass(frozen=True)
class DriverBackoff(AbstractBackoff):
    """A :class:`pyncette.retry.Backoff` in the shape redis-py's ``Retry`` takes.

    The driver keeps its own retry loop, because only it can reconnect and resend a
    command on the connection it was sent on (and it follows cluster redirections in
    the same loop); the delays are pyncette's. That loop waits with the ``asyncio.sleep``
    it imported when it was loaded, not the one a test harness patches later.
    """

    policy: retry.Backoff

    def compute(self, failures: int) -> float:
        return self.policy.delay(failures)


def _client_options(settings: RedisSettings) -> dict[str, Any]:
    return {
        "socket_timeout": settings.timeout,
        "socket_connect_timeout": settings.timeout,
        # Reconnect and resend after a dropped connection (a restart, a failover); the
        # scheduler's own back-off takes over once these few quick retries are spent.
        "retry": Retry(DriverBackoff(retry.RECONNECT), retries=retry.REDIS_RECONNECT_ATTEMPTS - 1),
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "decode_responses": False,
    }


async def _is_cluster(client: Redis) -> bool:
    try:
        info = await client.info("cluster")
    except rex.ResponseError:
        return False  # INFO is renamed or denied (some managed services): a plain server
    return bool(info.get("cluster_enabled"))


async def open_client(settings: RedisSettings) -> Client:
    """Connect as ``settings`` say, asking the server whether it is a cluster node unless
    ``settings.cluster`` decides it."""
    options = _client_options(settings)
    cluster = settings.cluster
    try:
        if cluster is not True:
            client = Redis.from_url(settings.url, **options)
            try:
                if cluster is False or not await _is_cluster(client):
                    return client
            except BaseException:
                await client.aclose()
                raise
            await client.aclose()
            logger.debug("%s is a cluster node; using the cluster client", settings.masked_url)
        cluster_client = RedisCluster.from_url(settings.url, **options)
        try:
            await cluster_client.initialize()
        except BaseException:
            await cluster_client.aclose()
            raise
        return cluster_client
    except UNAVAILABLE as exc:
        raise BackendUnavailableError(
            f"Cannot connect to Redis at {settings.masked_url}: {exc}"
        ) from exc
