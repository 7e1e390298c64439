"""Every example runs as is on the in-memory default and stops cleanly on SIGINT."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from support import ROOT

EXAMPLES = ROOT / "examples"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("basic.py", "cron task ran for"),
        ("dynamic.py", "reminding bill"),
        ("delay_queue.py", "sending 'Welcome!'"),
        ("fixtures_middlewares.py", "record took"),
        ("heartbeat.py", "cooperative: step 0 done"),
        ("scheduling_policies.py", "skipped snapshot scheduled at"),
        ("instant_wakeups.py", "instant wake-ups not available: polling"),
        ("retries.py", "synced invoices on attempt"),
        ("controlling_runs.py", "resumed, next run at"),
        ("run_history.py", "status page done"),
        ("opentelemetry_tracing.py", "span 'pyncette report' UNSET pyncette.task.name='report'"),
    ],
)
def test_example_runs_and_stops(script: str, expected: str) -> None:
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    timer = threading.Timer(30, process.kill)
    timer.start()
    seen: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if expected in line:
                break
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=20)
    finally:
        timer.cancel()
    output = "".join(seen) + rest
    assert expected in output
    assert process.returncode == 0, output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.parametrize(
    ("script", "expected", "path", "body"),
    [
        ("healthcheck.py", "health on port", "/healthz", "OK"),
        (
            "prometheus_metrics.py",
            "report ran",
            "/metrics",
            'pyncette_tasks_total{task_name="report"}',
        ),
    ],
)
def test_http_example_answers(script: str, expected: str, path: str, body: str) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PORT": str(port)},
    )
    timer = threading.Timer(30, process.kill)
    timer.start()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if expected in line:
                break
        status, text = _get(f"http://127.0.0.1:{port}{path}")
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=20)
    finally:
        timer.cancel()
    assert status == 200, text
    assert body in text
    assert process.returncode == 0, rest
