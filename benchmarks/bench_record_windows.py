"""Benchmark: the CPU of recording members in the state, by how many go in one transaction.

Apply records the members of the calls that came back together, a *window* at a time
(``reconciler.apply.additions.RECORD_ROWS``). This writes N members of the state's shape
(``members``: activation, group, a 36-character key, one 77-character record, a 64-bit
fingerprint; key and record stored uncompressed, as the state declares them) into a fresh
DuckDB file attached as the apply session attaches the state (2 threads, 1 GB, checkpoint at
64 MB of log), from Arrow batches of ``--batch`` rows (the calls), then closes it. Either
``--calls`` whole calls a transaction, one ``INSERT ... SELECT`` per call, or (``--rows``)
exactly that many rows a transaction, the calls cut where needed and one ``INSERT`` per
transaction, as apply records them (:mod:`reconciler.apply.held_rows`). Per window: CPU
seconds (user + sys of this process) of the inserts, the commits and the close (its last
checkpoint), the file's size and its free blocks (space written and let go).

    python benchmarks/bench_record_windows.py --members 3700000 --calls 12 13 --rows 122880
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


def record(path: Path, members: int, batch: int, calls: int, rows_each: int = 0) -> dict:
    """Write ``members`` rows, ``calls`` batches of ``batch`` rows a transaction, or (with
    ``rows_each``) exactly ``rows_each`` rows a transaction, the batches cut where needed."""
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
    config = {  # the apply session's (reconciler/enginedb.py)
        "threads": 2,
        "memory_limit": "1GB",
        "checkpoint_threshold": "64MB",
        "preserve_insertion_order": "false",
    }
    con = duckdb.connect(":memory:", config=config)
    con.execute(f"ATTACH '{path}' AS st")
    con.execute(
        "CREATE TABLE st.members (activation_id VARCHAR, grp VARCHAR, "
        "key VARCHAR USING COMPRESSION uncompressed, "
        "record VARCHAR[] USING COMPRESSION uncompressed, fp UBIGINT)"
    )
    if rows_each:  # as apply records: exact transactions over the calls' rows
        from reconciler.apply.held_rows import HeldRows

        held = HeldRows()
        for n, t in enumerate(batches):
            held.add(str(n), t)
        transactions = []
        while held:
            parts, _ = held.take(rows_each)
            transactions.append([pa.concat_tables(parts)])
    else:
        transactions = [batches[i : i + calls] for i in range(0, len(batches), calls)]
    inserts = commits = 0.0
    for tables in transactions:
        con.begin()
        start = cpu()
        for t in tables:
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
        "calls": 0 if rows_each else calls,
        "rows": rows,
        "members_per_transaction": rows_each or calls * batch,
        "calls_cut": bool(rows_each),
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
    ap.add_argument("--calls", type=int, nargs="*", default=[12, 13], help="per transaction")
    ap.add_argument(
        "--rows", type=int, nargs="*", default=[122_880], help="exactly, per transaction"
    )
    ap.add_argument("--child", nargs=3, metavar=("FILE", "CALLS", "ROWS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:  # one window, in this (child) process
        path, calls, rows_each = Path(args.child[0]), int(args.child[1]), int(args.child[2])
        figures = record(path, args.members, args.batch, calls, rows_each)
        print(json.dumps(figures))
        return [figures]
    results = []
    windows = [(calls, 0) for calls in args.calls] + [(0, rows) for rows in args.rows]
    with tempfile.TemporaryDirectory() as tmp:
        for calls, rows_each in windows:
            path = Path(tmp) / f"state-{calls}-{rows_each}.duckdb"
            out = subprocess.run(
                [sys.executable, __file__, "--members", str(args.members), "--batch",
                 str(args.batch), "--child", str(path), str(calls), str(rows_each)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            results.append(json.loads(out.stdout))
    print("| members a transaction | inserts | commits | close | CPU | file | free blocks |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        cut = " (calls cut)" if r["calls_cut"] else ""
        print(
            f"| {r['members_per_transaction']:,}{cut} | {r['insert_cpu']:.2f} s "
            f"| {r['commit_cpu']:.2f} s "
            f"| {r['close_cpu']:.2f} s | {r['cpu']:.2f} s | {r['file_mib']:.0f} MiB "
            f"| {r['free_blocks']} of {r['total_blocks']} |"
        )
    return results


if __name__ == "__main__":
    main()
