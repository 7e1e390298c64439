"""The request and capacity accounting of the DynamoDB backend (``pyncette.dynamodb.
accounting``): DynamoDB's billing rules on hand-made traces, and a recorded trace of the
real repository against the session's moto server."""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterator

import pytest

from backend_dynamodb import REGION, delete_table, isolate_aws_env, unique_table
from benchmarks.dynamodb_accounting import (
    PARTIQL,
    SINGLE,
    TRANSACTION,
    Recorder,
    Request,
    TracedRepository,
    executions,
    item_size,
    project,
)
from pyncette.dynamodb import DynamoDBRepository, dynamodb_repository
from pyncette.model import Lease
from pyncette.repository import Commit, History
from support import T0, A, B, reg


def test_item_size_follows_dynamodb_rules() -> None:
    # names and string values by UTF-8 bytes; numbers by significant digits
    assert item_size({"ab": {"S": "héllo"}}) == 2 + 6
    assert item_size({"n": {"N": "12345"}}) == 1 + 4
    assert item_size({"n": {"N": "-0.5000"}}) == 1 + 2
    assert item_size({"big": {"S": "x" * 2000}, "v": {"N": "1"}}) == 3 + 2000 + 1 + 2


def claim_run(call: int, ok: list[bool]) -> list[Request]:
    return [
        Request(call, "claim", "PutItem", good, 1, 2 if good else 0, 2 if good else 0)
        for good in ok
    ]


def test_single_is_the_trace_as_recorded() -> None:
    trace = [
        Request(1, "claim", "Query", True, read_bytes=5000),
        *claim_run(1, [True] * 30),
        *[Request(2, "commit", "DeleteItem", True, 1, 1, 1) for _ in range(30)],
    ]
    cost = project(trace, SINGLE)
    assert (cost.requests, cost.write_units, cost.read_units) == (61, 30 * 3 + 30 * 2, 2)
    assert executions(trace) == 30


def test_partiql_packs_25_statements_and_bills_each_like_a_single_write() -> None:
    ok = [True] * 28 + [False, False]  # two rows went to another instance
    trace = [Request(1, "claim", "Query", True, read_bytes=100), *claim_run(1, ok)]
    cost = project(trace, PARTIQL)
    assert cost.requests == 1 + 2
    # refused statements cost their table write, and write no index entry
    assert cost.write_units == 28 * 3 + 2 * 1
    assert cost.write_units == project(trace, SINGLE).write_units


def test_a_transaction_bills_twice_and_a_refusal_cancels_and_resends() -> None:
    clean = claim_run(1, [True] * 100)
    cost = project(clean, TRANSACTION)
    assert (cost.requests, cost.write_units) == (1, 2 * 100 * 3)
    refused = claim_run(1, [True] * 99 + [False])
    cost = project(refused, TRANSACTION)
    # the cancelled request (each item once), then the 99 others again, twice
    assert (cost.requests, cost.write_units) == (2, 100 + 2 * 99 * 3)


def test_only_the_writes_of_one_call_between_its_reads_share_a_request() -> None:
    trace = [
        Request(1, "claim", "Query", True),
        *claim_run(1, [True] * 3),
        Request(1, "claim", "Query", True),  # the claim looked further down the index
        *claim_run(1, [True] * 2),
        Request(2, "extend", "UpdateItem", True, 1, 2, 2),  # not batched
        Request(3, "register", "PutItem", True, 1, 1, 1),  # not batched
    ]
    assert project(trace, PARTIQL).requests == 1 + 1 + 1 + 1 + 2
    with pytest.raises(ValueError, match="Unknown plan"):
        project(trace, "bulk")


