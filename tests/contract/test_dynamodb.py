"""Start-up, table schema, options, credentials and error handling of the DynamoDB backend,
against the session's moto server (see ``backend_dynamodb.py``)."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import re
import socket
from collections.abc import Iterator
from typing import Any, cast

import pytest
from botocore.awsrequest import AWSResponse

from backend_dynamodb import (
    REGION,
    fresh_table,
    isolate_aws_env,
    moto_client,
    open_repo,
    record_calls,
)
from backend_dynamodb import table_options as options
from pyncette.dynamodb import (
    DynamoDBRepository,
    DynamoDBTableError,
    dynamodb_repository,
    table_definition,
)
from pyncette.dynamodb.adopt import adopt_pyncette1
from pyncette.dynamodb.client import DUMMY_CREDENTIALS
from pyncette.dynamodb.history import history_partition
from pyncette.errors import BackendUnavailableError
from pyncette.model import ContinuationToken, Lease
from pyncette.repository import Commit, History
from pyncette.retry import Backoff
from pyncette.timeutil import to_epoch_us
from support import LEASE, ROOT, T0, A, B, S, reg

pytestmark = [pytest.mark.anyio, pytest.mark.service("dynamodb")]

DOC = ROOT / "docs" / "backends" / "dynamodb.md"

# The schema block of the user's backends.rst, restated.
BACKENDS_RST_SCHEMA: dict[str, Any] = {
    "AttributeDefinitions": [
        {"AttributeName": "partition_id", "AttributeType": "S"},
        {"AttributeName": "ready_at", "AttributeType": "S"},
        {"AttributeName": "task_id", "AttributeType": "S"},
    ],
    "KeySchema": [
        {"AttributeName": "partition_id", "KeyType": "HASH"},
        {"AttributeName": "task_id", "KeyType": "RANGE"},
    ],
    "LocalSecondaryIndexes": [
        {
            "IndexName": "ready_at",
            "KeySchema": [
                {"AttributeName": "partition_id", "KeyType": "HASH"},
                {"AttributeName": "ready_at", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        }
    ],
}


def documented_schema() -> dict[str, Any]:
    """The ```json block of docs/backends/dynamodb.md."""
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text("utf-8"), re.DOTALL)
    assert len(blocks) == 1
    schema: dict[str, Any] = json.loads(blocks[0])
    return schema


@pytest.fixture
def endpoint(dynamodb_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    isolate_aws_env(monkeypatch)
    return dynamodb_server


@pytest.fixture
def table(endpoint: str) -> Iterator[str]:
    yield from fresh_table(endpoint)


def described(endpoint: str, table: str) -> dict[str, Any]:
    client = moto_client(endpoint)
    try:
        return dict(client.describe_table(TableName=table)["Table"])
    finally:
        client.close()


def create_by_hand(endpoint: str, table: str, schema: dict[str, Any]) -> None:
    client = moto_client(endpoint)
    try:
        client.create_table(TableName=table, BillingMode="PAY_PER_REQUEST", **schema)
    finally:
        client.close()


# -- the table ---------------------------------------------------------------------------


def test_documented_schemas_agree() -> None:
    assert documented_schema() == BACKENDS_RST_SCHEMA == table_definition()


async def test_created_table_matches_the_documented_schema(endpoint: str, table: str) -> None:
    async with open_repo(endpoint, table):
        pass
    found = described(endpoint, table)
    schema = BACKENDS_RST_SCHEMA
    assert found["TableStatus"] == "ACTIVE"
    assert found["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert sorted(found["AttributeDefinitions"], key=str) == sorted(
        schema["AttributeDefinitions"], key=str
    )
    assert found["KeySchema"] == schema["KeySchema"]
    assert [
        {key: index[key] for key in ("IndexName", "KeySchema", "Projection")}
        for index in found["LocalSecondaryIndexes"]
    ] == schema["LocalSecondaryIndexes"]
    assert not found.get("GlobalSecondaryIndexes")


async def test_table_created_by_hand_with_skip_table_create(endpoint: str, table: str) -> None:
    create_by_hand(endpoint, table, documented_schema())
    async with open_repo(endpoint, table, dynamodb_skip_table_create=True) as repo:
        await repo.register("g", [reg("a", T0), reg("b", T0 + LEASE)], now=T0, force=False)
        result = await repo.claim("g", now=T0, limit=10, lease=A)
        assert [r.name for r in result.records] == ["a"]
        assert result.next_due_at == T0 + LEASE


async def test_skip_table_create_without_a_table_fails_naming_it(endpoint: str, table: str) -> None:
    with pytest.raises(DynamoDBTableError, match=re.escape(repr(table))):
        async with open_repo(endpoint, table, dynamodb_skip_table_create=True):
            pass
    client = moto_client(endpoint)
    try:
        assert table not in client.list_tables()["TableNames"]
    finally:
        client.close()


async def test_a_table_without_the_index_is_refused(endpoint: str, table: str) -> None:
    schema = {
        key: value for key, value in BACKENDS_RST_SCHEMA.items() if key != "LocalSecondaryIndexes"
    }
    schema["AttributeDefinitions"] = [
        a for a in schema["AttributeDefinitions"] if a["AttributeName"] != "ready_at"
    ]
    create_by_hand(endpoint, table, schema)
    with pytest.raises(DynamoDBTableError, match="no local secondary index 'ready_at'"):
        async with open_repo(endpoint, table):
            pass


async def test_instances_starting_together_all_start(
    endpoint: str, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pyncette.dynamodb")

    async def start(i: int) -> None:
        async with open_repo(endpoint, table) as repo:
            await repo.register("g", [reg(f"t{i}", T0)], now=T0, force=False)

    await asyncio.gather(*(start(i) for i in range(6)))
    assert [r.getMessage() for r in caplog.records].count(f"Created DynamoDB table {table!r}") == 1
    async with open_repo(endpoint, table) as repo:
        assert len((await repo.list("g", limit=10)).records) == 6


async def test_items_are_laid_out_as_documented(endpoint: str, table: str) -> None:
    async with open_repo(endpoint, table, dynamodb_partition_prefix="app") as repo:
        at = T0 + datetime.timedelta(microseconds=5)
        await repo.register("grp:1", [reg("a", at, '{"x": 1}')], now=T0, force=False)
        client = moto_client(endpoint)
        try:
            key = {"partition_id": {"S": "app:grp:1"}, "task_id": {"S": "a"}}
            item = client.get_item(TableName=table, Key=key)["Item"]
            assert item["ready_at"] == {"S": "2030-01-01T00:00:00.000005Z#a"}
            assert item["scheduled_at"] == {"S": "2030-01-01T00:00:00.000005Z"}
            assert item["lease_duration"] == {"N": "60"}
            assert item["spec"] == {"S": '{"x": 1}'}
            assert "locked_by" not in item and "locked_until" not in item
            await repo.claim("grp:1", now=at, limit=1, lease=A)
            item = client.get_item(TableName=table, Key=key)["Item"]
            assert item["locked_by"] == {"S": A}
            assert item["locked_until"] == {"S": "2030-01-01T00:01:00.000005Z"}
            assert item["ready_at"] == {"S": "2030-01-01T00:01:00.000005Z#a"}
            assert int(item["version"]["N"]) == 2
        finally:
            client.close()


async def test_partition_prefixes_keep_apps_apart(endpoint: str, table: str) -> None:
    async with (
        open_repo(endpoint, table, dynamodb_partition_prefix="one") as one,
        open_repo(endpoint, table, dynamodb_partition_prefix="two") as two,
    ):
        await one.register("g", [reg("a", T0)], now=T0, force=False)
        assert await two.get("g", "a") is None
        assert (await two.claim("g", now=T0, limit=10, lease=A)).records == []
        assert [r.name for r in (await one.claim("g", now=T0, limit=10, lease=A)).records] == ["a"]


# -- options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"dynamodb_table_name": "ab"}, "dynamodb_table_name"),
        ({"dynamodb_table_name": "no spaces"}, "dynamodb_table_name"),
        ({"dynamodb_table_name": "x" * 256}, "dynamodb_table_name"),
        ({"dynamodb_partition_prefix": "a:b"}, "dynamodb_partition_prefix"),
        ({"dynamodb_partition_prefix": ""}, "dynamodb_partition_prefix"),
        ({"dynamodb_region_name": "EU WEST"}, "dynamodb_region_name"),
        ({"dynamodb_endpoint": "localhost:8000"}, "dynamodb_endpoint"),
        ({"dynamodb_skip_table_create": "maybe"}, "dynamodb_skip_table_create"),
        ({"dynamodb_tabel_name": "pyncette"}, "dynamodb_tabel_name"),
    ],
)
async def test_invalid_options_name_the_option(
    endpoint: str, extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        async with dynamodb_repository(**{**options(endpoint, "pyncette"), **extra}):
            pass


async def test_other_backends_options_are_ignored(endpoint: str, table: str) -> None:
    async with dynamodb_repository(**options(endpoint, table), redis_url="redis://x"):
        pass


async def test_a_region_is_required_without_an_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    isolate_aws_env(monkeypatch)
    with pytest.raises(ValueError, match="dynamodb_region_name"):
        async with dynamodb_repository():
            pass


# -- credentials -------------------------------------------------------------------------


def signing_key(repo: DynamoDBRepository) -> str:
    credentials = repo.client._request_signer._credentials  # type: ignore[attr-defined]
    return cast(str, credentials.access_key)


async def test_no_credentials_at_all_with_an_endpoint_uses_dummy_ones(
    dynamodb_server: str, monkeypatch: pytest.MonkeyPatch, table: str
) -> None:
    isolate_aws_env(monkeypatch, credentials=False)
    async with dynamodb_repository(
        dynamodb_endpoint=dynamodb_server, dynamodb_table_name=table
    ) as repository:
        repo = cast(DynamoDBRepository, repository)
        assert signing_key(repo) == DUMMY_CREDENTIALS[0]
        assert repo.client.meta.region_name == "us-east-1"
        await repo.register("g", [reg("a", T0)], now=T0, force=False)
        assert await repo.get("g", "a") is not None


async def test_ambient_credentials_are_used_when_present(endpoint: str, table: str) -> None:
    async with open_repo(endpoint, table) as repo:
        assert signing_key(repo) == "testing"


# -- errors ------------------------------------------------------------------------------


def inject_errors(repo: DynamoDBRepository, operation: str, code: str, times: int) -> list[str]:
    """Make the next ``times`` ``operation`` calls of the repository's real client fail
    with ``code`` (through botocore's before-call event, as botocore's Stubber does);
    later calls reach the server. Returns a list that records each injected error."""
    injected: list[str] = []

    def fail(**kwargs: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        if len(injected) >= times:
            return None
        injected.append(code)
        response = AWSResponse("http://injected", 400, {}, None)  # type: ignore[arg-type]
        parsed = {
            "Error": {"Code": code, "Message": "injected by the test"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }
        return response, parsed

    # A before-call handler may return a response (the stubs say it returns None).
    repo.client.meta.events.register(f"before-call.dynamodb.{operation}", fail)  # type: ignore[arg-type]
    return injected


@pytest.mark.parametrize(
    "code",
    ["ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"],
)
async def test_throttling_is_retried(endpoint: str, table: str, code: str) -> None:
    async with open_repo(endpoint, table) as repo:
        repo.caller.backoff = Backoff(initial=0.001)
        injected = inject_errors(repo, "PutItem", code, times=3)
        assert await repo.register("g", [reg("a", T0)], now=T0, force=False) == []
        assert injected == [code] * 3
        assert await repo.get("g", "a") is not None


async def test_throttling_that_never_ends_is_backend_unavailable(endpoint: str, table: str) -> None:
    async with open_repo(endpoint, table) as repo:
        repo.caller.backoff, repo.caller.attempts = Backoff(initial=0.001), 4
        injected = inject_errors(repo, "Query", "ThrottlingException", times=100)
        with pytest.raises(BackendUnavailableError, match="ThrottlingException"):
            await repo.claim("g", now=T0, limit=10, lease=A)
        assert len(injected) == 4


async def test_other_client_errors_are_not_retried(endpoint: str, table: str) -> None:
    async with open_repo(endpoint, table) as repo:
        injected = inject_errors(repo, "GetItem", "ValidationException", times=100)
        with pytest.raises(Exception, match="ValidationException"):
            await repo.get("g", "a")
        assert len(injected) == 1


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_endpoint_is_backend_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    isolate_aws_env(monkeypatch)
    with pytest.raises(BackendUnavailableError, match="Cannot reach DynamoDB"):
        async with dynamodb_repository(
            dynamodb_endpoint=f"http://127.0.0.1:{closed_port()}",
            dynamodb_region_name=REGION,
        ):
            pass


# -- claims under contention ---------------------------------------------------------------


async def test_claim_looks_further_when_candidates_are_taken(endpoint: str, table: str) -> None:
    """Another writer changes the first three candidates between the claim's query and its
    conditional writes: those writes are refused and the claim takes the next rows."""
    async with open_repo(endpoint, table) as repo:
        names = [f"t{i}" for i in range(10)]
        await repo.register(
            "g", [reg(n, T0 + i * LEASE / 100) for i, n in enumerate(names)], now=T0, force=False
        )
        other = moto_client(endpoint)
        raced: list[str] = []

        def race(params: dict[str, Any], **kwargs: Any) -> None:
            item = params.get("Item", {})
            if "locked_by" in item and len(raced) < 3:
                raced.append(item["task_id"]["S"])
                other.update_item(
                    TableName=table,
                    Key={"partition_id": item["partition_id"], "task_id": item["task_id"]},
                    UpdateExpression="ADD version :one",
                    ExpressionAttributeValues={":one": {"N": "1"}},
                )

        repo.client.meta.events.register("before-parameter-build.dynamodb.PutItem", race)
        try:
            result = await repo.claim("g", now=T0 + LEASE, limit=5, lease=A)
        finally:
            other.close()
        claimed = [r.name for r in result.records]
        assert len(raced) == 3 and not set(raced) & set(claimed)
        assert len(claimed) == 5
        assert claimed == sorted(claimed, key=names.index)
        assert result.next_due_at is not None and result.next_due_at <= T0 + LEASE


async def test_items_pyncette_did_not_write_are_ignored_and_left_alone(
    endpoint: str, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Pyncette 1.x with the partition prefix ``pyncette`` writes its instances of task
    ``g`` to the partition this app uses for group ``g``; they must not stop the app."""
    async with open_repo(endpoint, table) as repo:
        client = moto_client(endpoint)
        try:
            legacy = {
                "partition_id": {"S": "pyncette:g"},
                "task_id": {"S": "g:old"},
                "ready_at": {"S": "2000-01-01T00:00:00+00:00_g:old"},
                "execute_after": {"S": "2000-01-01T00:00:00+00:00"},
                "task_spec": {"S": '{"name": "old"}'},
                "version": {"N": "1"},
            }
            client.put_item(TableName=table, Item=legacy)
            await repo.register("g", [reg("a", T0), reg("b", T0 + LEASE)], now=T0, force=False)
            with caplog.at_level(logging.WARNING, logger="pyncette.dynamodb.repository"):
                first = await repo.claim("g", now=T0, limit=5, lease=A)
                later = await repo.claim("g", now=T0 + 2 * LEASE, limit=5, lease=A)
            assert [r.name for r in first.records] == ["a"]
            assert first.next_due_at == T0 + LEASE
            assert [r.name for r in later.records] == ["a", "b"]  # a's lease ran out
            warnings = [r for r in caplog.records if "did not write" in r.getMessage()]
            assert len(warnings) == 1 and "dynamodb_partition_prefix" in warnings[0].getMessage()
            assert await repo.get("g", "g:old") is None
            assert [r.name for r in (await repo.list("g", limit=10)).records] == ["a", "b"]
            stored = client.get_item(
                TableName=table,
                Key={"partition_id": legacy["partition_id"], "task_id": legacy["task_id"]},
            )["Item"]
            assert stored == legacy
        finally:
            client.close()


async def test_list_rejects_a_foreign_token(endpoint: str, table: str) -> None:
    async with open_repo(endpoint, table) as repo:
        with pytest.raises(ValueError, match="continuation token"):
            await repo.list("g", limit=5, continuation_token=ContinuationToken("not a token"))


async def test_stale_commit_after_forced_register_is_refused(endpoint: str, table: str) -> None:
    async with open_repo(endpoint, table) as repo:
        await repo.register("g", [reg("a", T0)], now=T0, force=False)
        await repo.claim("g", now=T0, limit=1, lease=A)
        assert await repo.register("g", [reg("a", T0)], now=T0, force=True) == []
        assert await repo.extend("g", "a", A, locked_until=T0 + LEASE) is False
        assert await repo.unlock("g", "a", A) is False
        assert await repo.commit("g", [], now=T0) == []
        assert await repo.commit("g", [Commit("a", Lease("lease-a"), None)], now=T0) == ["a"]
        assert await repo.get("g", "a") is not None


# -- run outcomes and history --------------------------------------------------------------

KEEP3 = History(keep=3, retention=datetime.timedelta(days=7))


def history_items(endpoint: str, table: str, partition_id: str) -> list[dict[str, Any]]:
    client = moto_client(endpoint)
    try:
        return list(
            client.query(
                TableName=table,
                KeyConditionExpression="partition_id = :p",
                ExpressionAttributeValues={":p": {"S": partition_id}},
            )["Items"]
        )
    finally:
        client.close()


async def run_times(repo: DynamoDBRepository, name: str, runs: int, history: History) -> None:
    """Register ``name`` in group ``g`` and run it ``runs`` times, outcome ``run <n>``."""
    await repo.register("g", [reg(name, T0)], now=T0, force=False)
    for n in range(runs):
        now = T0 + n * S
        assert [r.name for r in (await repo.claim("g", now=now, limit=1, lease=A)).records] == [
            name
        ]
        assert (
            await repo.commit("g", [Commit(name, A, now + S, f"run {n}", history)], now=now) == []
        )


async def test_history_items_are_laid_out_as_documented(endpoint: str, table: str) -> None:
    async with open_repo(endpoint, table, dynamodb_partition_prefix="app") as repo:
        await run_times(repo, "a", 1, KEEP3)
        client = moto_client(endpoint)
        try:
            key = {"partition_id": {"S": "app:g"}, "task_id": {"S": "a"}}
            row = client.get_item(TableName=table, Key=key)["Item"]
        finally:
            client.close()
        assert row["outcome"] == {"S": "run 0"}
        first = int(row["run"]["N"])
        assert first == to_epoch_us(T0) + 1  # numbered from the first write's time
        (entry,) = history_items(endpoint, table, 'app#history:["g","a"]')
        assert entry == {
            "partition_id": {"S": 'app#history:["g","a"]'},
            "task_id": {"S": str(first % 3)},
            "run": {"N": str(first)},
            "outcome": {"S": "run 0"},
            # the time to live: the write's time plus the retention, in epoch seconds
            "expires_at": {"N": str(int((T0 + KEEP3.retention).timestamp()))},
        }
        assert "ready_at" not in entry and "scheduled_at" not in entry


def test_a_history_partition_key_stays_within_dynamodbs_limit() -> None:
    assert history_partition("p", "g:1", 'a"b') == 'p#history:["g:1","a\\"b"]'
    long = history_partition("p", "g" * 1600, "ü" * 255)
    assert long.startswith("p#history:sha256:") and len(long.encode()) < 100
    assert long != history_partition("p", "g" * 1600, "ü" * 254 + "u")


async def test_the_ring_holds_keep_items_per_row(endpoint: str, table: str) -> None:
    async with open_repo(endpoint, table) as repo:
        await run_times(repo, "a", 8, KEEP3)
        items = history_items(endpoint, table, history_partition("pyncette", "g", "a"))
        assert len(items) == 3
        assert sorted(item["outcome"]["S"] for item in items) == ["run 5", "run 6", "run 7"]
        assert await repo.history("g", "a", limit=10) == ["run 7", "run 6", "run 5"]
        # fewer slots later: the newest still come first, older ones wait for their expiry
        await run_times(repo, "a", 1, History(keep=2, retention=KEEP3.retention))
        assert (await repo.history("g", "a", limit=10))[:2] == ["run 0", "run 7"]


async def test_history_items_are_invisible_to_claims_lists_and_gets(
    endpoint: str, table: str
) -> None:
    async with open_repo(endpoint, table) as repo:
        await run_times(repo, "a", 4, KEEP3)
        await repo.register("g", [reg("b", T0)], now=T0, force=False)
        await repo.claim("g", now=T0, limit=1, lease=A)
        assert await repo.commit("g", [Commit("b", A, None, "done", KEEP3)], now=T0) == []
        assert await repo.history("g", "b", limit=5) == ["done"]
        far = T0 + datetime.timedelta(days=1)
        claimed = await repo.claim("g", now=far, limit=100, lease=B)
        assert [r.name for r in claimed.records] == ["a"]
        assert claimed.next_due_at is None
        assert [r.name for r in (await repo.list("g", limit=100)).records] == ["a"]
        assert await repo.get("g", "b") is None
        # nor does any group's listing reach them, whatever the group's name
        for group in ('#history:["g","a"]', 'pyncette#history:["g","a"]', ""):
            assert (await repo.list(group, limit=100)).records == []
            assert (await repo.claim(group, now=far, limit=100, lease=B)).records == []


async def test_the_1x_adoption_leaves_history_items_alone(
    endpoint: str, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_repo(endpoint, table, dynamodb_partition_prefix="one") as repo:
        await run_times(repo, "a", 2, KEEP3)
    with caplog.at_level(logging.WARNING, logger="pyncette.dynamodb"):
        async with open_repo(endpoint, table, dynamodb_partition_prefix="two") as repo:
            assert await repo.history("g", "a", limit=5) == []
    assert not [r for r in caplog.records if "did not write" in r.getMessage()]
    async with open_repo(endpoint, table, dynamodb_partition_prefix="one") as repo:
        assert await adopt_pyncette1(repo, created=False) is None  # checked at start-up
        assert await repo.history("g", "a", limit=5) == ["run 1", "run 0"]


async def test_expired_entries_are_not_read(endpoint: str, table: str) -> None:
    async with open_repo(endpoint, table) as repo:
        short = History(keep=5, retention=datetime.timedelta(hours=1))
        await run_times(repo, "a", 2, short)
        expires = (T0 + short.retention).timestamp()
        repo.wall_clock = lambda: expires - 1
        assert await repo.history("g", "a", limit=5) == ["run 1", "run 0"]
        repo.wall_clock = lambda: expires + 1  # TTL deletes late: reads skip them anyway
        assert await repo.history("g", "a", limit=5) == []
        record = await repo.get("g", "a")
        assert record is not None and record.outcome == "run 1"


async def test_rows_written_before_outcomes_read_as_none(endpoint: str, table: str) -> None:
    async with open_repo(endpoint, table) as repo:
        client = moto_client(endpoint)
        try:
            client.put_item(
                TableName=table,
                Item={
                    "partition_id": {"S": "pyncette:g"},
                    "task_id": {"S": "old"},
                    "ready_at": {"S": "2030-01-01T00:00:00.000000Z#old"},
                    "scheduled_at": {"S": "2030-01-01T00:00:00.000000Z"},
                    "lease_duration": {"N": "60"},
                    "version": {"N": "3"},
                },
            )
        finally:
            client.close()
        record = await repo.get("g", "old")
        assert record is not None and record.outcome is None
        assert [r.outcome for r in (await repo.list("g", limit=5)).records] == [None]
        assert await repo.history("g", "old", limit=5) == []
        (claimed,) = (await repo.claim("g", now=T0, limit=1, lease=A)).records
        assert claimed.outcome is None
        assert await repo.commit("g", [Commit("old", A, T0 + S, "first", KEEP3)], now=T0) == []
        assert await repo.history("g", "old", limit=5) == ["first"]


async def test_registering_again_keeps_the_outcome_and_run_count(endpoint: str, table: str) -> None:
    async with open_repo(endpoint, table) as repo:
        await run_times(repo, "a", 2, KEEP3)
        for force in (False, True):
            assert await repo.register("g", [reg("a", T0)], now=T0 + S, force=force) == []
            record = await repo.get("g", "a")
            assert record is not None and record.outcome == "run 1"
        await repo.claim("g", now=T0, limit=1, lease=B)
        assert await repo.commit("g", [Commit("a", B, T0 + S, "run 2", KEEP3)], now=T0) == []
        assert await repo.history("g", "a", limit=5) == ["run 2", "run 1", "run 0"]


async def test_a_row_deleted_and_created_again_numbers_its_runs_above_the_old_ones(
    endpoint: str, table: str
) -> None:
    async with open_repo(endpoint, table) as repo:
        await run_times(repo, "a", 2, KEEP3)
        await repo.claim("g", now=T0 + 2 * S, limit=1, lease=A)
        assert await repo.commit("g", [Commit("a", A, None, "last", KEEP3)], now=T0 + 2 * S) == []
        later = T0 + datetime.timedelta(hours=1)
        await repo.register("g", [reg("a", later)], now=later, force=False)
        await repo.claim("g", now=later, limit=1, lease=B)
        assert await repo.unlock("g", "a", B, outcome="again", history=KEEP3, now=later)
        assert await repo.history("g", "a", limit=5) == ["again", "last", "run 1"]


async def test_history_writes_are_batched_after_the_commits(endpoint: str, table: str) -> None:
    async with open_repo(endpoint, table) as repo:
        names = [f"r{i:02d}" for i in range(30)]
        await repo.register("g", [reg(name, T0) for name in names], now=T0, force=False)
        await repo.claim("g", now=T0, limit=30, lease=A)
        sent = record_calls(repo)
        commits = [Commit(name, A, T0 + S, f"o{name}", KEEP3) for name in names]
        commits[-1] = Commit(names[-1], B, T0 + S, "refused", KEEP3)
        assert await repo.commit("g", commits, now=T0) == [names[-1]]
        assert sent[:30] == ["UpdateItem"] * 30
        assert sent[30:] == ["BatchWriteItem"] * 2  # 29 entries: 25 + 4
        for name in names[:-1]:
            assert await repo.history("g", name, limit=5) == [f"o{name}"]
        assert await repo.history("g", names[-1], limit=5) == []
        # a commit without a history is its one request, as before
        sent.clear()
        await repo.claim("g", now=T0 + S, limit=1, lease=A)
        await repo.commit("g", [Commit(names[0], A, T0 + 2 * S, "plain")], now=T0 + S)
        assert sent == ["Query", "PutItem", "UpdateItem"]


async def test_unprocessed_history_items_are_sent_again(endpoint: str, table: str) -> None:
    async with open_repo(endpoint, table) as repo:
        repo.caller.backoff = Backoff(initial=0.001)
        await repo.register("g", [reg("a", T0), reg("b", T0)], now=T0, force=False)
        await repo.claim("g", now=T0, limit=2, lease=A)
        deferred: list[int] = []

        def defer(
            params: dict[str, Any], **kwargs: Any
        ) -> tuple[AWSResponse, dict[str, Any]] | None:
            if deferred:
                return None
            (requests,) = json.loads(params["body"])["RequestItems"].values()
            deferred.append(len(requests))
            response = AWSResponse("http://injected", 200, {}, None)  # type: ignore[arg-type]
            return response, {"UnprocessedItems": {table: requests[1:]}}

        repo.client.meta.events.register("before-call.dynamodb.BatchWriteItem", defer)  # type: ignore[arg-type]
        commits = [Commit(name, A, T0 + S, f"o{name}", KEEP3) for name in ("a", "b")]
        assert await repo.commit("g", commits, now=T0) == []
        assert deferred == [2]
        # the first item was "written" by the injected answer; the other was sent again
        assert [await repo.history("g", name, limit=5) for name in ("a", "b")] in (
            [[], ["ob"]],
            [["oa"], []],
        )


async def test_history_that_cannot_be_written_is_logged_not_raised(
    endpoint: str, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_repo(endpoint, table) as repo:
        await repo.register("g", [reg("a", T0)], now=T0, force=False)
        await repo.claim("g", now=T0, limit=1, lease=A)
        injected = inject_errors(repo, "BatchWriteItem", "AccessDeniedException", times=100)
        with caplog.at_level(logging.WARNING, logger="pyncette.dynamodb"):
            assert await repo.commit("g", [Commit("a", A, T0 + S, "x", KEEP3)], now=T0) == []
        assert len(injected) == 1
        assert any("1 entries were not written" in r.getMessage() for r in caplog.records)
        record = await repo.get("g", "a")
        assert record is not None and record.outcome == "x" and record.locked_by is None
