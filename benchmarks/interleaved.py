"""SQLite: this project's drain and the plain driver's, alternated in one process.

``python -m benchmarks.interleaved [-n 4000] [--segments 12]`` sets up
``2 * segments + 1`` stores of ``n`` due one-off instances first (``worker.py``'s
``setup``), then runs, in this one process and one after the other, the plain driver's
drain (``ceiling.py``), this project's drain (``worker.py``'s ``drain``, the bulk API,
no counting), the plain driver's again, and so on, ending with the plain driver's.
Each drain of ours is set against the mean of the two plain-driver runs on either side
of it, a fraction of a second away.

Why: on a shared machine the CPU's speed drifts from one second to the next (two
processes started seconds apart see it differ by half), and ``drain``'s pairs of
processes inherit that spread. Here both sides run on the same warmed-up interpreter,
close together in time, so the per-segment fractions spread far less. What it leaves
out: start-up and imports (neither side counts them in ``drain`` either) and anything
that differs between a fresh process and a warm one, the same for both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.instructions import config_for

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # worker.py and ceiling.py are scripts beside this one

import ceiling  # noqa: E402
import worker  # noqa: E402


def ours(config: dict[str, Any]) -> float:
    """Executions/s of this project's drain of a set-up store, first to last execution
    (as ``drain`` computes it)."""
    result = asyncio.run(worker.drain({**config, "setup": False}))
    if result["executions"] != config["n"] or result["duplicates"]:
        raise SystemExit(f"this project's drain ran {result['executions']} of {config['n']}")
    span: float = result["last"] - result["first"]
    return (result["executions"] - 1) / span


def plain(config: dict[str, Any]) -> float:
    """Executions/s of the plain driver's drain of a set-up store."""
    result = ceiling.sqlite(config)
    if result["executions"] != config["n"]:
        raise SystemExit(f"the plain driver drained {result['executions']} of {config['n']}")
    rate: float = result["rate"]
    return rate


def settle() -> None:
    """Between segments: let the collector free what the last one left (``drain``
    freezes the heap after its set-up)."""
    gc.unfreeze()
    gc.collect()


def run(n: int, segments: int, batch_size: int, directory: Path) -> list[tuple[float, float]]:
    """(ours, mean of the plain driver's runs on either side) for each segment."""
    configs = [
        config_for(
            "sqlite",
            {"sqlite_database": str(directory / f"store-{index}.sqlite")},
            n,
            "",
            batch_size=batch_size,
        )
        for index in range(2 * segments + 1)
    ]
    for config in configs:
        asyncio.run(worker.setup_only(config))
    settle()
    plains = [plain(configs[0])]
    mine: list[float] = []
    for segment in range(segments):
        settle()
        mine.append(ours(configs[2 * segment + 1]))
        settle()
        plains.append(plain(configs[2 * segment + 2]))
    return [(rate, (plains[k] + plains[k + 1]) / 2) for k, rate in enumerate(mine)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=4000, help="due instances per segment")
    parser.add_argument("--segments", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="pyncette-interleaved-"))
    try:
        pairs = run(args.n, args.segments, args.batch_size, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"sqlite, n={args.n} per segment, {args.segments} segments, pid {os.getpid()}\n")
    print("| segment | this project executions/s | plain driver executions/s (mean) | fraction |")
    print("|---|---:|---:|---:|")
    for index, (mine, theirs) in enumerate(pairs):
        print(f"| {index + 1} | {mine:,.0f} | {theirs:,.0f} | {mine / theirs * 100:.0f}% |")
    fractions = [mine / theirs for mine, theirs in pairs]
    print(
        f"\nmedian fraction of the ceiling: {statistics.median(fractions) * 100:.1f}% "
        f"(lowest {min(fractions) * 100:.0f}%, highest {max(fractions) * 100:.0f}%; "
        "target >= 50%)",
        flush=True,
    )


if __name__ == "__main__":
    main()
