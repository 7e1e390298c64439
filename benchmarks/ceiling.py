"""The server's own ceiling for the drain's work: ``python ceiling.py CONFIG.json``.

Run on a store where ``worker.py``'s ``setup`` scenario registered ``n`` due one-off
instances, it drains them with the plain driver and no pyncette code in the loop: on
one connection, claim a batch (``batch_size`` rows, the statement or script pyncette's
claim amounts to) then commit it (delete the rows still held by the lease), until the
group is empty. That is the fewest requests the work needs, sent back to back, so its
executions/s is what the server sustains for this work from one client; pyncette's drain
rate is printed as a fraction of it.

Requests per batch, by backend (counted below as ``requests``):

* PostgreSQL (asyncpg, autocommit, prepared): the claim ``WITH picked AS (SELECT ctid …
  FOR UPDATE SKIP LOCKED LIMIT n) UPDATE … WHERE ctid = ANY(ARRAY(…)) RETURNING``, and the commit
  ``DELETE … USING unnest($names, $leases) RETURNING`` -- 2;
* MariaDB (asyncmy, ``READ COMMITTED``): ``SELECT … FOR UPDATE SKIP LOCKED``, ``UPDATE
  … WHERE name IN (…)``, ``COMMIT``; then ``DELETE … WHERE (name, locked_by) IN (…)``,
  ``COMMIT`` -- 5;
* SQLite (the ``sqlite3`` module itself, WAL, ``synchronous = NORMAL``): ``UPDATE …
  WHERE name IN (SELECT … ORDER BY due_at LIMIT n) RETURNING``, then ``DELETE …
  RETURNING`` of the rows named, with their leases, in two JSON arrays read back with
  ``json_each`` (pyncette's own statements; a ``VALUES`` list of 100 pairs instead costs
  SQLite 18% more instructions per execution), each autocommitted -- 2 calls, no server;
* Redis (redis-py): ``EVALSHA`` of pyncette's own ``claim.lua`` and ``commit.lua``
  (read from ``pyncette/redis/``, with ``row.lua`` prepended as pyncette does) -- 2;
  on Redis Cluster the same through redis-py's ``RedisCluster`` client, which loads the
  scripts on every master and sends each ``EVALSHA`` to the master holding the group's
  hash tag -- 2;
* DynamoDB (boto3, 16 threads, as pyncette's thread pool): one ``Query`` of the
  ``ready_at`` index, one conditional ``PutItem`` per row (the claim) and one conditional
  ``DeleteItem`` per row (the commit) -- 1 + 2 per row, the requests pyncette's DynamoDB
  backend sent when this was written.

Like ``worker.py`` it is run as a script and imports nothing from the ``benchmarks``
package, nor ``pyncette`` (it finds the ``.lua`` files without importing it).
"""

from __future__ import annotations

import asyncio
import datetime
import importlib.util
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

UTC = datetime.UTC


def epoch_us(at: datetime.datetime) -> int:
    return int(at.timestamp()) * 1_000_000 + at.microsecond


def lease() -> str:
    return secrets.token_hex(16)


def begin() -> tuple[float, float]:
    """The clock and this process's CPU time at the start of the drain."""
    return time.perf_counter(), time.process_time()


def finish(executions: int, requests: int, started: tuple[float, float]) -> dict[str, Any]:
    elapsed = time.perf_counter() - started[0]
    cpu = time.process_time() - started[1]
    return {
        "executions": executions,
        "requests": requests,
        "elapsed_s": elapsed,
        "rate": executions / elapsed if elapsed else None,
        "requests_per_execution": requests / executions if executions else None,
        "client_cpu_us": cpu / executions * 1e6 if executions else None,
    }


# -- PostgreSQL ---------------------------------------------------------------------------

PG_CLAIM = """
WITH picked AS (
    SELECT ctid FROM {t} WHERE task_group = $1 AND due_at <= $2
    ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED
)
UPDATE {t} SET locked_by = $4, due_at = $2 + {t}.lease_duration_us
WHERE ctid = ANY(ARRAY(SELECT ctid FROM picked))
RETURNING {t}.name, {t}.spec, {t}.scheduled_at, {t}.due_at
"""
PG_COMMIT = """
DELETE FROM {t} USING unnest($2::text[], $3::text[]) AS done(name, lease)
WHERE {t}.task_group = $1 AND {t}.name = done.name AND {t}.locked_by = done.lease
RETURNING {t}.name
"""


