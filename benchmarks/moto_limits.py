"""What the moto DynamoDB server itself can do, measured with plain boto3 calls.

``python -m benchmarks.moto_limits [--sizes 1000,10000] [--writes 300] [--queries 20]``

The DynamoDB figures in ``docs/benchmarks.md`` are bounded by the server, not by the
adapter: this measures the two operations a claim and a commit are made of, with no
pyncette code in the loop, on a fresh ``moto_server`` and a table created from
``pyncette/dynamodb/table.json``:

* conditional ``PutItem`` from one thread and from 16 (each execution needs two
  conditional writes: the claim and the commit);
* the claim's query (the ``ready_at`` index of one partition, ``Limit`` 101) with
  ``--sizes`` items stored in the partition. DynamoDB reads only what the query
  returns; a server that reads the whole partition shows up as a cost growing with
  the size.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config

from benchmarks.local_servers import Moto
from pyncette.dynamodb.table import table_definition

PARTITION = "bench"


def client_for(moto: Moto) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=moto.endpoint,
        region_name="us-east-1",
        aws_access_key_id="moto",
        aws_secret_access_key="moto",  # noqa: S106 - moto accepts any credentials
        config=Config(max_pool_connections=16),
    )


def create_table(client: Any, name: str) -> None:
    client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST", **table_definition())


def fill(client: Any, table: str, count: int) -> None:
    """``count`` items in one partition, 25 per ``BatchWriteItem``."""
    for start in range(0, count, 25):
        requests = [
            {
                "PutRequest": {
                    "Item": {
                        "partition_id": {"S": PARTITION},
                        "task_id": {"S": f"t{i:08d}"},
                        "ready_at": {"S": f"{i:020d}_t{i:08d}"},
                    }
                }
            }
            for i in range(start, min(count, start + 25))
        ]
        pending: dict[str, Any] = {table: requests}
        while pending:
            pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems", {})


def conditional_puts(client: Any, table: str, count: int, threads: int) -> float:
    """Conditional ``PutItem`` calls per second from ``threads`` threads at once."""

    def put(i: int) -> None:
        client.put_item(
            TableName=table,
            Item={
                "partition_id": {"S": "writes"},
                "task_id": {"S": f"w{threads}_{i:08d}"},
                "ready_at": {"S": f"{i:020d}_w{threads}_{i:08d}"},
            },
            ConditionExpression="attribute_not_exists(task_id)",
        )

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(count)))
    return count / (time.perf_counter() - started)


def query_ms(client: Any, table: str, size: int, repeats: int) -> float:
    """Median milliseconds of the claim's index query on a partition of ``size`` items."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.query(
            TableName=table,
            IndexName="ready_at",
            KeyConditionExpression="#pk = :pk",
            ExpressionAttributeNames={"#pk": "partition_id"},
            ExpressionAttributeValues={":pk": {"S": PARTITION}},
            Limit=101,
            ConsistentRead=True,
        )
        timings.append((time.perf_counter() - started) * 1000)
        if response["Count"] != min(size, 101):
            raise RuntimeError(f"the query returned {response['Count']} of {size} items")
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000", help="items in the queried partition")
    parser.add_argument("--writes", type=int, default=300, help="conditional PutItem calls")
    parser.add_argument("--queries", type=int, default=20, help="queries per size")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    moto = Moto()
    try:
        client = client_for(moto)
        create_table(client, "writes")
        for threads in (1, 16):
            rate = conditional_puts(client, "writes", args.writes, threads)
            print(f"conditional PutItem, {threads} thread(s): {rate:,.0f}/s ({args.writes} calls)")
        print("\n| items in the partition | index query, Limit 101, median ms |")
        print("|---:|---:|")
        first: float | None = None
        for size in sizes:
            table = f"q{size}"
            create_table(client, table)
            fill(client, table, size)
            median = query_ms(client, table, size, args.queries)
            first = first or median
            print(f"| {size:,} | {median:.1f} ({median / first:.2f}x) |", flush=True)
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
