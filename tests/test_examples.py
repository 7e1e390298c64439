"""Every example runs as is on the in-memory default and stops cleanly on SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("basic.py", "cron task ran for"),
        ("dynamic.py", "reminding bill"),
        ("delay_queue.py", "sending 'Welcome!'"),
        ("fixtures_middlewares.py", "record took"),
        ("heartbeat.py", "cooperative: step 0 done"),
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
