"""Stores for chaos runs: a fresh database, namespace, table or file on a shared server,
or a private server the driver may stop and start.

Everything started here is a child process that Linux kills when its parent dies
(``PR_SET_PDEATHSIG``), and every context manager stops what it started and drops what
it created on exit, failing or not. Ports are free ports picked at start; nothing is
fixed but the shared servers' addresses (overridable with the ``PYNCETTE_TEST_*``
variables the rest of the suite reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import backend_redis
from backend_dynamodb import unique_table
from backend_redis import (
    REDIS_CLI,
    REDIS_SERVER,
    delete_namespace,
    die_with_parent,
    free_port,
    private_cluster,
    unique_namespace,
)
from backend_sql import (
    MYSQL_HOST,
    MYSQL_PASSWORD,
    MYSQL_PORT,
    MYSQL_USER,
    PG_HOST,
    PG_PORT,
    fresh_mysql_database,
    fresh_postgres_database,
    mysql_options,
    postgres_url,
)
from backends import port_open
from benchmarks.local_servers import DynamoDBLocal, dynamodb_local_missing
from chaos._storm_helpers import AWS_TEST_ENV

REDIS_URL = backend_redis.REDIS_URL or backend_redis.LOCAL_URL
PG_BIN = Path(os.environ.get("PYNCETTE_CHAOS_PG_BIN", "/usr/lib/postgresql/15/bin"))
MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"

AWS_ENV = {**AWS_TEST_ENV, "AWS_DEFAULT_REGION": "us-east-1"}
"""Dummy credentials for the moto server; nothing in ``~/.aws`` is read."""

BACKENDS = ("sqlite", "postgres", "mysql", "redis", "redis_cluster", "dynamodb", "dynamodb_local")
RESTARTABLE = ("postgres", "mysql", "redis")
TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
PROXIABLE = ("postgres", "mysql", "redis", "dynamodb", "dynamodb_local")


def child_env(**extra: str) -> dict[str, str]:
    """The environment of every Python child: ``tests/`` and the checkout on the path."""
    path = os.pathsep.join(p for p in (str(TESTS), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


class Unavailable(Exception):
    """A server or tool a scenario needs is missing (the test skips, or fails in CI)."""


# -- processes ------------------------------------------------------------------------------


def child_setup(user: str | None = None) -> Callable[[], None]:
    """A ``preexec_fn``: become ``user`` (if given), then ask Linux to SIGKILL the child
    when its parent dies (the setting is cleared by a change of user, so it comes last)."""
    account = pwd.getpwnam(user) if user else None

    def setup() -> None:
        if account is not None:
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
        die_with_parent()

    return setup


def wait_until(ready: Callable[[], bool], timeout: float, what: str, process: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} while starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready after {timeout:.0f} s")
        time.sleep(0.05)


def quiet(args: list[str], timeout: float = 10.0) -> bool:
    try:
        result = subprocess.run(args, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def stop_process(process: subprocess.Popen[bytes] | None, sig: int, timeout: float = 15.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def aws_env() -> Iterator[None]:
    """Dummy AWS settings in this process's environment for the block (set-up and
    inspection talk to the moto server in-process)."""
    saved = {name: os.environ.get(name) for name in AWS_ENV}
    os.environ.update(AWS_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# -- the store a scenario runs on -------------------------------------------------------------


@dataclass
class Store:
    """Backend options for the processes, and the TCP address behind them (for the
    proxy); ``server`` is set when the scenario may stop and start it."""

    backend: str
    options: dict[str, Any]
    address: tuple[str, int] | None = None
    server: PrivateServer | None = None
    env: dict[str, str] = field(default_factory=dict)

    def via(self, port: int) -> dict[str, Any]:
        """The options with the server's address replaced by ``127.0.0.1:port``."""
        options = dict(self.options)
        if self.backend == "postgres":
            parts = urllib.parse.urlsplit(options["postgres_url"])
            netloc = parts.netloc.rpartition("@")
            netloc_new = f"{netloc[0]}{netloc[1]}127.0.0.1:{port}"
            options["postgres_url"] = urllib.parse.urlunsplit(parts._replace(netloc=netloc_new))
        elif self.backend == "mysql":
            options.update(mysql_host="127.0.0.1", mysql_port=port)
        elif self.backend in ("redis", "redis_cluster"):
            options["redis_url"] = f"redis://127.0.0.1:{port}"
        elif self.backend in ("dynamodb", "dynamodb_local"):
            options["dynamodb_endpoint"] = f"http://127.0.0.1:{port}"
        else:
            raise ValueError(f"{self.backend} has no network address to proxy")
        return options


