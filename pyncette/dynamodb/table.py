"""The table: its definition (``table.json``, the schema documented for users who create
it by hand) and making sure it exists at start-up."""

from __future__ import annotations

import importlib.resources
import json
import logging
from typing import TYPE_CHECKING, Any, Literal

import botocore.exceptions as bex

from pyncette.dynamodb.client import Caller, TableNotFound
from pyncette.errors import PyncetteException

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)

BILLING_MODE: Literal["PAY_PER_REQUEST"] = "PAY_PER_REQUEST"
WAIT_DELAY = 1
"""Seconds between checks while a new table is being created."""
WAIT_ATTEMPTS = 300


class DynamoDBTableError(PyncetteException):
    """The table is missing (with ``dynamodb_skip_table_create=True``) or does not have
    the documented schema."""


def table_definition() -> dict[str, Any]:
    """Attribute definitions, key schema and index of the table, as documented."""
    text = importlib.resources.files(__package__).joinpath("table.json").read_text("utf-8")
    definition: dict[str, Any] = json.loads(text)
    return definition


async def ensure_table(client: DynamoDBClient, call: Caller, name: str, *, create: bool) -> bool:
    """Wait until table ``name`` is ACTIVE, creating it first if it is missing and
    ``create`` is true; return whether it was missing (so holds nothing from before).
    Instances starting together may all try to create it: one succeeds, the others see
    it in use and wait like everyone else."""
    missing = False
    try:
        table = await _describe(client, call, name)
    except TableNotFound:
        if not create:
            raise DynamoDBTableError(
                f"DynamoDB table {name!r} does not exist at {call.where}; create it with the "
                "documented schema, or drop dynamodb_skip_table_create to have it created"
            ) from None
        missing = True
        await _create(client, call, name)
        table = await _wait(client, call, name)
    else:
        if table.get("TableStatus") != "ACTIVE":
            table = await _wait(client, call, name)
    check_schema(name, table)
    return missing


async def _create(client: DynamoDBClient, call: Caller, name: str) -> None:
    definition = table_definition()
    try:
        await call(
            lambda: client.create_table(TableName=name, BillingMode=BILLING_MODE, **definition)
        )
    except bex.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
            raise
        logger.debug("DynamoDB table %r is being created by someone else", name)
    else:
        logger.info("Created DynamoDB table %r", name)


async def _wait(client: DynamoDBClient, call: Caller, name: str) -> dict[str, Any]:
    waiter = client.get_waiter("table_exists")
    try:
        await call(
            lambda: waiter.wait(
                TableName=name, WaiterConfig={"Delay": WAIT_DELAY, "MaxAttempts": WAIT_ATTEMPTS}
            )
        )
    except bex.WaiterError as exc:
        raise DynamoDBTableError(
            f"DynamoDB table {name!r} at {call.where} did not become ACTIVE: {exc}"
        ) from exc
    return await _describe(client, call, name)


async def _describe(client: DynamoDBClient, call: Caller, name: str) -> dict[str, Any]:
    response = await call(lambda: client.describe_table(TableName=name))
    return dict(response["Table"])


def _keys(schema: Any) -> list[tuple[str, str]]:
    return [(key["AttributeName"], key["KeyType"]) for key in schema or ()]


def check_schema(name: str, table: dict[str, Any]) -> None:
    """Refuse a table whose keys or due-time index differ from the definition."""
    expected = table_definition()
    problems: list[str] = []
    if _keys(table.get("KeySchema")) != _keys(expected["KeySchema"]):
        problems.append(f"key schema {_keys(table.get('KeySchema'))}")
    types = {a["AttributeName"]: a["AttributeType"] for a in table.get("AttributeDefinitions", ())}
    for attribute in expected["AttributeDefinitions"]:
        if types.get(attribute["AttributeName"]) != attribute["AttributeType"]:
            problems.append(f"attribute {attribute['AttributeName']!r} is not of type S")
    (want,) = expected["LocalSecondaryIndexes"]
    found = [
        index
        for index in table.get("LocalSecondaryIndexes") or ()
        if index.get("IndexName") == want["IndexName"]
    ]
    if not found:
        problems.append(f"no local secondary index {want['IndexName']!r}")
    else:
        if _keys(found[0].get("KeySchema")) != _keys(want["KeySchema"]):
            problems.append(f"index key schema {_keys(found[0].get('KeySchema'))}")
        projection = found[0].get("Projection", {}).get("ProjectionType")
        if projection != want["Projection"]["ProjectionType"]:
            problems.append(f"index projection {projection}, not ALL")
    if problems:
        raise DynamoDBTableError(
            f"DynamoDB table {name!r} does not have the expected schema: {'; '.join(problems)}"
        )
