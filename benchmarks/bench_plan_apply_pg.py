"""Benchmark: bench_plan_apply.py with the profiles in PostgreSQL (same data, same flow).

The same generated profiles (the demo generator's table trimmed to 10 columns) are loaded
into a PostgreSQL schema, and the workspace's source is `type: postgres`. With `--diff
postgres` (the default, `source.diff: postgres`) the membership diff runs in PostgreSQL and
only the rows of changing members travel into the engine; with `--diff engine` every
profile's contract columns and the segment's keys travel by COPY and the diff runs there. Steps,
as in the DuckDB benchmark, each a `reconcile` child process: plan, first apply, re-plan after
churn, re-apply. The baselines (a) and (b) are the same diffs written for PostgreSQL and run
*in PostgreSQL* in the same run, against a table of the previous members loaded there; (c)
is the Python hashing loop. Churn is applied to the DuckDB copy and the table reloaded into
PostgreSQL (not timed). Nothing here asserts a time.

    python benchmarks/bench_plan_apply_pg.py --dsn "host=127.0.0.1 dbname=test user=postgres" \
        --profiles 1000000 --churn 0.001 0.01 0.1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

from reconciler.sources import pg_demo

_spec = importlib.util.spec_from_file_location(
    "bench_plan_apply", Path(__file__).with_name("bench_plan_apply.py")
)
assert _spec is not None and _spec.loader is not None
core = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(core)

# ---------------------------------------------------------------- the baselines, verbatim
#: (a) the bare two-way anti-join of the segment's keys against the previous members' keys
BASELINE_A_SQL = """
WITH s AS (SELECT customer_id AS key FROM profiles WHERE country = 'AU' AND total_spend >= 100)
SELECT
  (SELECT count(*) FROM s WHERE NOT EXISTS (SELECT 1 FROM prev_members m WHERE m.key = s.key))
    AS entering,
  (SELECT count(*) FROM prev_members m WHERE NOT EXISTS (SELECT 1 FROM s WHERE s.key = m.key))
    AS leaving
"""

#: (b) the same plus change detection on the mapped attribute (stored vs current value)
BASELINE_B_SQL = """
WITH s AS (SELECT customer_id AS key, first_name FROM profiles
           WHERE country = 'AU' AND total_spend >= 100)
SELECT
  (SELECT count(*) FROM s WHERE NOT EXISTS (SELECT 1 FROM prev_members m WHERE m.key = s.key))
    AS entering,
  (SELECT count(*) FROM prev_members m WHERE NOT EXISTS (SELECT 1 FROM s WHERE s.key = m.key))
    AS leaving,
  (SELECT count(*) FROM s JOIN prev_members m ON m.key = s.key
     WHERE m.first_name IS DISTINCT FROM s.first_name) AS changed
"""

PREV_MEMBERS_SQL = f"""
CREATE TABLE prev_members AS
SELECT customer_id AS key, first_name FROM profiles WHERE {core.SEGMENT_WHERE};
CREATE INDEX ON prev_members (key);
ANALYZE prev_members
"""


def use_postgres(root: Path, schema: str, diff: str = "postgres") -> None:
    """The DuckDB benchmark's workspace, its source switched to PostgreSQL (``diff``: where
    the membership diff runs, ``source.diff``)."""
    path = root / "reconcile.yaml"
    text = path.read_text().replace(
        "  type: duckdb\n  path: data/profiles.duckdb\n",
        f"  type: postgres\n  dsn: ${{env:RECONCILE_SOURCE_DSN}}\n  schema: {schema}\n"
        f"  diff: {diff}\n",
    )
    path.write_text(text)


def load(dsn: str, schema: str, db: Path, tmp: Path) -> float:
    """Reload the profiles table into PostgreSQL; seconds it took."""
    t = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        pg_demo.load_table(db, conn, schema, "profiles", tmp)
        conn.execute(
            sql.SQL("CREATE UNIQUE INDEX ON {} (customer_id)").format(
                sql.Identifier(schema, "profiles")
            )
        )
    return time.perf_counter() - t


def save_previous_members(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        cur.execute("DROP TABLE IF EXISTS prev_members")
        for statement in PREV_MEMBERS_SQL.split(";"):
            cur.execute(statement)  # type: ignore[arg-type]


def backend_cpu(pid: int) -> float | None:
    """CPU seconds (user + sys) of a PostgreSQL backend process on this host, or None when
    the server runs elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu() -> float | None:
    """CPU seconds the PostgreSQL server on this host has used so far: each postgres
    process's own plus what its exited children used (a backend that ended is counted in
    the postmaster's). None when no server process is visible (a remote server)."""
    total, found = 0, False
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if stat[stat.index("(") + 1 : stat.rindex(")")] not in ("postgres", "postmaster"):
            continue
        f = stat.rsplit(")", 1)[1].split()
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        found = True
    return total / os.sysconf("SC_CLK_TCK") if found else None


