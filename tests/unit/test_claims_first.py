"""Claims go ahead of commits: the loop waits for a claim, not for a commit, so a claim
about to be made reaches the repository before the commits of the batch that made room
for it (``pyncette.batching.CommitBatcher``, ``Worker._claim``)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from pyncette import Context, Pyncette
from pyncette.batching import CLAIM_TURNS, CommitBatcher
from pyncette.clock import yield_to_loop
from pyncette.memory import InMemoryRepository
from pyncette.model import Lease
from pyncette.repository import ClaimResult, Commit, Repository

pytestmark = pytest.mark.anyio


class Sent:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    async def __call__(self, group: str, commits: list[Commit]) -> None:
        self.batches.append([commit.name for commit in commits])


def commit(name: str) -> Commit:
    return Commit(name, Lease("l"), None)


async def turns(n: int) -> None:
    for _ in range(n):
        await yield_to_loop()


async def test_commits_wait_while_a_claim_is_being_started() -> None:
    sent = Sent()
    batcher = CommitBatcher(sent)
    with batcher.claims_first():
        batcher.submit("g", commit("a"))
        await turns(5)
        assert sent.batches == []
    await turns(3)
    assert sent.batches == [["a"]]


async def test_commits_wait_while_the_loop_is_about_to_claim() -> None:
    sent = Sent()
    due = [True]
    batcher = CommitBatcher(sent, lambda: due[0])
    batcher.submit("g", commit("a"))
    batcher.submit("g", commit("b"))
    await turns(5)
    assert sent.batches == []
    due[0] = False
    await turns(3)
    assert sent.batches == [["a", "b"]]
    await batcher.drain()


async def test_a_claim_that_never_comes_holds_commits_back_a_few_turns_only() -> None:
    sent = Sent()
    batcher = CommitBatcher(sent, lambda: True)
    batcher.submit("g", commit("a"))
    await turns(CLAIM_TURNS + 3)
    assert sent.batches == [["a"]]


class Recording(InMemoryRepository):
    """The memory repository, noting claims and commits in the order they arrive."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    async def claim(
        self, group: str, *, now: datetime.datetime, limit: int, lease: Lease
    ) -> ClaimResult:
        result = await super().claim(group, now=now, limit=limit, lease=lease)
        if result.records:
            self.calls.append(("claim", len(result.records)))
        return result

    async def commit(
        self, group: str, commits: Sequence[Commit], *, now: datetime.datetime
    ) -> list[str]:
        self.calls.append(("commit", len(commits)))
        return await super().commit(group, commits, now=now)


async def test_in_a_backlog_each_claim_goes_ahead_of_the_last_batch_commit() -> None:
    repository = Recording()

    @contextlib.asynccontextmanager
    async def factory(**_: Any) -> AsyncIterator[Repository]:
        yield repository

    app = Pyncette(repository_factory=factory, batch_size=50, concurrency_limit=50)
    ran: list[str] = []

    @app.dynamic_task()
    async def job(context: Context) -> None:
        ran.append(context.task.name)
        if len(ran) == 200:
            context.app_context.shutdown()

    async with app.create() as ctx:
        due = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
        await ctx.schedule_tasks(job, {f"i{i}": {"execute_at": due} for i in range(200)})
        await asyncio.wait_for(ctx.run(), 30)
    assert sorted(ran) == sorted(f"i{i}" for i in range(200))
    kinds = [kind for kind, _ in repository.calls]
    # four batches of 50: the second claim comes before the first batch's commit, and so on
    assert kinds == ["claim", "claim", "commit", "claim", "commit", "claim", "commit", "commit"]
    assert sum(n for kind, n in repository.calls if kind == "commit") == 200
