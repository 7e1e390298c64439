"""Provisioning a fresh, private store per benchmark run, and cleaning it up.

Every run gets its own database (PostgreSQL, MariaDB), key namespace (Redis), table
(DynamoDB on a moto server started here) or file (SQLite), because other people share
these servers. Redis Cluster runs get a namespace on a private three-master cluster that
is started here on first use and stopped when the command ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import string
import tempfile
from collections.abc import Iterator
from typing import Any

from benchmarks.local_servers import DynamoDBLocal, Moto, ServerProcess
from benchmarks.redis_servers import RedisClusterServers, private_cluster, redis_tools_available

BACKENDS = ("memory", "sqlite", "postgres", "mysql", "redis", "dynamodb")
"""What ``--backend all`` means."""
CHOICES = (*BACKENDS, "redis_cluster", "dynamodb_local", "null")
"""Every backend ``--backend`` accepts; ``redis_cluster`` and ``dynamodb_local``
(Amazon's DynamoDB Local, see local_servers.py; needs java) and ``null`` (the scheduler
alone, see ``null_repository`` in worker.py; this project only) only when named."""
SHARED = ("sqlite", "postgres", "mysql", "redis", "redis_cluster", "dynamodb", "dynamodb_local")
DYNAMODB = ("dynamodb", "dynamodb_local")
"""Backends whose store several processes can share (scale-out)."""
IN_PROCESS_CEILINGS = ("sqlite",)
"""Backends whose plain-driver ceiling (ceiling.py) does all its work in its own process
(SQLite's "server" is a library): its instructions and CPU time per execution compare
with a drain's."""
NO_PYNCETTE11 = ("redis_cluster", "null")
"""Backends Pyncette 1.1.0 cannot use (no Redis Cluster client; ``null`` is this project's
own repository): no ``--compare``."""

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
REDIS_URL = "redis://127.0.0.1:6379"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}

# Pyncette 1.1's MySQL schema without its expression index (which MariaDB cannot build):
# the same columns, written here from reading its installed module.
PYNCETTE11_MYSQL_TABLE = """
CREATE TABLE pyncette_tasks (
    name VARCHAR(256) PRIMARY KEY,
    parent_name VARCHAR(256),
    locked_until DOUBLE,
    locked_by VARCHAR(256),
    execute_after DOUBLE,
    task_spec TEXT
)
"""


def unique_name(prefix: str = "bench") -> str:
    """Letters and underscores only: Pyncette 1.1 rejects digits in table names."""
    return f"{prefix}_" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(10))


