"""The poll loop: claim due rows, dispatch them to the executor, run each execution
through the middlewares, then commit, unlock or let the lease lapse.

Every decision about an execution (what the next run is, what a failure or a lost
lease means, at-most-once versus at-least-once) is made here, once, for every backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import inspect
import logging
import operator
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import anyio.to_thread

from pyncette import outcome, retry
from pyncette.batching import CommitBatcher
from pyncette.clock import CallTimer, Clock, wall_clock_deadline, yield_to_loop
from pyncette.errors import LeaseLostException
from pyncette.events import (
    EventBus,
    ExecutionFailed,
    ExecutionFinished,
    ExecutionRetried,
    ExecutionSkipped,
    ExecutionStarted,
    LeaseLost,
    TickFinished,
    TickStarted,
)
from pyncette.executor import Runner, starter
from pyncette.model import Context, ExecutionMode, FailureMode, Lease, MiddlewareFunc
from pyncette.options import AppSettings
from pyncette.outcome import RunStatus
from pyncette.repository import (
    ClaimResult,
    Commit,
    History,
    Record,
    Registration,
    Repository,
    new_tuple,
)
from pyncette.task import (
    STATIC_GROUP,
    ExtraRun,
    Task,
    extra_run,
    extra_run_name,
    extra_run_spec,
    extra_run_target,
    is_async_callable,
)

if TYPE_CHECKING:
    from pyncette.context import PyncetteContext

logger = logging.getLogger(__name__)
T = TypeVar("T")
LEASE_TOLERANCE = datetime.timedelta(seconds=1)
"""A claimed lease this far off the task's lease_duration is extended to match it."""
MIN_CALL_TIMEOUT = 1.0
"""Seconds a repository call of the loop may take at the least (see :meth:`Worker.poll`)."""
SHUTDOWN_CLAIM_GRACE = 10.0
"""Seconds :meth:`Worker.shutdown` waits at most for a claim already sent (never longer
than the claim's own call timeout), so that the rows it took are handed back at once
instead of lapsing with their leases. A DynamoDB claim writes each row apart and may
take seconds on a busy table."""


class Claimed(NamedTuple):
    """A row this instance holds a lease on (a tuple: one is built per execution)."""

    group: str
    name: str
    spec: str | None
    scheduled_at: datetime.datetime
    lease: Lease
    locked_until: datetime.datetime


def claimed_rows(group: str, records: Sequence[Record]) -> list[Claimed]:
    """The rows of a claim, each checked to carry its lease."""
    rows = []
    for record in records:
        lease, locked_until = record.locked_by, record.locked_until
        if lease is None or locked_until is None:
            raise RuntimeError(f"The backend returned claimed row {record.name!r} without a lease")
        rows.append(
            new_tuple(
                Claimed, (group, record.name, record.spec, record.scheduled_at, lease, locked_until)
            )
        )
    return rows


_LOCKED_UNTIL = operator.attrgetter("locked_until")


