"""The short form of the chaos scenarios: every scenario on every backend it applies to,
with a window of a few seconds. ``pytest -m chaos`` runs them alone; the long form is
``python -m benchmarks chaos`` (see docs/reliability.md).

Each test fails on any problem the checker reports. The core bugs the scenarios found
are reproduced in virtual time in test_regressions.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest

from backends import require_service
from chaos.check import Report
from chaos.driver import Scenario, run
from chaos.proxy import Proxy
from chaos.stores import BACKENDS, PROXIABLE, RESTARTABLE, Unavailable
from chaos.workload import Workload

pytestmark = pytest.mark.chaos

SHORT = Workload(lease=2.0)
"""A 2 s lease so that stalls and outages longer than a lease stay short."""
SHORT_ON = {
    store: dataclasses.replace(SHORT, dynamic=120) for store in ("dynamodb", "dynamodb_local")
}
"""Both DynamoDB servers are slow beside the suite, and get a 3 s longer window, for more
kills. moto runs at most ``MOTO_INSTANCES`` (40) dynamic instances in any form; with so
few, its 3 kills in 5 s once all landed on processes with nothing in flight (nothing to
take over). DynamoDB Local starts as a cold JVM for each run and spends 1-3 ms of CPU
per execution; beside the suite's other processes on two cores it fell behind 200
instances every 2 s (claims timed out, takeovers took 12-15 s), so the short form runs
120; the long form (``python -m benchmarks chaos``) runs the full workload on it."""
SECONDS = {"kill": 5.0, "restart": 5.0, "proxy": 9.5}
"""The chaos window of each scenario: room for 2-4 kills, one outage, one proxy cycle."""
KILL_EVERY = (0.5, 1.5)
KILL_OVERTIME = 6.0
"""Seconds a kill window may run on while no aimed kill has found a process executing
(once, beside the suite, all of DynamoDB Local's kills fell between bursts)."""
OUTAGE = 2.5
"""Seconds the server stays down (longer than the lease)."""
FIRST_CRASH = 1.0
TOLERANCE = 3.0
"""Seconds a takeover may take beyond ``lease + poll_interval`` (2 shared cores)."""
SERVICE = {
    "postgres": "postgres",
    "mysql": "mysql",
    "redis": "redis",
    "redis_cluster": "redis-cluster",
    "dynamodb": "dynamodb",
    "dynamodb_local": "dynamodb-local",
}
"""Backend -> the ``service`` marker's name of the server it needs."""
CASES = [
    *(("kill", backend) for backend in BACKENDS),
    *(("restart", backend) for backend in RESTARTABLE),
    *(("proxy", backend) for backend in PROXIABLE),
]


def verdict(report: Report, logs: Path) -> None:
    """Fail on any problem the checker found."""
    assert not report.kinds, f"{report.summary()}\nlogs: {logs}"


@pytest.mark.parametrize(
    ("scenario", "store"),
    [
        pytest.param(
            scenario,
            store,
            id=f"{scenario}-{store}",
            marks=[pytest.mark.service(SERVICE[store])] if store in SERVICE else [],
        )
        for scenario, store in CASES
    ],
)
def test_chaos(scenario: str, store: str, tmp_path: Path) -> None:
    seconds = SECONDS[scenario] + (3.0 if store in SHORT_ON else 0.0)
    try:
        spec = Scenario(
            scenario,
            store,
            seconds,
            workload=SHORT_ON.get(store, SHORT),
            tolerance=TOLERANCE,
            kill_every=KILL_EVERY,
            outage=OUTAGE,
            first_crash=FIRST_CRASH,
            kill_overtime=KILL_OVERTIME,
        )
        report = run(spec, tmp_path)
    except Unavailable as missing:
        require_service(SERVICE.get(store, store), False, str(missing))
        return
    assert report.executions > 0 and report.runs_checked > 0, report.summary()
    if scenario == "kill":
        # half the kills are aimed at a process executing a burst of runs
        assert report.kills >= 2 and report.takeovers >= 1, report.summary()
    elif scenario == "restart":
        assert report.outages >= 1, report.summary()
    else:
        assert report.proxy_actions >= 8, report.summary()
    verdict(report, tmp_path)


def test_any_problem_fails(tmp_path: Path) -> None:
    verdict(Report("kill", "sqlite", 1.0), tmp_path)  # no problem: passes
    report = Report("kill", "sqlite", 1.0)
    report.problem("stale start", "a run started after its lease expired")
    with pytest.raises(AssertionError, match="stale start"):
        verdict(report, tmp_path)


def test_the_proxy_cuts_stalls_and_delivers() -> None:
    """The proxy itself: forwards, holds answers while stalled and delivers them on
    resume, and drops every connection on a cut."""
    import socket
    import threading

    stop = threading.Event()
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)

    def echo() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with connection, contextlib.suppress(OSError):
                while data := connection.recv(1024):
                    connection.sendall(data)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    try:
        with (
            Proxy(server.getsockname(), 2) as proxy,
            socket.create_connection(("127.0.0.1", proxy.ports[0]), timeout=5) as client,
        ):
            client.sendall(b"one")
            assert client.recv(16) == b"one"
            proxy.stall([0], ["down"])
            client.sendall(b"two")
            client.settimeout(0.3)
            with pytest.raises(TimeoutError):
                client.recv(16)
            proxy.resume([0], flush=True)
            client.settimeout(5)
            assert client.recv(16) == b"two"
            proxy.cut()
            assert client.recv(16) == b""
    finally:
        stop.set()
        thread.join(5)
        server.close()
