"""The boto3 client, and the one place where its errors become pyncette's.

Every DynamoDB call goes through :class:`Caller`: it runs the blocking boto3 call in a
worker thread (bounded by a capacity limiter), retries throttling and transient server
errors (:data:`pyncette.retry.THROTTLED`) and unreachable endpoints
(:data:`pyncette.retry.RECONNECT`), and translates what is left.

botocore's own retry modes are switched off: their delays cannot be set (``standard``
starts at up to a second, ``legacy`` reads DynamoDB's from botocore's data files), they
keep a worker thread of the limiter asleep while they wait, and they retry below the
events that pyncette's tests inject errors through. The loop here takes its numbers
from :mod:`pyncette.retry` and waits with :func:`pyncette.clock.real_sleep`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import boto3
import botocore.exceptions as bex
from botocore.config import Config

from pyncette import retry
from pyncette.clock import real_sleep
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
    """Runs boto3 calls off the event loop; see the module docstring. ``backoff`` and
    ``attempts`` (throttling and server errors) and ``connection_attempts`` (endpoint
    unreachable) count tries per call, the first included, in one count."""

    def __init__(
        self,
        where: str,
        limiter: anyio.CapacityLimiter,
        *,
        backoff: retry.Backoff = retry.THROTTLED,
        attempts: int = retry.THROTTLED_ATTEMPTS,
        connection_attempts: int = retry.DYNAMODB_RECONNECT_ATTEMPTS,
    ) -> None:
        self.where = where
        self.limiter = limiter
        self.backoff = backoff
        self.attempts = attempts
        self.connection_attempts = connection_attempts

    async def __call__(self, call: Callable[[], T]) -> T:
        tries = 0

        async def once() -> T:
            nonlocal tries
            tries += 1
            try:
                return await anyio.to_thread.run_sync(call, limiter=self.limiter)
            except bex.ClientError as exc:
                self._translate(exc)
                raise  # to be retried, or let through as it is
            except CREDENTIAL_ERRORS as exc:
                # botocore's messages may quote the endpoint URL, credentials and all
                raise BackendUnavailableError(
                    f"DynamoDB {self.where}: {type(exc).__name__}"
                ) from None

        try:
            return await retry.retry(
                once,
                policy=self.backoff,
                attempts=max(self.attempts, self.connection_attempts),
                sleep=real_sleep,
                retry_on=(bex.ClientError, *CONNECTION_ERRORS),
                retry_if=self._retry_if,
                on_retry=self._log_retry,
            )
        except bex.ClientError as exc:
            if not _is_throttled(exc):
                raise
            code = exc.response.get("Error", {}).get("Code", "")
            raise BackendUnavailableError(
                f"DynamoDB {self.where}: {code} after {tries} attempts"
            ) from exc
        except CONNECTION_ERRORS as exc:
            raise BackendUnavailableError(
                f"Cannot reach DynamoDB {self.where}: {type(exc).__name__}"
            ) from None

    def _translate(self, exc: bex.ClientError) -> None:
        """Raise what a refusal means to pyncette; return if it stays a ``ClientError``
        (to be retried, or to reach the caller as it is)."""
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        if code == "ConditionalCheckFailedException":
            item: dict[str, Any] | None = exc.response.get("Item")  # type: ignore[assignment]
            raise ConditionFailed(item) from None
        if code == "ResourceNotFoundException":
            raise TableNotFound(f"DynamoDB {self.where}: {error.get('Message')}") from exc
        if code in UNAUTHORIZED:
            raise BackendUnavailableError(
                f"DynamoDB {self.where} refused the credentials: {code}"
            ) from exc

    def _retry_if(self, error: BaseException, failures: int) -> bool:
        if isinstance(error, bex.ClientError):
            return _is_throttled(error) and failures < self.attempts
        return failures < self.connection_attempts

    def _log_retry(self, attempt: int, error: BaseException, delay: float) -> None:
        if isinstance(error, bex.ClientError):
            what = error.response.get("Error", {}).get("Code", "")
        else:
            what = f"unreachable ({type(error).__name__})"
        logger.debug("DynamoDB %s: %s; retry %d in %.3f s", self.where, what, attempt, delay)


def _is_throttled(exc: bex.ClientError) -> bool:
    """Whether DynamoDB refused the request without applying it, so it may be resent."""
    code = exc.response.get("Error", {}).get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return code in THROTTLED or code in TRANSIENT or status >= 500


async def gather(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Await ``calls`` concurrently; results in order. Every call runs to its end even if
    another fails (a write in flight cannot be taken back); then the first error is
    raised."""
    if len(calls) == 1:
        return [await calls[0]]
    results: list[Any] = [None] * len(calls)
    errors: list[Exception] = []

    async def run(index: int, call: Awaitable[T]) -> None:
        try:
            results[index] = await call
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tasks:
        for index, call in enumerate(calls):
            tasks.start_soon(run, index, call)
    if errors:
        raise errors[0]
    return results