async def postgres(config: dict[str, Any]) -> dict[str, Any]:
    import asyncpg

    url = config["options"]["postgres_url"]
    table = '"' + config.get("table", "pyncette") + '"'
    connection = await asyncpg.connect(url)
    try:
        group = await connection.fetchval(f"SELECT min(task_group) FROM {table}")  # noqa: S608
        claim = await connection.prepare(PG_CLAIM.format(t=table))
        commit = await connection.prepare(PG_COMMIT.format(t=table))
        executions = requests = 0
        started = begin()
        while True:
            token = lease()
            now = epoch_us(datetime.datetime.now(UTC))
            rows = await claim.fetch(group, now, config["batch_size"], token)
            requests += 1
            if not rows:
                break
            names = [row[0] for row in rows]
            done = await commit.fetch(group, names, [token] * len(names))
            requests += 1
            executions += len(done)
        return finish(executions, requests, started)
    finally:
        await connection.close()


# -- MariaDB / MySQL ----------------------------------------------------------------------


async def mysql(config: dict[str, Any]) -> dict[str, Any]:
    import asyncmy

    options = config["options"]
    table = "`" + config.get("table", "pyncette") + "`"
    connection = await asyncmy.connect(
        host=options["mysql_host"],
        port=options["mysql_port"],
        user=options["mysql_user"],
        password=options.get("mysql_password", ""),
        db=options["mysql_database"],
        autocommit=False,
    )
    try:
        async with connection.cursor() as cursor:
            await cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            await cursor.execute(f"SELECT min(task_group) FROM {table}")  # noqa: S608
            group = (await cursor.fetchone())[0]
            await connection.commit()
            scan = (
                f"SELECT name, spec, scheduled_at, due_at, lease_duration_us FROM {table} "  # noqa: S608
                "WHERE task_group = %s AND due_at <= %s ORDER BY due_at LIMIT %s "
                "FOR UPDATE SKIP LOCKED"
            )
            executions = requests = 0
            started = begin()
            while True:
                token = lease().encode()
                now = epoch_us(datetime.datetime.now(UTC))
                await cursor.execute(scan, (group, now, config["batch_size"]))
                rows = await cursor.fetchall()
                requests += 1
                if not rows:
                    await connection.commit()
                    requests += 1
                    break
                names = [row[0] for row in rows]
                marks = ", ".join(["%s"] * len(names))
                await cursor.execute(
                    f"UPDATE {table} SET locked_by = %s, due_at = %s + lease_duration_us "  # noqa: S608
                    f"WHERE task_group = %s AND name IN ({marks})",
                    (token, now, group, *names),
                )
                await connection.commit()
                pairs = ", ".join(["(%s, %s)"] * len(names))
                params: list[Any] = [group]
                for name in names:
                    params += [name, token]
                await cursor.execute(
                    f"DELETE FROM {table} WHERE task_group = %s "  # noqa: S608
                    f"AND (name, locked_by) IN ({pairs})",
                    params,
                )
                executions += cursor.rowcount
                await connection.commit()
                requests += 4
        return finish(executions, requests, started)
    finally:
        connection.close()


# -- SQLite -------------------------------------------------------------------------------


