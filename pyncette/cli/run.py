"""``pyncette run``: run an app as ``app.main()`` does, in one process or several."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

import click

from pyncette.cli.common import EXIT_FAILURE
from pyncette.cli.loading import APP_HELP, load_app, runs_in_memory

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
POLL_SECONDS = 0.1
"""How often the supervisor looks for workers that exited."""
_FORWARDED = (signal.SIGINT, signal.SIGTERM)
SUPERVISOR_VARIABLE = "PYNCETTE_SUPERVISOR_PID"
"""Set for the workers of ``--workers``: the supervisor they stop without."""


@click.command(epilog=APP_HELP)
@click.argument("app", metavar="APP")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    help="Logging level (default: the LOG_LEVEL variable, else INFO).",
)
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run this many processes sharing the app's backend.",
)
@click.pass_context
def run(ctx: click.Context, app: str, log_level: str | None, workers: int) -> None:
    """Run the app until SIGINT/SIGTERM, as `app.main()` does.

    The first signal stops polling and waits for running executions; a second one
    exits at once (status 1). With --workers N, N processes run the app; this one
    passes each signal on to all of them, and when one exits unasked, stops the rest
    (workers also stop if this process is killed). The exit status is 1 if any worker
    failed.
    """
    pyncette = load_app(app)
    if log_level is not None:
        os.environ["LOG_LEVEL"] = log_level.upper()
    if workers == 1:
        _stop_with_supervisor()
        pyncette.main()
        return
    if runs_in_memory(pyncette):
        raise click.UsageError(
            "--workers needs a backend the processes share, but the app keeps its tasks "
            "in memory: configure a backend (e.g. sqlite_database=...)"
        )
    command = [sys.executable, "-m", "pyncette"]
    if ctx.find_root().params.get("debug"):
        command.append("--debug")
    command += ["run", app]
    if log_level is not None:
        command += ["--log-level", log_level.upper()]
    ctx.exit(supervise(command, workers))


def _stop_with_supervisor() -> None:
    """In a worker: shut down gracefully (as on SIGTERM) if the supervisor goes away
    without passing a signal on, e.g. when it is killed, rather than run on unwatched."""
    supervisor = os.environ.pop(SUPERVISOR_VARIABLE, None)
    if supervisor is None or supervisor != str(os.getppid()):
        return

    def watch() -> None:
        while os.getppid() == int(supervisor):
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="pyncette-supervisor-watch", daemon=True).start()


def supervise(command: list[str], workers: int) -> int:
    """Run ``workers`` copies of ``command`` until they have all exited; 1 if any failed.

    Workers get their own process group, so a Ctrl-C in the terminal reaches them once,
    through this process, rather than twice (which would mean "exit at once").
    """
    processes: list[subprocess.Popen[bytes]] = []
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        _signal_all(processes, signum)

    env = {**os.environ, SUPERVISOR_VARIABLE: str(os.getpid())}
    previous = {signum: signal.signal(signum, forward) for signum in _FORWARDED}
    try:
        for _ in range(workers):
            processes.append(
                subprocess.Popen(command, process_group=0, env=env)  # noqa: S603
            )
        if received:  # a signal came while the workers were starting
            _signal_all(processes, received[-1])
        pids = ", ".join(str(p.pid) for p in processes)
        click.echo(f"pyncette: started {workers} workers (pids {pids})", err=True)
        stopping = False
        while True:
            exited = [p for p in processes if p.poll() is not None]  # poll() each one
            if len(exited) == len(processes):
                break
            if exited and not received and not stopping:
                stopping = True
                first = exited[0]
                click.echo(
                    f"pyncette: worker {first.pid} exited with status {first.returncode}; "
                    "stopping the others",
                    err=True,
                )
                _signal_all(processes, signal.SIGTERM)
            time.sleep(POLL_SECONDS)
    finally:
        for process in processes:
            if process.poll() is None:  # only if this process itself is failing
                process.kill()
                process.wait()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    failed = [p for p in processes if p.returncode != 0]
    for process in failed:
        click.echo(f"pyncette: worker {process.pid} failed (status {process.returncode})", err=True)
    return EXIT_FAILURE if failed else 0


def _signal_all(processes: list[subprocess.Popen[bytes]], signum: int) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signum)
