"""Instructions per execution, this project's drain against the plain driver's, counted
by valgrind (a figure that does not depend on the machine's load).

``python -m benchmarks.instructions --backend sqlite`` runs, each under
``valgrind --tool=callgrind`` and each at ``--small`` and at ``--large`` due one-off
instances on a fresh store:

* this project's drain (``worker.py``'s ``drain`` scenario, the bulk API, no counting)
  and its set-up alone (the ``setup`` scenario); the drain's cost per execution is the
  growth of (drain - set-up) from the small size to the large one, so start-up, the
  registration of the rows and the final idle poll cancel out;
* for backends with a plain-driver ceiling run in this process (SQLite, whose "server"
  is a library), ``ceiling.py`` on a store the set-up filled, and its growth likewise;
  and this project's repository alone (``worker.py``'s ``repository_drain``: the same
  claims and commits, no scheduler) on another such store.

It prints them and the ceiling's share of the drain's instructions (on a CPU-bound
machine, the fraction of the ceiling's rate the drain reaches) and of the repository
alone's. Instructions
of every thread of the process count (aiosqlite's included); a client-server backend's
server runs in another process and is not counted, so there only ``--backend null`` and
this project's own side are meaningful. Valgrind slows Python about fifty times: the
defaults take three to four minutes for SQLite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.services import IN_PROCESS_CEILINGS, Services

HERE = Path(__file__).resolve().parent
_COLLECTED = re.compile(r"Collected : (\d+)")


def counted(script: Path, config: dict[str, Any], *, valgrind: bool = True) -> int:
    """Instructions ``python script config.json`` executes (all its threads); without
    ``valgrind``, just run it (0)."""
    fd, path = tempfile.mkstemp(prefix="pyncette-instructions-", suffix=".json")
    with os.fdopen(fd, "w") as out:
        json.dump(config, out)
    command = [sys.executable, str(script), path]
    if valgrind:
        command[:0] = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir()
        )
    finally:
        os.unlink(path)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or "RESULT " not in done.stdout or (valgrind and found is None):
        raise SystemExit(f"{script.name} failed:\n{done.stderr[-3000:]}")
    return int(found.group(1)) if valgrind and found is not None else 0


def config_for(
    backend: str, options: dict[str, Any], n: int, scenario: str, *, batch_size: int = 100
) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "backend": backend,
        "options": options,
        "n": n,
        "batch_size": batch_size,
        "concurrency_limit": batch_size,
        "poll_interval": 1.0,
        "api": "bulk",
        "count": False,
        "server_cpu": False,
    }


def counted_after_setup(
    services: Services, backend: str, n: int, script: str, scenario: str = ""
) -> int:
    """Instructions of ``script`` run on a fresh store that the (uncounted) set-up filled."""
    with services.store(backend) as options:
        counted(HERE / "worker.py", config_for(backend, options, n, "setup"), valgrind=False)
        return counted(HERE / script, config_for(backend, options, n, scenario))


def per_execution(services: Services, backend: str, small: int, large: int) -> dict[str, float]:
    """Instructions per execution of this project's drain and, where it runs in this
    process, of the plain driver's and of this project's repository alone."""
    ours: list[int] = []
    ceiling: list[int] = []
    alone: list[int] = []
    for n in (small, large):
        with services.store(backend) as options:
            drain = counted(HERE / "worker.py", config_for(backend, options, n, "drain"))
        with services.store(backend) as options:
            setup = counted(HERE / "worker.py", config_for(backend, options, n, "setup"))
        ours.append(drain - setup)
        if backend in IN_PROCESS_CEILINGS:
            ceiling.append(counted_after_setup(services, backend, n, "ceiling.py"))
            alone.append(counted_after_setup(services, backend, n, "worker.py", "repository_drain"))
    result = {"ours": (ours[1] - ours[0]) / (large - small)}
    if ceiling:
        result["ceiling"] = (ceiling[1] - ceiling[0]) / (large - small)
        result["alone"] = (alone[1] - alone[0]) / (large - small)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="sqlite", help="comma-separated")
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=3000)
    args = parser.parse_args()
    services = Services()
    try:
        for backend in args.backend.split(","):
            figures = per_execution(services, backend, args.small, args.large)
            line = f"{backend}: this project {figures['ours']:,.0f} instructions per execution"
            if "ceiling" in figures:
                share = figures["ceiling"] / figures["ours"]
                line += (
                    f"; plain driver {figures['ceiling']:,.0f}: "
                    f"{share * 100:.1f}% of the ceiling (target >= 50%)"
                    f"; repository alone {figures['alone']:,.0f}: "
                    f"{figures['ceiling'] / figures['alone'] * 100:.1f}% of the ceiling"
                )
            print(line, flush=True)
    finally:
        services.close()


if __name__ == "__main__":
    main()