class Services:
    """Hands out fresh stores; owns the moto server and the Redis Cluster if one was
    needed."""

    def __init__(self) -> None:
        self._moto: Moto | None = None
        self._local: DynamoDBLocal | None = None
        self._cluster: RedisClusterServers | None = None
        self._stack = contextlib.ExitStack()

    def close(self) -> None:
        if self._moto is not None:
            self._moto.stop()
            self._moto = None
        if self._local is not None:
            self._local.stop()
            self._local = None
        self._cluster = None
        self._stack.close()

    def cluster(self) -> RedisClusterServers:
        """The private three-master cluster (no replicas), started on first use."""
        if self._cluster is None:
            if not redis_tools_available():
                raise RuntimeError("redis_cluster needs redis-server and redis-cli on PATH")
            self._cluster = self._stack.enter_context(private_cluster(masters=3))
            ports = ", ".join(str(node.port) for node in self._cluster.nodes)
            print(
                f"(redis_cluster: a private Redis Cluster of 3 masters, no replicas, on "
                f"127.0.0.1 ports {ports}; stopped when this command ends)",
                flush=True,
            )
        return self._cluster

    def moto(self) -> Moto:
        if self._moto is None:
            self._moto = Moto()
        return self._moto

    def dynamodb_local(self) -> DynamoDBLocal:
        """DynamoDB Local (``local_servers.py``), started on first use."""
        if self._local is None:
            self._local = DynamoDBLocal()
            print(f"(dynamodb_local: DynamoDB Local on {self._local.endpoint})", flush=True)
        return self._local

    def dynamodb_server(self, backend: str) -> ServerProcess:
        """``dynamodb``: moto; ``dynamodb_local``: DynamoDB Local."""
        return self.moto() if backend == "dynamodb" else self.dynamodb_local()

    @contextlib.contextmanager
    def store(self, backend: str, flavour: str = "ours") -> Iterator[dict[str, Any]]:
        """Yield worker options for a fresh store of ``backend``; drop it afterwards.

        ``flavour`` is ``"ours"`` or ``"pyncette11"`` (which gets its MySQL table
        pre-created without the index MariaDB cannot build).
        """
        if backend in ("memory", "null"):
            yield {}
        elif backend == "sqlite":
            folder = tempfile.mkdtemp(prefix="pyncette-bench-")
            try:
                yield {"sqlite_database": os.path.join(folder, "bench.db")}
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        elif backend == "postgres":
            name = unique_name()
            asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
            try:
                yield {"postgres_url": f"postgresql://postgres@127.0.0.1:5432/{name}"}
            finally:
                asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        elif backend == "mysql":
            name = unique_name()
            statements = [f"CREATE DATABASE `{name}`"]
            if flavour == "pyncette11":
                statements.append(f"USE `{name}`")
                statements.append(PYNCETTE11_MYSQL_TABLE)
            asyncio.run(_mysql(statements))
            options: dict[str, Any] = {
                "mysql_host": MYSQL["host"],
                "mysql_port": MYSQL["port"],
                "mysql_user": MYSQL["user"],
                "mysql_database": name,
            }
            # An empty mysql_password is rejected by this project's backend (reported as a
            # bug); with no password both packages connect the same way.
            if MYSQL["password"]:
                options["mysql_password"] = MYSQL["password"]
            if flavour == "pyncette11":
                options["mysql_skip_table_create"] = True
            try:
                yield options
            finally:
                asyncio.run(_mysql([f"DROP DATABASE IF EXISTS `{name}`"]))
        elif backend == "redis":
            namespace = unique_name()
            try:
                yield {"redis_url": REDIS_URL, "redis_namespace": namespace}
            finally:
                asyncio.run(_redis_cleanup(namespace))
        elif backend == "redis_cluster":
            cluster = self.cluster()
            namespace = unique_name()
            try:
                # the cluster client is picked by asking the node, as by default in apps
                yield {"redis_url": cluster.url, "redis_namespace": namespace}
            finally:
                for node in cluster.nodes:
                    asyncio.run(_redis_cleanup(namespace, node.url))
        elif backend in DYNAMODB:
            server = self.dynamodb_server(backend)
            table = unique_name()
            try:
                yield {
                    "dynamodb_endpoint": server.endpoint,
                    "dynamodb_region_name": "us-east-1",
                    "dynamodb_table_name": table,
                }
            finally:
                _dynamodb_drop(server.endpoint, table)
        else:
            raise ValueError(f"unknown backend {backend!r}")


async def _pg(statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(PG_ADMIN)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _mysql(statements: list[str]) -> None:
    import asyncmy

    connection = await asyncmy.connect(**MYSQL)
    try:
        async with connection.cursor() as cursor:
            for statement in statements:
                await cursor.execute(statement)
        await connection.commit()
    finally:
        connection.close()


async def _redis_cleanup(namespace: str, url: str = REDIS_URL) -> None:
    """Delete ``namespace``'s keys from the server at ``url`` (one cluster node at a time:
    a node refuses a multi-key command over several slots, so keys go one per command,
    in pipelines)."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"*{namespace}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await _unlink(client, batch)
                batch = []
        if batch:
            await _unlink(client, batch)
    finally:
        await client.aclose()


async def _unlink(client: Any, keys: list[bytes]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.unlink(key)
        await pipe.execute()


def _dynamodb_drop(endpoint: str, table: str) -> None:
    import boto3

    client = boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )
    with contextlib.suppress(Exception):
        client.delete_table(TableName=table)
