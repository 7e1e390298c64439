"""Redis backends: a single server and a three-master Redis Cluster.

The single server is ``REDIS_URL`` when set; otherwise the one on 127.0.0.1:6379 if
something listens there; otherwise a private ``redis-server`` started for the session.
The cluster is always made of private ``redis-server`` processes started for the session.

Every test gets a namespace of its own, and its keys on the shared server are deleted
afterwards, so tests never see each other's rows and never disturb other users of it.
This module also holds the helpers that start private servers (used by test_redis.py);
every process they start is killed when its context manager exits, failing or not.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis

from backends import BACKENDS, BackendConfig, BackendInfo, port_open, require_service
from pyncette.redis import redis_repository
from pyncette.redis.keys import namespace_pattern

REDIS_URL = os.environ.get("REDIS_URL")
LOCAL_URL = "redis://127.0.0.1:6379"
REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")

BACKENDS["redis"] = BackendInfo(marks=[pytest.mark.service("redis")])
BACKENDS["redis_cluster"] = BackendInfo(marks=[pytest.mark.service("redis-cluster")])


def unique_namespace() -> str:
    return f"test-{uuid.uuid4().hex[:16]}"


def url_reachable(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return port_open(parts.hostname or "localhost", parts.port or 6379)


def redis_tools_available() -> bool:
    return REDIS_SERVER is not None and REDIS_CLI is not None


async def delete_namespace(url: str, namespace: str) -> None:
    """Delete every key of ``namespace`` from a single server."""
    client = Redis.from_url(url)
    try:
        async for key in client.scan_iter(match=namespace_pattern(namespace), count=500):
            await client.unlink(key)
    finally:
        await client.aclose()


# -- private servers ------------------------------------------------------------------


def free_port(*, with_bus: bool = False) -> int:
    """A loopback port nobody listens on (and, for cluster nodes, its bus port + 10000)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if not with_bus:
            return port
        if port < 55000:
            with socket.socket() as sock, contextlib.suppress(OSError):
                sock.bind(("127.0.0.1", port + 10000))
                return port
    raise RuntimeError("no free port found")


def die_with_parent() -> None:
    """In the child before exec: have Linux SIGKILL it when the test process dies, so a
    killed test run (SIGKILL, or a SIGTERM that skips finalizers) leaves no server."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class RedisServer:
    """One ``redis-server`` child process on 127.0.0.1; ``kill`` + ``start`` restarts it
    on the same port with the same data directory."""

    directory: Path
    port: int
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / f"redis-{self.port}.log"

    def start(self, timeout: float = 10.0) -> None:
        assert REDIS_SERVER is not None
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.directory), "--save", "", "--appendonly", "no"]
        args += [*self.extra, "--logfile", str(self.log)]
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")
            time.sleep(0.02)

    def _ready(self) -> bool:
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown save, like a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@contextlib.contextmanager
def private_server(*extra: str) -> Iterator[RedisServer]:
    """A private single server in a temporary directory, stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="pyncette-redis-") as directory:
        server = RedisServer(Path(directory), free_port(), extra)
        try:
            server.start()
            yield server
        finally:
            server.stop()


@dataclass
class RedisClusterServers:
    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def clients(self) -> list[redis.Redis]:
        return [redis.Redis(port=node.port) for node in self.nodes]


def _cluster_ok(nodes: list[RedisServer]) -> bool:
    assert REDIS_CLI is not None
    for node in nodes:
        info = subprocess.run(
            [REDIS_CLI, "-p", str(node.port), "cluster", "info"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
        if "cluster_state:ok" not in info:
            return False
    return True


@contextlib.contextmanager
def private_cluster(masters: int = 3, timeout: float = 30.0) -> Iterator[RedisClusterServers]:
    """A Redis Cluster of ``masters`` private nodes, no replicas; stopped on exit."""
    assert REDIS_CLI is not None
    with tempfile.TemporaryDirectory(prefix="pyncette-redis-cluster-") as directory:
        nodes: list[RedisServer] = []
        try:
            for _ in range(masters):
                port = free_port(with_bus=True)
                node = RedisServer(
                    Path(directory),
                    port,
                    (
                        *("--cluster-enabled", "yes", "--cluster-node-timeout", "5000"),
                        *("--cluster-config-file", f"nodes-{port}.conf"),
                    ),
                )
                nodes.append(node)
                node.start()
            subprocess.run(
                [REDIS_CLI, "--cluster", "create"]
                + [f"127.0.0.1:{node.port}" for node in nodes]
                + ["--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=timeout,
            )
            deadline = time.monotonic() + timeout
            while not _cluster_ok(nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError("Redis Cluster did not reach cluster_state:ok")
                time.sleep(0.05)
            yield RedisClusterServers(nodes)
        finally:
            for node in nodes:
                node.stop()


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The single server the tests share (see the module docstring)."""
    if REDIS_URL is not None:
        require_service("redis", url_reachable(REDIS_URL), REDIS_URL)
        yield REDIS_URL
    elif url_reachable(LOCAL_URL) or REDIS_SERVER is None:
        require_service("redis", url_reachable(LOCAL_URL), f"{LOCAL_URL} (or redis-server)")
        yield LOCAL_URL
    else:
        with private_server() as server:
            yield server.url


@pytest.fixture
async def redis_backend(redis_url: str) -> AsyncIterator[BackendConfig]:
    namespace = unique_namespace()
    yield BackendConfig(
        "redis", redis_repository, {"redis_url": redis_url, "redis_namespace": namespace}
    )
    await delete_namespace(redis_url, namespace)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    require_service("redis-cluster", redis_tools_available(), "redis-server/redis-cli not found")
    with private_cluster() as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_backend(redis_cluster: RedisClusterServers) -> BackendConfig:
    # The cluster is private to this session and dies with it; namespaces keep tests apart.
    return BackendConfig(
        "redis_cluster",
        redis_repository,
        {"redis_url": redis_cluster.url, "redis_namespace": unique_namespace()},
    )
