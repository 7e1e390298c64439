"""Servers the tests and the benchmarks start in child processes on free loopback ports:
moto's DynamoDB server and Amazon's DynamoDB Local (the private Redis servers are in
``redis_servers.py``).

DynamoDB Local is the one of the two that runs PartiQL batches correctly, so the
backend's batched claims and commits are tested there (on moto it writes one item per
request). It is a Java program: ``.ci/install-dynamodb-local`` puts it in
:data:`DEFAULT_HOME` (or the folder named by ``PYNCETTE_DYNAMODB_LOCAL``), and ``java``
must be on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.redis_servers import stop_process

DEFAULT_HOME = Path.home() / ".cache" / "pyncette" / "dynamodb-local"
JAR = "DynamoDBLocal.jar"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``argv`` in a child process, serving on 127.0.0.1 at a free port (passed to
    ``argv`` by the subclass); started, and waited for, on construction."""

    name = "server"

    def __init__(self, argv: list[str], port: int, *, timeout: float, cwd: Path | None = None):
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.name} did not start") from None
                time.sleep(0.2)

    def stop(self) -> None:
        stop_process(self.process, 10)


class Moto(ServerProcess):
    """moto's standalone DynamoDB server (``moto_server``, beside this interpreter)."""

    name = "moto_server"

    def __init__(self) -> None:
        port = free_port()
        exe = Path(sys.executable).with_name("moto_server")
        super().__init__([str(exe), "-H", "127.0.0.1", "-p", str(port)], port, timeout=30)


def dynamodb_local_home() -> Path:
    return Path(os.environ.get("PYNCETTE_DYNAMODB_LOCAL", DEFAULT_HOME))


def dynamodb_local_missing() -> str | None:
    """Why DynamoDB Local cannot start here, or ``None`` if it can."""
    if shutil.which("java") is None:
        return "java is not on PATH"
    jar = dynamodb_local_home() / JAR
    if not jar.is_file():
        return f"{jar} not found (run .ci/install-dynamodb-local)"
    return None


class DynamoDBLocal(ServerProcess):
    """DynamoDB Local: in memory, one database for every access key and region
    (``-sharedDb``), no telemetry."""

    name = "DynamoDB Local"

    def __init__(self, *, timeout: float = 60.0, quick_start: bool = False) -> None:
        """With ``quick_start`` (the tests), the JVM compiles with its quick compiler
        only and collects garbage in one thread: far less CPU in the first seconds, for
        a lower top speed. The benchmarks want the top speed."""
        problem = dynamodb_local_missing()
        if problem is not None:
            raise RuntimeError(f"DynamoDB Local cannot start: {problem}")
        folder = dynamodb_local_home()
        port = free_port()
        argv = [
            "java",
            *(["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"] if quick_start else []),
            f"-Djava.library.path={folder / 'DynamoDBLocal_lib'}",
            "-jar",
            str(folder / JAR),
            "-inMemory",
            "-sharedDb",
            "-disableTelemetry",
            "-port",
            str(port),
        ]
        super().__init__(argv, port, timeout=timeout, cwd=folder)