def repeat_pg(root: Path, times: int, args: list[str], before=None) -> dict:
    """``core.repeat`` plus the server's CPU during each step (``server_cpu_seconds``,
    median): with the diff in PostgreSQL much of a plan's work is the server's."""
    steps, server = [], []
    for _ in range(times):
        if before:
            before()
        start = server_cpu()
        steps.append(core.repeat(root, 1, args))
        end = server_cpu()
        if start is not None and end is not None:
            server.append(end - start)
    out = steps[-1]
    out["runs"] = [r for step in steps for r in step["runs"]]
    out["seconds"] = statistics.median(r[0] for r in out["runs"])
    out["cpu_seconds"] = statistics.median(r[1] for r in out["runs"])
    out["peak_rss_mib"] = max(step["peak_rss_mib"] for step in steps)
    out["server_cpu_seconds"] = round(statistics.median(server), 3) if server else None
    return out


def timed_pg_sql(dsn: str, schema: str, query: str, times: int) -> dict:
    """A baseline statement run in PostgreSQL: wall time, and the CPU seconds of the server
    process that ran it (read from /proc when the server is on this host; parallel workers,
    if the planner starts any, are not counted; otherwise the wall time)."""
    walls, cpus, result = [], [], None
    with psycopg.connect(dsn) as conn:
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone() or (0,)
        for _ in range(times):
            cpu, wall = backend_cpu(pid), time.perf_counter()
            result = conn.execute(query).fetchone()  # type: ignore[arg-type]
            walls.append(time.perf_counter() - wall)
            after = backend_cpu(pid)
            cpus.append(after - cpu if cpu is not None and after is not None else walls[-1])
    return {"seconds": statistics.median(walls), "cpu_seconds": statistics.median(cpus),
            "result": list(result or ())}  # fmt: skip


def bench(n: int, args: argparse.Namespace) -> dict:
    root = args.work / f"pg-n{n}"
    schema = f"{args.schema}_{n}"
    if not args.reuse_data:
        shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(root / ".reconcile", ignore_errors=True)
    core.write_workspace(root, args.batch_size)
    use_postgres(root, schema, args.diff)
    os.environ["RECONCILE_SOURCE_DSN"] = args.dsn
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    tmp = root / "copy"
    tmp.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    core.make_data(root, n, args.reuse_data)
    db = core.reset_data(root)
    res: dict = {"profiles": n, "source": f"postgres (diff: {args.diff})", "generate_seconds": 0.0}
    res["load_seconds"] = round(load(args.dsn, schema, db, tmp), 2)
    res["generate_seconds"] = round(time.perf_counter() - t, 2)
    times = args.repeat
    res["load_before"] = os.getloadavg()
    res["plan"] = repeat_pg(root, times, ["plan"], before=lambda: core.restore(root, ""))
    res["apply"] = repeat_pg(
        root, times, ["apply", "--auto-approve"], lambda: core.restore(root, "")
    )
    core.snapshot(root, "applied")
    save_previous_members(args.dsn, schema)
    res["hashing"] = core.timed_hashing(db, times)
    res["apply"]["members"] = res["apply"]["changes"].get("add", 0)
    res["churn"] = []
    for share in args.churn:
        db = core.reset_data(root)
        core.churn(db, share)
        load(args.dsn, schema, db, tmp)
        c: dict = {"share": share}
        c["replan"] = repeat_pg(root, times, ["plan"], lambda: core.restore(root, "applied"))
        c["reapply"] = repeat_pg(
            root, times, ["apply", "--auto-approve"], lambda: core.restore(root, "applied")
        )
        c["baseline_a"] = timed_pg_sql(args.dsn, schema, BASELINE_A_SQL, times)
        c["baseline_b"] = timed_pg_sql(args.dsn, schema, BASELINE_B_SQL, times)
        res["churn"].append(c)
    res["startup"] = core.startup(root)
    res["load_after"] = os.getloadavg()
    res["ratios"] = core.ratios(res)
    if not args.keep_schema:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    return res


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsn", default=os.environ.get("RECONCILE_BENCH_DSN", ""))
    ap.add_argument("--schema", default="reconcile_bench")
    ap.add_argument("--profiles", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--churn", type=float, nargs="+", default=[0.001, 0.01, 0.1])
    ap.add_argument("--batch-size", type=int, default=10_000)
    ap.add_argument(
        "--diff",
        choices=["postgres", "engine"],
        default="postgres",
        help="where the membership diff runs (source.diff)",
    )
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / ".work")
    ap.add_argument("--reuse-data", action="store_true", help="keep generated profiles")
    ap.add_argument("--keep-schema", action="store_true", help="keep the PostgreSQL schema")
    ap.add_argument("--json", type=Path, help="raw figures (default: <work>/bench-pg.json)")
    ap.add_argument("--report", type=Path, nargs="+", help="only print the tables of saved runs")
    args = ap.parse_args(argv)
    if args.report:
        results = [r for f in args.report for r in json.loads(f.read_text())]
        for r in results:
            r["ratios"] = core.ratios(r)
        print(core.table(results))
        return results
    if not args.dsn:
        ap.error("--dsn (or RECONCILE_BENCH_DSN): the PostgreSQL server to load the profiles into")
    core.compile_package()
    results = []
    for n in args.profiles:
        r = bench(n, args)
        results.append(r)
        print(json.dumps(r, indent=2), file=sys.stderr)
    return core.write_report(results, args.json or args.work / "bench-pg.json")


if __name__ == "__main__":
    main()