class PrivateServer:
    """A database server this process owns: ``stop(crash=...)`` and ``start()`` on the
    same port and data directory."""

    name = "server"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "server.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def user(self) -> str | None:
        return None

    def ready(self) -> bool:
        raise NotImplementedError

    def crash_signal(self) -> int:
        return signal.SIGKILL

    def start(self, timeout: float = 60.0) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=child_setup(self.user()),
                start_new_session=True,
            )
        wait_until(self.ready, timeout, f"private {self.name} on port {self.port}", self.process)

    def stop(self, *, crash: bool = True) -> None:
        """Crash it (``crash``) or shut it down cleanly."""
        stop_process(self.process, self.crash_signal() if crash else signal.SIGTERM)
        self.process = None

    def tail(self, lines: int = 20) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class PostgresServer(PrivateServer):
    """``initdb`` + ``postgres`` as the ``postgres`` OS user (it refuses to run as root).
    A crash is SIGQUIT: immediate shutdown, no checkpoint, crash recovery on start."""

    name = "PostgreSQL"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.data = directory / "data"
        account = pwd.getpwnam("postgres")
        os.chown(directory, account.pw_uid, account.pw_gid)
        result = subprocess.run(
            [
                *(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres"),
                *("--auth=trust", "-E", "UTF8", "--no-sync"),
            ],
            capture_output=True,
            timeout=60,
            check=False,
            preexec_fn=child_setup("postgres"),
        )
        if result.returncode:
            raise RuntimeError(f"initdb failed: {result.stderr.decode(errors='replace')}")

    def user(self) -> str:
        return "postgres"

    def command(self) -> list[str]:
        return [
            str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-k", str(self.directory), "-h", "127.0.0.1", "-c", "fsync=off",
            "-c", "max_connections=200", "-c", "shared_buffers=16MB",
        ]  # fmt: skip

    def ready(self) -> bool:
        return quiet([str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)])

    def crash_signal(self) -> int:
        return signal.SIGQUIT

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


