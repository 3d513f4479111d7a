"""Where one `reconcile` step spends its CPU: cProfile on a CPU clock, plus the GC's share.

    python benchmarks/profile_step.py -- -C benchmarks/.work/n1000000 apply --auto-approve
    python benchmarks/profile_step.py --top 40 --out apply.prof -- -C WORKSPACE plan

Runs the CLI in this process under :mod:`cProfile` with ``time.process_time`` as the clock
(every thread of the process, so the CPU of DuckDB's worker threads is charged to the Python
call that waited for it: a function's "own" time includes the SQL it ran) and times every
garbage-collector pass through ``gc.callbacks``. Prints the functions of ``reconciler/`` and
``destinations/`` by own CPU time, then the GC passes. Use a workspace the benchmark left
(``bench_plan_apply.py --work DIR``); restore its ``.reconcile`` from ``.snapshots/`` first to
profile a first apply or a re-apply again.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import pstats
import runpy
import sys
import time
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1]) + "/"
OURS = ("/reconciler/", "/destinations/")


class GcClock:
    """CPU seconds and passes of the garbage collector, per generation."""

    def __init__(self) -> None:
        self.passes = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.process_time()
        else:
            self.passes[info["generation"]] += 1
            self.seconds[info["generation"]] += time.process_time() - self._start


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", help="also save the raw profile here (pstats format)")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- then the reconcile arguments")
    opts = ap.parse_args(argv)
    args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
    clock = GcClock()
    gc.callbacks.append(clock)
    prof = cProfile.Profile(time.process_time)
    sys.argv = ["reconcile", *args]
    start = time.process_time()
    with contextlib.suppress(SystemExit):  # the CLI exits with its status
        prof.runcall(runpy.run_module, "reconciler", run_name="__main__")
    total = time.process_time() - start
    gc.callbacks.remove(clock)
    if opts.out:
        prof.dump_stats(opts.out)
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (cc, nc, own, cumulative, callers)
    rows = [
        (own, cum, nc, f"{file.removeprefix(ROOT)}:{line}({name})")
        for (file, line, name), (_, nc, own, cum, _) in stats.items()
        if any(o in file for o in OURS)
    ]
    print(f"CPU {total:.2f} s (under the profiler); own time of reconciler/ and destinations/:")
    print(f"{'own s':>7} {'cum s':>7} {'calls':>7}  function")
    for own, cum, nc, name in sorted(rows, reverse=True)[: opts.top]:
        print(f"{own:7.3f} {cum:7.3f} {nc:7d}  {name}")
    gens = ", ".join(
        f"gen{g} {n} passes {s:.2f} s"
        for g, (n, s) in enumerate(zip(clock.passes, clock.seconds, strict=True))
    )
    print(f"GC: {sum(clock.seconds):.2f} s CPU ({gens})")


if __name__ == "__main__":
    main()
