"""The checker: from the processes' logs, the driver's events and the store's final state,
decide whether any run executed twice or was lost, and measure takeovers.

A *run* is ``(task, instance, scheduled_at)``. Definitions (see docs/reliability.md):

* **duplicate** -- at-most-once: a run started more than once. At-least-once: a run
  *completed* (ended successfully, or failed with ``FailureMode.COMMIT``) more than once,
  not counting completions that are explained: their commit demonstrably did not land
  (the process was killed before the commit returned, the commit raised, or it landed
  after the lease had expired and another process had taken it) *and* they started
  while their lease was valid.
* **lost** -- a run due by the end of the chaos window that never completed
  (at-least-once), or never started (at-most-once) unless the process that committed it
  was killed, or its commit raised, before it could start (at-most-once gives up those
  runs by design; they are counted separately).
* **stale start** -- an at-least-once execution that started after its lease had expired.
* **lease violation** -- a row claimed while another process's lease on it was still
  valid (the claim's ``now`` was before that lease's expiry, no commit or unlock had
  been sent with that lease, and no registration whose own ``now`` was past that expiry
  had cleared it), or a lease-guarded write that succeeded after another
  process had claimed the row. Only claims that certainly reached the store in order
  are compared.
* **takeover delay** -- for an at-least-once execution cut short by a SIGKILL, the time
  from the kill to the start of the run's next execution; it must stay within
  ``lease + poll_interval + tolerance``.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.log import ProcessLog, Record, records_of
from chaos.workload import DYNAMIC, ONEOFF, FinalState, Plan, StoredRow

SECOND_US = 1_000_000
RELEVANT = 120.0
"""Seconds: claims of a row further apart than this are not compared (no lease or
execution here lasts that long)."""
STATIC_GROUP = "__static__"

ALLOWED_ALWAYS = {("pyncette.worker", "Execution of %s failed", "InjectedFailure")}
"""(logger, message template, exception) of ERROR records expected in every scenario."""
ALLOWED_WHEN_BACKEND_FAILS = {
    ("pyncette.worker", "Polling failed (attempt %d); retrying in %.1f s"),
    ("pyncette.worker", "Could not commit %d executions; they run again after their leases expire"),
    ("pyncette.worker", "Could not unlock %r; it retries when its lease expires"),
    ("pyncette.worker", "Background repository operation failed"),
}
"""(logger, template) of ERROR records expected while the backend is unreachable."""
SLOW = "TimeoutError"
"""The exception of the ERROR records above that are allowed in every scenario: the core
gives up a repository call of its loop that takes longer than half a lease (the claim
could no longer be trusted), which a loaded 2-core machine does now and then with a
2 s lease. They are counted (:attr:`Report.timeouts`); what they lead to is checked."""


@dataclass(frozen=True)
class Kill:
    slot: int
    pid: int
    at: float
    """When SIGKILL was sent (``time.time()``)."""


@dataclass
class Execution:
    pid: int
    task: str
    inst: str
    sched: int
    lease: str | None
    mode: str
    fm: str
    start: float
    end: float | None = None
    ok: bool | None = None

    @property
    def run(self) -> tuple[str, str, int]:
        return (self.task, self.inst, self.sched)

    @property
    def completed(self) -> bool:
        return self.end is not None and bool(self.ok or self.fm == "commit")


@dataclass
class Claim:
    pid: int
    group: str
    name: str
    sched: int
    lease: str
    now: int
    until: int | None
    t0: float
    t1: float


@dataclass
class LeaseOp:
    """A lease-guarded write: a commit item, an extend or an unlock."""

    kind: str
    t0: float
    fate: str
    """``applied`` / ``refused`` / ``error`` / ``unknown`` (no answer logged)."""
    until: int | None = None
    t1: float | None = None
    """When the answer came back (``None``: no answer logged)."""


@dataclass
class Expectations:
    """What the driver tells the checker about the run."""

    window_start: float
    window_end: float
    lease: float
    poll: float
    tolerance: float
    kills: list[Kill] = field(default_factory=list)
    backend_fails: bool = False
    """Whether the backend was made unreachable (restart, proxy): the loop then logs errors."""
    exits: dict[int, int | None] = field(default_factory=dict)
    """pid -> exit status after the final SIGINT (``None``: did not exit in time)."""
    died: list[str] = field(default_factory=list)
    """Processes that exited on their own before the final SIGINT."""


@dataclass
class Report:
    """Figures and problems of one scenario run; ``ok`` when there are no problems."""

    scenario: str
    backend: str
    seconds: float
    kills: int = 0
    outages: int = 0
    proxy_actions: int = 0
    processes: int = 0
    runs_checked: int = 0
    executions: int = 0
    duplicates: int = 0
    lost: int = 0
    amo_given_up: int = 0
    repeats: int = 0
    stale_starts: int = 0
    lease_violations: int = 0
    takeovers: int = 0
    worst_takeover: float | None = None
    takeover_p50: float | None = None
    takeover_p95: float | None = None
    takeover_bound: float = 0.0
    errors_logged: int = 0
    timeouts: int = 0
    """ERROR records of repository calls the core gave up as too slow (see :data:`SLOW`)."""
    warnings: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    """Problem kind (the text before the first ``:``) -> how many."""
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds each phase of the run took (provision, set-up, start, window, ...)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, kind: str, message: str) -> None:
        self.problems.append(f"{kind}: {message}")
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def summary(self) -> str:
        worst = "-" if self.worst_takeover is None else f"{self.worst_takeover:.2f} s"
        lines = [
            f"{self.scenario} on {self.backend}: {self.seconds:.0f} s, {self.kills} kills, "
            f"{self.outages} outages, {self.proxy_actions} proxy actions, "
            f"{self.processes} processes",
            f"runs checked {self.runs_checked}, executions {self.executions}, "
            f"duplicates {self.duplicates}, lost {self.lost}, stale starts "
            f"{self.stale_starts}, lease violations {self.lease_violations}",
            f"at-most-once runs given up {self.amo_given_up}, at-least-once repeats "
            f"{self.repeats}, takeovers {self.takeovers} (p50 {cell(self.takeover_p50)}, "
            f"p95 {cell(self.takeover_p95)}, worst {worst}, bound "
            f"{self.takeover_bound:.2f} s), errors logged {self.errors_logged} (calls "
            f"timed out {self.timeouts})",
        ]
        if self.phases:
            lines.append("phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.phases.items()))
        if self.kinds:
            lines.append("problems: " + ", ".join(f"{k} {n}" for k, n in self.kinds.items()))
        lines += [f"note: {note}" for note in self.notes]
        shown = sorted(
            self.problems, key=lambda p: p.startswith(("stale start", "duplicate after"))
        )
        shown = shown[:25]
        lines += [f"PROBLEM: {problem}" for problem in shown]
        if len(self.problems) > len(shown):
            lines.append(f"... and {len(self.problems) - len(shown)} more problems")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["ok"] = self.ok
        return data


def cell(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


# -- reading the logs -----------------------------------------------------------------------


@dataclass
class Logs:
    executions: list[Execution]
    claims: list[Claim]
    ops: dict[tuple[int, str, str], list[LeaseOp]]
    """(pid, row name, lease) -> the lease-guarded writes that process made with it."""
    claim_of: dict[tuple[int, str, str, int], Claim]
    """(pid, lease, row name, sched) -> the claim."""
    registrations: list[tuple[int, str, int, float, float, int]]
    """(pid, row name, scheduled_at registered, sent, returned, its ``now``) of every
    registration."""
    unanswered: list[tuple[int, str, int, float]]
    """(pid, group, now, sent) of claims whose process died before they returned."""
    logs: list[Record]
    crashes: list[Record]
    boots: dict[int, Record]
    exits: dict[int, Record]


def parse(process_logs: list[ProcessLog]) -> Logs:
    executions: list[Execution] = []
    open_runs: dict[tuple[int, str, str, int, str | None], collections.deque[Execution]] = (
        collections.defaultdict(collections.deque)
    )
    claims: list[Claim] = []
    ops: dict[tuple[int, str, str], list[LeaseOp]] = collections.defaultdict(list)
    commits: dict[tuple[int, int], list[tuple[str, str, LeaseOp]]] = {}
    guarded: dict[tuple[int, int], LeaseOp] = {}
    sent: dict[tuple[int, int], tuple[str, int, float]] = {}
    logged: list[Record] = []
    registrations: list[tuple[int, str, int, float, float, int]] = []
    crashes: list[Record] = []
    boots: dict[int, Record] = {}
    exits: dict[int, Record] = {}
    for pid, r in records_of(process_logs):
        kind = r["e"]
        if kind == "start":
            execution = Execution(
                pid, r["task"], r["inst"], r["sched"], r["lease"], r["mode"], r["fm"], r["t"]
            )
            executions.append(execution)
            open_runs[(pid, r["task"], r["inst"], r["sched"], r["lease"])].append(execution)
        elif kind == "end":
            queue = open_runs[(pid, r["task"], r["inst"], r["sched"], r["lease"])]
            if queue:
                execution = queue.popleft()
                execution.end, execution.ok = r["t"], r["ok"]
        elif kind == "claim_sent":
            sent[(pid, r["s"])] = (r["g"], r["now"], r["t0"])
        elif kind in ("claim_none", "claim_err"):
            sent.pop((pid, r.get("s", -1)), None)
        elif kind == "claim":
            sent.pop((pid, r.get("s", -1)), None)
            for name, sched, until in r["rows"]:
                claims.append(
                    Claim(pid, r["g"], name, sched, r["lease"], r["now"], until, r["t0"], r["t1"])
                )
        elif kind == "commit":
            items = []
            for name, lease, _next_at in r["items"]:
                op = LeaseOp("commit", r["t0"], "unknown")
                ops[(pid, name, lease)].append(op)
                items.append((name, lease, op))
            commits[(pid, r["s"])] = items
        elif kind == "committed":
            lost = set(r["lost"])
            for name, _lease, op in commits.get((pid, r["s"]), []):
                op.fate = "refused" if name in lost else "applied"
                op.t1 = r["t1"]
        elif kind == "commit_err":
            for _name, _lease, op in commits.get((pid, r["s"]), []):
                op.fate = "error"
        elif kind in ("extend", "unlock"):
            op = LeaseOp(kind, r["t0"], "unknown", r.get("until"))
            ops[(pid, r["n"], r["lease"])].append(op)
            guarded[(pid, r["s"])] = op
        elif kind in ("extend_done", "unlock_done"):
            ok = r["ok"]
            found = guarded.get((pid, r["s"]))
            if found is not None:
                found.fate = "error" if ok is None else ("applied" if ok else "refused")
        elif kind == "register" and "left" in r:
            for name, sched in r["rows"]:
                registrations.append((pid, name, sched, r["t0"], r["t1"], r["now"]))
        elif kind == "log":
            logged.append(r | {"pid": pid})
        elif kind == "crash":
            crashes.append(r | {"pid": pid})
        elif kind == "boot":
            boots[pid] = r
        elif kind == "exit":
            exits[pid] = r
    claim_of = {(c.pid, c.lease, c.name, c.sched): c for c in claims}
    unanswered = [(pid, group, now, t0) for (pid, _), (group, now, t0) in sent.items()]
    return Logs(
        executions, claims, ops, claim_of, registrations, unanswered, logged, crashes, boots, exits
    )


# -- what should have run ---------------------------------------------------------------------


def expected_runs(plan: Plan, until_us: int) -> dict[tuple[str, str, int], tuple[str, str]]:
    """Every run due by ``until_us`` -> its (mode, failure mode)."""
    runs: dict[tuple[str, str, int], tuple[str, str]] = {}
    for name, first in plan.static.items():
        mode = plan.modes[f"{name}/{name}"]
        for sched in range(first, until_us + 1, SECOND_US):
            runs[(name, name, sched)] = mode
    for name, first in plan.dynamic.items():
        mode = plan.modes[f"{DYNAMIC}/{name}"]
        for sched in range(first, until_us + 1, plan.interval_us):
            runs[(DYNAMIC, name, sched)] = mode
    for name, at in plan.oneoffs.items():
        if at <= until_us:
            runs[(ONEOFF, name, at)] = plan.modes[f"{ONEOFF}/{name}"]
    return runs


def on_grid(plan: Plan, run: tuple[str, str, int]) -> bool:
    task, name, sched = run
    if task == DYNAMIC:
        first = plan.dynamic.get(name)
        return first is not None and sched >= first and (sched - first) % plan.interval_us == 0
    if task == ONEOFF:
        return plan.oneoffs.get(name) == sched
    first = plan.static.get(name)
    return first is not None and sched >= first and (sched - first) % SECOND_US == 0


def group_of(task: str) -> str:
    return task if task in (DYNAMIC, ONEOFF) else STATIC_GROUP


# -- the analysis ---------------------------------------------------------------------------


class Analysis:
    def __init__(self, logs: Logs, plan: Plan, expect: Expectations) -> None:
        self.logs = logs
        self.plan = plan
        self.expect = expect
        self.killed_at = {kill.pid: kill.at for kill in expect.kills}
        self.by_run: dict[tuple[str, str, int], list[Execution]] = collections.defaultdict(list)
        for execution in logs.executions:
            self.by_run[execution.run].append(execution)
        for executions in self.by_run.values():
            executions.sort(key=lambda e: e.start)
        self.claims_by_run: dict[tuple[str, int], list[Claim]] = collections.defaultdict(list)
        for claim in logs.claims:
            self.claims_by_run[(claim.name, claim.sched)].append(claim)

    # helpers

    def fate(self, pid: int, name: str, lease: str | None) -> str:
        """What became of the commits ``pid`` made with ``lease``: ``applied`` if one
        landed, else ``refused``, ``unknown``, ``error``, or ``none`` if it made none."""
        if lease is None:
            return "none"
        fates = {op.fate for op in self.logs.ops.get((pid, name, lease), []) if op.kind == "commit"}
        for fate in ("applied", "refused", "unknown", "error"):
            if fate in fates:
                return fate
        return "none"

    def lease_end(self, execution: Execution) -> float | None:
        """When the lease of an at-least-once execution expired (heartbeats included)."""
        if execution.lease is None:
            return None
        claim = self.logs.claim_of.get(
            (execution.pid, execution.lease, execution.inst, execution.sched)
        )
        if claim is None or claim.until is None:
            return None
        until = claim.until
        for op in self.logs.ops.get((execution.pid, execution.inst, execution.lease), []):
            if (
                op.kind == "extend"
                and op.fate == "applied"
                and op.until
                and op.t0 < execution.start
            ):
                until = max(until, op.until)
        return until / 1e6

    def stale(self, execution: Execution) -> bool:
        end = self.lease_end(execution)
        return end is not None and execution.start > end

    def was_killed(self, execution: Execution) -> bool:
        killed = self.killed_at.get(execution.pid)
        return execution.end is None and killed is not None and killed >= execution.start

    # the checks

    def runs(self, report: Report, expected: dict[tuple[str, str, int], tuple[str, str]]) -> None:
        for run in sorted(set(expected) | set(self.by_run)):
            executions = self.by_run.get(run, [])
            if executions and not on_grid(self.plan, run):
                report.problem("unexpected run", f"{run} is not on its task's schedule")
            mode = expected.get(run) or (executions[0].mode, executions[0].fm)
            if mode[0] == "amo":
                self.at_most_once(report, run, executions, run in expected)
            else:
                self.at_least_once(report, run, executions, run in expected)

    def at_most_once(
        self, report: Report, run: tuple[str, str, int], executions: list[Execution], due: bool
    ) -> None:
        if len(executions) > 1:
            report.duplicates += len(executions) - 1
            who = ", ".join(f"pid {e.pid} at {e.start:.3f}" for e in executions)
            rewind = self.rewound(run, executions)
            kind = "duplicate after a rewind" if rewind else "duplicate"
            report.problem(
                kind,
                f"at-most-once run {run} started {len(executions)} times ({who})"
                + (f"; {rewind}" if rewind else ""),
            )
        if executions or not due:
            return
        excuse = self.given_up(run)
        if excuse is not None:
            report.amo_given_up += 1
            return
        report.lost += 1
        report.problem(
            "lost", f"at-most-once run {run} never started ({self.describe_claims(run)})"
        )

    def given_up(self, run: tuple[str, str, int]) -> str | None:
        """Why an at-most-once run that never started may be gone by design: the process
        that committed it was killed before starting it, or its commit raised."""
        _, name, sched = run
        for claim in self.claims_by_run.get((name, sched), []):
            for op in self.logs.ops.get((claim.pid, name, claim.lease), []):
                if op.kind != "commit":
                    continue
                if op.fate == "error":
                    return "its commit raised"
                if op.fate == "refused" and self.last_claim(claim):
                    return "its commit landed but was reported refused (a retried round trip)"
                killed = self.killed_at.get(claim.pid)
                if op.fate in ("applied", "unknown") and killed is not None and killed >= op.t0:
                    return "the committing process was killed"
        return None

    def rewound(self, run: tuple[str, str, int], executions: list[Execution]) -> str | None:
        """Why a run executed again although a commit of it had landed: the row was moved
        back to it. Names the registration that did it when one landed in between."""
        _, name, sched = run
        landed = [
            op.t1
            for claim in self.claims_by_run.get((name, sched), [])
            for op in self.logs.ops.get((claim.pid, name, claim.lease), [])
            if op.kind == "commit" and op.fate == "applied" and op.t1 is not None
        ]
        if not landed:
            return None
        first_commit = min(landed)
        later = [c for c in self.claims_by_run.get((name, sched), []) if c.t0 > first_commit]
        if not later:
            return None
        for pid, reg_name, reg_sched, t0, t1, _ in self.logs.registrations:
            if reg_name == name and reg_sched <= sched and t1 > first_commit and t0 < later[0].t0:
                return (
                    f"claimed again at {later[0].t0:.3f} after its commit landed at "
                    f"{first_commit:.3f}: pid {pid}'s registration of {reg_sched}, sent at "
                    f"{t0:.3f}, landed in between and moved the row back"
                )
        return f"claimed again at {later[0].t0:.3f} after its commit landed at {first_commit:.3f}"

    def last_claim(self, claim: Claim) -> bool:
        """Whether no other lease claimed this run after ``claim`` returned. A commit
        refused although nobody took the run over since landed after all: a round trip
        cut off after the store applied it was sent again (the SQL, Redis and DynamoDB
        clients all resend), and the resent one found the row already moved on or
        deleted. (A later claim whose answer was lost would hold the run only until its
        lease expired; the run would then be claimed again, and logged.)"""
        same = self.claims_by_run.get((claim.name, claim.sched), [])
        return all(c.lease == claim.lease or c.t0 < claim.t1 for c in same)

    def at_least_once(
        self, report: Report, run: tuple[str, str, int], executions: list[Execution], due: bool
    ) -> None:
        completions = [e for e in executions if e.completed]
        for execution in executions:
            if self.stale(execution):
                report.stale_starts += 1
                end = self.lease_end(execution)
                report.problem(
                    "stale start",
                    f"{run} started by pid {execution.pid} at "
                    f"{execution.start:.3f}, {execution.start - (end or 0):.2f} s after its "
                    "lease expired",
                )
        if len(completions) > 1:
            explained = [
                c
                for c in completions
                if self.fate(c.pid, c.inst, c.lease) != "applied" and not self.stale(c)
            ]
            extra = len(completions) - 1 - len(explained)
            report.repeats += min(len(explained), len(completions) - 1)
            if extra > 0:
                report.duplicates += extra
                detail = "; ".join(
                    f"pid {c.pid} {c.start:.3f}-{c.end:.3f} commit "
                    f"{self.fate(c.pid, c.inst, c.lease)}"
                    f"{' (stale start)' if self.stale(c) else ''}"
                    for c in completions
                )
                stale = any(self.stale(c) for c in completions)
                rewind = None if stale else self.rewound(run, completions)
                kind = "duplicate after a stale start" if stale else "duplicate"
                if rewind:
                    kind, detail = "duplicate after a rewind", f"{detail}; {rewind}"
                report.problem(kind, f"{run} completed {len(completions)} times: {detail}")
        if due and not completions:
            report.lost += 1
            tried = "; ".join(
                f"pid {e.pid} at {e.start:.3f} "
                + (
                    "killed"
                    if self.was_killed(e)
                    else f"ended ok={e.ok}"
                    if e.end
                    else "unfinished"
                )
                for e in executions
            )
            report.problem(
                "lost",
                f"at-least-once run {run} never completed "
                f"(executions: {tried or 'none'}; {self.describe_claims(run)})",
            )

    def describe_claims(self, run: tuple[str, str, int]) -> str:
        claims = self.claims_by_run.get((run[1], run[2]), [])
        if not claims:
            return "never claimed"
        return "claims: " + ", ".join(
            f"pid {c.pid} at {c.t1:.3f} (commit {self.fate(c.pid, c.name, c.lease)})"
            for c in claims
        )

    def unfinished(self, report: Report) -> None:
        for execution in self.logs.executions:
            if execution.end is None and not self.was_killed(execution):
                report.problem(
                    "unfinished",
                    f"execution of {execution.run} by pid {execution.pid} never ended and its "
                    "process was not killed",
                )

    def takeovers(self, report: Report) -> None:
        bound = self.expect.lease + self.expect.poll + self.expect.tolerance
        report.takeover_bound = bound
        worst: float | None = None
        delays: list[float] = []
        for executions in self.by_run.values():
            for index, execution in enumerate(executions):
                if execution.mode != "alo" or not self.was_killed(execution):
                    continue
                later = [e for e in executions[index + 1 :] if e.start > execution.start]
                if not later:
                    continue  # reported as lost if it was due
                delay = later[0].start - self.last_holder_killed(execution, later[0].start)
                delays.append(delay)
                report.takeovers += 1
                worst = delay if worst is None else max(worst, delay)
                if delay > bound:
                    report.problem(
                        "slow takeover",
                        f"{execution.run} killed with pid {execution.pid} ran "
                        f"again {delay:.2f} s after the kill (bound {bound:.2f} s)",
                    )
        report.worst_takeover = worst
        if delays:
            delays.sort()
            report.takeover_p50 = delays[len(delays) // 2]
            report.takeover_p95 = delays[min(len(delays) - 1, int(len(delays) * 0.95))]

    def last_holder_killed(self, execution: Execution, rerun: float) -> float:
        """When the last process that may have held the run before ``rerun`` was killed:
        the execution's own, or a later one that claimed the run (or had a claim of its
        group in flight, which may have taken it) and died before running it."""
        killed = self.killed_at[execution.pid]
        expiry = self.lease_end(execution) or killed
        group = group_of(execution.task)
        holders = [
            claim.pid
            for claim in self.claims_by_run.get((execution.inst, execution.sched), [])
            if claim.pid != execution.pid and claim.t1 < rerun
        ]
        holders += [
            pid
            for pid, claim_group, now, _ in self.logs.unanswered
            if claim_group == group and now >= expiry * 1e6 - 1
        ]
        for pid in holders:
            died = self.killed_at.get(pid)
            if died is not None and killed < died < rerun:
                killed = died
        return killed

    def exclusivity(self, report: Report) -> None:
        """Compare every two claims of a row that certainly reached the store in order
        (the first had returned before the second was sent); concurrent ones are left
        alone, as their order at the store is unknown."""
        by_name: dict[str, list[Claim]] = collections.defaultdict(list)
        for claim in self.logs.claims:
            by_name[claim.name].append(claim)
        for name, claims in by_name.items():
            claims.sort(key=lambda c: c.t0)
            for index, second in enumerate(claims):
                for first in claims[:index]:
                    if first.t1 >= second.t0 or second.t0 - first.t1 > RELEVANT:
                        continue
                    problem = self.overlap(name, first, second)
                    if problem:
                        report.lease_violations += 1
                        report.problem("lease violation", f"on {name!r}: {problem}")

    def overlap(self, name: str, first: Claim, second: Claim) -> str | None:
        """Whether ``second`` took the row while ``first`` still held it."""
        ops = self.logs.ops.get((first.pid, name, first.lease), [])
        for op in ops:
            if op.fate == "applied" and op.t0 > second.t1:
                return (
                    f"pid {first.pid}'s {op.kind} with lease {first.lease[:8]} succeeded at "
                    f"{op.t0:.3f}, after pid {second.pid} had claimed the row at {second.t1:.3f}"
                )
        if first.until is None or second.now >= first.until or second.sched != first.sched:
            # a later run means the row was committed since, which only the holder of
            # the then valid lease can do (another claim in between is compared apart)
            return None
        until = first.until
        for op in ops:
            if op.t0 > second.t1:
                continue
            if op.kind in ("commit", "unlock"):
                # released, or maybe released: even a refusal may follow a resend of a
                # round trip that was cut off after the store had applied it
                return None
            if op.kind == "extend" and op.fate == "applied" and op.until:
                until = max(until, op.until)
        if second.now >= until:
            return None
        for _, reg_name, _, t0, _, reg_now in self.logs.registrations:
            if reg_name == name and reg_now >= until and t0 <= second.t1:
                return None  # a registration cleared the lease, expired by its own `now`
        return (
            f"pid {second.pid} claimed it (sched {second.sched}) with now "
            f"{second.now / 1e6:.3f} while pid {first.pid}'s lease {first.lease[:8]} "
            f"(sched {first.sched}) ran until {until / 1e6:.3f}"
        )

    def log_records(self, report: Report) -> None:
        warnings: collections.Counter[str] = collections.Counter()
        unexpected: collections.Counter[str] = collections.Counter()
        for record in self.logs.logs:
            level, logger, template = record["lvl"], record["logger"], record["tmpl"]
            if level == "WARNING":
                warnings[template] += 1
                continue
            report.errors_logged += 1
            if (logger, template, record["exc"]) in ALLOWED_ALWAYS:
                continue
            if (logger, template) in ALLOWED_WHEN_BACKEND_FAILS:
                if record["exc"] == SLOW:
                    report.timeouts += 1
                    continue
                if self.expect.backend_fails:
                    continue
            unexpected[f"{logger}: {record['msg'][:200]} ({record['exc']})"] += 1
        report.warnings = dict(warnings.most_common())
        for message, count in unexpected.most_common(10):
            report.problem("error logged", f"{count}x {message}")
        for crash in self.logs.crashes:
            report.problem("crash", f"pid {crash['pid']}: {crash['exc']}: {crash['msg']}")

    def processes(self, report: Report) -> None:
        report.processes = len(self.logs.boots)
        for died in self.expect.died:
            report.problem("process died", died)
        for pid, status in self.expect.exits.items():
            if status is None:
                report.problem("no exit", f"pid {pid} did not exit in time after one SIGINT")
            elif status != 0:
                report.problem("exit status", f"pid {pid} exited with {status} after one SIGINT")

    def storage(self, report: Report, final: FinalState) -> None:
        plan = self.plan
        done: dict[tuple[str, str], int] = {}
        for run, executions in self.by_run.items():
            if any(e.completed or e.mode == "amo" for e in executions):
                key = (run[0], run[1])
                done[key] = max(done.get(key, 0), run[2])
        for name, first in plan.static.items():
            self.stored_row(report, (name, name), final.static.get(name), first, SECOND_US, done)
        if set(final.dynamic) != set(plan.dynamic):
            missing = sorted(set(plan.dynamic) - set(final.dynamic))
            extra = sorted(set(final.dynamic) - set(plan.dynamic))
            report.problem("storage", f"dynamic instances lost {missing[:10]}, extra {extra[:10]}")
        for name, first in plan.dynamic.items():
            if name in final.dynamic:
                row = final.dynamic[name]
                self.stored_row(report, (DYNAMIC, name), row, first, plan.interval_us, done)
        for name, row in final.oneoffs.items():
            if name not in plan.oneoffs:
                report.problem("storage", f"unexpected one-off {name!r} stored")
            elif (ONEOFF, name) in done:
                report.problem("storage", f"one-off {name!r} executed but still stored ({row})")
            elif row.sched <= round(self.expect.window_end * 1e6):
                report.problem("storage", f"one-off {name!r} due in the window is still stored")

    def stored_row(
        self,
        report: Report,
        key: tuple[str, str],
        row: StoredRow | None,
        first: int,
        step: int,
        done: dict[tuple[str, str], int],
    ) -> None:
        if row is None:
            report.problem("storage", f"{key} is no longer stored")
            return
        if row.sched < first or (row.sched - first) % step:
            report.problem("storage", f"{key} stored with a next run off its schedule: {row.sched}")
        last = done.get(key)
        if last is not None and row.sched <= last:
            report.problem(
                "storage", f"{key} stored next run {row.sched} is not after its last {last}"
            )


def analyse(
    report: Report,
    process_logs: list[ProcessLog],
    plan: Plan,
    expect: Expectations,
    final: FinalState | None,
) -> Report:
    """Fill ``report`` with the figures and problems of one scenario run."""
    logs = parse(process_logs)
    analysis = Analysis(logs, plan, expect)
    expected = expected_runs(plan, round(expect.window_end * 1e6))
    report.runs_checked = len(expected)
    report.executions = len(logs.executions)
    report.kills = len(expect.kills)
    analysis.runs(report, expected)
    analysis.unfinished(report)
    analysis.takeovers(report)
    analysis.exclusivity(report)
    analysis.log_records(report)
    analysis.processes(report)
    if final is not None:
        analysis.storage(report, final)
    else:
        report.problem("storage", "the store's final state could not be read")
    return report


def outstanding(process_logs: Iterable[ProcessLog], plan: Plan, expect: Expectations) -> int:
    """How many runs due by the end of the window have not completed yet (the driver
    waits for this to reach zero before it stops the processes)."""
    logs = parse(list(process_logs))
    analysis = Analysis(logs, plan, expect)
    missing = 0
    for run, (mode, _) in expected_runs(plan, round(expect.window_end * 1e6)).items():
        executions = analysis.by_run.get(run, [])
        if mode == "amo":
            if not executions and analysis.given_up(run) is None:
                missing += 1
        elif not any(e.completed for e in executions):
            missing += 1
    return missing


def reanalyse(directory: Path) -> Report:
    """Check a directory kept by the driver again (``python -m chaos.check DIR``)."""
    from chaos.log import read_logs

    inputs = json.loads((directory / "inputs.json").read_text())
    saved = json.loads((directory / "report.json").read_text())
    plan_data = inputs["plan"]
    plan_data["modes"] = {k: tuple(v) for k, v in plan_data["modes"].items()}
    expect_data = inputs["expect"]
    expect_data["kills"] = [Kill(**kill) for kill in expect_data["kills"]]
    expect_data["exits"] = {int(pid): status for pid, status in expect_data["exits"].items()}
    final = None
    if inputs["final"] is not None:
        rows = inputs["final"]

        def stored(row: dict[str, Any] | None) -> StoredRow | None:
            return StoredRow(**row) if row is not None else None

        final = FinalState(
            static={k: stored(v) for k, v in rows["static"].items()},
            dynamic={k: StoredRow(**v) for k, v in rows["dynamic"].items()},
            oneoffs={k: StoredRow(**v) for k, v in rows["oneoffs"].items()},
            read_at=rows["read_at"],
        )
    report = Report(saved["scenario"], saved["backend"], saved["seconds"])
    report.outages, report.proxy_actions = saved["outages"], saved["proxy_actions"]
    return analyse(
        report, read_logs(directory / "logs"), Plan(**plan_data), Expectations(**expect_data), final
    )


if __name__ == "__main__":
    import sys

    checked = reanalyse(Path(sys.argv[1]))
    print(checked.summary())
    sys.exit(0 if checked.ok else 1)
