"""The chaos checker is the oracle of the scenarios: these tests feed it hand-written
logs and check that it finds each kind of problem, and excuses what the guarantees
allow (a run repeated because its process died before committing it, an at-most-once
run given up with its process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chaos.check import Expectations, Kill, Report, analyse
from chaos.log import ProcessLog
from chaos.workload import FinalState, Plan, StoredRow

pytestmark = pytest.mark.chaos

S = 1_000_000
T = 1_800_000_000
"""Seconds since the epoch at which the hand-written runs are scheduled."""
LEASE = 2.0


class Logs:
    """Hand-written process logs: one :class:`ProcessLog` per pid."""

    def __init__(self) -> None:
        self.records: dict[int, list[dict[str, Any]]] = {}
        self.seq = 0

    def __call__(self, pid: int, kind: str, **fields: Any) -> None:
        if pid not in self.records:
            self.records[pid] = [{"e": "boot", "pid": pid, "slot": 0, "t": 0.0}]
        self.records[pid].append({"e": kind, **fields})

    def claim(self, pid: int, lease: str, at: float, name: str, sched: int) -> None:
        now = round(at * S)
        until = now + round(LEASE * S)
        self(pid, "claim", g="g", lease=lease, now=now, t0=at, t1=at + 0.01,
             rows=[[name, sched, until]])  # fmt: skip

    def commit(self, pid: int, lease: str, at: float, name: str, fate: str) -> None:
        self.seq += 1
        self(pid, "commit", s=self.seq, g="g", t0=at, items=[[name, lease, None]])
        if fate == "applied":
            self(pid, "committed", s=self.seq, t1=at + 0.01, lost=[])
        elif fate == "refused":
            self(pid, "committed", s=self.seq, t1=at + 0.01, lost=[name])
        elif fate == "error":
            self(pid, "commit_err", s=self.seq, t1=at + 0.01, err="BackendUnavailableError")

    def execution(
        self, pid: int, run: tuple[str, str, int], lease: str | None, mode: str,
        start: float, end: float | None, ok: bool = True, fm: str = "none",
    ) -> None:  # fmt: skip
        task, inst, sched = run
        base = {"task": task, "inst": inst, "sched": sched, "lease": lease, "mode": mode}
        self(pid, "start", t=start, fm=fm, **base)
        if end is not None:
            self(pid, "end", t=end, ok=ok, fm=fm, **base)

    def process_logs(self) -> list[ProcessLog]:
        return [ProcessLog(Path(f"{pid}.jsonl"), pid, r) for pid, r in self.records.items()]


ALO = ("once", "once-a", T * S)
AMO = ("once", "once-b", T * S)
PLAN = Plan(
    set_up_at=T - 10,
    interval_us=S,
    static={},
    dynamic={},
    oneoffs={"once-a": T * S, "once-b": T * S},
    modes={"once/once-a": ("alo", "none"), "once/once-b": ("amo", "none")},
)
FINAL = FinalState(static={}, dynamic={}, oneoffs={}, read_at=T + 100)


def check(logs: Logs, kills: list[Kill] | None = None, final: FinalState = FINAL) -> Report:
    expect = Expectations(T - 5, T + 5, LEASE, 0.2, 1.0, kills=kills or [])
    return analyse(Report("kill", "test", 10), logs.process_logs(), PLAN, expect, final)


def ran_once(logs: Logs, run: tuple[str, str, int], pid: int, lease: str, at: float) -> None:
    """One clean at-least-once (or, with ``mode``, at-most-once) execution."""
    mode = "amo" if run == AMO else "alo"
    logs.claim(pid, lease, at, run[1], run[2])
    if mode == "amo":
        logs.commit(pid, lease, at + 0.02, run[1], "applied")
    logs.execution(pid, run, lease if mode == "alo" else None, mode, at + 0.03, at + 0.1)
    if mode == "alo":
        logs.commit(pid, lease, at + 0.11, run[1], "applied")


def test_clean_runs_have_no_problems() -> None:
    logs = Logs()
    ran_once(logs, ALO, 1, "L1", T + 0.1)
    ran_once(logs, AMO, 2, "L2", T + 0.1)
    report = check(logs)
    assert report.ok, report.summary()
    assert (report.runs_checked, report.executions) == (2, 2)


def test_an_at_most_once_run_started_twice_is_a_duplicate() -> None:
    logs = Logs()
    ran_once(logs, ALO, 1, "L1", T + 0.1)
    ran_once(logs, AMO, 1, "L2", T + 0.1)
    ran_once(logs, AMO, 2, "L3", T + 0.5)
    report = check(logs)
    assert report.duplicates == 1
    assert set(report.kinds) == {"duplicate after a rewind"}, report.summary()


def test_a_rewind_names_the_registration_that_did_it() -> None:
    logs = Logs()
    ran_once(logs, ALO, 1, "L1", T + 0.1)
    ran_once(logs, AMO, 1, "L2", T + 0.1)  # its commit lands at T+0.12..0.13
    logs(3, "register", g="g", now=round((T - 0.1) * S), force=False,
         rows=[["once-b", T * S]], t0=T + 0.05, t1=T + 0.2, left=[])  # fmt: skip
    ran_once(logs, AMO, 3, "L3", T + 0.3)
    report = check(logs)
    assert "pid 3's registration" in report.problems[0], report.summary()


def test_an_at_least_once_run_completed_twice_after_a_landed_commit_is_a_duplicate() -> None:
    logs = Logs()
    ran_once(logs, AMO, 1, "L0", T + 0.1)
    ran_once(logs, ALO, 1, "L1", T + 0.1)
    ran_once(logs, ALO, 2, "L2", T + 3.0)
    report = check(logs)
    assert report.duplicates == 1 and "duplicate" in "".join(report.kinds), report.summary()


def test_a_run_whose_process_died_before_committing_may_run_again() -> None:
    logs = Logs()
    ran_once(logs, AMO, 3, "L0", T + 0.1)
    logs.claim(1, "L1", T + 0.1, ALO[1], ALO[2])
    logs.execution(1, ALO, "L1", "alo", T + 0.15, T + 0.3)  # killed before its commit
    ran_once(logs, ALO, 2, "L2", T + 2.2)
    report = check(logs, kills=[Kill(0, 1, T + 0.35)])
    assert report.ok, report.summary()
    assert (report.repeats, report.duplicates) == (1, 0)


def test_a_run_killed_midway_must_be_taken_over_within_the_bound() -> None:
    logs = Logs()
    ran_once(logs, AMO, 3, "L0", T + 0.1)
    logs.claim(1, "L1", T + 0.1, ALO[1], ALO[2])
    logs.execution(1, ALO, "L1", "alo", T + 0.15, None)
    ran_once(logs, ALO, 2, "L2", T + 2.3)
    report = check(logs, kills=[Kill(0, 1, T + 0.2)])
    assert report.ok and report.takeovers == 1, report.summary()
    assert report.worst_takeover == pytest.approx(2.13, abs=0.01)

    slow = Logs()
    ran_once(slow, AMO, 3, "L0", T + 0.1)
    slow.claim(1, "L1", T + 0.1, ALO[1], ALO[2])
    slow.execution(1, ALO, "L1", "alo", T + 0.15, None)
    ran_once(slow, ALO, 2, "L2", T + 4.0)  # past 2 s lease + 0.2 s poll + 1 s tolerance
    assert set(check(slow, kills=[Kill(0, 1, T + 0.2)]).kinds) == {"slow takeover"}


def test_an_execution_that_starts_after_its_lease_expired_is_a_stale_start() -> None:
    logs = Logs()
    ran_once(logs, AMO, 3, "L0", T + 0.1)
    logs.claim(1, "L1", T + 0.1, ALO[1], ALO[2])  # lease until T+2.1
    logs.records[1][-1]["t1"] = T + 3.0  # ... but the answer came at T+3
    ran_once(logs, ALO, 2, "L2", T + 2.2)
    logs.execution(1, ALO, "L1", "alo", T + 3.01, T + 3.1)
    logs.commit(1, "L1", T + 3.11, ALO[1], "refused")
    report = check(logs)
    assert report.kinds == {"stale start": 1, "duplicate after a stale start": 1}


def test_runs_never_completed_are_lost_unless_at_most_once_gave_them_up() -> None:
    logs = Logs()
    logs.claim(1, "L1", T + 0.1, ALO[1], ALO[2])
    logs.execution(1, ALO, "L1", "alo", T + 0.15, T + 0.2, ok=False)
    logs.claim(1, "L2", T + 0.1, AMO[1], AMO[2])
    logs.commit(1, "L2", T + 0.12, AMO[1], "applied")  # then killed before it started
    report = check(logs, kills=[Kill(0, 1, T + 0.13)])
    assert report.kinds == {"lost": 1}, report.summary()
    assert "once-a" in report.problems[0]
    assert report.amo_given_up == 1


@pytest.mark.parametrize("first_commits_late", [False, True])
def test_a_claim_of_a_row_another_lease_still_holds_is_a_lease_violation(
    first_commits_late: bool,
) -> None:
    logs = Logs()
    ran_once(logs, AMO, 3, "L0", T + 0.1)
    logs.claim(1, "L1", T + 0.1, ALO[1], ALO[2])  # holds it until T+2.1
    logs.execution(1, ALO, "L1", "alo", T + 0.15, T + 1.5, ok=first_commits_late)
    logs.claim(2, "L2", T + 1.0, ALO[1], ALO[2])  # with now = T+1.0
    logs.execution(2, ALO, "L2", "alo", T + 1.05, T + 1.2, ok=not first_commits_late)
    if first_commits_late:  # a guarded write succeeding after the other claim
        logs.commit(1, "L1", T + 1.6, ALO[1], "applied")
    else:
        logs.commit(2, "L2", T + 1.3, ALO[1], "applied")
    report = check(logs)
    assert report.kinds == {"lease violation": 1}, report.summary()
    expected = "succeeded at" if first_commits_late else "while pid 1's lease L1"
    assert expected in report.problems[0]


def test_the_store_must_hold_every_instance_and_no_finished_one_off() -> None:
    logs = Logs()
    ran_once(logs, ALO, 1, "L1", T + 0.1)
    ran_once(logs, AMO, 2, "L2", T + 0.1)
    final = FinalState({}, {}, {"once-a": StoredRow(T * S, None)}, T + 100)
    assert check(logs, final=final).kinds == {"storage": 1}


def test_an_unlock_cut_short_by_a_kill_may_have_released_the_lease() -> None:
    logs = Logs()
    ran_once(logs, AMO, 3, "L0", T + 0.1)
    logs.claim(1, "L1", T + 0.1, ALO[1], ALO[2])
    logs.execution(1, ALO, "L1", "alo", T + 0.15, T + 0.2, ok=False, fm="unlock")
    logs(1, "unlock", s=99, g="g", n=ALO[1], lease="L1", t0=T + 0.21)  # no answer: killed
    ran_once(logs, ALO, 2, "L2", T + 0.4)
    report = check(logs, kills=[Kill(0, 1, T + 0.22)])
    assert report.ok, report.summary()


def test_a_takeover_is_timed_from_the_last_holder_killed() -> None:
    """A process that claimed the run after the first kill, and was killed in turn before
    running it, held it for another lease: the takeover is timed from its death."""
    logs = Logs()
    ran_once(logs, AMO, 3, "L0", T + 0.1)
    logs.claim(1, "L1", T + 0.1, ALO[1], ALO[2])
    logs.execution(1, ALO, "L1", "alo", T + 0.15, None)  # killed at T+0.2
    logs(2, "claim_sent", s=1, g="once", lease="L2", now=round((T + 2.2) * S), t0=T + 2.2)
    ran_once(logs, ALO, 4, "L4", T + 4.5)  # 4.3 s after the first kill: 2.1 s after the second
    report = check(logs, kills=[Kill(0, 1, T + 0.2), Kill(1, 2, T + 2.4)])
    assert report.ok, report.summary()
    assert report.worst_takeover == pytest.approx(2.13, abs=0.01)


def test_a_registration_may_clear_a_lease_expired_by_its_own_clock() -> None:
    """A starting process registers static tasks without force, which clears leases that
    expired by the registration's ``now``; a claim sent earlier (with an earlier
    ``now``) that reaches the store after it may then take the row legitimately."""
    logs = Logs()
    ran_once(logs, AMO, 3, "L0", T + 0.1)
    logs.claim(1, "L1", T + 0.1, ALO[1], ALO[2])  # until T+2.1; its process is killed
    logs.execution(1, ALO, "L1", "alo", T + 0.15, None)
    logs(4, "register", g="g", now=round((T + 2.15) * S), force=False,
         rows=[[ALO[1], ALO[2]]], t0=T + 2.15, t1=T + 2.16, left=[])  # fmt: skip
    logs.claim(2, "L2", T + 2.09, ALO[1], ALO[2])  # now T+2.09, but answered after
    logs.records[2][-1]["t1"] = T + 2.2
    logs.execution(2, ALO, "L2", "alo", T + 2.21, T + 2.3)
    logs.commit(2, "L2", T + 2.31, ALO[1], "applied")
    report = check(logs, kills=[Kill(0, 1, T + 0.2)])
    assert report.ok, report.summary()


def polling_failed(logs: Logs, pid: int, exc: str) -> None:
    template = "Polling failed (attempt %d); retrying in %.1f s"
    logs(pid, "log", t=T, lvl="ERROR", logger="pyncette.worker", tmpl=template,
         msg="Polling failed (attempt 1); retrying in 0.2 s", exc=exc)  # fmt: skip


def test_a_call_given_up_as_too_slow_is_counted_and_any_other_error_is_a_problem() -> None:
    logs = Logs()
    ran_once(logs, ALO, 1, "L1", T + 0.1)
    ran_once(logs, AMO, 2, "L2", T + 0.1)
    polling_failed(logs, 1, "TimeoutError")
    report = check(logs)
    assert report.ok and report.timeouts == 1, report.summary()
    polling_failed(logs, 2, "OperationalError")
    report = check(logs)
    assert set(report.kinds) == {"error logged"}, report.summary()
