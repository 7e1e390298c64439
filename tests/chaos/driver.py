"""One chaos scenario end to end: provision a store, set it up, start the processes,
inflict the scenario's failures for the window, let everything catch up, stop the
processes with one SIGINT each, read the store and check.

Scenarios (each with :class:`Scenario.processes` processes running ``app.main()``):

* ``kill`` -- SIGKILL a random process at random moments and restart it at once.
* ``restart`` -- crash the (private) database server, keep it down for
  :attr:`Scenario.outage` seconds (longer than a lease), start it again; repeated
  every few seconds in long runs. The processes are never restarted.
* ``proxy`` -- every process reaches the server through its own port of a
  :class:`~chaos.proxy.Proxy`; in cycles: every connection cut, one process's answers
  held for longer than a lease and then delivered, added latency, every process
  stalled (new connections accepted and never answered) longer than a lease and then
  cut (see :func:`proxy_chaos`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.check import Expectations, Kill, Report, analyse, outstanding
from chaos.log import read_logs
from chaos.proxy import DOWN, Proxy
from chaos.stores import (
    Store,
    aws_env,
    check_available,
    child_env,
    child_setup,
    private_server,
    shared_store,
)
from chaos.workload import FinalState, Plan, Workload, final_state, fitted, set_up

SCENARIOS = ("kill", "restart", "proxy")


@dataclass
class Scenario:
    name: str
    backend: str
    seconds: float
    """The chaos window; the processes run longer (start-up, catching up, shutdown)."""
    workload: Workload = field(default_factory=Workload)
    processes: int = 3
    seed: int = 1
    tolerance: float = 2.0
    """Seconds allowed beyond ``lease + poll_interval`` for a takeover (a loaded machine)."""
    kill_every: tuple[float, float] = (0.5, 2.0)
    """kill: seconds between kills, uniformly random."""
    kill_overtime: float = 0.0
    """kill: seconds the storm may go on past the window while no aimed kill has yet
    found a process executing (on a slow server the bursts can start late, and a short
    window's aimed kills then all fall between them: nothing in flight, no takeover to
    check)."""
    outage: float = 4.5
    """restart: seconds the server stays down each time."""
    first_crash: float = 2.0
    """restart: seconds into the window of the first crash."""
    ready_timeout: float = 90.0
    settle_timeout: float = 45.0
    """Seconds after the window to wait for every due run to complete."""
    exit_timeout: float = 30.0


def say_nothing(message: str) -> None:
    pass


# -- the processes ------------------------------------------------------------------------------


class Fleet:
    """The scenario's processes, by slot. Every process is SIGKILLed on exit if still
    running (and by Linux if this process dies)."""

    def __init__(
        self,
        scenario: Scenario,
        directory: Path,
        options: list[dict[str, Any]],
        env: dict[str, str],
    ) -> None:
        self.scenario = scenario
        self.directory = directory
        self.options = options
        self.env = child_env(LOG_LEVEL="WARNING", **env)
        self.logs = directory / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * scenario.processes
        self.incarnation = [0] * scenario.processes
        self.kills: list[Kill] = []
        self.died: list[str] = []
        self.started = 0

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    def start(self, slot: int) -> None:
        self.incarnation[slot] += 1
        name = f"slot{slot}-{self.incarnation[slot]:03d}"
        config = {
            "backend": self.scenario.backend,
            "options": self.options[slot],
            "workload": self.scenario.workload.to_json(),
            "slot": slot,
            "log": str(self.logs / f"{name}.jsonl"),
            "seed": self.scenario.seed * 1000 + self.started,
        }
        config_path = self.directory / f"{name}.json"
        config_path.write_text(json.dumps(config))
        with (self.directory / f"{name}.err").open("wb") as err:
            self.processes[slot] = subprocess.Popen(
                [sys.executable, "-m", "chaos.worker", str(config_path)],
                cwd=self.directory,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                preexec_fn=child_setup(),
                start_new_session=True,
            )
        self.started += 1

    def kill(self, slot: int) -> None:
        process = self.processes[slot]
        assert process is not None
        at = time.time()
        process.send_signal(signal.SIGKILL)
        process.wait()
        self.kills.append(Kill(slot, process.pid, at))
        self.processes[slot] = None

    def check_alive(self) -> None:
        """Note (and replace) any process that exited without being told to."""
        for slot, process in enumerate(self.processes):
            if process is not None and process.poll() is not None:
                err = self.directory / f"slot{slot}-{self.incarnation[slot]:03d}.err"
                tail = err.read_text(errors="replace")[-1500:] if err.exists() else ""
                self.died.append(
                    f"process {slot} (pid {process.pid}) exited on its own with status "
                    f"{process.returncode}:\n{tail}"
                )
                self.start(slot)

    def is_ready(self, slot: int) -> bool:
        """Whether the current process of ``slot`` has claimed once (it is then past
        start-up, and its signal handlers are in place)."""
        log = self.logs / f"slot{slot}-{self.incarnation[slot]:03d}.jsonl"
        return log.exists() and b'"e":"ready"' in log.read_bytes()

    def ready(self) -> bool:
        """Whether every current process has claimed once."""
        return all(self.is_ready(slot) for slot in range(self.scenario.processes))

    def executing(self) -> dict[int, int]:
        """Slot -> how many executions its current process has started and not ended
        (slots with none are left out)."""
        busy = {}
        for slot in range(self.scenario.processes):
            log = self.logs / f"slot{slot}-{self.incarnation[slot]:03d}.jsonl"
            if log.exists():
                data = log.read_bytes()
                if (running := data.count(b'"e":"start"') - data.count(b'"e":"end"')) > 0:
                    busy[slot] = running
        return busy

    def stop(self) -> dict[int, int | None]:
        """One SIGINT each; wait for them all. Returns pid -> status (``None``: had to be
        killed after the timeout)."""
        running = [p for p in self.processes if p is not None]
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + self.scenario.exit_timeout
        statuses: dict[int, int | None] = {}
        for process in running:
            try:
                statuses[process.pid] = process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                statuses[process.pid] = None
        self.processes = [None] * self.scenario.processes
        return statuses


def wait_for(condition: Callable[[], bool], timeout: float, what: str, fleet: Fleet) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        fleet.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def pause(seconds: float, fleet: Fleet) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))
        fleet.check_alive()


# -- the failures -----------------------------------------------------------------------------


def kill_storm(
    scenario: Scenario, fleet: Fleet, until: float, rng: random.Random, burst: tuple[float, float]
) -> None:
    """SIGKILL a process every :attr:`Scenario.kill_every` seconds and start it again at
    once. Every other kill is aimed: it waits for the next burst of dynamic instances
    and takes the process executing most of them (when one is, within 1 s), so
    that runs are cut short mid-way and their takeovers measured; the others take a
    random process at a random moment. A kill that would leave no other process past
    start-up is skipped: the takeover bound assumes a survivor to take over (on a loaded
    machine a restarted process can take seconds to start). Until an aimed kill has hit
    a process executing, the storm may go on up to :attr:`Scenario.kill_overtime`
    seconds past ``until``."""
    aimed = False
    hit = False
    while True:
        end = until if hit else until + scenario.kill_overtime
        wait = rng.uniform(*scenario.kill_every)
        if time.time() + wait >= end:
            pause(until - time.time(), fleet)
            return
        pause(wait, fleet)
        aimed = not aimed
        slots = list(range(scenario.processes))
        busy = {}
        if aimed:
            due = next_burst(burst, time.time())
            if due + 1.0 >= end:
                continue
            pause(due + 0.1 - time.time(), fleet)  # claimed, mostly started
            deadline = due + 1.0
            while not (busy := fleet.executing()) and time.time() < deadline:
                time.sleep(0.02)
            if busy:
                slots = [max(busy, key=busy.__getitem__)]
        slot = rng.choice(slots)
        survivors = [other for other in range(scenario.processes) if other != slot]
        if fleet.processes[slot] is None or not any(map(fleet.is_ready, survivors)):
            continue
        hit = hit or bool(busy)
        fleet.kill(slot)
        fleet.start(slot)


def next_burst(burst: tuple[float, float], after: float) -> float:
    """When the dynamic instances next fall due after ``after`` (they all share one
    grid: ``first + k * interval``)."""
    first, interval = burst
    return first + max(0, math.ceil((after - first) / interval)) * interval


def restarts(
    scenario: Scenario,
    store: Store,
    fleet: Fleet,
    window: tuple[float, float],
    rng: random.Random,
    report: Report,
) -> None:
    """Crash the server :attr:`Scenario.first_crash` seconds into the window, then every
    2-5 s after it is back, as long as an outage and 1 s after it fit in the window."""
    server = store.server
    assert server is not None
    start, until = window
    up_for = scenario.first_crash
    while time.time() + up_for + scenario.outage + 1.0 < until:
        pause(up_for, fleet)
        down_at = time.time()
        server.stop(crash=True)
        pause(scenario.outage, fleet)
        server.start()
        report.outages += 1
        report.notes.append(
            f"{server.name} crashed at +{down_at - start:.1f} s, back after "
            f"{time.time() - down_at:.1f} s"
        )
        up_for = rng.uniform(2.0, 5.0)
    pause(until - time.time(), fleet)


def proxy_chaos(
    scenario: Scenario,
    proxy: Proxy,
    fleet: Fleet,
    until: float,
    rng: random.Random,
    burst: tuple[float, float],
) -> None:
    """Cycles of: every connection cut; one process's answers held for longer than a
    lease, starting just before the dynamic instances fall due (so that it holds the
    answer to a claim that took rows), then delivered; 50-200 ms of latency on every
    connection; every process stalled (new connections accepted, never answered) for
    longer than a lease, then cut. A cycle that no longer fits in the window is not
    started."""
    lease = scenario.workload.lease

    def before_burst() -> None:
        pause(next_burst(burst, time.time() + 0.3) - 0.05 - time.time(), fleet)

    while time.time() + cycle_seconds(scenario) < until:
        slot = rng.randrange(scenario.processes)
        proxy.cut()
        pause(0.3, fleet)
        before_burst()
        proxy.stall([slot], [DOWN])
        pause(lease + 1.0, fleet)
        proxy.resume([slot], flush=True)
        proxy.latency(rng.uniform(0.05, 0.2))
        pause(0.7, fleet)
        proxy.latency(0.0)
        proxy.stall()
        pause(lease + 0.7, fleet)
        proxy.resume(flush=False)
        pause(0.3, fleet)
    pause(until - time.time(), fleet)


def cycle_seconds(scenario: Scenario) -> float:
    """The longest a cycle of :func:`proxy_chaos` takes."""
    return scenario.workload.interval + scenario.workload.lease * 2 + 3.3


# -- the scenario --------------------------------------------------------------------------------


@contextlib.contextmanager
def provision(scenario: Scenario, directory: Path) -> Iterator[Store]:
    if scenario.name == "restart":
        with private_server(scenario.backend) as store:
            yield store
    else:
        with shared_store(scenario.backend, directory) as store:
            yield store


def run(scenario: Scenario, directory: Path, say: Callable[[str], None] = say_nothing) -> Report:
    """Run ``scenario`` with its files in ``directory``; never raises for what it finds
    (those are the report's problems), only when it cannot run at all."""
    if scenario.name not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario.name!r}")
    check_available(scenario.backend, scenario.name)
    scenario = dataclasses.replace(scenario, workload=fitted(scenario.workload, scenario.backend))
    rng = random.Random(scenario.seed)
    workload = scenario.workload
    report = Report(scenario.name, scenario.backend, scenario.seconds)
    last = [time.monotonic()]

    def mark(phase: str) -> None:
        now = time.monotonic()
        report.phases[phase] = round(now - last[0], 2)
        last[0] = now

    with contextlib.ExitStack() as stack:
        store = stack.enter_context(provision(scenario, directory))
        options = [store.options] * scenario.processes
        proxy: Proxy | None = None
        if scenario.name == "proxy":
            assert store.address is not None
            proxy = stack.enter_context(Proxy(store.address, scenario.processes))
            options = [store.via(port) for port in proxy.ports]
        mark("provision")
        say(f"{scenario.name} on {scenario.backend}: setting up")
        start = time.time()
        with aws_env():
            plan = asyncio.run(
                set_up(
                    scenario.backend,
                    store.options,
                    workload,
                    start + 3.0,
                    start + 3.0 + max(scenario.seconds - 1.0, 1.0),
                    scenario.seed,
                )
            )
        mark("set-up")
        fleet = stack.enter_context(Fleet(scenario, directory, options, store.env))
        for slot in range(scenario.processes):
            fleet.start(slot)
        wait_for(fleet.ready, scenario.ready_timeout, "every process to claim once", fleet)
        mark("start")
        window_start = time.time()
        until = window_start + scenario.seconds
        burst = (min(plan.dynamic.values()) / 1e6, workload.interval)
        say(f"{scenario.name} on {scenario.backend}: chaos for {scenario.seconds:.0f} s")
        if scenario.name == "kill":
            kill_storm(scenario, fleet, until, rng, burst)
        elif scenario.name == "restart":
            restarts(scenario, store, fleet, (window_start, until), rng, report)
        else:
            assert proxy is not None
            proxy_chaos(scenario, proxy, fleet, until, rng, burst)
            proxy.reset()
            report.proxy_actions = len(proxy.actions)
            report.notes += [f"+{at - window_start:.1f} s: {what}" for at, what in proxy.actions]
        window_end = time.time()
        mark("window")
        expect = Expectations(
            window_start=window_start,
            window_end=window_end,
            lease=workload.lease,
            poll=workload.poll,
            tolerance=scenario.tolerance,
            kills=fleet.kills,
            backend_fails=scenario.name != "kill",
        )
        say(f"{scenario.name} on {scenario.backend}: waiting for every due run")
        settle(scenario, fleet, directory, plan, expect)
        mark("catch-up")
        # a process restarted late may still be starting; its SIGINT must reach app.main()
        wait_for(
            fleet.ready, scenario.ready_timeout, "every process to run before the SIGINT", fleet
        )
        expect.exits = fleet.stop()
        expect.died = fleet.died
        mark("stop")
        final = read_final(scenario, store, report)
        save_inputs(directory, plan, expect, final)
        say(f"{scenario.name} on {scenario.backend}: checking")
        analyse(report, read_logs(directory / "logs"), plan, expect, final)
        mark("check")
    mark("teardown")
    (directory / "report.json").write_text(json.dumps(report.to_json(), indent=1))
    return report


def save_inputs(
    directory: Path, plan: Plan, expect: Expectations, final: FinalState | None
) -> None:
    """What the checker needs besides the logs, so ``python -m chaos.check DIR`` can run
    it again on a kept directory."""
    inputs = {
        "plan": plan.to_json(),
        "expect": dataclasses.asdict(expect),
        "final": dataclasses.asdict(final) if final is not None else None,
    }
    (directory / "inputs.json").write_text(json.dumps(inputs))


def settle(
    scenario: Scenario, fleet: Fleet, directory: Path, plan: Plan, expect: Expectations
) -> None:
    deadline = time.monotonic() + scenario.settle_timeout
    while time.monotonic() < deadline:
        pause(0.25, fleet)
        if outstanding(read_logs(directory / "logs"), plan, expect) == 0:
            return


def read_final(scenario: Scenario, store: Store, report: Report) -> FinalState | None:
    try:
        with aws_env():
            return asyncio.run(final_state(scenario.backend, store.options, scenario.workload))
    except Exception as error:
        report.problem(
            "storage", f"reading the final state failed: {type(error).__name__}: {error}"
        )
        return None