@pytest.fixture
def table(dynamodb_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    isolate_aws_env(monkeypatch)
    name = unique_table()
    yield name
    delete_table(dynamodb_server, name)


@pytest.mark.anyio
@pytest.mark.service("dynamodb")
async def test_a_recorded_claim_and_commit_on_moto(dynamodb_server: str, table: str) -> None:
    recorder = Recorder()
    async with dynamodb_repository(
        dynamodb_endpoint=dynamodb_server, dynamodb_region_name=REGION, dynamodb_table_name=table
    ) as inner:
        assert isinstance(inner, DynamoDBRepository)
        recorder.attach(inner.client)
        repository = TracedRepository(inner)
        names = [f"r{i:02d}" for i in range(30)]
        await repository.register("g", [reg(name, T0) for name in names], now=T0, force=False)
        recorder.clear()
        now = T0 + datetime.timedelta(seconds=1)
        claimed = await repository.claim("g", now=now, limit=30, lease=A)
        assert len(claimed.records) == 30
        later = now + datetime.timedelta(seconds=90)
        assert await repository.extend("g", names[0], A, locked_until=later)
        commits = [Commit(name, A, None) for name in names[:29]]
        commits.append(Commit(names[29], Lease(B), None))  # not its lease: refused
        assert await repository.commit("g", commits, now=now) == [names[29]]

    apis = [(r.operation, r.api, r.ok) for r in recorder.requests]
    assert apis[0] == ("claim", "Query", True)
    assert apis.count(("claim", "PutItem", True)) == 30
    assert apis.count(("commit", "DeleteItem", True)) == 29
    assert apis.count(("commit", "DeleteItem", False)) == 1
    assert apis.count(("extend", "UpdateItem", True)) == 1
    assert len(apis) == 62
    assert executions(recorder.requests) == 29
    # small items: a claim or a heartbeat is 1 table + 2 index writes (the index key
    # moves), a delete 1 + 1, a refusal 1
    single = project(recorder.requests, SINGLE)
    assert single.requests == 62
    assert single.write_units == 30 * 3 + 3 + 29 * 2 + 1
    assert single.read_units >= 1
    partiql = project(recorder.requests, PARTIQL)
    assert partiql.requests == 1 + 2 + 1 + 2
    assert partiql.write_units == single.write_units
    transaction = project(recorder.requests, TRANSACTION)
    assert transaction.requests == 1 + 1 + 1 + 2  # the commit's refusal cancels one attempt
    assert transaction.write_units == 2 * 30 * 3 + 3 + 30 + 2 * 29 * 2


@pytest.mark.anyio
@pytest.mark.service("dynamodb")
async def test_run_history_costs_one_request_per_25_executions(
    dynamodb_server: str, table: str
) -> None:
    """The same drain with and without a run history: the history adds one
    ``BatchWriteItem`` per 25 executions committed together and nothing else."""
    recorder = Recorder()
    kept = History(keep=10, retention=datetime.timedelta(days=7))
    async with dynamodb_repository(
        dynamodb_endpoint=dynamodb_server, dynamodb_region_name=REGION, dynamodb_table_name=table
    ) as inner:
        assert isinstance(inner, DynamoDBRepository)
        recorder.attach(inner.client)
        repository = TracedRepository(inner)
        names = [f"r{i:02d}" for i in range(50)]
        now = T0 + datetime.timedelta(seconds=1)
        sent: dict[History | None, list[tuple[str, str]]] = {}
        for group, history in (("plain", None), ("kept", kept)):
            await repository.register(group, [reg(n, T0) for n in names], now=T0, force=False)
            recorder.clear()
            assert len((await repository.claim(group, now=now, limit=50, lease=A)).records) == 50
            commits = [
                # one-off and recurring alike: a deleted row's run is counted too
                Commit(
                    name,
                    A,
                    None if i % 2 else now + datetime.timedelta(minutes=1),
                    '{"s":"succeeded"}',
                    history,
                )
                for i, name in enumerate(names)
            ]
            assert await repository.commit(group, commits, now=now) == []
            sent[history] = [(r.operation, r.api) for r in recorder.requests]
            assert all(r.ok for r in recorder.requests)
            assert executions(recorder.requests) == 50
        assert await repository.history("kept", names[0], limit=5) == ['{"s":"succeeded"}']

    extra = [request for request in sent[kept] if request not in sent[None]]
    assert extra == [("commit", "BatchWriteItem")] * 2
    assert len(extra) <= math.ceil(50 / 25)
    assert sorted(set(sent[kept]) - set(extra)) == sorted(set(sent[None]))
    assert len(sent[kept]) - len(extra) == len(sent[None]) == 1 + 50 + 50