def sqlite(config: dict[str, Any]) -> dict[str, Any]:
    import sqlite3

    table = '"' + config.get("table", "pyncette") + '"'
    connection = sqlite3.connect(config["options"]["sqlite_database"], isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        (group,) = connection.execute(f"SELECT min(task_group) FROM {table}").fetchone()  # noqa: S608
        claim = (
            f"UPDATE {table} SET locked_by = ?, due_at = ? + lease_duration_us "  # noqa: S608
            f"WHERE task_group = ? AND name IN (SELECT name FROM {table} "
            "WHERE task_group = ? AND due_at <= ? ORDER BY due_at LIMIT ?) "
            "RETURNING name, spec, scheduled_at, due_at"
        )
        commit = (
            f"DELETE FROM {table} WHERE task_group = ? "  # noqa: S608
            "AND name IN (SELECT value FROM json_each(?)) AND (name, locked_by) IN "
            "(SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') "
            "FROM json_each(?)) RETURNING name"
        )
        executions = requests = 0
        started = begin()
        while True:
            token = lease()
            now = epoch_us(datetime.datetime.now(UTC))
            rows = connection.execute(
                claim, (token, now, group, group, now, config["batch_size"])
            ).fetchall()
            requests += 1
            if not rows:
                break
            names = [row[0] for row in rows]
            pairs = [(name, token) for name in names]
            done = connection.execute(
                commit, (group, json.dumps(names), json.dumps(pairs))
            ).fetchall()
            executions += len(done)
            requests += 1
        return finish(executions, requests, started)
    finally:
        connection.close()


# -- Redis --------------------------------------------------------------------------------


def lua_source(name: str) -> str:
    """pyncette's script ``name`` as pyncette loads it: ``row.lua``, a newline, the body."""
    spec = importlib.util.find_spec("pyncette")
    assert spec is not None and spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations))) / "redis"
    prelude = (folder / "row.lua").read_text(encoding="utf-8")
    return prelude + "\n" + (folder / f"{name}.lua").read_text(encoding="utf-8")


async def redis(config: dict[str, Any]) -> dict[str, Any]:
    import redis.asyncio
    import redis.asyncio.cluster

    options = config["options"]
    client: Any
    if config["backend"] == "redis_cluster":
        client = redis.asyncio.cluster.RedisCluster.from_url(options["redis_url"])
        await client.initialize()
    else:
        client = redis.asyncio.Redis.from_url(options["redis_url"])
    group = config.get("group", "bench_drain")
    base = f"pyncette:{{{options['redis_namespace']}:{group}}}:"
    rows, due, names_key = base + "rows", base + "due", base + "names"
    try:
        claim = await client.script_load(lua_source("claim"))
        commit = await client.script_load(lua_source("commit"))
        batch = config["batch_size"]
        executions = requests = 0
        started = begin()
        while True:
            token = lease()
            now = epoch_us(datetime.datetime.now(UTC))
            out = await client.execute_command("EVALSHA", claim, 2, rows, due, now, batch, token)
            requests += 1
            names = [out[i].decode() for i in range(1, len(out), 4)]
            if not names:
                break
            entries = json.dumps([[name, token, False] for name in names])
            lost = await client.execute_command("EVALSHA", commit, 3, rows, due, names_key, entries)
            requests += 1
            executions += len(names) - len(lost)
        return finish(executions, requests, started)
    finally:
        await client.aclose()


# -- DynamoDB -----------------------------------------------------------------------------


