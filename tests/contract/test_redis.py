"""Redis-specific behaviour: option checks, key layout, script reloads, restarts, cluster."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from redis.crc import key_slot

from backend_redis import (
    REDIS_SERVER,
    RedisClusterServers,
    RedisServer,
    delete_namespace,
    free_port,
    private_server,
    unique_namespace,
)
from backends import BackendConfig, require_service
from harness import T0, FakeClock, make_app, running
from pyncette import Context
from pyncette.errors import BackendUnavailableError
from pyncette.model import Lease
from pyncette.redis import RedisRepository, RedisSettings, redis_repository
from pyncette.redis.keys import group_keys
from pyncette.repository import Commit, Registration, Repository

pytestmark = pytest.mark.anyio
S = datetime.timedelta(seconds=1)
LEASE = 60 * S
A, B = Lease("lease-a"), Lease("lease-b")


def regs(names: list[str], at: datetime.datetime = T0) -> list[Registration]:
    return [Registration(name, None, at, LEASE) for name in names]


# -- options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("namespace", "culprit"),
    [
        ("app:1", "':'"),
        ("{app}", "'{'"),
        ("app}", "'}'"),
        ("my app", "' '"),
        ("tab\tbed", "'\\t'"),
        ("nul\x00", "'\\x00'"),
        ("star*", "'*'"),
    ],
)
async def test_bad_namespaces_are_refused_naming_the_character(
    namespace: str, culprit: str
) -> None:
    with pytest.raises(ValueError, match="redis_namespace") as raised:
        RedisSettings.from_options({"redis_namespace": namespace})
    assert culprit in str(raised.value)
    with pytest.raises(ValueError, match="redis_namespace"):
        async with redis_repository(redis_namespace=namespace):
            pass  # pragma: no cover - refused before connecting


@pytest.mark.parametrize("namespace", ["", "my_super_app", "team-a.prod/eu@2", "ünï"])
def test_good_namespaces_are_accepted(namespace: str) -> None:
    assert RedisSettings.from_options({"redis_namespace": namespace}).namespace == namespace


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"redis_urll": "redis://x"}, "redis_urll"),
        ({"redis_url": "http://localhost"}, "scheme"),
        ({"redis_url": ""}, "redis_url"),
        ({"redis_timeout": 0}, "redis_timeout"),
        ({"redis_timeout": "10"}, "redis_timeout"),
        ({"redis_cluster": "maybe"}, "redis_cluster"),
        ({"redis_namespace": 42}, "redis_namespace"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisSettings.from_options(dict(options))


def test_options_become_typed_settings() -> None:
    settings = RedisSettings.from_options(
        {
            "redis_url": "rediss://user:secret@example.com:6380/0",
            "redis_timeout": datetime.timedelta(milliseconds=2500),
            "redis_cluster": True,
            "postgres_url": "postgresql://ignored",  # other backends' options pass
        }
    )
    assert (settings.timeout, settings.cluster) == (2.5, True)
    assert "secret" not in settings.masked_url and "example.com:6380" in settings.masked_url
    assert RedisSettings.from_options({}) == RedisSettings("redis://localhost", "", 10.0, None)


async def test_unreachable_server_is_backend_unavailable_without_leaking_the_password() -> None:
    url = f"redis://user:secret@127.0.0.1:{free_port()}"
    with pytest.raises(BackendUnavailableError) as raised:
        async with redis_repository(redis_url=url, redis_timeout=1):
            pass  # pragma: no cover
    assert "secret" not in str(raised.value)


# -- key layout -----------------------------------------------------------------------


@pytest.mark.parametrize("group", ["__static__", "mytask:3", "a}b{c", "{x}", "%7B}", "☃ x"])
def test_keys_of_a_group_share_one_slot(group: str) -> None:
    keys = group_keys("ns", group)
    assert len({key_slot(key.encode()) for key in keys}) == 1
    assert all(key.startswith("pyncette:{ns:") for key in keys)


def test_groups_namespaces_and_partitions_get_distinct_keys_spread_over_slots() -> None:
    groups = ["__static__", "{x}", "%7Bx%7D", "x", "mytask", *(f"mytask:{p}" for p in range(32))]
    rows = {group_keys(ns, g).rows for ns in ("", "a", "b") for g in groups}
    assert len(rows) == 3 * len(groups)
    slots = {key_slot(group_keys("app", f"mytask:{p}").rows.encode()) for p in range(32)}
    assert len(slots) > 24


# -- a shared server --------------------------------------------------------------------


@pytest.fixture
async def other_namespace(redis_url: str) -> AsyncIterator[str]:
    namespace = unique_namespace()
    yield namespace
    await delete_namespace(redis_url, namespace)


@pytest.mark.service("redis")
async def test_namespaces_isolate_apps(redis_backend: BackendConfig, other_namespace: str) -> None:
    options = dict(redis_backend.options, redis_namespace=other_namespace)
    async with (
        redis_repository(**redis_backend.options) as one,
        redis_repository(**options) as two,
    ):
        await one.register("g", [Registration("a", '{"app": 1}', T0, LEASE)], now=T0, force=False)
        await two.register("g", [Registration("a", '{"app": 2}', T0, LEASE)], now=T0, force=False)
        claimed = await one.claim("g", now=T0, limit=10, lease=A)
        assert [(r.name, r.spec) for r in claimed.records] == [("a", '{"app": 1}')]
        record = await two.get("g", "a")
        assert record is not None and (record.spec, record.locked_by) == ('{"app": 2}', None)
        assert await two.unregister("g", "a") is True
        assert await one.get("g", "a") is not None
        assert [r.name for r in (await one.list("g", limit=10)).records] == ["a"]


@pytest.mark.service("redis")
async def test_plain_server_is_detected(redis_backend: BackendConfig) -> None:
    async with redis_repository(**redis_backend.options) as repository:
        assert isinstance(repository, RedisRepository)
        assert isinstance(repository._client, redis.asyncio.Redis)


@pytest.mark.service("redis")
async def test_big_batches_are_split_but_all_applied(redis_backend: BackendConfig) -> None:
    names = [f"t{i:05d}" for i in range(1234)]
    async with redis_repository(**redis_backend.options) as repository:
        assert await repository.register("g", regs(names), now=T0, force=False) == []
        claimed = await repository.claim("g", now=T0, limit=2000, lease=A)
        assert len(claimed.records) == len(names)
        commits = [Commit(n, A, None) for n in names] + [Commit("gone", A, None)]
        assert await repository.commit("g", commits, now=T0) == ["gone"]
        assert (await repository.list("g", limit=10)).records == []


@pytest.mark.service("redis")
async def test_claim_drops_index_entries_without_a_row(redis_backend: BackendConfig) -> None:
    async with redis_repository(**redis_backend.options) as repository:
        assert isinstance(repository, RedisRepository)
        await repository.register("g", regs(["a"]), now=T0, force=False)
        keys = group_keys(redis_backend.options["redis_namespace"], "g")
        await repository._client.zadd(keys.due, {"debris": 0})
        claimed = await repository.claim("g", now=T0, limit=10, lease=A)
        assert [r.name for r in claimed.records] == ["a"]
        assert await repository._client.zscore(keys.due, "debris") is None
        assert await repository._client.zscore(keys.due, "a") is not None


# -- private servers: script cache flushes and restarts -------------------------------


@pytest.fixture
def durable_server() -> Iterator[RedisServer]:
    """A private server that fsyncs every write, so a SIGKILL loses nothing acknowledged."""
    require_service("redis", REDIS_SERVER is not None, "redis-server binary not found")
    with private_server("--appendonly", "yes", "--appendfsync", "always") as server:
        yield server


@pytest.mark.service("redis")
async def test_scripts_are_reloaded_after_script_flush(durable_server: RedisServer) -> None:
    async with redis_repository(redis_url=durable_server.url) as repository:
        await repository.register("g", regs(["a", "b"]), now=T0, force=False)
        flush(durable_server.url)
        assert len((await repository.claim("g", now=T0, limit=1, lease=A)).records) == 1
        flush(durable_server.url)
        assert await repository.register("g", regs(["c"]), now=T0, force=False) == []
        flush(durable_server.url)
        claimed = await repository.claim("g", now=T0, limit=5, lease=B)
        assert sorted(r.name for r in claimed.records) == ["b", "c"]


@pytest.mark.service("redis")
async def test_dropped_connections_are_reopened_silently(durable_server: RedisServer) -> None:
    async with redis_repository(redis_url=durable_server.url) as repository:
        await repository.register("g", regs(["a", "b"]), now=T0, force=False)
        client = redis.Redis.from_url(durable_server.url)
        try:
            assert client.client_kill_filter(_type="normal", skipme=True) >= 1
        finally:
            client.close()
        assert [r.name for r in (await repository.claim("g", now=T0, limit=1, lease=A)).records]
        assert (await repository.get("g", "b")) is not None


def flush(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.script_flush()
    finally:
        client.close()


@pytest.mark.service("redis")
async def test_restart_mid_run_recovers_and_loses_nothing_due(durable_server: RedisServer) -> None:
    names = [f"t{i:02d}" for i in range(30)]
    async with redis_repository(redis_url=durable_server.url, redis_timeout=2) as repository:
        await repository.register("g", regs(names), now=T0, force=False)
        first = await repository.claim("g", now=T0, limit=10, lease=A)
        done = [r.name for r in first.records[:5]]
        assert await repository.commit("g", [Commit(n, A, None) for n in done], now=T0) == []

        durable_server.kill()
        with pytest.raises(BackendUnavailableError):
            await repository.claim("g", now=T0, limit=10, lease=B)
        durable_server.start()

        # pooled connections died with the server and its script cache is empty: the
        # next call reconnects and reloads, and every row not committed is still there
        second = await repository.claim("g", now=T0 + S, limit=100, lease=B)
        assert sorted(r.name for r in second.records) == names[10:]
        # the runs claimed but not committed before the crash come back once their
        # lease expires (at-least-once); the ones claimed just now are still locked
        third = await repository.claim("g", now=T0 + LEASE, limit=100, lease=B)
        assert sorted(r.name for r in third.records) == sorted(r.name for r in first.records[5:])
        assert {*done, *(r.name for r in second.records), *(r.name for r in third.records)} == {
            *names
        }


@pytest.mark.service("redis")
async def test_app_survives_a_restart_mid_run(durable_server: RedisServer) -> None:
    clock = FakeClock()
    config = BackendConfig("redis", redis_repository, {"redis_url": durable_server.url})
    app = make_app(config, clock, redis_timeout=2)
    seen: list[datetime.datetime] = []

    @app.task(interval=10 * S)
    async def job(context: Context) -> None:
        seen.append(context.scheduled_at)

    async with running(app):
        await clock.advance(10)
        assert seen == [T0 + 10 * S]
        durable_server.kill()
        await clock.advance(15)
        assert seen == [T0 + 10 * S]
        durable_server.start()
        await clock.advance(60)
    assert seen[:5] == [T0 + i * 10 * S for i in range(1, 6)]
    assert seen == sorted(set(seen))


# -- Redis Cluster ----------------------------------------------------------------------


@pytest.mark.service("redis-cluster")
async def test_cluster_is_detected_and_groups_spread_over_nodes(
    redis_cluster: RedisClusterServers,
) -> None:
    namespace = unique_namespace()
    groups = [f"mytask:{p}" for p in range(12)] + ["{odd}:group"]
    for cluster_option in (None, True):
        async with redis_repository(
            redis_url=redis_cluster.url, redis_namespace=namespace, redis_cluster=cluster_option
        ) as repository:
            assert isinstance(repository, RedisRepository)
            assert isinstance(repository._client, redis.asyncio.RedisCluster)
            for group in groups:
                await repository.register(group, regs(["a", "b"]), now=T0, force=False)
                claimed = await repository.claim(group, now=T0, limit=1, lease=A)
                assert [r.name for r in claimed.records] == ["a"]
                await repository.unregister(group, "a")
                await repository.unregister(group, "b")
                await repository.register(group, regs(["x"]), now=T0, force=False)
    holding = 0
    for client in redis_cluster.clients():
        try:
            keys = list(client.scan_iter(match=f"pyncette:{{{namespace}:*"))
        finally:
            client.close()
        holding += bool(keys)
    assert holding == len(redis_cluster.nodes)


@pytest.mark.service("redis-cluster")
async def test_cluster_scripts_reload_after_flush(redis_cluster: RedisClusterServers) -> None:
    options = {"redis_url": redis_cluster.url, "redis_namespace": unique_namespace()}
    async with redis_repository(**options) as repository:
        await churn(repository)
        for client in redis_cluster.clients():
            try:
                client.script_flush()
            finally:
                client.close()
        await churn(repository)


async def churn(repository: Repository) -> None:
    for p in range(6):
        group = f"job:{p}"
        await repository.register(group, regs(["a"]), now=T0, force=False)
        claimed = await repository.claim(group, now=T0, limit=5, lease=A)
        assert [r.name for r in claimed.records] == ["a"]
        assert await repository.commit(group, [Commit("a", A, None)], now=T0) == []
