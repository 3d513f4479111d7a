"""Benchmark: plan and apply one `maintain` activation to the sandbox, churn 1%, plan again.

Measures the `reconcile plan` / `reconcile apply` subprocesses themselves — wall time and
peak RSS (ru_maxrss of the child from wait4), start-up included, median of N repeats — and,
in this process on the same files with the same DuckDB settings, the baseline: one SQL
statement counting both directions of the difference between the segment query and a table
of the previous members.

    python benchmarks/bench_plan_apply.py --profiles 1000000 10000000      # the real sizes
    python benchmarks/bench_plan_apply.py --profiles 10000 --repeat 1      # CI smoke size

Data: the demo generator's profiles table trimmed to 10 columns (36-character keys,
realistic e-mails); the segment filters on two columns; churn updates the table so 1% of
members change (half leave, half enter). Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import duckdb

from reconciler.sources import demo

SEGMENT_SQL = "SELECT customer_id FROM profiles WHERE country = 'AU' AND total_spend >= 100"

#: the baseline, verbatim: one statement counting both directions of the difference
BASELINE_SQL = f"""
SELECT
  (SELECT count(*) FROM ({SEGMENT_SQL}) s
     WHERE NOT EXISTS (SELECT 1 FROM prev.members m WHERE m.key = s.customer_id)) AS entering,
  (SELECT count(*) FROM prev.members m
     WHERE NOT EXISTS (SELECT 1 FROM ({SEGMENT_SQL}) s WHERE s.customer_id = m.key)) AS leaving
"""

AS_OF = date(2026, 11, 1)


def write_workspace(root: Path, threads: int, memory_limit: str, batch_size: int) -> None:
    (root / "segments").mkdir(parents=True, exist_ok=True)
    (root / "activations").mkdir(exist_ok=True)
    (root / "integrations").mkdir(exist_ok=True)
    (root / "reconcile.yaml").write_text(f"""\
version: 1
timezone: UTC
source:
  type: duckdb
  path: data/profiles.duckdb
  threads: {threads}
  memory_limit: {memory_limit}
  profiles:
    table: profiles
    key: customer_id
    identifiers: {{email: email, phone: phone}}
    attributes: [first_name, country, total_spend]
    default_phone_country: AU
state:
  path: .reconcile/state.duckdb
""")
    (root / "integrations" / "sandbox.yaml").write_text(f"""\
type: sandbox
attributes: {{FIRST_NAME: first_name}}
config:
  path: .reconcile/sandbox.duckdb
  identifiers: [email]
  batch_size: {batch_size}
