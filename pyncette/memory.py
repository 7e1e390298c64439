"""The in-process backend: the default, and the fastest. Nothing is shared or persisted."""

from __future__ import annotations

import datetime
import heapq
import itertools
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from pyncette.model import ContinuationToken, Lease
from pyncette.repository import (
    ClaimResult,
    Commit,
    History,
    Page,
    Record,
    Registration,
    Repository,
    StoredRow,
    check_options,
)


class _Row(StoredRow):
    __slots__ = (
        "lease_duration",
        "locked_by",
        "locked_until",
        "name",
        "outcome",
        "scheduled_at",
        "spec",
    )

    def __init__(self, reg: Registration) -> None:
        self.name = reg.name
        self.spec = reg.spec
        self.scheduled_at = reg.scheduled_at
        self.lease_duration = reg.lease_duration
        self.locked_by = None
        self.locked_until = None
        self.outcome: str | None = None


class _Group:
    """Rows of one group, with a heap of (claimable at, seq, row) entries.

    The heap is invalidated lazily: an entry is live only while its row is still stored
    and its time equals the row's current claimable time.
    """

    __slots__ = ("heap", "rows")

    def __init__(self) -> None:
        self.rows: dict[str, _Row] = {}
        self.heap: list[tuple[datetime.datetime, int, _Row]] = []

    def live(self, entry: tuple[datetime.datetime, int, _Row]) -> bool:
        due, _, row = entry
        return self.rows.get(row.name) is row and row.due_at == due

    def push(self, row: _Row) -> None:
        heapq.heappush(self.heap, (row.due_at, next(_seq), row))
        if len(self.heap) > 64 and len(self.heap) > 3 * len(self.rows):
            self.heap = [entry for entry in self.heap if self.live(entry)]
            heapq.heapify(self.heap)


_seq = itertools.count()


class InMemoryRepository(Repository):
    """Keeps rows in dictionaries and per-group heaps; every call completes without
    awaiting, so each is atomic within the event loop."""

    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}
        self._history: dict[tuple[str, str], deque[tuple[datetime.datetime, str]]] = {}

    def _remember(
        self, group: str, name: str, outcome: str, history: History, now: datetime.datetime
    ) -> None:
        entries = self._history.get((group, name))
        if entries is None:
            entries = self._history[group, name] = deque()
        entries.appendleft((now, outcome))
        oldest = now - history.retention
        while len(entries) > history.keep or (entries and entries[-1][0] < oldest):
            entries.pop()

    def _group(self, group: str) -> _Group:
        found = self._groups.get(group)
        if found is None:
            found = self._groups[group] = _Group()
        return found

    async def claim(
        self, group: str, *, now: datetime.datetime, limit: int, lease: Lease
    ) -> ClaimResult:
        g = self._groups.get(group)
        if g is None:
            return ClaimResult([], None)
        heap = g.heap
        claimed: list[Record] = []
        while heap:
            entry = heap[0]
            if not g.live(entry):
                heapq.heappop(heap)
                continue
            if entry[0] > now or len(claimed) >= limit:
                break
            heapq.heappop(heap)
            row = entry[2]
            row.locked_by = lease
            row.locked_until = now + row.lease_duration
            g.push(row)
            claimed.append(row.record())
        return ClaimResult(claimed, heap[0][0] if heap else None)

    async def commit(
        self, group: str, commits: Sequence[Commit], *, now: datetime.datetime
    ) -> list[str]:
        g = self._groups.get(group)
        lost: list[str] = []
        for commit in commits:
            row = g.rows.get(commit.name) if g is not None else None
            if g is None or row is None or row.locked_by != commit.lease:
                lost.append(commit.name)
                continue
            if commit.outcome is not None:
                row.outcome = commit.outcome
                if commit.history is not None:
                    self._remember(group, commit.name, commit.outcome, commit.history, now)
            if commit.next_at is None:
                del g.rows[commit.name]
                continue
            row.scheduled_at = commit.next_at
            row.locked_by = row.locked_until = None
            g.push(row)
        return lost

    def _held(self, group: str, name: str, lease: Lease) -> tuple[_Group, _Row] | None:
        g = self._groups.get(group)
        row = g.rows.get(name) if g is not None else None
        if g is None or row is None or row.locked_by != lease:
            return None
        return g, row

    async def extend(
        self, group: str, name: str, lease: Lease, *, locked_until: datetime.datetime
    ) -> bool:
        held = self._held(group, name, lease)
        if held is None:
            return False
        g, row = held
        row.locked_until = locked_until
        g.push(row)
        return True

    async def unlock(
        self,
        group: str,
        name: str,
        lease: Lease,
        *,
        outcome: str | None = None,
        history: History | None = None,
        now: datetime.datetime | None = None,
    ) -> bool:
        held = self._held(group, name, lease)
        if held is None:
            return False
        g, row = held
        if outcome is not None:
            row.outcome = outcome
            if history is not None and now is not None:
                self._remember(group, name, outcome, history, now)
        row.locked_by = row.locked_until = None
        g.push(row)
        return True

    async def register(
        self,
        group: str,
        registrations: Sequence[Registration],
        *,
        now: datetime.datetime,
        force: bool,
    ) -> list[str]:
        g = self._group(group)
        skipped: list[str] = []
        for reg in registrations:
            row = g.rows.get(reg.name)
            if row is None:
                row = g.rows[reg.name] = _Row(reg)
                g.push(row)
                continue
            if row.locked_until is not None and row.locked_until > now and not force:
                skipped.append(reg.name)
                continue
            row.spec = reg.spec
            row.lease_duration = reg.lease_duration
            row.scheduled_at = (
                reg.scheduled_at if force else min(row.scheduled_at, reg.scheduled_at)
            )
            row.locked_by = row.locked_until = None
            g.push(row)
        return skipped

    async def unregister(self, group: str, name: str) -> bool:
        g = self._groups.get(group)
        return g is not None and g.rows.pop(name, None) is not None

    async def get(self, group: str, name: str) -> Record | None:
        g = self._groups.get(group)
        row = g.rows.get(name) if g is not None else None
        return row.record() if row is not None else None

    async def history(self, group: str, name: str, *, limit: int) -> list[str]:
        entries = self._history.get((group, name), ())
        return [outcome for _, outcome in itertools.islice(entries, limit)]

    async def list(
        self,
        group: str,
        *,
        limit: int,
        continuation_token: ContinuationToken | None = None,
    ) -> Page:
        g = self._groups.get(group)
        if g is None:
            return Page([], None)
        names = sorted(
            name for name in g.rows if continuation_token is None or name > continuation_token
        )
        page = names[:limit]
        token = ContinuationToken(page[-1]) if len(names) > limit else None
        return Page([g.rows[name].record() for name in page], token)


@asynccontextmanager
async def memory_repository(**options: Any) -> AsyncIterator[Repository]:
    """A fresh in-process repository; takes no options of its own."""
    check_options("memory_", options, set())
    yield InMemoryRepository()
