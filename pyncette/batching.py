"""Micro-batching: calls that arrive in the same turn of the event loop share one
repository round trip per group.

Both batchers wait for the rest of a batch with :func:`pyncette.clock.yield_to_loop`,
never with ``asyncio.sleep``, so they work under virtual-time test harnesses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TypeVar

from pyncette.clock import yield_to_loop
from pyncette.repository import Commit, Registration

T = TypeVar("T")

COMMIT_CHUNK = 500
"""Most commits sent in one repository call."""
CLAIM_TURNS = 8
"""Most turns of the event loop a batch of commits waits for a claim about to be made
(the loop takes one or two to get there; an executor that never says it has room again
must not hold the commits back)."""


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` cut into consecutive slices of at most ``size``."""
    return [items[start : start + size] for start in range(0, len(items), size)]


class CommitBatcher:
    """Collects the commits of executions that finish close together into one call
    per group; ``send(group, commits)`` must not raise (it handles its own errors).

    Claims go first: while ``claim_due()`` says the loop is about to claim (the room it
    waited for has just been freed, typically by the executions whose commits these
    are), and while :meth:`claims_first` is entered around the start of a claim, batches
    wait. The loop waits for a claim, not for a commit; where the storage runs one
    request at a time (a Redis server, SQLite's write lock) the commit then runs while
    the claimed batch starts, instead of ahead of the claim with the loop idle.
    """

    def __init__(
        self,
        send: Callable[[str, list[Commit]], Awaitable[None]],
        claim_due: Callable[[], bool] = lambda: False,
    ) -> None:
        self._send = send
        self._claim_due = claim_due
        self._pending: dict[str, list[Commit]] = {}
        self._flusher: asyncio.Future[None] | None = None
        self._open = asyncio.Event()
        self._open.set()

    @contextlib.contextmanager
    def claims_first(self) -> Iterator[None]:
        """Hold the batches back for the duration of the block (not nested)."""
        self._open.clear()
        try:
            yield
        finally:
            self._open.set()

    def submit(self, group: str, commit: Commit) -> None:
        self._pending.setdefault(group, []).append(commit)
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending:
                await yield_to_loop()  # let executions finishing in this round join
                for _ in range(CLAIM_TURNS):
                    if not self._claim_due():
                        break
                    await yield_to_loop()
                await self._open.wait()
                batch, self._pending = self._pending, {}
                for group, commits in batch.items():
                    for chunk in chunks(commits, COMMIT_CHUNK):
                        await self._send(group, list(chunk))
        finally:
            self._flusher = None

    async def drain(self) -> None:
        """Wait until every submitted commit has been sent."""
        while self._flusher is not None:
            await asyncio.shield(self._flusher)


RegisterSend = Callable[[str, list[Registration], bool], Awaitable[list[str]]]


class RegisterBatcher:
    """Concurrent single registrations that arrive together share one ``register`` call
    per group and ``force`` flag. A name appears at most once per call, so updates of
    one instance stay in the order they were made."""

    def __init__(self, send: RegisterSend, batch_size: int) -> None:
        self._send = send
        self._batch_size = batch_size
        self._pending: list[tuple[str, bool, Registration, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Future[None] | None = None

    async def register(self, group: str, registration: Registration, force: bool) -> bool:
        """Register one row; ``False`` if it was left alone because it is locked."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((group, force, registration, future))
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                await yield_to_loop()  # let calls made in this round join
                pending, self._pending = self._pending, []
                for (group, force), batch in self._split(pending):
                    await self._deliver(group, force, batch)
        finally:
            self._flusher = None

    def _split(
        self, pending: list[tuple[str, bool, Registration, asyncio.Future[bool]]]
    ) -> list[tuple[tuple[str, bool], list[tuple[Registration, asyncio.Future[bool]]]]]:
        batches: list[tuple[tuple[str, bool], list[tuple[Registration, asyncio.Future[bool]]]]]
        batches = []
        open_batch: dict[tuple[str, bool], int] = {}
        names: dict[tuple[str, bool], set[str]] = {}
        for group, force, registration, future in pending:
            key = (group, force)
            index = open_batch.get(key)
            seen = names.setdefault(key, set())
            if (
                index is None
                or registration.name in seen
                or len(batches[index][1]) >= self._batch_size
            ):
                open_batch[key] = index = len(batches)
                batches.append((key, []))
                seen.clear()
            batches[index][1].append((registration, future))
            seen.add(registration.name)
        return batches

    async def _deliver(
        self, group: str, force: bool, batch: list[tuple[Registration, asyncio.Future[bool]]]
    ) -> None:
        try:
            skipped = set(await self._send(group, [r for r, _ in batch], force))
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for registration, future in batch:
            if not future.done():
                future.set_result(registration.name not in skipped)