class Worker:
    """Runs the loop of one :class:`~pyncette.PyncetteContext`."""

    def __init__(
        self,
        *,
        app_context: PyncetteContext,
        repository: Repository,
        runner: Runner,
        clock: Clock,
        settings: AppSettings,
        events: EventBus,
        middlewares: Sequence[MiddlewareFunc],
        items: Mapping[str, Any],
    ) -> None:
        self._app_context = app_context
        self._repository = repository
        self._runner = runner
        self._start = starter(runner)
        self._clock = clock
        self._timer = CallTimer(clock)
        self._settings = settings
        self._events = events
        self._middlewares = middlewares
        self._items = items
        self._beat = self._heartbeat  # one bound method for every execution's context
        self._static: dict[str, Task] = {}
        self._targets: list[tuple[str, Task | None]] = []
        self._polled: set[str] = set()
        self._timeouts: dict[str, float] = {}
        self._limits: dict[str, int] = {}
        self._claiming: asyncio.Future[ClaimResult] | None = None
        self._claiming_timeout = MIN_CALL_TIMEOUT
        self._announcing: dict[str, datetime.datetime] = {}
        self._stopped = asyncio.Event()
        self._wake = asyncio.Event()
        self._wake_at: datetime.datetime | None = None
        self._hint: datetime.datetime | None = None
        self._stopping = False
        self._awaiting_room = False
        self._commits = CommitBatcher(self._commit, self._claim_due)
        self._background_tasks: set[asyncio.Future[None]] = set()
        self._logged = False
        self._instance = outcome.this_process()
        self._history = (
            History(settings.run_history, settings.run_history_retention)
            if settings.run_history
            else None
        )
        self.last_tick: datetime.datetime | None = None

    # -- what is polled ---------------------------------------------------------------

    def poll(self, tasks: Sequence[Task]) -> None:
        """Poll the enabled ones of ``tasks`` (read now, so ``task.enabled = False`` set
        before :meth:`run` is honoured)."""
        self._static = {t.name: t for t in tasks if not t.dynamic and t.enabled}
        self._targets = [(STATIC_GROUP, None)] if self._static else []
        for task in tasks:
            if task.dynamic and task.enabled:
                self._targets.extend((group, task) for group in task.groups())
        self._polled = {group for group, _ in self._targets}
        # A call of the loop that takes longer than half the group's shortest lease is
        # abandoned: whatever it claimed could no longer be trusted (see _trusted).
        if self._static:
            shortest = min(t.lease_duration for t in self._static.values())
            self._timeouts[STATIC_GROUP] = _half(shortest)
        for group, template in self._targets:
            if template is not None:
                self._timeouts[group] = _half(template.lease_duration)

    @property
    def static_tasks(self) -> list[Task]:
        return list(self._static.values())

    def note_due(self, group: str, due_at: datetime.datetime | None) -> None:
        """Something in ``group`` becomes due at ``due_at``: make sure the loop wakes then."""
        if due_at is None or group not in self._polled:
            return
        wake_at = self._wake_at
        if wake_at is None:  # a tick is running: fold it into the next wake-up
            if self._hint is None or due_at < self._hint:
                self._hint = due_at
        elif due_at < wake_at:
            self._wake.set()

    def announce(self, group: str, due_at: datetime.datetime | None) -> None:
        """Something in ``group`` was scheduled (or triggered) here for ``due_at``: wake
        this loop, and with ``instant_wakeups`` the other instances too, if it is due
        before their next poll. Announcements made together go out as one per group."""
        self.note_due(group, due_at)
        if (
            due_at is None
            or not self._settings.instant_wakeups
            or not self._repository.wake_ups
            or due_at > self._clock.now() + self._settings.poll_interval
        ):
            return
        pending = self._announcing
        if not pending:
            self._background(self._send_announcements())
        if group not in pending or due_at < pending[group]:
            pending[group] = due_at

    async def _send_announcements(self) -> None:
        await yield_to_loop()  # let the callers of this turn of the loop add theirs
        pending, self._announcing = self._announcing, {}
        for group, due_at in pending.items():
            try:
                call = functools.partial(self._repository.announce, group, due_at)
                await self._bounded(group, call)
            except Exception as error:
                logger.warning(
                    "Could not announce group %r to other instances (%s); they find it "
                    "at their next poll",
                    group,
                    error,
                )

    async def _listen(self) -> None:
        """Keep the backend's wake-up channel open while the loop runs."""
        failures = 0
        while not self._stopping:
            opened = self._clock.now()
            try:
                await self._repository.listen(self.note_due)
                raise ConnectionError("the wake-up channel closed")
            except Exception as error:
                if self._clock.now() - opened > self._settings.poll_interval * 4:
                    failures = 0  # it had been working: not a failure in a row
                failures += 1
                delay = retry.POLL.delay(failures)
                logger.warning(
                    "Wake-up channel failed (%s); polling only, listening again in %.1f s",
                    error,
                    delay,
                )
                await self._clock.sleep(delay)

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        poll = self._settings.poll_interval.total_seconds()
        failures = 0
        listener: asyncio.Future[None] | None = None
        if self._settings.instant_wakeups:
            if self._repository.wake_ups:
                listener = asyncio.ensure_future(self._listen())
            else:
                logger.info(
                    "instant_wakeups: %s has no wake-up channel; polling every %.3f s",
                    type(self._repository).__name__,
                    poll,
                )
        try:
            while not self._stopping:
                self._wake.clear()
                self._hint = None
                started = time.perf_counter()
                if self._events.active:
                    self._events.emit(TickStarted(self._clock.now()))
                claimed = 0
                try:
                    wake_at, more, claimed = await self._tick()
                except Exception as error:
                    failures += 1
                    delay = min(retry.POLL.delay(failures), poll * 4)
                    logger.exception(
                        "Polling failed (attempt %d); retrying in %.1f s", failures, delay
                    )
                    self._tick_finished(started, claimed, error)
                    await self._idle(delay)
                    continue
                failures = 0
                self.last_tick = self._clock.now()
                self._tick_finished(started, claimed, None)
                if more:
                    await yield_to_loop()
                    continue
                if self._hint is not None and self._hint < wake_at:
                    wake_at = self._hint
                self._wake_at = wake_at
                await self._idle((wake_at - self._clock.now()).total_seconds())
                self._wake_at = None
        finally:
            self._wake_at = None
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    def _tick_finished(self, started: float, claimed: int, error: BaseException | None) -> None:
        if self._events.active:
            duration = time.perf_counter() - started
            self._events.emit(TickFinished(self._clock.now(), duration, claimed, error))

    async def _idle(self, seconds: float) -> None:
        if seconds <= 0 or self._stopping or self._wake.is_set():
            return
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await self._clock.wait_for(self._wake.wait(), seconds)

    def shutdown(self) -> None:
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        self._runner.wake()
        claiming = self._claiming
        if claiming is not None and not claiming.done():
            # the server may have taken rows for this claim already: give it a moment to
            # answer, so that they are handed back rather than left to lapse
            grace = min(SHUTDOWN_CLAIM_GRACE, self._claiming_timeout)
            self._background(self._cut_short(claiming, grace))

    async def drain(self) -> None:
        """Wait for commits in flight and background releases (after the executions)."""
        await self._commits.drain()
        while self._background_tasks:
            await asyncio.wait(list(self._background_tasks))

    async def _tick(self) -> tuple[datetime.datetime, bool, int]:
        """Claim one batch from every polled group; return when to wake, whether any
        group had more due work than one batch, and how many rows were claimed."""
        now = self._clock.now()
        wake_at = now + self._settings.poll_interval
        more = False
        claimed = 0
        runner = self._runner
        self._logged = logger.isEnabledFor(logging.INFO)  # read once per tick
        for group, template in self._targets:
            if self._stopping:
                break
            if runner.capacity <= 0:
                self._awaiting_room = True
                try:
                    await runner.wait_for_capacity()
                finally:
                    self._awaiting_room = False
                if self._stopping:
                    break
                now = self._clock.now()
            limit = min(self._limits.get(group, self._settings.batch_size), runner.capacity)
            now = self._clock.now()  # each group's leases count from its own claim
            sent = self._timer.reading()
            result = await self._claim(group, now, limit)
            if result is None:  # shutdown() while the claim was on its way
                break
            elapsed = self._timer.reading() - sent
            self._adapt(group, limit, elapsed)
            if result.records:
                rows = claimed_rows(group, result.records)
                if self._stopping:  # the claim answered after shutdown(): hand them back
                    self._hand_back(rows)
                    break
                # a run that neither commits nor unlocks is claimable again at its expiry
                expiry = min(map(_LOCKED_UNTIL, rows))
                wake_at = min(wake_at, expiry)
                if elapsed * 2 >= (expiry - now).total_seconds():
                    rows = _trusted(rows, now, elapsed, self._hand_back)
                claimed += len(rows)
                await self._dispatch(template, rows, now, wall_clock_deadline(self._clock, expiry))
            if len(result.records) >= limit:
                more = True
            elif result.next_due_at is not None and result.next_due_at < wake_at:
                wake_at = result.next_due_at
        return wake_at, more, claimed

    def _claim_due(self) -> bool:
        """Whether the loop is about to claim: it waits for room, and there is some."""
        return self._awaiting_room and self._runner.capacity > 0

    async def _claim(self, group: str, now: datetime.datetime, limit: int) -> ClaimResult | None:
        """Claim from ``group``, giving up after the group's call timeout (a connection
        that stalls must not stop the loop); ``None`` if :meth:`shutdown` came while the
        claim was on its way and it did not answer within the grace (see
        ``SHUTDOWN_CLAIM_GRACE``)."""
        timeout = self._timeouts.get(group, MIN_CALL_TIMEOUT)
        lease = Lease(uuid.uuid4().hex)
        self._claiming_timeout = timeout
        call = self._claiming = asyncio.ensure_future(
            self._bounded(
                group, lambda: self._repository.claim(group, now=now, limit=limit, lease=lease)
            )
        )
        try:
            with self._commits.claims_first():
                # the call's first step runs up to its first wait (its request sent, or
                # queued at the repository's connection) before any commit is sent
                await yield_to_loop()
            if not call.done():  # (a claim answered in place needs no more loop turns)
                await asyncio.wait((call,))
        finally:
            self._claiming = None
            if not call.done():  # this loop itself is being cancelled
                call.cancel()
        if call.cancelled():
            return None
        try:
            return call.result()
        except TimeoutError:
            smaller = max(limit // 2, 1)
            self._limits[group] = smaller
            raise TimeoutError(
                f"The claim of {limit} rows of group {group!r} got no answer within "
                f"{timeout:.1f} s; abandoned (what it claimed is taken again when its leases "
                f"expire), the next claims ask for {smaller}"
            ) from None

    async def _cut_short(self, claiming: asyncio.Future[ClaimResult], grace: float) -> None:
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError, asyncio.CancelledError):
            await self._timer.bounded(asyncio.shield(claiming), grace)
        claiming.cancel()

    def _adapt(self, group: str, limit: int, elapsed: float) -> None:
        """After a claim of ``limit`` rows answered in ``elapsed`` s: a batch size halved
        by a timeout grows back, doubling, while claims take less than a quarter of the
        call timeout."""
        current = self._limits.get(group)
        if current is None or limit < current:
            return
        if elapsed * 4 < self._timeouts.get(group, MIN_CALL_TIMEOUT):
            if current * 2 >= self._settings.batch_size:
                del self._limits[group]
            else:
                self._limits[group] = current * 2

    def _hand_back(self, rows: Sequence[Claimed]) -> None:
        """Unlock, in the background, rows this instance will not run (lease-guarded: a
        row another instance has taken over meanwhile stays theirs)."""
        for row in rows:
            self._background(self._release(row, row.lease))

    async def _bounded(self, group: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` with the group's call timeout (made here, so that a call cancelled
        before it starts leaves no coroutine behind)."""
        return await self._timer.bounded(call(), self._timeouts.get(group, MIN_CALL_TIMEOUT))

    async def _dispatch(
        self,
        template: Task | None,
        rows: list[Claimed],
        now: datetime.datetime,
        deadline: float | None = None,
    ) -> None:
        """Start the claimed ``rows`` (claimed at ``now``): commit at-most-once runs
        first, skip runs found later than their task's ``misfire_grace_time``, and hand
        runs of ``overlap="allow"`` tasks to rows of their own. ``deadline``: the
        earliest lease expiry of ``rows`` as a ``time.time()`` reading, when the clock
        is the system's (see :func:`~pyncette.clock.wall_clock_deadline`)."""
        at_most_once: list[tuple[Task, Claimed]] = []
        overlapping: list[tuple[Task, Claimed]] = []
        spawn, start = self._runner.spawn, self._start
        lease_duration: datetime.timedelta | None = None
        expected = now
        for row in rows:
            if template is None:
                task = self._static_task(row)
            else:  # (the common case, here rather than in a call of its own)
                try:
                    task = template.from_spec(row.name, row.spec or "{}")
                except Exception:
                    logger.exception(
                        "Cannot load instance %r of %s; it stays locked until its lease expires",
                        row.name,
                        template,
                    )
                    continue
            if task is None:
                continue
            grace = task.misfire_grace_time
            if grace is not None and now - row.scheduled_at > grace:
                self._skip_misfire(task, row, now, grace)
                continue
            if task.execution_mode is ExecutionMode.AT_MOST_ONCE:
                at_most_once.append((task, row))
                continue
            if task.overlap == "allow" and not isinstance(task, ExtraRun):
                overlapping.append((task, row))
                continue
            if task.lease_duration is not lease_duration:  # instances share it, mostly
                lease_duration = task.lease_duration
                expected = now + lease_duration
            # stored with another lease length (imported, or the task changed since):
            # hold it for the task's own lease from the start
            if row.locked_until != expected and abs(row.locked_until - expected) > LEASE_TOLERANCE:
                if not await self._extend(row, row.lease, expected):
                    logger.warning("Lease lost on %s before it started; skipping", task)
                    continue
                row = row._replace(locked_until=expected)
                if deadline is not None:
                    deadline = min(deadline, expected.timestamp())
            if start is not None:
                start(self._execute(task, row, now, deadline))
            else:
                await spawn(self._execute(task, row, now, deadline))
        if overlapping:
            await self._run_apart(overlapping, now)
        if at_most_once:
            group = rows[0].group
            commits = [self._started(task, row, now) for task, row in at_most_once]
            lost = set(
                await self._bounded(group, lambda: self._repository.commit(group, commits, now=now))
            )
            self.note_due(group, min((c.next_at for c in commits if c.next_at), default=None))
            for task, row in at_most_once:
                if row.name in lost:
                    logger.warning("Lease lost on %s before it started; skipping", task)
                else:
                    await spawn(self._execute(task, row, at_most_once=True))

    async def _run_apart(self, claimed: list[tuple[Task, Claimed]], now: datetime.datetime) -> None:
        """``overlap="allow"``: queue each run in a row of its own (an extra run, named
        after the run, so queuing it again after a crash adds nothing), then move the
        task's row on to its next run at once, so that the next run starts on time while
        this one may still be going on. The extra rows are claimed and run like any
        other, at least once."""
        group = claimed[0][1].group
        extra = [
            Registration(
                extra_run_name("o", row.name, row.scheduled_at),
                extra_run_spec(row.name, row.spec),
                row.scheduled_at,
                task.lease_duration,
            )
            for task, row in claimed
        ]
        call = functools.partial(self._repository.register, group, extra, now=now, force=False)
        await self._bounded(group, call)
        for task, row in claimed:
            next_at = task.next_run(row.scheduled_at, now)
            queued = self._outcome(RunStatus.STARTED, row, now)
            self._commits.submit(group, Commit(row.name, row.lease, next_at, queued, self._history))
        self.note_due(group, now)

    def _skip_misfire(
        self, task: Task, row: Claimed, now: datetime.datetime, grace: datetime.timedelta
    ) -> None:
        """Do not run ``row``: move it on to its next run (by the task's ``coalesce``;
        a one-off row is removed) under the lease it was claimed with."""
        late = (now - row.scheduled_at).total_seconds()
        logger.warning(
            "Skipped %s (scheduled at %s): claimed %.3f s late, more than its "
            "misfire_grace_time of %.3f s",
            task,
            row.scheduled_at.isoformat(),
            late,
            grace.total_seconds(),
        )
        if self._events.active:
            reason = f"misfire: {late:.3f} s late, grace {grace.total_seconds():.3f} s"
            self._events.emit(ExecutionSkipped(task, row.scheduled_at, reason))
        next_at = task.next_run(row.scheduled_at, now, claimed_at=now)
        skipped = self._outcome(
            RunStatus.SKIPPED,
            row,
            now,
            error=f"claimed {late:.3f} s late, more than its misfire_grace_time",
        )
        self._commits.submit(
            row.group, Commit(row.name, row.lease, next_at, skipped, self._history)
        )

    def _started(self, task: Task, row: Claimed, now: datetime.datetime) -> Commit:
        """The commit that moves an at-most-once ``row`` on before its run starts, storing
        the run as started (not for a finished one-off without history: its row goes)."""
        next_at = task.next_run(row.scheduled_at, now)
        started = self._outcome(RunStatus.STARTED, row, now) if self._read(next_at) else None
        return Commit(row.name, row.lease, next_at, started, self._history)

    def _read(self, next_at: datetime.datetime | None) -> bool:
        """Whether a run's outcome would be read: its row stays (a next run), or the run
        history keeps it. A finished one-off's row goes, so without history it is not
        built at all."""
        return next_at is not None or self._history is not None

    def _outcome(
        self,
        status: RunStatus,
        row: Claimed,
        started_at: datetime.datetime,
        finished_at: datetime.datetime | None = None,
        *,
        attempt: int = 1,
        error: str | None = None,
    ) -> str:
        """The stored outcome of ``row``'s run (see :mod:`pyncette.outcome`)."""
        return outcome.encode(
            status,
            scheduled_at=row.scheduled_at,
            started_at=started_at,
            duration=None if finished_at is None else finished_at - started_at,
            attempt=attempt,
            instance=self._instance,
            error=error,
        )

    def _static_task(self, row: Claimed) -> Task | None:
        """The static task (or queued extra run of one) a claimed row of the static
        group runs; ``None`` if this instance does not run it."""
        task = self._static.get(row.name)
        if task is None:
            target = extra_run_target(row.spec)  # queued by trigger/backfill_task?
            if target is not None and target in self._static:
                return extra_run(self._static[target])
            # A static task this instance does not run (disabled here, or removed):
            # hand it back at once so an instance that runs it can claim it.
            logger.debug("Releasing static task %r: not enabled here", row.name)
            self._hand_back([row])
        return task

    def _background(self, operation: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await operation
            except Exception:
                logger.exception("Background repository operation failed")

        task = asyncio.ensure_future(run())
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)

    # -- one execution ----------------------------------------------------------------

    async def _execute(
        self,
        task: Task,
        row: Claimed,
        claimed_at: datetime.datetime | None = None,
        deadline: float | None = None,
        *,
        at_most_once: bool = False,
        attempt: int = 1,
    ) -> None:
        """Run one claimed ``row``; commit (or unlock) it as the task's modes say.
        ``deadline`` (see :meth:`_dispatch`) lets a run whose lease is sure to hold, and
        whose start nothing reads before it ends (no events, no log line), start without
        building the time as a datetime; the start is derived from the same reading if
        it is needed after all."""
        context = Context.for_execution(  # (by position: a little cheaper per execution)
            self._app_context,
            task,
            # in the task's timezone; backends return UTC already
            row.scheduled_at if task.timezone is None else row.scheduled_at.astimezone(task.tzinfo),
            None if at_most_once else row.lease,
            self._beat,
            self._items,
            row,
        )
        if attempt > 1:
            context.attempt = attempt
        events = self._events
        observed = events.active
        logged = self._logged
        timed = observed or logged
        started = time.perf_counter() if timed else 0.0
        started_at: datetime.datetime | None = None
        wall = 0.0
        if deadline is None or timed or (wall := time.time()) >= deadline:
            started_at = self._clock.now()
            if not at_most_once and started_at >= row.locked_until:
                self._expired_before_start(task, row, started_at)
                return
        if observed:
            assert started_at is not None  # (observed runs read the clock)
            events.emit(ExecutionStarted(task, row.scheduled_at, started_at))
        retry_as: Claimed | None = None
        failure: str | None = None
        try:
            if self._middlewares or not task.is_async:
                await self._invoke(context)
            else:  # (the common case, without a call of its own)
                await task._func(context)  # (the property, without its call)
        except LeaseLostException:
            logger.warning("Execution of %s stopped: lease lost", task)
            if context.lease is not None:  # raised by the task itself, not a heartbeat
                self._lease_lost(task, row)
            return
        except asyncio.CancelledError:
            if not at_most_once and context.lease is not None:
                await self._release(row, context.lease)
            raise
        except Exception as error:
            retry = task.retry
            if retry is None:
                logger.exception("Execution of %s failed", task)
            else:
                logger.exception(
                    "Execution of %s failed (attempt %d of %d)", task, attempt, retry.attempts
                )
            if observed:
                duration = time.perf_counter() - started
                assert started_at is not None
                events.emit(ExecutionFailed(task, row.scheduled_at, started_at, duration, error))
            if retry is not None and attempt < retry.attempts and context.lease is not None:
                retry_as = await self._hold_for_retry(task, row, context.lease, attempt, error)
                if retry_as is None and self._stopping:
                    return  # handed back (or lost): the failure mode has nothing left to do
            if retry_as is None:
                if at_most_once or task.failure_mode is FailureMode.NONE:
                    return
                if context.lease is None:
                    logger.warning("Lease on %s was lost; not unlocking or committing", task)
                    return
                failure = outcome.error_text(error)
                if task.failure_mode is FailureMode.UNLOCK:
                    finished_at = self._clock.now()
                    failed = self._outcome(
                        RunStatus.FAILED,
                        row,
                        started_at or _from_wall(wall),
                        finished_at,
                        attempt=attempt,
                        error=failure,
                    )
                    await self._release(row, context.lease, failed, finished_at)
                    return
        else:
            duration = time.perf_counter() - started if timed else 0.0
            if observed:
                assert started_at is not None
                events.emit(ExecutionFinished(task, row.scheduled_at, started_at, duration))
            if logged:
                logger.info(
                    "Executed %s (scheduled at %s) in %.3f s",
                    task,
                    row.scheduled_at.isoformat(),
                    duration,
                    extra={
                        "task": task.template.name,
                        "instance": task.name if task.is_instance else None,
                        "scheduled_at": row.scheduled_at,
                        "duration": duration,
                    },
                )
        if retry_as is not None:  # out of the except block: no chained tracebacks
            await self._execute(task, retry_as, claimed_at, attempt=attempt + 1)
            return
        if at_most_once:
            return
        lease = context._lease  # (the property, without its call)
        if lease is None:
            logger.warning("Lease on %s was lost; not committing", task)
            return
        if task.interval is None and task.schedule is None and self._history is None:
            # a one-off, without run history: its row goes, and nothing of the run is kept
            self._commits.submit(row.group, new_tuple(Commit, (row.name, lease, None, None, None)))
            return
        finished_at = self._clock.now()
        next_at = task.next_run(row.scheduled_at, finished_at, claimed_at=claimed_at)
        ended = None
        if self._read(next_at):
            ended = self._outcome(
                RunStatus.SUCCEEDED if failure is None else RunStatus.FAILED,
                row,
                started_at or _from_wall(wall),
                finished_at,
                attempt=attempt,
                error=failure,
            )
        commit = new_tuple(Commit, (row.name, lease, next_at, ended, self._history))
        self._commits.submit(row.group, commit)

    def _expired_before_start(self, task: Task, row: Claimed, now: datetime.datetime) -> None:
        """Do not start an at-least-once run whose lease has run out since it was claimed
        (the process was held up between the claim and the start: a stalled machine, a
        loop blocked by other code): another instance may have claimed it meanwhile. It
        is left as it is, to be claimed again, by any instance, now that it has expired."""
        logger.warning(
            "Lease on %s (scheduled at %s) expired %.3f s before it could start; not "
            "starting it here, it is claimed again",
            task,
            row.scheduled_at.isoformat(),
            (now - row.locked_until).total_seconds(),
        )
        self._lease_lost(task, row)

    async def _hold_for_retry(
        self, task: Task, row: Claimed, lease: Lease, attempt: int, error: Exception
    ) -> Claimed | None:
        """Wait out the back-off after failed attempt ``attempt``, the lease extended to
        cover it; the row as held then, or ``None`` if there is to be no retry: the
        lease was lost, or the app is shutting down (the row is then unlocked, so that
        an instance that keeps running retries it at once)."""
        assert task.retry is not None
        delay = task.retry.delay(attempt)
        until = self._clock.now() + delay + task.lease_duration
        try:
            extended = await self._extend(row, lease, until)
        except Exception:
            logger.exception("Could not extend the lease of %s to retry it", task)
            extended = False
        if not extended:
            logger.warning("Not retrying %s: its lease could not be kept", task)
            return None
        held = row._replace(locked_until=until)
        logger.info("Retrying %s (attempt %d) in %.3f s", task, attempt + 1, delay.total_seconds())
        if self._events.active:
            self._events.emit(ExecutionRetried(task, row.scheduled_at, attempt, delay, error))
        if not self._stopping:
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await self._clock.wait_for(self._stopped.wait(), delay.total_seconds())
        if self._stopping:
            logger.info("Shutting down: %s is handed back to be retried elsewhere", task)
            await self._release(held, lease)
            return None
        return held

    def _invoke(self, context: Context) -> Awaitable[None]:
        middlewares = self._middlewares
        if not middlewares:
            task = context.task
            func = task._func  # (the property, without its call)
            return func(context) if task.is_async else _in_thread(func, context)

        def call(index: int) -> Awaitable[None]:
            if index == len(middlewares):
                return call_task(context.task, context)
            return middlewares[index](context, functools.partial(call, index + 1))

        return call(0)

    def _lease_lost(self, task: Task, row: Claimed) -> None:
        if self._events.active:
            self._events.emit(LeaseLost(task, row.scheduled_at))

    async def _release(
        self,
        row: Claimed,
        lease: Lease,
        ended: str | None = None,
        now: datetime.datetime | None = None,
    ) -> None:
        """Unlock ``row``; with ``ended``, store it as the run's outcome (at ``now``)."""
        history = self._history if ended is not None else None
        try:
            await self._bounded(
                row.group,
                lambda: self._repository.unlock(
                    row.group, row.name, lease, outcome=ended, history=history, now=now
                ),
            )
        except Exception:
            logger.exception("Could not unlock %r; it retries when its lease expires", row.name)

    async def _commit(self, group: str, commits: list[Commit]) -> None:
        def warn(attempt: int, error: BaseException, delay: float) -> None:
            logger.warning("Commit failed (attempt %d); retrying in %.1f s", attempt, delay)

        try:
            lost = await retry.retry(
                lambda: self._bounded(
                    group, lambda: self._repository.commit(group, commits, now=self._clock.now())
                ),
                policy=retry.COMMIT,
                attempts=retry.COMMIT_ATTEMPTS,
                sleep=self._clock.sleep,
                on_retry=warn,
            )
        except Exception:
            logger.exception(
                "Could not commit %d executions; they run again after their leases expire",
                len(commits),
            )
            return
        for name in lost:
            logger.warning("Lease lost on %r before its commit; not committed", name)
        self.note_due(group, min((c.next_at for c in commits if c.next_at), default=None))

    async def _extend(self, row: Claimed, lease: Lease, locked_until: datetime.datetime) -> bool:
        return await self._bounded(
            row.group,
            lambda: self._repository.extend(row.group, row.name, lease, locked_until=locked_until),
        )

    async def _heartbeat(self, context: Context) -> None:
        """Extend the lease the context holds (``context._held``: the claimed row, with
        the lease's known expiry). On refusal, or on an error once the lease has expired
        unrenewed, the context stops holding it: from then on another instance may run
        the task."""
        row: Claimed = context._held
        task = context.task
        if task.execution_mode is ExecutionMode.AT_MOST_ONCE:
            return
        lease = context.lease
        if lease is not None:
            until = self._clock.now() + task.lease_duration
            try:
                renewed = await self._extend(row, lease, until)
            except Exception:
                if self._clock.now() < row.locked_until:
                    raise  # transient: the lease still holds; the next beat tries again
                logger.warning("Lease on %s expired while it could not be renewed", task)
                renewed = False
            if renewed:
                context._held = row._replace(locked_until=until)
                return
        context.lease = None
        self._lease_lost(task, row)
        raise LeaseLostException(task)


def _half(lease: datetime.timedelta) -> float:
    return max(lease.total_seconds() / 2, MIN_CALL_TIMEOUT)


def _from_wall(wall: float) -> datetime.datetime:
    """A ``time.time()`` reading as the aware UTC datetime the system clock gave then."""
    return datetime.datetime.fromtimestamp(wall, datetime.UTC)


def _trusted(
    rows: list[Claimed],
    sent: datetime.datetime,
    elapsed: float,
    release: Callable[[Sequence[Claimed]], None],
) -> list[Claimed]:
    """The rows of a claim sent at ``sent`` and answered ``elapsed`` seconds later that
    may start: those with more than half their lease left. The others are handed back
    with ``release`` (lease-guarded, so a row another instance has taken over meanwhile
    is not touched) and claimed again."""
    trusted, late = [], []
    for row in rows:
        if elapsed * 2 < (row.locked_until - sent).total_seconds():
            trusted.append(row)
        else:
            late.append(row)
    if late:
        logger.warning(
            "A claim of %d rows of group %r was answered after %.1f s, more than half "
            "their lease; %d of them are handed back to be claimed again",
            len(rows),
            rows[0].group,
            elapsed,
            len(late),
        )
        release(late)
    return trusted


def call_function(func: Callable[[Context], Any], context: Context) -> Awaitable[None]:
    """Call a task function: a coroutine function directly, a plain function in a
    worker thread (``anyio.to_thread``) so that it cannot block the loop."""
    if is_async_callable(func):
        result: Awaitable[None] = func(context)
        return result
    return _in_thread(func, context)


def call_task(task: Task, context: Context) -> Awaitable[None]:
    """:func:`call_function` for ``task.func``, whose kind the task knows already."""
    if task.is_async:
        return task.func(context)
    return _in_thread(task.func, context)


async def _in_thread(func: Callable[[Context], object], context: Context) -> None:
    result = await anyio.to_thread.run_sync(func, context, abandon_on_cancel=True)
    if inspect.isawaitable(result):
        await result
