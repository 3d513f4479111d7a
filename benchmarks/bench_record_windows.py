"""Benchmark: the CPU of recording members in the state, by how many go in one transaction.

Apply records the members of the calls that came back together, a *window* at a time
(``reconciler.apply.additions.RECORD_ROWS``). This writes N members of the state's shape
(``members``: activation, group, a 36-character key, one 77-character record, a 64-bit
fingerprint) into a fresh DuckDB file attached as the apply session attaches the state
(2 threads, 1 GB, checkpoint at 64 MB of log), from Arrow batches of ``--batch`` rows, one
``INSERT ... SELECT`` per batch, ``--calls`` batches per transaction, then closes it. Per
window: CPU seconds (user + sys of this process) of the inserts, the commits and the close
(its last checkpoint), the file's size and its free blocks (space written and let go).

    python benchmarks/bench_record_windows.py --members 3700000 --calls 12 13 24
    python benchmarks/bench_record_windows.py --members 30000 --batch 1000 --calls 2 3  # smoke

Each window runs in a child process of its own (a fresh allocator and file). Nothing here
asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def record(path: Path, members: int, batch: int, calls: int) -> dict:
    """Write ``members`` rows, ``calls`` batches of ``batch`` rows a transaction."""
    import duckdb
    import pyarrow as pa

    batches = []
    for start in range(0, members, batch):
        n = min(batch, members - start)
        batches.append(
            pa.table(
                {
                    "key": [str(uuid.uuid4()) for _ in range(n)],
                    "rec": [["email_sha256:" + os.urandom(32).hex()] for _ in range(n)],
                    "fp": pa.array(
                        [int.from_bytes(os.urandom(8), "little") for _ in range(n)], pa.uint64()
                    ),
                }
            )
        )
    config = {"threads": 2, "memory_limit": "1GB", "checkpoint_threshold": "64MB"}
    con = duckdb.connect(":memory:", config=config)
    con.execute(f"ATTACH '{path}' AS st")
    con.execute(
        "CREATE TABLE st.members (activation_id VARCHAR, grp VARCHAR, key VARCHAR, "
        "record VARCHAR[], fp UBIGINT)"
    )
    inserts = commits = 0.0
    for i in range(0, len(batches), calls):
        con.begin()
        start = cpu()
        for t in batches[i : i + calls]:
            con.register("confirmed", t)
            con.execute("INSERT INTO st.members SELECT 'bench', 'all', key, rec, fp FROM confirmed")
            con.unregister("confirmed")
        inserts += cpu() - start
        start = cpu()
        con.commit()
        commits += cpu() - start
    start = cpu()
    con.close()
    close = cpu() - start
    with duckdb.connect(str(path), read_only=True) as db:
        total, free = db.execute(
            "SELECT total_blocks, free_blocks FROM pragma_database_size()"
        ).fetchall()[0]
        (rows,) = db.execute("SELECT count(*) FROM members").fetchall()[0]
    return {
        "calls": calls,
        "rows": rows,
        "members_per_transaction": calls * batch,
        "insert_cpu": inserts,
        "commit_cpu": commits,
        "close_cpu": close,
        "cpu": inserts + commits + close,
        "file_mib": path.stat().st_size / 2**20,
        "free_blocks": free,
        "total_blocks": total,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=3_700_000)
    ap.add_argument("--batch", type=int, default=10_000, help="members per call")
    ap.add_argument("--calls", type=int, nargs="+", default=[12, 13, 24], help="per transaction")
    ap.add_argument("--child", nargs=2, metavar=("FILE", "CALLS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:  # one window, in this (child) process
        figures = record(Path(args.child[0]), args.members, args.batch, int(args.child[1]))
        print(json.dumps(figures))
        return [figures]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for calls in args.calls:
            path = Path(tmp) / f"state-{calls}.duckdb"
            out = subprocess.run(
                [sys.executable, __file__, "--members", str(args.members), "--batch",
                 str(args.batch), "--child", str(path), str(calls)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            results.append(json.loads(out.stdout))
    print("| members a transaction | inserts | commits | close | CPU | file | free blocks |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['members_per_transaction']:,} | {r['insert_cpu']:.2f} s | {r['commit_cpu']:.2f} s "
            f"| {r['close_cpu']:.2f} s | {r['cpu']:.2f} s | {r['file_mib']:.0f} MiB "
            f"| {r['free_blocks']} of {r['total_blocks']} |"
        )
    return results


if __name__ == "__main__":
    main()
