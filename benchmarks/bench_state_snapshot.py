"""Benchmark: what readers during an apply cost the embedded state (docs/how-apply-works.md).

For each size, a state file with N recorded members (the real schema; per member a 36-character
key, two sha256 records as the engine writes them and a fingerprint) is built once. Then:

- ``begin_write``: what every apply pays before its first write — the backup (a hard link)
  and the writer's own copy (copied, flushed, renamed). Median of K.
- a reader (``status``-like: open the state, read the activations and count the members per
  group) with no apply running, and while an apply is writing (another process holds the lock
  and has the state open for writing: the reader opens the backup). Median of K each.
- the apply's start while a reader holds the state file open: ``begin_write`` plus opening the
  state for writing, from another process that keeps the file open throughout (before, an
  apply waited for such a reader to finish).

    python benchmarks/bench_state_snapshot.py --members 1000000 10000000

Nothing here asserts a time; the machine's load average is printed with the figures.
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
from pathlib import Path

import duckdb

from reconciler.state.schema import CATALOG, create_schema
from reconciler.state.snapshot import attach_reader, backup_path, begin_write
from reconciler.state.store import StateReader

# a process that plays the apply: takes the state lock, begins writing, holds the file open
APPLY = """
import sys, duckdb
from pathlib import Path
from reconciler.state.lock import StateLock
from reconciler.state.schema import attach_state
from reconciler.state.snapshot import begin_write
path = Path(sys.argv[1])
lock = StateLock(path.with_suffix(".lock"))
lock.acquire("apply")
begin_write(path)
con = duckdb.connect(":memory:")
attach_state(con, path, write=True)
print("writing", flush=True)
sys.stdin.read()
"""

# a process that plays a long reader: holds the state file open until told to stop
READER = """
import sys, duckdb
con = duckdb.connect(":memory:")
con.execute(f"ATTACH '{sys.argv[1]}' AS s (READ_ONLY)")
print("reading", flush=True)
sys.stdin.read()
"""


def build(path: Path, members: int) -> None:
    if path.exists():
        return
    con = duckdb.connect(":memory:")
    con.execute(f"ATTACH '{path}' AS {CATALOG}")
    create_schema(con)
    con.execute(
        f"""INSERT INTO {CATALOG}.activations (id, spec, spec_digest, serial, status,
            destination, frequency, paused, split_seed, date_created, ran)
            VALUES ('bench', '{{}}', 'x', 1, 'Complete', 'sandbox', 'daily', FALSE, 'bench',
            DATE '2026-11-29', TRUE)"""
    )
    con.execute(
        f"""INSERT INTO {CATALOG}.members
            SELECT 'bench', 'all', uuid()::VARCHAR,
                   ['email_sha256:' || sha256(i::VARCHAR), 'phone_sha256:' || sha256((-i)::VARCHAR)],
                   hash(i)
            FROM range({members}) t(i)"""
    )
    con.close()


def read_once(path: Path) -> tuple[float, str | None]:
    t0 = time.perf_counter()
    con = duckdb.connect(":memory:")
    try:
        notice = attach_reader(con, path)
        st = StateReader(con)
        st.activations()
        st.member_counts("bench")
    finally:
        con.close()
    return time.perf_counter() - t0, notice


def child(code: str, path: Path, ready: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == ready, line
    return proc


def stop(proc: subprocess.Popen) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=60)
    if proc.stdout is not None:
        proc.stdout.close()


def measure(work: Path, members: int, repeat: int) -> dict:
    folder = work / f"state-{members}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "state.duckdb"
    build(path, members)
    size = path.stat().st_size
    writes = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        begin_write(path)
        writes.append(time.perf_counter() - t0)
    quiet = [read_once(path)[0] for _ in range(repeat)]
    apply = child(APPLY, path, "writing")
    try:
        during = []
        for _ in range(repeat):
            took, notice = read_once(path)
            assert notice and "showing the state as of its start" in notice, notice
            during.append(took)
    finally:
        stop(apply)
    starts = []
    for _ in range(repeat):
        reader = child(READER, path, "reading")
        try:
            t0 = time.perf_counter()
            begin_write(path)
            con = duckdb.connect(":memory:")
            con.execute(f"ATTACH '{path}' AS s")
            con.close()
            starts.append(time.perf_counter() - t0)
        finally:
            stop(reader)
    return {
        "members": members,
        "state_bytes": size,
        "backup_bytes": backup_path(path).stat().st_size,
        "begin_write_s": statistics.median(writes),
        "reader_quiet_s": statistics.median(quiet),
        "reader_during_apply_s": statistics.median(during),
        "apply_start_with_reader_s": statistics.median(starts),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / ".work" / "snapshot")
    ap.add_argument("--keep", action="store_true", help="keep the state files")
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    rows = [measure(args.work, n, args.repeat) for n in args.members]
    print(f"load average (1 min): {load:.1f} -> {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs")
    print(
        "| members | state file | begin_write (backup + copy) | reader, no apply "
        "| reader during an apply | apply start while a reader holds the file |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['members']:,} | {r['state_bytes'] / 2**20:,.0f} MiB | {r['begin_write_s']:.2f} s "
            f"| {r['reader_quiet_s']:.3f} s | {r['reader_during_apply_s']:.3f} s "
            f"| {r['apply_start_with_reader_s']:.2f} s |"
        )
    print(json.dumps(rows))
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