def dynamodb(config: dict[str, Any], *, partiql: bool = False) -> dict[str, Any]:
    """One item per request (what pyncette sends to moto), or with ``partiql`` the same
    writes as PartiQL statements, 25 to a request (what it sends to DynamoDB Local and
    DynamoDB)."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    options = config["options"]
    client = boto3.client(
        "dynamodb",
        endpoint_url=options["dynamodb_endpoint"],
        region_name=options.get("dynamodb_region_name", "us-east-1"),
    )
    table = options["dynamodb_table_name"]
    prefix = options.get("dynamodb_partition_prefix", "pyncette")
    partition = f"{prefix}:{config.get('group', 'bench_drain')}"

    def stamp(at: datetime.datetime) -> str:
        return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"

    def lock(item: dict[str, Any], token: str, until: str) -> dict[str, Any] | None:
        version = item["version"]["N"]
        locked = {
            **item,
            "locked_by": {"S": token},
            "locked_until": {"S": until},
            "ready_at": {"S": until + "#" + item["task_id"]["S"]},
            "version": {"N": str(int(version) + 1)},
        }
        try:
            client.put_item(
                TableName=table,
                Item=locked,
                ConditionExpression="#v = :v",
                ExpressionAttributeNames={"#v": "version"},
                ExpressionAttributeValues={":v": {"N": version}},
            )
        except client.exceptions.ConditionalCheckFailedException:
            return None
        return locked

    def delete(item: dict[str, Any], token: str) -> bool:
        try:
            client.delete_item(
                TableName=table,
                Key={"partition_id": item["partition_id"], "task_id": item["task_id"]},
                ConditionExpression="#l = :l",
                ExpressionAttributeNames={"#l": "locked_by"},
                ExpressionAttributeValues={":l": {"S": token}},
            )
        except client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    quoted = f'"{table}"'
    lock_statement = (
        f'UPDATE {quoted} SET "locked_by"=? SET "locked_until"=? SET "ready_at"=? '  # noqa: S608
        'SET "version"=? WHERE "partition_id"=? AND "task_id"=? AND "version"=?'
    )
    delete_statement = (
        f'DELETE FROM {quoted} WHERE "partition_id"=? AND "task_id"=? AND "locked_by"=?'  # noqa: S608
    )

    def batch(statements: list[dict[str, Any]]) -> list[bool]:
        answers = client.batch_execute_statement(Statements=statements)["Responses"]  # type: ignore[arg-type]
        return ["Error" not in answer for answer in answers]

    def in_batches(pool: Any, statements: list[dict[str, Any]]) -> list[bool]:
        chunks = [statements[i : i + 25] for i in range(0, len(statements), 25)]
        return [ok for chunk in pool.map(batch, chunks) for ok in chunk]

    def lock_all(pool: Any, items: list[dict[str, Any]], token: str, until: str) -> list[Any]:
        if not partiql:
            locked = pool.map(lock, items, [token] * len(items), [until] * len(items))
            return [item for item in locked if item is not None]
        statements = [
            {
                "Statement": lock_statement,
                "Parameters": [
                    {"S": token},
                    {"S": until},
                    {"S": until + "#" + item["task_id"]["S"]},
                    {"N": str(int(item["version"]["N"]) + 1)},
                    item["partition_id"],
                    item["task_id"],
                    item["version"],
                ],
            }
            for item in items
        ]
        return [item for item, ok in zip(items, in_batches(pool, statements), strict=True) if ok]

    def delete_all(pool: Any, items: list[dict[str, Any]], token: str) -> list[bool]:
        if not partiql:
            return list(pool.map(delete, items, [token] * len(items)))
        statements = [
            {
                "Statement": delete_statement,
                "Parameters": [item["partition_id"], item["task_id"], {"S": token}],
            }
            for item in items
        ]
        return in_batches(pool, statements)

    def sent(count: int) -> int:
        return -(-count // 25) if partiql else count

    executions = requests = 0
    started = begin()
    with ThreadPoolExecutor(16) as pool:
        while True:
            token = lease()
            now = datetime.datetime.now(UTC)
            page = client.query(
                TableName=table,
                IndexName="ready_at",
                KeyConditionExpression="#p = :p AND #r < :r",
                ExpressionAttributeNames={"#p": "partition_id", "#r": "ready_at"},
                ExpressionAttributeValues={
                    ":p": {"S": partition},
                    ":r": {"S": stamp(now + datetime.timedelta(microseconds=1))},
                },
                Limit=config["batch_size"],
            )
            requests += 1
            items = page["Items"]
            if not items:
                break
            until = stamp(now + datetime.timedelta(seconds=60))
            locked = lock_all(pool, items, token, until)
            done = delete_all(pool, locked, token)
            requests += sent(len(items)) + sent(len(locked))
            executions += sum(done)
    return finish(executions, requests, started)


def main() -> None:
    with open(sys.argv[1]) as source:
        config = json.load(source)
    backend = config["backend"]
    if backend == "postgres":
        result = asyncio.run(postgres(config))
    elif backend == "mysql":
        result = asyncio.run(mysql(config))
    elif backend in ("redis", "redis_cluster"):
        result = asyncio.run(redis(config))
    elif backend == "sqlite":
        result = sqlite(config)
    elif backend == "dynamodb":
        result = dynamodb(config)
    elif backend == "dynamodb_local":
        result = dynamodb(config, partiql=True)
    else:
        raise SystemExit(f"no ceiling for {backend!r}")
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
