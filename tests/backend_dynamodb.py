"""DynamoDB backends: ``dynamodb``, moto's DynamoDB server over real HTTP on a loopback
port, in a process of its own started once per session and stopped at its end; and
``dynamodb_local``, Amazon's DynamoDB Local (see ``benchmarks/local_servers.py``), the one of the
two that runs the PartiQL batches the backend sends when a server takes them (on moto
it writes one item per request).

moto's request threads check a write's condition and apply the write in separate steps,
so two racing conditional writes to one item can both succeed, which DynamoDB never
allows. The server here is moto's own DynamoDB WSGI application on a threaded werkzeug
server, applying requests one at a time, which gives back the per-item atomicity the
backend relies on; everything else (HTTP, signing, the DynamoDB API) is moto's.

Every test gets a table of its own (deleted afterwards) and dummy credentials in its
environment; nothing the developer has in ``~/.aws`` is read.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions
import pytest

from backends import BACKENDS, BackendConfig, BackendInfo, require_service
from benchmarks.local_servers import DynamoDBLocal, dynamodb_local_missing
from pyncette.dynamodb import DynamoDBRepository, dynamodb_repository

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from werkzeug.serving import BaseWSGIServer

BACKENDS["dynamodb"] = BackendInfo(marks=[pytest.mark.service("dynamodb")])
BACKENDS["dynamodb_local"] = BackendInfo(marks=[pytest.mark.service("dynamodb-local")])

REGION = "us-east-1"
AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_DYNAMODB",
)


class MotoServer:
    """moto's server application on 127.0.0.1 (a free port), in a thread."""

    def __init__(self) -> None:
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> None:
        from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        class Handler(MotoRequestHandler):
            def setup(self) -> None:
                super().setup()
                # Without it, Nagle's algorithm and delayed ACKs hold each response of a
                # kept-alive connection back by ~40 ms.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_request(self, *args: Any) -> None:
                pass

        # moto's DynamoDB application itself: this server serves nothing else, so the
        # per-request lookup of the service (a third of moto's time per request) is skipped.
        moto_app = create_backend_app("dynamodb")
        lock = threading.Lock()

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            with lock:  # one request at a time: see the module docstring
                body: Iterable[bytes] = moto_app(environ, start_response)
                return body

        self._server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="moto-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None


def isolate_aws_env(monkeypatch: pytest.MonkeyPatch, *, credentials: bool = True) -> None:
    """Hide the developer's AWS configuration; with ``credentials``, set dummy ones."""
    for name in AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/pyncette-test/config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/pyncette-test/credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    if credentials:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def moto_client(endpoint: str) -> DynamoDBClient:
    """A plain client on the test server, for setting up and inspecting tables."""
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def unique_table() -> str:
    return f"pyncette-test-{uuid.uuid4().hex[:12]}"


def delete_table(endpoint: str, table: str) -> None:
    client = moto_client(endpoint)
    try:
        client.delete_table(TableName=table)
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise
    finally:
        client.close()


@pytest.fixture(scope="session")
def dynamodb_server() -> Iterator[str]:
    """The endpoint URL of the session's moto server, run in a process of its own
    (``python -m chaos.moto``) so that moto's work uses the machine's other core
    instead of taking turns with the tests for this process's interpreter."""
    from chaos.stores import AWS_ENV as DUMMY_AWS_ENV
    from chaos.stores import MotoServer as MotoProcess
    from chaos.stores import child_env

    try:
        server = MotoProcess(child_env(**DUMMY_AWS_ENV))
    except Exception as exc:  # moto missing or the server would not start
        require_service("dynamodb", False, f"moto server did not start: {exc!r}")
        raise
    try:
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dynamodb_local_server() -> Iterator[str]:
    """The endpoint URL of the session's DynamoDB Local."""
    problem = dynamodb_local_missing()
    require_service("dynamodb-local", problem is None, problem or "")
    server = DynamoDBLocal(quick_start=True)
    try:
        yield server.endpoint
    finally:
        server.stop()


def table_options(endpoint: str, table: str, **extra: Any) -> dict[str, Any]:
    """The repository options for ``table`` on the test server at ``endpoint``."""
    return {
        "dynamodb_endpoint": endpoint,
        "dynamodb_region_name": REGION,
        "dynamodb_table_name": table,
        **extra,
    }


@asynccontextmanager
async def open_repo(endpoint: str, table: str, **extra: Any) -> AsyncIterator[DynamoDBRepository]:
    async with dynamodb_repository(**table_options(endpoint, table, **extra)) as repository:
        assert isinstance(repository, DynamoDBRepository)
        yield repository


def record_calls(repo: DynamoDBRepository) -> list[str]:
    """The operation names the repository's client sends from now on, in order."""
    sent: list[str] = []

    def note(model: Any, **kwargs: Any) -> None:
        sent.append(model.name)

    repo.client.meta.events.register("before-call.dynamodb", note)
    return sent


def fresh_table(endpoint: str) -> Iterator[str]:
    """A table name for one test (the repository creates the table); dropped after it."""
    table = unique_table()
    yield table
    delete_table(endpoint, table)


def _table_backend(
    name: str, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BackendConfig]:
    isolate_aws_env(monkeypatch)
    for table in fresh_table(endpoint):
        yield BackendConfig(name, dynamodb_repository, table_options(endpoint, table))


@pytest.fixture
def dynamodb_backend(
    dynamodb_server: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BackendConfig]:
    yield from _table_backend("dynamodb", dynamodb_server, monkeypatch)


@pytest.fixture
def dynamodb_local_backend(
    dynamodb_local_server: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BackendConfig]:
    yield from _table_backend("dynamodb_local", dynamodb_local_server, monkeypatch)
