"""Redis-specific behaviour: option checks, key layout, script reloads, restarts, cluster."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from redis.crc import key_slot
from redis.utils import str_if_bytes

from backend_redis import (
    REDIS_SERVER,
    RedisClusterServers,
    RedisServer,
    delete_namespace,
    free_port,
    private_cluster,
    private_server,
    redis_tools_available,
    unique_namespace,
)
from backends import BackendConfig, require_service
from harness import T0, FakeClock, make_app, running
from pyncette import Context
from pyncette.clock import real_sleep
from pyncette.errors import BackendUnavailableError
from pyncette.model import Lease
from pyncette.redis import RedisRepository, RedisSettings, redis_repository, wakeups
from pyncette.redis.keys import group_keys, history_key, wake_channel
from pyncette.repository import Commit, History, Registration, Repository
from pyncette.timeutil import duration_us, to_epoch_us

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


@pytest.mark.parametrize("group", ["__static__", "mytask:3", "a}b{c", "{x}", "☃ x"])
@pytest.mark.parametrize("name", ["a", "rows", "}{", "{other}", "x:history:y", "☃"])
def test_history_keys_live_in_the_group_s_slot_apart_from_other_keys(group: str, name: str) -> None:
    keys = group_keys("ns", group)
    key = history_key("ns", group, name)
    assert key_slot(key.encode()) == key_slot(keys.rows.encode())
    assert key.startswith(f"pyncette:{{ns:{group.replace('{', '%7B').replace('}', '%7D')}}}:")
    assert key not in keys
    assert key not in {"pyncette:{ns:}:pyncette1", "pyncette:{ns:}:pyncette1-lock"}
    assert history_key("ns", group, "a") != history_key("ns", group + "x", "a")


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


# -- outcomes and run history ---------------------------------------------------------

DAY = datetime.timedelta(days=1)


@pytest.fixture(
    params=[
        pytest.param("redis_backend", marks=pytest.mark.service("redis"), id="redis"),
        pytest.param(
            "redis_cluster_backend", marks=pytest.mark.service("redis-cluster"), id="cluster"
        ),
    ]
)
def redis_config(request: pytest.FixtureRequest) -> BackendConfig:
    """The shared single server, then the test cluster."""
    config: BackendConfig = request.getfixturevalue(request.param)
    return config


@pytest.fixture
async def any_redis(redis_config: BackendConfig) -> AsyncIterator[RedisRepository]:
    async with redis_repository(**redis_config.options) as repository:
        assert isinstance(repository, RedisRepository)
        yield repository


async def test_history_is_a_capped_list_that_expires_after_its_retention(
    any_redis: RedisRepository,
) -> None:
    repository, client = any_redis, any_redis.client
    history = History(keep=3, retention=DAY)
    await repository.register("g", regs(["a"]), now=T0, force=False)
    for n in range(5):
        now = T0 + n * S
        await repository.claim("g", now=now, limit=1, lease=A)
        commits = [Commit("a", A, now + S, f"{n}", history)]
        assert await repository.commit("g", commits, now=now) == []
    key = history_key(repository.namespace, "g", "a")
    assert await client.lrange(key, 0, -1) == [b"4", b"3", b"2"]
    assert 0 < await client.pttl(key) <= DAY // datetime.timedelta(milliseconds=1)
    assert await repository.history("g", "a", limit=10) == ["4", "3", "2"]

    # an unlock writes it the same way, with its own policy
    await repository.claim("g", now=T0 + 5 * S, limit=1, lease=B)
    short = History(keep=2, retention=datetime.timedelta(seconds=30))
    assert await repository.unlock("g", "a", B, outcome="5", history=short, now=T0) is True
    assert await client.lrange(key, 0, -1) == [b"5", b"4"]
    assert 0 < await client.pttl(key) <= 30_000


async def test_a_policy_that_keeps_nothing_writes_no_history(any_redis: RedisRepository) -> None:
    repository = any_redis
    await repository.register("g", regs(["a", "b"]), now=T0, force=False)
    await repository.claim("g", now=T0, limit=2, lease=A)
    commits = [
        Commit("a", A, T0 + S, "x", History(keep=0, retention=DAY)),
        Commit("b", A, T0 + S, "y", History(keep=5, retention=datetime.timedelta(0))),
    ]
    assert await repository.commit("g", commits, now=T0) == []
    assert await repository.history("g", "a", limit=5) == []
    assert await repository.history("g", "b", limit=5) == []
    record = await repository.get("g", "b")
    assert record is not None and record.outcome == "y"


@pytest.mark.service("redis-cluster")
async def test_history_keys_are_on_the_node_of_their_group(
    redis_cluster: RedisClusterServers, redis_cluster_backend: BackendConfig
) -> None:
    groups = [f"job:{p}" for p in range(6)] + ["{odd}:group"]
    keep = History(keep=2, retention=DAY)
    async with redis_repository(**redis_cluster_backend.options) as repository:
        assert isinstance(repository, RedisRepository)
        for group in groups:
            await repository.register(group, regs(["a", "b}"]), now=T0, force=False)
            await repository.claim(group, now=T0, limit=2, lease=A)
            commits = [Commit("a", A, T0 + S, "1", keep), Commit("b}", A, None, "2", keep)]
            assert await repository.commit(group, commits, now=T0) == []
            assert await repository.history(group, "b}", limit=5) == ["2"]
        namespace = repository.namespace
    node_of: dict[str, int] = {}
    for node, client in enumerate(redis_cluster.clients()):
        try:
            for key in client.scan_iter(match=f"pyncette:{{{namespace}:*"):
                node_of[key.decode()] = node
        finally:
            client.close()
    for group in groups:
        home = node_of[group_keys(namespace, group).rows]
        assert node_of[history_key(namespace, group, "a")] == home
        assert node_of[history_key(namespace, group, "b}")] == home
    assert len(set(node_of.values())) == len(redis_cluster.nodes)


async def test_a_row_stored_before_outcomes_reads_without_one_and_takes_one(
    any_redis: RedisRepository,
) -> None:
    repository, client = any_redis, any_redis.client
    keys = group_keys(repository.namespace, "g")
    at, lease_us = to_epoch_us(T0), duration_us(LEASE)
    # the stored form of the previous version: no outcome part before the spec
    await client.hset(
        keys.rows, mapping={"a": f'{at},{lease_us},,0,s{{"n": 1}}', "b": f"{at},{lease_us},,0,n"}
    )
    await client.zadd(keys.due, {"a": at, "b": at})
    await client.zadd(keys.names, {"a": 0, "b": 0})
    old = await repository.get("g", "a")
    assert old is not None and (old.spec, old.outcome, old.scheduled_at) == ('{"n": 1}', None, T0)
    assert [(r.name, r.outcome) for r in (await repository.list("g", limit=5)).records] == [
        ("a", None),
        ("b", None),
    ]
    claimed = await repository.claim("g", now=T0, limit=5, lease=A)
    assert [(r.name, r.spec) for r in claimed.records] == [("a", '{"n": 1}'), ("b", None)]
    keep = History(keep=2, retention=DAY)
    commits = [Commit("a", A, T0 + S, '{"ok": "é"}', keep), Commit("b", A, T0 + S, "{}")]
    assert await repository.commit("g", commits, now=T0) == []
    a, b = await repository.get("g", "a"), await repository.get("g", "b")
    assert a is not None and (a.spec, a.outcome) == ('{"n": 1}', '{"ok": "é"}')
    assert a.scheduled_at == T0 + S
    assert b is not None and (b.spec, b.outcome) == (None, "{}")
    assert await repository.history("g", "a", limit=5) == ['{"ok": "é"}']
    # and the spec is still what a claim returns
    claimed = await repository.claim("g", now=T0 + S, limit=5, lease=B)
    assert [(r.name, r.spec) for r in claimed.records] == [("a", '{"n": 1}'), ("b", None)]


@pytest.mark.service("redis")
@pytest.mark.parametrize(
    "outcome", ["", "\x00", "o5,abc", ",,s,n,", '😀 \u2028 \\ "', "x" * 70_000]
)
async def test_any_text_is_stored_as_the_outcome(
    redis_backend: BackendConfig, outcome: str
) -> None:
    async with redis_repository(**redis_backend.options) as repository:
        spec = '{"spec": "s"}'
        await repository.register("g", [Registration("a", spec, T0, LEASE)], now=T0, force=False)
        await repository.claim("g", now=T0, limit=1, lease=A)
        assert await repository.unlock("g", "a", A, outcome=outcome, history=History(2, DAY))
        record = await repository.get("g", "a")
        assert record is not None and (record.outcome, record.spec) == (outcome, spec)
        assert await repository.history("g", "a", limit=2) == [outcome]
        claimed = await repository.claim("g", now=T0, limit=1, lease=B)
        assert [(r.spec, r.locked_by) for r in claimed.records] == [(spec, B)]
        assert await repository.commit("g", [Commit("a", B, T0 + S)], now=T0) == []
        record = await repository.get("g", "a")
        assert record is not None and (record.outcome, record.spec) == (outcome, spec)


async def test_registering_again_keeps_the_outcome(any_redis: RedisRepository) -> None:
    repository = any_redis
    await repository.register("g", regs(["a"]), now=T0, force=False)
    await repository.claim("g", now=T0, limit=1, lease=A)
    await repository.commit("g", [Commit("a", A, T0 + S, "done")], now=T0)
    spec = '{"new": true}'
    for force in (False, True):
        registration = Registration("a", spec, T0 + 2 * S, LEASE)
        assert await repository.register("g", [registration], now=T0, force=force) == []
        record = await repository.get("g", "a")
        assert record is not None and (record.outcome, record.spec) == ("done", spec)
    # a row unregistered (or deleted by its last run) and registered anew has none
    assert await repository.unregister("g", "a") is True
    await repository.register("g", regs(["a"]), now=T0, force=False)
    record = await repository.get("g", "a")
    assert record is not None and record.outcome is None


# -- wake-ups: sharded pub/sub on a cluster ---------------------------------------------


@pytest.mark.parametrize(
    ("versions", "sharded"),
    [
        (["7.0.15", "7.2.4", "8.0.1"], True),
        (["7.0.0"], True),
        (["7.0-rc1"], True),
        (["7.2.4", "6.2.14", "7.2.4"], False),  # a rolling upgrade: plain until it is done
        (["6.2.14"], False),
        (["5.0.7"], False),
        (["unknown"], False),
        ([], False),  # INFO denied: plain pub/sub works everywhere
    ],
)
def test_shard_channels_only_when_every_node_runs_redis_7(
    versions: list[str], sharded: bool
) -> None:
    assert wakeups.shard_channels_supported(versions) is sharded


def test_node_versions_read_one_or_many_info_replies() -> None:
    one = {"redis_version": "6.2.14", "redis_mode": "cluster"}
    assert wakeups.node_versions(one) == ["6.2.14"]
    many = {"127.0.0.1:7000": {"redis_version": "7.2.4"}, "127.0.0.1:7001": one}
    assert wakeups.node_versions(many) == ["7.2.4", "6.2.14"]


Heard = list[tuple[str, datetime.datetime]]


@contextlib.asynccontextmanager
async def listening(repository: Repository) -> AsyncIterator[tuple[asyncio.Future[None], Heard]]:
    """``repository.listen`` running in a task (cancelled on exit), and what it heard."""
    heard: Heard = []
    task = asyncio.ensure_future(repository.listen(lambda g, at: heard.append((g, at))))
    try:
        yield task, heard
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, BackendUnavailableError):
            await task


async def subscribers(client: AsyncRedis, kind: str, channel: str) -> int:
    """``PUBSUB NUMSUB`` (``kind="NUMSUB"``) or ``SHARDNUMSUB`` of ``channel`` on one node."""
    if kind == "NUMSUB":
        ((_, count),) = await client.pubsub_numsub(channel)
    else:
        ((_, count),) = await client.pubsub_shardnumsub(channel)
    return int(count)


async def until(done: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if await done():
            return
        await real_sleep(0.02)
    assert await done()


@contextlib.asynccontextmanager
async def cluster_wake_ups(
    redis_cluster: RedisClusterServers, options: dict[str, object]
) -> AsyncIterator[tuple[RedisRepository, RedisServer, list[AsyncRedis]]]:
    """A repository on the test cluster, the node owning its wake-up channel's slot and a
    client per node."""
    async with redis_repository(**options) as repository:
        assert isinstance(repository, RedisRepository)
        cluster = repository.client
        assert isinstance(cluster, redis.asyncio.RedisCluster)
        owner = cluster.get_node_from_key(wake_channel(repository.namespace))
        assert owner is not None
        (server,) = [node for node in redis_cluster.nodes if node.port == int(owner.port)]
        clients = [AsyncRedis(port=node.port) for node in redis_cluster.nodes]
        try:
            yield repository, server, clients
        finally:
            for client in clients:
                await client.aclose()


@pytest.mark.service("redis-cluster")
async def test_cluster_wake_ups_use_a_shard_channel_on_the_slot_owner(
    redis_cluster: RedisClusterServers, redis_cluster_backend: BackendConfig
) -> None:
    options = redis_cluster_backend.options
    async with (
        cluster_wake_ups(redis_cluster, options) as (repository, owner, clients),
        redis_repository(**options) as announcer,
        listening(repository) as (task, heard),
    ):
        channel = wake_channel(repository.namespace)
        assert key_slot(channel.encode()) == key_slot(f"{{{repository.namespace}}}".encode())
        owning = clients[redis_cluster.nodes.index(owner)]
        await until(lambda: subscribers_are(owning, "SHARDNUMSUB", channel, 1))
        for client in clients:
            assert await subscribers(client, "NUMSUB", channel) == 0
            if client is not owning:
                assert await subscribers(client, "SHARDNUMSUB", channel) == 0
        at = T0 + datetime.timedelta(microseconds=3)
        await announcer.announce("g{1}:x", at)
        await until(lambda: answered(heard))
        assert heard == [("g{1}:x", at)] and not task.done()


async def subscribers_are(client: AsyncRedis, kind: str, channel: str, count: int) -> bool:
    return await subscribers(client, kind, channel) == count


async def answered(heard: Heard) -> bool:
    return bool(heard)


@pytest.mark.service("redis-cluster")
async def test_cluster_listener_raises_when_its_connection_is_killed(
    redis_cluster: RedisClusterServers, redis_cluster_backend: BackendConfig
) -> None:
    async with cluster_wake_ups(redis_cluster, redis_cluster_backend.options) as (
        repository,
        owner,
        clients,
    ):
        channel = wake_channel(repository.namespace)
        owning = clients[redis_cluster.nodes.index(owner)]
        async with listening(repository) as (task, _):
            await until(lambda: subscribers_are(owning, "SHARDNUMSUB", channel, 1))
            assert await owning.client_kill_filter(_type="pubsub") >= 1
            with pytest.raises(BackendUnavailableError, match="wake-up channel"):
                await asyncio.wait_for(task, 10)
        # what the core does next: listen again, on the same node
        async with listening(repository) as (task, heard):
            await until(lambda: subscribers_are(owning, "SHARDNUMSUB", channel, 1))
            await repository.announce("g", T0)
            await until(lambda: answered(heard))
            assert not task.done()


@pytest.mark.service("redis-cluster")
async def test_a_cluster_older_than_redis_7_keeps_plain_pub_sub(
    redis_cluster: RedisClusterServers,
    redis_cluster_backend: BackendConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wakeups, "SHARDED_SINCE", (99, 0))  # as if every node were older
    options = redis_cluster_backend.options
    async with (
        cluster_wake_ups(redis_cluster, options) as (repository, _, clients),
        redis_repository(**options) as announcer,
        listening(repository) as (task, heard),
    ):
        channel = wake_channel(repository.namespace)

        async def subscribed() -> bool:
            counts = [await subscribers(client, "NUMSUB", channel) for client in clients]
            return sum(counts) == 1

        await until(subscribed)
        for client in clients:
            assert await subscribers(client, "SHARDNUMSUB", channel) == 0
        await announcer.announce("g", T0)  # PUBLISH, through whichever node
        await until(lambda: answered(heard))
        assert heard == [("g", T0)] and not task.done()


@contextlib.contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """``server`` stopped (SIGSTOP): its connections stay open but it answers nothing."""
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.process.send_signal(signal.SIGCONT)


@pytest.mark.service("redis-cluster")
async def test_a_silent_cluster_listener_is_detected_by_its_pings(
    redis_cluster: RedisClusterServers,
    redis_cluster_backend: BackendConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wakeups, "KEEPALIVE", 0.1)
    async with cluster_wake_ups(redis_cluster, redis_cluster_backend.options) as (
        repository,
        owner,
        clients,
    ):
        channel = wake_channel(repository.namespace)
        owning = clients[redis_cluster.nodes.index(owner)]
        async with listening(repository) as (task, _):
            await until(lambda: subscribers_are(owning, "SHARDNUMSUB", channel, 1))
            await real_sleep(1.0)  # ten rounds of pings, all answered
            assert not task.done()
            # paused well within the cluster's node timeout (5 s): no failover
            with paused(owner), pytest.raises(BackendUnavailableError, match="no reply"):
                await asyncio.wait_for(task, 3)


@pytest.mark.service("redis")
async def test_a_silent_listener_is_detected_by_its_pings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_service("redis", REDIS_SERVER is not None, "redis-server binary not found")
    monkeypatch.setattr(wakeups, "KEEPALIVE", 0.1)
    with private_server() as server:
        async with (
            redis_repository(redis_url=server.url) as repository,
            listening(repository) as (task, heard),
        ):
            for _ in range(250):  # until the subscription is in place
                await repository.announce("g", T0)
                await real_sleep(0.02)
                if heard:
                    break
            await real_sleep(1.0)
            assert heard and not task.done()
            with paused(server), pytest.raises(BackendUnavailableError, match="no reply"):
                await asyncio.wait_for(task, 3)


@pytest.mark.service("redis-cluster")
async def test_a_listener_whose_slot_moves_fails_and_listens_again_on_the_new_owner() -> None:
    require_service("redis-cluster", redis_tools_available(), "redis-server/redis-cli not found")
    # a cluster of its own: the shared one may hold keys in the slot, which pins it
    with private_cluster() as servers:
        clients = {node.port: AsyncRedis(port=node.port) for node in servers.nodes}
        try:
            async with redis_repository(redis_url=servers.url) as repository:
                assert isinstance(repository, RedisRepository)
                await move_slot_under_a_listener(repository, clients)
        finally:
            for client in clients.values():
                await client.aclose()


async def move_slot_under_a_listener(
    repository: RedisRepository, clients: dict[int, AsyncRedis]
) -> None:
    channel = wake_channel(repository.namespace)
    slot = key_slot(channel.encode())
    cluster = repository.client
    assert isinstance(cluster, redis.asyncio.RedisCluster)
    owner = cluster.get_node_from_key(channel)
    assert owner is not None
    (new_owner, *others) = [n for n in cluster.get_primaries() if n.port != owner.port]
    source, target = clients[int(owner.port)], clients[int(new_owner.port)]
    source_id = str_if_bytes(await cluster.cluster_myid(owner))
    target_id = str_if_bytes(await cluster.cluster_myid(new_owner))
    async with listening(repository) as (task, _):
        await until(lambda: subscribers_are(source, "SHARDNUMSUB", channel, 1))
        # move the (empty) slot as redis-cli --cluster reshard would
        await cluster.cluster_setslot(new_owner, source_id, slot, "IMPORTING")
        await cluster.cluster_setslot(owner, target_id, slot, "MIGRATING")
        for node in (new_owner, owner, *others):
            await cluster.cluster_setslot(node, target_id, slot, "NODE")
        with pytest.raises(BackendUnavailableError, match="ended the subscription"):
            await asyncio.wait_for(task, 5)
    # the core listens again; a client that has not seen the move yet is sent on by the
    # old owner's MOVED, and the try after that subscribes on the new owner
    failures = 0
    for _ in range(3):
        async with listening(repository) as (task, heard):
            if not await subscribed_or_failed(task, target, channel):
                failures += 1
                continue
            await repository.announce("g", T0)
            await until(lambda: answered(heard))
            assert await subscribers(source, "SHARDNUMSUB", channel) == 0
            break
    else:
        pytest.fail("never listened on the new owner")
    assert failures <= 1


async def subscribed_or_failed(task: asyncio.Future[None], node: AsyncRedis, channel: str) -> bool:
    """Wait until ``task`` listens on ``node`` (``True``) or fails with
    :class:`BackendUnavailableError` (``False``)."""

    async def settled() -> bool:
        return task.done() or await subscribers(node, "SHARDNUMSUB", channel) == 1

    await until(settled)
    if task.done():
        with pytest.raises(BackendUnavailableError, match="moved"):
            task.result()
        return False
    return True
