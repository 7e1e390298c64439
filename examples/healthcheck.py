"""A health endpoint for container probes. Run: python examples/healthcheck.py

Any path answers: 200 while the poll loop ticks, 500 when it has stalled. Probe it with
``curl -i http://127.0.0.1:8080/healthz`` (set PORT to use another port).
"""

from __future__ import annotations

import datetime
import os

from pyncette import Context, Pyncette
from pyncette.healthcheck import use_healthcheck_server

PORT = int(os.environ.get("PORT", "8080"))

app = Pyncette()
use_healthcheck_server(app, port=PORT, bind_address="127.0.0.1")


@app.task(interval=datetime.timedelta(seconds=1))
async def heartbeat(context: Context) -> None:
    print(f"tick at {context.scheduled_at:%H:%M:%S}; health on port {PORT}", flush=True)


if __name__ == "__main__":
    app.main()
