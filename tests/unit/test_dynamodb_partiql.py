"""How the DynamoDB backend splits PartiQL statements into requests, and what its start-up
probe makes of a server's answers (the servers themselves: contract/test_dynamodb_batches.py)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from pyncette.dynamodb.client import Caller
from pyncette.dynamodb.partiql import BATCH_SIZE, Statements, _waves, probe

pytestmark = pytest.mark.anyio


class AnsweringClient:
    """Stands in for boto3's client: answers every statement of a batch with ``answer``
    (an error code, or ``None`` for success) and keeps the requests."""

    def __init__(self, answer: str | None) -> None:
        self.answer = answer
        self.requests: list[list[dict[str, Any]]] = []

    def batch_execute_statement(self, Statements: list[dict[str, Any]]) -> dict[str, Any]:
        self.requests.append(Statements)
        one = {} if self.answer is None else {"Error": {"Code": self.answer, "Message": "-"}}
        return {"Responses": [dict(one) for _ in Statements]}


def statements_on(client: AnsweringClient) -> Statements:
    return Statements(client, Caller("here", anyio.CapacityLimiter(1)), "table")  # type: ignore[arg-type]


def test_distinct_items_go_25_to_a_request_in_one_wave() -> None:
    keys = [("p", f"n{i}") for i in range(60)]
    assert [[len(chunk) for chunk in wave] for wave in _waves(keys)] == [[25, 25, 10]]
    assert BATCH_SIZE == 25


def test_an_item_written_again_goes_in_a_later_wave() -> None:
    keys = [("p", "a"), ("p", "b"), ("p", "a"), ("q", "a"), ("p", "a")]
    assert _waves(keys) == [[[0, 1, 3]], [[2]], [[4]]]


@pytest.mark.parametrize(
    ("answer", "batches"),
    [
        ("ConditionalCheckFailed", True),  # DynamoDB, DynamoDB Local
        (None, False),  # a server that ignores the conditions
        ("AccessDenied", False),  # an IAM policy without PartiQLUpdate / PartiQLDelete
        ("ValidationError", False),  # a server that cannot parse the statements
    ],
)
async def test_the_probe_trusts_only_refused_conditions(answer: str | None, batches: bool) -> None:
    client = AnsweringClient(answer)
    assert await probe(statements_on(client)) is batches
    (request,) = client.requests
    assert len(request) == 4  # every statement shape, each on a key no row can have
    assert all({"S": ":pyncette-probe"} in s["Parameters"] for s in request)


def test_a_table_name_that_cannot_be_quoted_is_refused() -> None:
    with pytest.raises(ValueError, match="table name"):
        Statements(AnsweringClient(None), Caller("x", anyio.CapacityLimiter(1)), 'a"b')  # type: ignore[arg-type]
