"""The DynamoDB backend's PartiQL batches (``pyncette/dynamodb/partiql.py``), against
DynamoDB Local, which runs them as DynamoDB does; and the fallback to one item per
request on moto, which does not."""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from backend_dynamodb import (
    delete_table,
    fresh_table,
    isolate_aws_env,
    moto_client,
    open_repo,
    record_calls,
    unique_table,
)
from pyncette.dynamodb import DynamoDBRepository
from pyncette.errors import BackendUnavailableError
from pyncette.repository import Commit, History
from pyncette.retry import Backoff
from support import LEASE, T0, A, B, S, reg

pytestmark = [pytest.mark.anyio, pytest.mark.service("dynamodb-local")]

KEEP3 = History(keep=3, retention=datetime.timedelta(days=7))


@pytest.fixture
def endpoint(dynamodb_local_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    isolate_aws_env(monkeypatch)
    return dynamodb_local_server


@pytest.fixture
def table(endpoint: str) -> Iterator[str]:
    yield from fresh_table(endpoint)


def answer_batches(repo: DynamoDBRepository, code: str, times: int) -> list[int]:
    """Answer the next ``times`` ``BatchExecuteStatement`` requests without sending them,
    every statement failed with ``code``; returns the sizes of the requests answered."""
    answered: list[int] = []

    def fail(params: dict[str, Any], **kwargs: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        if len(answered) >= times:
            return None
        count = len(json.loads(params["body"])["Statements"])
        answered.append(count)
        response = AWSResponse("http://injected", 200, {}, None)  # type: ignore[arg-type]
        error = {"Error": {"Code": code, "Message": "injected by the test"}}
        return response, {"Responses": [dict(error) for _ in range(count)]}

    repo.client.meta.events.register("before-call.dynamodb.BatchExecuteStatement", fail)  # type: ignore[arg-type]
    return answered


async def test_dynamodb_local_gets_batches(endpoint: str, table: str) -> None:
    async with open_repo(endpoint, table) as repo:
        assert repo.statements is not None


@pytest.mark.service("dynamodb")
async def test_moto_gets_one_item_per_request(
    dynamodb_server: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """moto 5.2.5 cannot parse the statements (or reports refused conditions as
    successes): the probe says so, and the repository writes one item per request."""
    isolate_aws_env(monkeypatch)
    name = unique_table()
    try:
        with caplog.at_level(logging.INFO, logger="pyncette.dynamodb"):
            async with open_repo(dynamodb_server, name) as repo:
                assert repo.statements is None
                await repo.register("g", [reg("a", T0)], now=T0, force=False)
                sent = record_calls(repo)
                assert [r.name for r in (await repo.claim("g", now=T0, limit=5, lease=A)).records]
                assert sent == ["Query", "PutItem"]
        assert "one item per request" in caplog.text
        client = moto_client(dynamodb_server)
        try:
            items = client.scan(TableName=name)["Items"]
        finally:
            client.close()
        assert {item["partition_id"]["S"] for item in items} <= {"pyncette:g", "pyncette:"}
    finally:
        delete_table(dynamodb_server, name)


async def test_a_claim_and_a_commit_of_100_take_nine_requests(endpoint: str, table: str) -> None:
    async with open_repo(endpoint, table) as repo:
        names = [f"r{i:03d}" for i in range(100)]
        await repo.register("g", [reg(n, T0) for n in names], now=T0, force=False)
        sent = record_calls(repo)
        claimed = await repo.claim("g", now=T0, limit=100, lease=A)
        assert [r.name for r in claimed.records] == names
        assert all(r.locked_by == A and r.locked_until == T0 + LEASE for r in claimed.records)
        assert sent == ["Query"] + ["BatchExecuteStatement"] * 4
        assert (await repo.claim("g", now=T0, limit=100, lease=B)).records == []

        sent.clear()
        later = T0 + datetime.timedelta(hours=1)
        commits = [
            Commit(n, A, None if i % 3 == 0 else later, "done" if i % 2 else None)
            for i, n in enumerate(names)
        ]
        assert await repo.commit("g", commits, now=T0 + S) == []
        assert sent == ["BatchExecuteStatement"] * 4
        for i, name in enumerate(names):
            record = await repo.get("g", name)
            if i % 3 == 0:
                assert record is None
                continue
            assert record is not None
            assert (record.scheduled_at, record.locked_by) == (later, None)
            assert record.outcome == ("done" if i % 2 else None)
        # released rows are claimable again at their new time, not before
        assert (await repo.claim("g", now=later - S, limit=100, lease=B)).records == []
        again = await repo.claim("g", now=later, limit=100, lease=B)
        assert len(again.records) == 66


async def test_a_claim_skips_rows_another_writer_changed(endpoint: str, table: str) -> None:
    """Between the claim's query and its statements another writer changes three
    candidates: their statements are refused, and the claim takes the next rows."""
    async with open_repo(endpoint, table) as repo:
        names = [f"t{i}" for i in range(10)]
        await repo.register(
            "g", [reg(n, T0 + i * LEASE / 100) for i, n in enumerate(names)], now=T0, force=False
        )
        other = moto_client(endpoint)
        raced: list[str] = []

        def race(params: dict[str, Any], **kwargs: Any) -> None:
            for statement in params.get("Statements", []):
                if len(raced) < 3 and statement["Statement"].startswith("UPDATE"):
                    key = {
                        "partition_id": statement["Parameters"][4],
                        "task_id": statement["Parameters"][5],
                    }
                    raced.append(key["task_id"]["S"])
                    other.update_item(
                        TableName=table,
                        Key=key,
                        UpdateExpression="ADD version :one",
                        ExpressionAttributeValues={":one": {"N": "1"}},
                    )

        repo.client.meta.events.register(
            "before-parameter-build.dynamodb.BatchExecuteStatement", race
        )
        try:
            result = await repo.claim("g", now=T0 + LEASE, limit=5, lease=A)
        finally:
            other.close()
        claimed = [r.name for r in result.records]
        assert raced == names[:3]
        assert claimed == names[3:8]
        for name in raced:
            record = await repo.get("g", name)
            assert record is not None and record.locked_by is None


async def test_commits_without_the_lease_are_lost_and_change_nothing(
    endpoint: str, table: str
) -> None:
    async with open_repo(endpoint, table) as repo:
        await repo.register("g", [reg(n, T0) for n in "abcd"], now=T0, force=False)
        await repo.claim("g", now=T0, limit=2, lease=A)  # a, b
        await repo.claim("g", now=T0, limit=2, lease=B)  # c, d
        commits = [
            Commit("a", A, None),
            Commit("b", B, None),  # held by A
            Commit("c", A, T0 + S, "x"),  # held by B
            Commit("d", B, T0 + S, "y"),
            Commit("gone", A, None),  # no such row
        ]
        assert sorted(await repo.commit("g", commits, now=T0)) == ["b", "c", "gone"]
        assert await repo.get("g", "a") is None
        b, c, d = [await repo.get("g", n) for n in "bcd"]
        assert b is not None and b.locked_by == A
        assert c is not None and (c.locked_by, c.outcome) == (B, None)
        assert d is not None and (d.locked_by, d.scheduled_at, d.outcome) == (None, T0 + S, "y")


async def test_a_name_twice_in_one_commit_is_applied_in_order(endpoint: str, table: str) -> None:
    """DynamoDB refuses a batch that writes one item twice: the second write goes in a
    later request, after the first (which released the lease, so it is refused)."""
    async with open_repo(endpoint, table) as repo:
        await repo.register("g", [reg("a", T0), reg("b", T0)], now=T0, force=False)
        await repo.claim("g", now=T0, limit=2, lease=A)
        sent = record_calls(repo)
        lost = await repo.commit(
            "g", [Commit("a", A, T0 + S), Commit("b", A, T0 + S), Commit("a", A, None)], now=T0
        )
        assert lost == ["a"]
        assert sent == ["BatchExecuteStatement"] * 2
        record = await repo.get("g", "a")
        assert record is not None and record.scheduled_at == T0 + S


async def test_commits_counting_runs_write_one_item_each(endpoint: str, table: str) -> None:
    """A commit that adds to the run history needs its run number back, which only
    ``UpdateItem`` returns: those go one per request, the others in batches."""
    async with open_repo(endpoint, table) as repo:
        names = [f"h{i}" for i in range(6)]
        await repo.register("g", [reg(n, T0) for n in names], now=T0, force=False)
        await repo.claim("g", now=T0, limit=6, lease=A)
        sent = record_calls(repo)
        commits = [
            Commit(n, A, T0 + S, f"o{n}", KEEP3 if i < 2 else None) for i, n in enumerate(names)
        ]
        assert await repo.commit("g", commits, now=T0) == []
        assert sorted(sent) == [
            "BatchExecuteStatement",
            "BatchWriteItem",
            "UpdateItem",
            "UpdateItem",
        ]
        assert [await repo.history("g", n, limit=5) for n in names[:3]] == [["oh0"], ["oh1"], []]


async def test_throttled_commit_statements_are_sent_again(endpoint: str, table: str) -> None:
    async with open_repo(endpoint, table) as repo:
        repo.caller.backoff = Backoff(initial=0.001)
        await repo.register("g", [reg(n, T0) for n in "ab"], now=T0, force=False)
        await repo.claim("g", now=T0, limit=2, lease=A)
        answered = answer_batches(repo, "ThrottlingError", times=2)
        sent = record_calls(repo)  # sees only what the answering handler lets through
        assert await repo.commit("g", [Commit(n, A, None) for n in "ab"], now=T0) == []
        assert answered == [2, 2]
        assert sent == ["BatchExecuteStatement"]
        assert await repo.get("g", "a") is None and await repo.get("g", "b") is None


async def test_commit_statements_throttled_to_the_end_are_backend_unavailable(
    endpoint: str, table: str
) -> None:
    async with open_repo(endpoint, table) as repo:
        repo.caller.backoff, repo.caller.attempts = Backoff(initial=0.001), 3
        await repo.register("g", [reg("a", T0)], now=T0, force=False)
        await repo.claim("g", now=T0, limit=1, lease=A)
        answered = answer_batches(repo, "ProvisionedThroughputExceeded", times=100)
        with pytest.raises(BackendUnavailableError, match="throttled after 3 attempts"):
            await repo.commit("g", [Commit("a", A, None)], now=T0)
        assert answered == [1, 1, 1]
        record = await repo.get("g", "a")
        assert record is not None and record.locked_by == A


async def test_throttled_claim_statements_leave_their_rows_for_later(
    endpoint: str, table: str
) -> None:
    async with open_repo(endpoint, table) as repo:
        await repo.register("g", [reg(n, T0) for n in "ab"], now=T0, force=False)
        answered = answer_batches(repo, "ThrottlingError", times=1)
        assert (await repo.claim("g", now=T0, limit=2, lease=A)).records == []
        assert answered == [2]
        claimed = await repo.claim("g", now=T0, limit=2, lease=B)
        assert [(r.name, r.locked_by) for r in claimed.records] == [("a", B), ("b", B)]


async def test_other_statement_errors_are_raised_naming_the_code(endpoint: str, table: str) -> None:
    async with open_repo(endpoint, table) as repo:
        await repo.register("g", [reg("a", T0)], now=T0, force=False)
        answer_batches(repo, "AccessDenied", times=1)
        with pytest.raises(BackendUnavailableError, match="AccessDenied"):
            await repo.claim("g", now=T0, limit=1, lease=A)
