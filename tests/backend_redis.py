"""Redis backends: a single server and a three-master Redis Cluster.

The single server is ``REDIS_URL`` when set; otherwise the one on 127.0.0.1:6379 if
something listens there; otherwise a private ``redis-server`` started for the session.
The cluster is always made of private ``redis-server`` processes started for the session.

Every test gets a namespace of its own, and its keys on the shared server are deleted
afterwards, so tests never see each other's rows and never disturb other users of it.
The helpers that start private servers live in ``benchmarks/redis_servers.py`` (the
benchmark harness starts its cluster with them too) and are re-exported here; every
process they start is killed when its context manager exits, failing or not.
"""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from backends import BACKENDS, BackendConfig, BackendInfo, port_open, require_service
from benchmarks.redis_servers import REDIS_CLI as REDIS_CLI
from benchmarks.redis_servers import REDIS_SERVER as REDIS_SERVER
from benchmarks.redis_servers import RedisClusterServers as RedisClusterServers
from benchmarks.redis_servers import RedisServer as RedisServer
from benchmarks.redis_servers import die_with_parent as die_with_parent
from benchmarks.redis_servers import free_port as free_port
from benchmarks.redis_servers import private_cluster as private_cluster
from benchmarks.redis_servers import private_server as private_server
from benchmarks.redis_servers import redis_tools_available as redis_tools_available
from pyncette.redis import redis_repository
from pyncette.redis.keys import namespace_pattern

REDIS_URL = os.environ.get("REDIS_URL")
LOCAL_URL = "redis://127.0.0.1:6379"

BACKENDS["redis"] = BackendInfo(marks=[pytest.mark.service("redis")])
BACKENDS["redis_cluster"] = BackendInfo(marks=[pytest.mark.service("redis-cluster")])


def unique_namespace() -> str:
    return f"test-{uuid.uuid4().hex[:16]}"


def url_reachable(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return port_open(parts.hostname or "localhost", parts.port or 6379)


async def delete_namespace(url: str, namespace: str) -> None:
    """Delete every key of ``namespace`` from a single server."""
    client = Redis.from_url(url)
    try:
        async for key in client.scan_iter(match=namespace_pattern(namespace), count=500):
            await client.unlink(key)
    finally:
        await client.aclose()


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The single server the tests share (see the module docstring)."""
    if REDIS_URL is not None:
        require_service("redis", url_reachable(REDIS_URL), REDIS_URL)
        yield REDIS_URL
    elif url_reachable(LOCAL_URL) or REDIS_SERVER is None:
        require_service("redis", url_reachable(LOCAL_URL), f"{LOCAL_URL} (or redis-server)")
        yield LOCAL_URL
    else:
        with private_server() as server:
            yield server.url


@pytest.fixture
async def redis_backend(redis_url: str) -> AsyncIterator[BackendConfig]:
    namespace = unique_namespace()
    yield BackendConfig(
        "redis", redis_repository, {"redis_url": redis_url, "redis_namespace": namespace}
    )
    await delete_namespace(redis_url, namespace)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    require_service("redis-cluster", redis_tools_available(), "redis-server/redis-cli not found")
    with private_cluster() as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_backend(redis_cluster: RedisClusterServers) -> BackendConfig:
    # The cluster is private to this session and dies with it; namespaces keep tests apart.
    return BackendConfig(
        "redis_cluster",
        redis_repository,
        {"redis_url": redis_cluster.url, "redis_namespace": unique_namespace()},
    )
