"""Retries with back-off: a flaky call is tried again, holding its lease meanwhile.
Run: python examples/retries.py"""

from __future__ import annotations

import datetime
import random

from pyncette import Context, FailureMode, Pyncette, Retry
from pyncette.events import ExecutionRetried

app = Pyncette()
flaky_service = random.Random(7)


# Up to 4 attempts, 0.5 s after the first failure, then 1 s, then 2 s. If the fourth
# fails too, failure_mode decides: UNLOCK hands the run to the next tick.
@app.task(
    interval=datetime.timedelta(seconds=3),
    retry=Retry(attempts=4, backoff=datetime.timedelta(seconds=0.5)),
    failure_mode=FailureMode.UNLOCK,
)
async def sync_invoices(context: Context) -> None:
    if flaky_service.random() < 0.6:
        raise ConnectionError(f"invoice service refused attempt {context.attempt}")
    print(f"synced invoices on attempt {context.attempt}", flush=True)


def on_retry(event: ExecutionRetried) -> None:
    print(f"attempt {event.attempt} failed ({event.error}); again in {event.delay}", flush=True)


app.subscribe(on_retry, ExecutionRetried)


if __name__ == "__main__":
    app.main()