""")
    (root / "segments" / "au-spenders.yaml").write_text(f'sql: "{SEGMENT_SQL}"\n')
    (root / "activations" / "bench.yaml").write_text(
        "segments: [au-spenders]\ndestination: sandbox\nname: Benchmark\n"
        "attributes: [FIRST_NAME]\nmax_removal_share: 1\n"
    )


def make_data(root: Path, n: int, threads: int, memory_limit: str) -> None:
    db = root / "data" / "profiles.duckdb"
    db.parent.mkdir(parents=True, exist_ok=True)
    demo.generate(db, n, as_of=AS_OF, threads=threads, memory_limit=memory_limit)
    con = duckdb.connect(str(db))
    try:  # the benchmark table has exactly 10 columns
        con.execute("ALTER TABLE profiles DROP COLUMN last_name")
        con.execute("CHECKPOINT")
    finally:
        con.close()


def measured(root: Path, *args: str) -> tuple[float, int, str]:
    cmd = [sys.executable, "-m", "reconciler", "-C", str(root), "--no-color", *args]
    start = time.perf_counter()
    with open(root / "child.out", "w") as out, open(root / "child.err", "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 2):
        raise SystemExit(
            f"{' '.join(args)} failed ({proc.returncode}):\n{(root / 'child.err').read_text()}"
        )
    return elapsed, usage.ru_maxrss * 1024, (root / "child.out").read_text()


def snapshot(root: Path, name: str) -> None:
    dst = root / ".snapshots" / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(root / ".reconcile", dst, ignore=shutil.ignore_patterns("tmp"))


def restore(root: Path, name: str) -> None:
    shutil.rmtree(root / ".reconcile", ignore_errors=True)
    if name:
        shutil.copytree(root / ".snapshots" / name, root / ".reconcile")


def repeat(root: Path, times: int, args: list[str], before=None) -> dict:
    runs = []
    out = ""
    for _ in range(times):
        if before:
            before()
        secs, rss, out = measured(root, *args)
        runs.append((secs, rss))
    return {
        "seconds": statistics.median(r[0] for r in runs),
        "peak_rss_mib": max(r[1] for r in runs) / 2**20,
        "runs": [round(r[0], 3) for r in runs],
        "output": out,
    }


def baseline(root: Path, threads: int, memory_limit: str, times: int) -> dict:
    """The baseline, in this process, on the same files with the same DuckDB settings."""
    prev = root / "prev_members.duckdb"
    db = root / "data" / "profiles.duckdb"
    secs = []
    result = None
    for _ in range(times):
        con = duckdb.connect(":memory:", config={"threads": threads, "memory_limit": memory_limit})
        con.execute(f"ATTACH '{db}' AS src (READ_ONLY)")
        con.execute(f"ATTACH '{prev}' AS prev (READ_ONLY)")
        con.execute("USE src")
        start = time.perf_counter()
        result = con.execute(BASELINE_SQL).fetchone()
        secs.append(time.perf_counter() - start)
        con.close()
    return {"seconds": statistics.median(secs), "entering": result[0], "leaving": result[1]}


def save_previous_members(root: Path) -> None:
    prev = root / "prev_members.duckdb"
    prev.unlink(missing_ok=True)
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH '{prev}' AS prev_db")
        con.execute(f"ATTACH '{root / 'data' / 'profiles.duckdb'}' AS src (READ_ONLY)")
        con.execute("USE src")
        con.execute(
            f"CREATE TABLE prev_db.members AS SELECT customer_id AS key FROM ({SEGMENT_SQL})"
        )
    finally:
        con.close()


def counts(plan_text: str) -> str:
    return next((line for line in plan_text.splitlines() if line.startswith("Plan:")), "")


def bench(n: int, work: Path, times: int, threads: int, memory_limit: str, batch_size: int) -> dict:
    root = work / f"n{n}"
    shutil.rmtree(root, ignore_errors=True)
    write_workspace(root, threads, memory_limit, batch_size)
    t = time.perf_counter()
    make_data(root, n, threads, memory_limit)
    gen = time.perf_counter() - t
    res: dict = {"profiles": n, "generate_seconds": round(gen, 2)}
    res["plan"] = repeat(root, times, ["plan"], before=lambda: restore(root, ""))
    res["apply"] = repeat(
        root, times, ["apply", "--auto-approve"], before=lambda: restore(root, "")
    )
    snapshot(root, "applied")
    save_previous_members(root)
    demo.churn(
        root / "data" / "profiles.duckdb", 0.01, seed=11, threads=threads, memory_limit=memory_limit
    )
    res["replan"] = repeat(root, times, ["plan"])
    res["reapply"] = repeat(
        root, times, ["apply", "--auto-approve"], before=lambda: restore(root, "applied")
    )
    res["baseline"] = baseline(root, threads, memory_limit, times)
    res["replan_vs_baseline"] = res["replan"]["seconds"] / max(res["baseline"]["seconds"], 1e-9)
    for step in ("plan", "apply", "replan", "reapply"):
        res[step]["summary"] = counts(res[step].pop("output"))
    return res


def table(results: list[dict]) -> str:
    lines = [
        "| profiles | step | wall (median) | peak RSS | changes |",
        "|---:|---|---:|---:|---|",
    ]
    for r in results:
        for step in ("plan", "apply", "replan", "reapply"):
            s = r[step]
            lines.append(
                f"| {r['profiles']:,} | {step} | {s['seconds']:.2f} s | "
                f"{s['peak_rss_mib']:.0f} MiB | {s['summary']} |"
            )
        b = r["baseline"]
        lines.append(
            f"| {r['profiles']:,} | baseline SQL | {b['seconds']:.2f} s | "
            f"(in-process) | +{b['entering']:,} -{b['leaving']:,} |"
        )
        lines.append(
            f"| {r['profiles']:,} | re-plan / baseline | {r['replan_vs_baseline']:.1f}x | | |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profiles", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-limit", default="1GB")
    ap.add_argument("--batch-size", type=int, default=10_000)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / ".work")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    results = []
    for n in args.profiles:
        r = bench(n, args.work, args.repeat, args.threads, args.memory_limit, args.batch_size)
        results.append(r)
        print(json.dumps(r, indent=2), file=sys.stderr)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