class MariaDBServer(PrivateServer):
    """``mariadb-install-db`` + ``mariadbd --user=root``; a crash is SIGKILL (InnoDB
    recovers on start)."""

    name = "MariaDB"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.data = directory / "data"
        result = subprocess.run(
            [
                *(MARIADB_INSTALL_DB, "--no-defaults", f"--datadir={self.data}", "--user=root"),
                *("--auth-root-authentication-method=normal", "--skip-test-db"),
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
        if result.returncode:
            raise RuntimeError(
                f"mariadb-install-db failed: {result.stderr.decode(errors='replace')}"
            )

    def command(self) -> list[str]:
        d = self.directory
        return [
            MARIADBD, "--no-defaults", f"--datadir={self.data}", f"--port={self.port}",
            "--bind-address=127.0.0.1", f"--socket={d}/mysqld.sock",
            f"--pid-file={d}/mysqld.pid", "--user=root", "--skip-log-bin",
            "--skip-name-resolve", "--innodb-buffer-pool-size=32M",
            "--innodb-flush-log-at-trx-commit=2", f"--log-error={self.log}",
            "--max-connections=300",
        ]  # fmt: skip

    def ready(self) -> bool:
        return quiet(
            [
                *("mysqladmin", "--no-defaults", "--protocol=tcp", "-h", "127.0.0.1"),
                *("-P", str(self.port), "-u", "root", "ping"),
            ]
        )


class RedisServer(PrivateServer):
    """The suite's private ``redis-server`` (:class:`backend_redis.RedisServer`) with an
    append-only file fsynced on every write, so a crash (SIGKILL) loses nothing: a store
    that forgets its rows on restart is not a scheduler's problem to survive."""

    name = "Redis"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        durable = ("--appendonly", "yes", "--appendfsync", "always")
        self.server = backend_redis.RedisServer(directory, self.port, durable)
        self.log = self.server.log

    def start(self, timeout: float = 60.0) -> None:
        self.server.start(timeout)

    def stop(self, *, crash: bool = True) -> None:
        if crash:
            self.server.kill()
        else:
            self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url


class MotoServer:
    """moto's DynamoDB server (applying one request at a time, see
    tests/backend_dynamodb.py) in a child process: ``python -m chaos.moto``."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chaos.moto"],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=child_setup(),
            start_new_session=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.isdigit():
            self.stop()
            raise RuntimeError(f"the moto server did not start (said {line!r})")
        self.port = int(line)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process, signal.SIGKILL)  # nothing to save; a clean stop takes 1 s
        if self.process.stdout is not None:
            self.process.stdout.close()


# -- availability -------------------------------------------------------------------------------


def check_available(backend: str, scenario: str) -> None:
    """Raise :class:`Unavailable` naming what is missing for ``scenario`` on ``backend``."""
    if scenario == "restart":
        if backend == "postgres" and not (PG_BIN / "initdb").exists():
            raise Unavailable(f"PostgreSQL binaries not found in {PG_BIN}")
        if backend == "postgres":
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("no 'postgres' OS user to run a private server as") from None
            if os.geteuid() != 0:
                raise Unavailable("a private PostgreSQL needs root (to run it as 'postgres')")
        if backend == "mysql" and not (os.path.exists(MARIADBD) and shutil.which("mysqladmin")):
            raise Unavailable("mariadbd / mysqladmin not found")
        if backend == "redis" and not (REDIS_SERVER and REDIS_CLI):
            raise Unavailable("redis-server / redis-cli not found")
        if backend not in RESTARTABLE:
            raise Unavailable(f"the restart scenario does not apply to {backend}")
        return
    if scenario == "proxy" and backend not in PROXIABLE:
        raise Unavailable(f"the proxy scenario does not apply to {backend}")
    if backend == "postgres" and not port_open(PG_HOST, PG_PORT):
        raise Unavailable(f"PostgreSQL at {PG_HOST}:{PG_PORT} is not reachable")
    if backend == "mysql" and not port_open(MYSQL_HOST, MYSQL_PORT):
        raise Unavailable(f"MariaDB at {MYSQL_HOST}:{MYSQL_PORT} is not reachable")
    if backend == "redis":
        parts = urllib.parse.urlsplit(REDIS_URL)
        if not port_open(parts.hostname or "127.0.0.1", parts.port or 6379):
            raise Unavailable(f"Redis at {REDIS_URL} is not reachable")
    if backend == "redis_cluster" and not (REDIS_SERVER and REDIS_CLI):
        raise Unavailable("redis-server / redis-cli not found")
    if backend == "dynamodb_local" and (problem := dynamodb_local_missing()) is not None:
        raise Unavailable(problem)


# -- provisioning ---------------------------------------------------------------------------


async def _mysql(port: int, statement: str) -> None:
    """Run ``statement`` on the private MariaDB server on ``port``."""
    import asyncmy

    connection = await asyncmy.connect(
        host="127.0.0.1", port=port, user=MYSQL_USER, password=MYSQL_PASSWORD
    )
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(statement)
        await connection.commit()
    finally:
        connection.close()


@contextlib.contextmanager
def private_directory(prefix: str) -> Iterator[Path]:
    """A directory outside pytest's (which other OS users cannot enter)."""
    path = Path(tempfile.mkdtemp(prefix=f"pyncette-chaos-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def private_server(backend: str) -> Iterator[Store]:
    """A store on a private server the scenario may crash and restart."""
    with private_directory(backend) as directory:
        server: PrivateServer
        if backend == "postgres":
            server = PostgresServer(directory)
        elif backend == "mysql":
            server = MariaDBServer(directory)
        elif backend == "redis":
            server = RedisServer(directory)
        else:
            raise ValueError(f"no private {backend} server")
        try:
            server.start()
            address = ("127.0.0.1", server.port)
            if isinstance(server, PostgresServer):
                options: dict[str, Any] = {"postgres_url": server.url}
            elif isinstance(server, MariaDBServer):
                asyncio.run(_mysql(server.port, "CREATE DATABASE chaos"))
                options = {**mysql_options("chaos"), "mysql_host": "127.0.0.1"}
                options["mysql_port"] = server.port
            else:
                assert isinstance(server, RedisServer)
                options = {"redis_url": server.url, "redis_namespace": "chaos"}
            yield Store(backend, options, address, server)
        finally:
            server.stop(crash=False)


@contextlib.contextmanager
def shared_store(backend: str, directory: Path) -> Iterator[Store]:
    """A fresh store on the shared server (or a private moto server or cluster)."""
    if backend == "sqlite":
        yield Store(backend, {"sqlite_database": str(directory / "chaos.db")})
    elif backend == "postgres":
        with fresh_postgres_database() as name:
            yield Store(backend, {"postgres_url": postgres_url(name)}, (PG_HOST, PG_PORT))
    elif backend == "mysql":
        with fresh_mysql_database() as name:
            yield Store(backend, mysql_options(name), (MYSQL_HOST, MYSQL_PORT))
    elif backend == "redis":
        namespace = unique_namespace()
        parts = urllib.parse.urlsplit(REDIS_URL)
        address = (parts.hostname or "127.0.0.1", parts.port or 6379)
        try:
            yield Store(backend, {"redis_url": REDIS_URL, "redis_namespace": namespace}, address)
        finally:
            asyncio.run(delete_namespace(REDIS_URL, namespace))
    elif backend == "redis_cluster":
        with private_cluster() as cluster:
            yield Store(backend, {"redis_url": cluster.url, "redis_namespace": unique_namespace()})
    elif backend in ("dynamodb", "dynamodb_local"):
        # moto writes one item per request; DynamoDB Local takes PartiQL batches
        server: MotoServer | DynamoDBLocal = (
            MotoServer(child_env(**AWS_ENV))
            if backend == "dynamodb"
            else DynamoDBLocal(quick_start=True)
        )
        try:
            options = {
                "dynamodb_endpoint": server.endpoint,
                "dynamodb_region_name": "us-east-1",
                "dynamodb_table_name": unique_table(),
            }
            yield Store(backend, options, ("127.0.0.1", server.port), env=dict(AWS_ENV))
        finally:
            server.stop()
    else:
        raise ValueError(f"unknown backend {backend!r}")
