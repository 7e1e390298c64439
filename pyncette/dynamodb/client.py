"""The boto3 client, and the one place where its errors become pyncette's.

Every DynamoDB call goes through :class:`Caller`: it runs the blocking boto3 call in a
worker thread (bounded by a capacity limiter), retries throttling and transient server
errors with jittered exponential back-off, and translates what is left.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import boto3
import botocore.exceptions as bex
from botocore.config import Config

from pyncette.dynamodb.settings import DynamoDBSettings
from pyncette.errors import BackendUnavailableError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_CONCURRENCY = 16
"""Worker threads (and pooled HTTP connections) one repository uses at most."""

LOCAL_REGION = "us-east-1"
"""Signing region for a ``dynamodb_endpoint`` when no region is configured anywhere."""

DUMMY_CREDENTIALS = ("pyncette", "pyncette")
"""Used only with a ``dynamodb_endpoint`` and only when boto3 resolves no credentials:
local servers (DynamoDB Local, moto) want a signed request but not a real key."""

THROTTLED = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "LimitExceededException",
        "TransactionInProgressException",
    }
)
"""Error codes of requests DynamoDB refused without applying them: safe to resend."""

TRANSIENT = frozenset({"InternalServerError", "InternalFailure", "ServiceUnavailable"})

UNAUTHORIZED = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "ExpiredTokenException",
        "InvalidSignatureException",
        "MissingAuthenticationTokenException",
    }
)

CONNECTION_ERRORS = (bex.ConnectionError, bex.HTTPClientError)
CREDENTIAL_ERRORS = (bex.NoCredentialsError, bex.PartialCredentialsError)


class ConditionFailed(Exception):
    """A conditional write was refused. ``item`` is the stored item when the request
    asked for it (``ReturnValuesOnConditionCheckFailure="ALL_OLD"``) and it exists."""

    def __init__(self, item: dict[str, Any] | None) -> None:
        super().__init__("The conditional request failed")
        self.item = item


class TableNotFound(BackendUnavailableError):
    """The table does not exist (or is not visible with these credentials)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 8
    """Tries per call for throttling and server errors, the first included."""
    connection_attempts: int = 3
    """Tries per call when the endpoint cannot be reached."""
    base: float = 0.025
    cap: float = 2.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before try ``attempt + 1`` ("full jitter")."""
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


def open_client(settings: DynamoDBSettings) -> DynamoDBClient:
    """Build the client (blocking: run it in a worker thread).

    Credentials come from boto3's usual chain; dummy ones are filled in only when an
    explicit endpoint is configured and that chain finds nothing.
    """
    session = boto3.session.Session(region_name=settings.region_name)
    region = session.region_name
    if region is None:
        if settings.endpoint is None:
            raise ValueError(
                "dynamodb_region_name is not set and boto3 finds no default region "
                "(AWS_DEFAULT_REGION or ~/.aws/config); pass dynamodb_region_name"
            )
        region = LOCAL_REGION
    key_id = secret = None  # None: boto3's own chain
    if settings.endpoint is not None and session.get_credentials() is None:
        logger.debug("No AWS credentials found; using dummy ones for %s", settings.endpoint)
        key_id, secret = DUMMY_CREDENTIALS
    config = Config(
        retries={"mode": "standard", "total_max_attempts": 1},  # Caller retries instead
        max_pool_connections=MAX_CONCURRENCY,
        connect_timeout=5,
        read_timeout=20,
        tcp_keepalive=True,
        user_agent_extra="pyncette",
    )
    return session.client(
        "dynamodb",
        region_name=region,
        endpoint_url=settings.endpoint,
        config=config,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )


class Caller:
    """Runs boto3 calls off the event loop; see the module docstring."""

    def __init__(
        self, where: str, limiter: anyio.CapacityLimiter, retry: RetryPolicy | None = None
    ) -> None:
        self.where = where
        self.limiter = limiter
        self.retry = retry or RetryPolicy()

    async def __call__(self, call: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return await anyio.to_thread.run_sync(call, limiter=self.limiter)
            except bex.ClientError as exc:
                error = exc.response.get("Error", {})
                code = error.get("Code", "")
                if code == "ConditionalCheckFailedException":
                    item: dict[str, Any] | None = exc.response.get("Item")  # type: ignore[assignment]
                    raise ConditionFailed(item) from None
                if code == "ResourceNotFoundException":
                    raise TableNotFound(f"DynamoDB {self.where}: {error.get('Message')}") from exc
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code in UNAUTHORIZED:
                    raise BackendUnavailableError(
                        f"DynamoDB {self.where} refused the credentials: {code}"
                    ) from exc
                if code not in THROTTLED and code not in TRANSIENT and status < 500:
                    raise
                attempt += 1
                if attempt >= self.retry.attempts:
                    raise BackendUnavailableError(
                        f"DynamoDB {self.where}: {code} after {attempt} attempts"
                    ) from exc
                logger.debug("DynamoDB %s: %s; retry %d", self.where, code, attempt)
            except CONNECTION_ERRORS as exc:
                attempt += 1
                if attempt >= self.retry.connection_attempts:
                    raise BackendUnavailableError(
                        f"Cannot reach DynamoDB {self.where}: {exc}"
                    ) from exc
                logger.debug("DynamoDB %s unreachable (%s); retry %d", self.where, exc, attempt)
            except CREDENTIAL_ERRORS as exc:
                raise BackendUnavailableError(f"DynamoDB {self.where}: {exc}") from exc
            await anyio.sleep(self.retry.delay(attempt))
