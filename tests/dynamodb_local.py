"""Amazon's DynamoDB Local in a child process, for the tests and the benchmarks.

moto (the suite's other DynamoDB server) cannot run PartiQL batches correctly, so the
backend falls back to one item per request there; DynamoDB Local runs them as DynamoDB
does, which is how the batched claims and commits are tested. It is a Java program:
``.ci/install-dynamodb-local`` puts it in :data:`DEFAULT_HOME` (or the folder named by
``PYNCETTE_DYNAMODB_LOCAL``), and ``java`` must be on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DEFAULT_HOME = Path.home() / ".cache" / "pyncette" / "dynamodb-local"
JAR = "DynamoDBLocal.jar"


def home() -> Path:
    return Path(os.environ.get("PYNCETTE_DYNAMODB_LOCAL", DEFAULT_HOME))


def missing() -> str | None:
    """Why DynamoDB Local cannot start here, or ``None`` if it can."""
    if shutil.which("java") is None:
        return "java is not on PATH"
    if not (home() / JAR).is_file():
        return f"{home() / JAR} not found (run .ci/install-dynamodb-local)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DynamoDBLocal:
    """DynamoDB Local on a free loopback port: in memory, one database for every
    access key and region (``-sharedDb``), no telemetry; stopped by :meth:`stop`."""

    def __init__(self, *, timeout: float = 60.0) -> None:
        problem = missing()
        if problem is not None:
            raise RuntimeError(f"DynamoDB Local cannot start: {problem}")
        folder = home()
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                "java",
                "-Xss1m",
                f"-Djava.library.path={folder / 'DynamoDBLocal_lib'}",
                "-jar",
                str(folder / JAR),
                "-inMemory",
                "-sharedDb",
                "-disableTelemetry",
                "-port",
                str(self.port),
            ],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("DynamoDB Local did not start") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
