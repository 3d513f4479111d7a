"""Benchmark: `goal: export_data` to the `files` destination, first export and a re-export
after churn, against a bare DuckDB ``COPY`` of the same rows.

Each `reconcile apply` runs as a child process (start-up and planning included): the first
export (a delta of every member plus a full file, `export.full: daily`), then, after churn
`s` (see ``bench_plan_apply.churn``), a second one (a small delta plus a full file). Per step:
wall time, CPU seconds of the child (user + sys, every DuckDB thread) and peak RSS. Baseline:
in this process, on the same data with the same DuckDB settings, one ``COPY`` of the
segment's rows (key, SHA-256 of the normalised e-mail, first name) to a file of the same
format — what writing the full file costs with no planning, no state and no manifest.

    python benchmarks/bench_export.py --profiles 1000000 --format csv parquet

Nothing here asserts a time. Machine load is recorded (load average before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_plan_apply import (  # noqa: E402  (a script beside this one)
    SEGMENT_SQL,
    SEGMENT_WHERE,
    churn,
    compile_package,
    connect,
    make_data,
    measured,
    reset_data,
    write_workspace,
)

BASELINE_SQL = f"""
SELECT customer_id, sha256(lower(trim(email))) AS email_sha256, first_name AS FIRST_NAME
FROM profiles WHERE {SEGMENT_WHERE}"""


def write_export_workspace(root: Path, fmt: str) -> None:
    write_workspace(root, 10_000)
    (root / "activations" / "bench.yaml").unlink()
    (root / "integrations" / "files.yaml").write_text(
        "type: files\nattributes: {FIRST_NAME: first_name}\n"
        f"config: {{location: out, format: {fmt}, identifiers: [email]}}\n"
    )
    (root / "activations" / "export.yaml").write_text(
        "goal: export_data\nsegments: [au-spenders]\ndestination: files\n"
        "attributes: [FIRST_NAME]\nmax_removal_share: 1\nexport: {full: daily}\n"
    )


def step(root: Path) -> dict:
    r = measured(root, "apply", "--auto-approve")
    return {
        "seconds": round(r["wall"], 2),
        "cpu_seconds": round(r["cpu"], 2),
        "peak_rss_mib": round(r["rss"] / 2**20),
    }


def baseline(db: Path, fmt: str, out: Path) -> float:
    con = connect(db)
    try:
        options = "FORMAT csv, HEADER true" if fmt == "csv" else "FORMAT parquet"
        start = time.perf_counter()
        con.execute(f"COPY ({BASELINE_SQL}) TO '{out}' ({options})")
        return round(time.perf_counter() - start, 2)
    finally:
        con.close()


def bench(n: int, fmt: str, work: Path, share: float) -> dict:
    root = work / f"export-{n}-{fmt}"
    data = work / f"data-{n}"
    make_data(data, n, reuse=True)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    write_export_workspace(root, fmt)
    (root / "data").mkdir(exist_ok=True)
    shutil.copyfile(data / "data" / "pristine.duckdb", root / "data" / "pristine.duckdb")
    db = reset_data(root)
    load = os.getloadavg()[0]
    first = step(root)
    churn(db, share)
    second = step(root)
    files = sorted((root / "out" / "export").glob(f"*.{fmt}"))
    manifests = [json.loads(Path(str(f) + ".manifest.json").read_text()) for f in files]
    return {
        "profiles": n,
        "format": fmt,
        "churn": share,
        "first_export": first,
        "re_export": second,
        "files": {f.name: m["rows"] for f, m in zip(files, manifests, strict=True)},
        "bytes": {f.name: f.stat().st_size for f in files},
        "baseline_copy_seconds": baseline(db, fmt, root / f"baseline.{fmt}"),
        "load": [round(load, 1), round(os.getloadavg()[0], 1)],
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profiles", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--format", nargs="+", default=["csv", "parquet"])
    ap.add_argument("--churn", type=float, default=0.01)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / ".work")
    args = ap.parse_args(argv)
    print(f"segment: {SEGMENT_SQL}")
    compile_package()
    results = []
    for n in args.profiles:
        for fmt in args.format:
            res = bench(n, fmt, args.work, args.churn)
            print(json.dumps(res, indent=2))
            results.append(res)
    return results


if __name__ == "__main__":
    main()
