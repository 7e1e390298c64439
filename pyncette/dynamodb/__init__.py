"""Amazon DynamoDB backend: ``Pyncette(repository_factory=dynamodb_repository, ...)``.

Options: ``dynamodb_region_name`` (default: boto3's), ``dynamodb_table_name`` (default
``pyncette``), ``dynamodb_skip_table_create`` (default ``False``: create the table if it
is missing), ``dynamodb_endpoint`` (a local or private endpoint URL) and
``dynamodb_partition_prefix`` (default ``pyncette``; keeps apps apart in one table).
Credentials are boto3's ambient ones.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread

from pyncette.dynamodb.adopt import adopt_pyncette1
from pyncette.dynamodb.client import MAX_CONCURRENCY, Caller, open_client
from pyncette.dynamodb.partiql import Statements, probe
from pyncette.dynamodb.repository import DynamoDBRepository
from pyncette.dynamodb.settings import DynamoDBSettings
from pyncette.dynamodb.table import DynamoDBTableError, ensure_table, table_definition
from pyncette.repository import Repository
from pyncette.urls import mask_url

__all__ = [
    "DynamoDBRepository",
    "DynamoDBSettings",
    "DynamoDBTableError",
    "dynamodb_repository",
    "table_definition",
]

logger = logging.getLogger(__name__)


@asynccontextmanager
async def dynamodb_repository(**options: Any) -> AsyncIterator[Repository]:
    """Open a boto3 client, make sure the table exists (creating it unless
    ``dynamodb_skip_table_create``) and yield the repository; closes the client on exit.
    Takes the ``dynamodb_*`` options described in this module's docstring."""
    settings = DynamoDBSettings.from_options(options)
    limiter = anyio.CapacityLimiter(MAX_CONCURRENCY)
    client = await anyio.to_thread.run_sync(open_client, settings, limiter=limiter)
    try:
        where = f"table {settings.table_name!r} at {mask_url(client.meta.endpoint_url)}"
        caller = Caller(where, limiter)
        created = await ensure_table(
            client, caller, settings.table_name, create=not settings.skip_table_create
        )
        statements = Statements(client, caller, settings.table_name)
        batches = await probe(statements)
        logger.debug(
            "Using DynamoDB %s, %s",
            where,
            "PartiQL batches" if batches else "one item per request",
        )
        repository = DynamoDBRepository(
            client,
            caller,
            settings.table_name,
            settings.partition_prefix,
            statements if batches else None,
        )
        await adopt_pyncette1(repository, created=created)  # 1.x items under this prefix
        yield repository
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(client.close, limiter=limiter)
