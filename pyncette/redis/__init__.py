"""Redis backend: ``Pyncette(repository_factory=redis_repository, redis_url=...)``.

Options: ``redis_url`` (default ``redis://localhost``; ``rediss://`` for TLS,
``unix://`` for a socket), ``redis_namespace`` (prefix keeping apps apart on a shared
server), ``redis_timeout`` (socket timeout in seconds, default 10) and ``redis_cluster``
(``True``/``False``; by default the server is asked whether it is a cluster node).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

if importlib.util.find_spec("redis") is None:  # pragma: no cover - depends on the install
    raise ImportError("The Redis backend needs redis-py: pip install 'pyncette[redis]'")

from pyncette.redis.adopt import adopt_pyncette1
from pyncette.redis.connection import open_client
from pyncette.redis.repository import RedisRepository
from pyncette.redis.settings import RedisSettings
from pyncette.repository import Repository

__all__ = ["RedisRepository", "RedisSettings", "redis_repository"]

logger = logging.getLogger(__name__)


@asynccontextmanager
async def redis_repository(**options: Any) -> AsyncIterator[Repository]:
    """Connect to Redis (or Redis Cluster) and yield the repository; closes the client on
    exit. Takes the ``redis_*`` options described in this module's docstring."""
    settings = RedisSettings.from_options(options)
    client = await open_client(settings)
    logger.debug("Connected to Redis at %s", settings.masked_url)
    try:
        repository = RedisRepository(client, settings.namespace)
        await adopt_pyncette1(repository)  # Pyncette 1.x data in this namespace
        yield repository
    finally:
        await client.aclose()
