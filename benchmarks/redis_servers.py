"""Private ``redis-server`` processes: a single server, or a Redis Cluster of masters.

Shared by the test suite (``tests/backend_redis.py`` re-exports these names) and the
benchmark harness (``--backend redis_cluster``), so the cluster is started one way only.
Every process started here is stopped when its context manager exits, failing or not,
and on Linux is SIGKILLed by the kernel if the process that started it dies first.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def redis_tools_available() -> bool:
    return REDIS_SERVER is not None and REDIS_CLI is not None


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


def stop_process(process: subprocess.Popen[bytes], grace: float) -> None:
    """Terminate ``process`` if it still runs; kill it if it has not exited after ``grace``
    seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def die_with_parent() -> None:
    """In the child before exec: have Linux SIGKILL it when its parent dies, so a killed
    test or benchmark run (SIGKILL, or a SIGTERM that skips finalizers) leaves no server."""
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
            stop_process(self.process, 5)
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
    """The master nodes of a private cluster; :attr:`url` is the first one's (a cluster
    client discovers the others from it)."""

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
