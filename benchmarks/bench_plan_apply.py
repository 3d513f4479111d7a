"""Benchmark: plan and apply one `maintain` activation to the sandbox, churn, plan and apply again.

Each `reconcile` step runs as a child process (start-up included): plan, first apply, re-plan
after churn, re-apply. Per step: wall time (median of K repeats), CPU seconds of the child
(user + sys from `os.wait4`, every DuckDB thread included; median of K) and peak RSS (max;
taken by a small launcher process, see LAUNCHER).
In this process, on the same files with the same DuckDB settings, three baselines written
out below (each the median of at least 3 runs): (a) the bare two-way anti-join of the
segment's keys against the previous members' keys, (b) the same plus change detection on the
mapped attribute (a join comparing stored and current values), (c) a plain Python loop
hashing every identifier value the first apply sends. Then the ratios the targets are stated in, and `reconcile --help` start-up.

    python benchmarks/bench_plan_apply.py --profiles 1000000 3000000 10000000   # scaling
    python benchmarks/bench_plan_apply.py --profiles 10000 --repeat 1           # CI smoke size

Data: the demo generator's profiles table trimmed to 10 columns (36-character keys, realistic
e-mails); the segment filters on two columns. Churn `s`: `s` of the members change membership
(half leave, half enter; `demo.churn`) and another `s / 2` of the members get a new first
name (the mapped attribute), so the re-plan has additions, removals and updates. Every churn
level starts from the same generated table and the same applied state. Machine load is
recorded (the load average before and after); prefer CPU seconds on a shared machine. Nothing
here asserts a time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
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
SEGMENT_WHERE = "country = 'AU' AND total_spend >= 100"

#: DuckDB settings of the engine's session (reconciler/enginedb.py) and of the baselines
THREADS, MEMORY_LIMIT = 2, "1GB"

# ---------------------------------------------------------------- the baselines, verbatim
#: (a) the bare two-way anti-join of the segment's keys against the previous members' keys
BASELINE_A_SQL = """
WITH s AS (SELECT customer_id AS key FROM profiles WHERE country = 'AU' AND total_spend >= 100)
SELECT
  (SELECT count(*) FROM s ANTI JOIN prev.members m ON m.key = s.key) AS entering,
  (SELECT count(*) FROM prev.members m ANTI JOIN s ON s.key = m.key) AS leaving
"""

#: (b) the same plus change detection on the mapped attribute (stored vs current value)
BASELINE_B_SQL = """
WITH s AS (SELECT customer_id AS key, first_name FROM profiles
           WHERE country = 'AU' AND total_spend >= 100)
SELECT
  (SELECT count(*) FROM s ANTI JOIN prev.members m ON m.key = s.key) AS entering,
  (SELECT count(*) FROM prev.members m ANTI JOIN s ON s.key = m.key) AS leaving,
  (SELECT count(*) FROM s JOIN prev.members m ON m.key = s.key
     WHERE m.first_name IS DISTINCT FROM s.first_name) AS changed
"""

#: the baselines' previous members: the first apply's segment, keys and attribute values
PREV_MEMBERS_SQL = f"""
CREATE TABLE prev_db.members AS
SELECT customer_id AS key, first_name FROM profiles WHERE {SEGMENT_WHERE}
"""

#: (c)'s input: every identifier value the first apply sends (the sandbox matches on e-mail)
SENT_VALUES_SQL = f"SELECT email FROM profiles WHERE {SEGMENT_WHERE} AND strpos(email, '@') > 1"


def baseline_c(values: list[str]) -> list[str]:
    """(c) a plain Python loop normalising and hashing every value."""
    out = []
    for v in values:
        out.append(hashlib.sha256(v.strip().lower().encode()).hexdigest())
    return out


# ---------------------------------------------------------------- workspace and data
AS_OF = date(2026, 11, 1)


def write_workspace(root: Path, batch_size: int) -> None:
    for d in ("segments", "activations", "integrations"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "reconcile.yaml").write_text(f"""\
version: 1
timezone: UTC
source:
  type: duckdb
  path: data/profiles.duckdb
  threads: {THREADS}
  memory_limit: {MEMORY_LIMIT}
  profiles:
    table: profiles
    key: customer_id
    identifiers: {{email: email, phone: phone}}
    attributes: [first_name, country, total_spend]
    default_phone_country: AU
state:
  path: .reconcile/state.duckdb
  allow_ephemeral: true
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


def connect(path: Path | str = ":memory:") -> duckdb.DuckDBPyConnection:
    config = {"threads": THREADS, "memory_limit": MEMORY_LIMIT, "preserve_insertion_order": False}
    return duckdb.connect(str(path), config=config)


def make_data(root: Path, n: int, reuse: bool) -> None:
    """Generate the profiles once per size into ``pristine.duckdb`` (kept with --reuse-data)."""
    pristine = root / "data" / "pristine.duckdb"
    if reuse and pristine.exists():
        return
    pristine.parent.mkdir(parents=True, exist_ok=True)
    demo.generate(pristine, n, as_of=AS_OF, threads=THREADS, memory_limit=MEMORY_LIMIT)
    con = connect(pristine)
    try:  # the benchmark table has exactly 10 columns
        con.execute("ALTER TABLE profiles DROP COLUMN last_name")
        con.execute("CHECKPOINT")
    finally:
        con.close()


def reset_data(root: Path, declared_key: bool = False) -> Path:
    """A fresh copy of the generated profiles; with ``declared_key`` the table declares
    ``customer_id`` its PRIMARY KEY (rows and column order unchanged), as a warehouse export
    with constraints would."""
    db = root / "data" / "profiles.duckdb"
    db.with_name(db.name + ".wal").unlink(missing_ok=True)  # a killed run's log: not replayed
    shutil.copyfile(root / "data" / "pristine.duckdb", db)
    if declared_key:  # building the key's index takes more memory than the steps measured
        con = duckdb.connect(str(db), config={"threads": THREADS, "memory_limit": "8GB"})
        try:
            cols = con.execute("DESCRIBE profiles").fetchall()
            ddl = ", ".join(
                f'"{c}" {t}' + (" PRIMARY KEY" if c == "customer_id" else "") for c, t, *_ in cols
            )
            con.execute("ALTER TABLE profiles RENAME TO generated")
            con.execute(f"CREATE TABLE profiles ({ddl})")
            con.execute("INSERT INTO profiles SELECT * FROM generated")
            con.execute("DROP TABLE generated")
            con.execute("CHECKPOINT")
        finally:
            con.close()
    return db


def churn(db: Path, share: float, seed: int = 11) -> None:
    """``share`` of the members change membership; another ``share / 2`` change first name."""
    demo.churn(db, share, seed=seed, threads=THREADS, memory_limit=MEMORY_LIMIT)
    con = connect(db)
    try:
        (members,) = con.execute(f"SELECT count(*) FROM profiles WHERE {SEGMENT_WHERE}").fetchone()
        k = round(share / 2 * members)
        con.execute(
            f"""UPDATE profiles SET first_name = first_name || '-2' WHERE customer_id IN (
                SELECT customer_id FROM profiles WHERE {SEGMENT_WHERE}
                ORDER BY md5('rename:{seed}:' || customer_id) LIMIT {k})"""
        )
        con.execute("CHECKPOINT")
    finally:
        con.close()


def save_previous_members(root: Path, db: Path) -> None:
    prev = root / "prev_members.duckdb"
    prev.unlink(missing_ok=True)
    con = connect()
    try:
        con.execute(f"ATTACH '{prev}' AS prev_db")
        con.execute(f"ATTACH '{db}' AS src (READ_ONLY)")
        con.execute("USE src")
        con.execute(PREV_MEMBERS_SQL)
    finally:
        con.close()


# ---------------------------------------------------------------- measuring
def compile_package() -> None:
    """Write the bytecode of ``reconciler`` and ``destinations`` first, as an installed
    package has it: with ``PYTHONDONTWRITEBYTECODE`` set (CI images, some containers) a
    source checkout would otherwise compile every module in every measured child (~0.3 s
    CPU a command here), which is not what a user's installed tool does."""
    root = Path(__file__).resolve().parents[1]
    packages = [str(root / "reconciler"), str(root / "destinations")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], check=True)


#: runs the measured command as its child and writes the child's wall, CPU and peak RSS to
#: the file named first. The peak RSS ``os.wait4`` reports for a child includes the peak of
#: the process that started it (Linux keeps the larger one across fork and exec), so a child
#: started by this process, which grows to gigabytes with the baselines and the data, would
#: report this process's peak: this small launcher starts it instead.
LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as f:
    json.dump({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
               "rss": usage.ru_maxrss * 1024, "code": os.waitstatus_to_exitcode(status)}, f)
"""


def measured(root: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    """One `reconcile` child: wall seconds, CPU seconds (user + sys), peak RSS (KiB on Linux),
    stdout (its standard error stays in ``child.err``), taken by :data:`LAUNCHER`."""
    cmd = [sys.executable, "-m", "reconciler", "-C", str(root), "--no-color", *args]
    figures = root / "child.json"
    figures.unlink(missing_ok=True)
    with open(root / "child.out", "w") as out, open(root / "child.err", "w") as err:
        subprocess.run(
            [sys.executable, "-c", LAUNCHER, str(figures), *cmd],
            stdout=out,
            stderr=err,
            env=env,
            check=False,
        )
    if not figures.exists():
        raise SystemExit(f"{' '.join(args)}: no figures\n{(root / 'child.err').read_text()}")
    run = json.loads(figures.read_text())
    if run.pop("code") not in (0, 2):
        raise SystemExit(f"{' '.join(args)} failed:\n{(root / 'child.err').read_text()}")
    return run | {"output": (root / "child.out").read_text()}


def repeat(root: Path, times: int, args: list[str], before=None) -> dict:
    runs = []
    for _ in range(times):
        if before:
            before()
        runs.append(measured(root, *args))
    output = runs[-1]["output"]
    return {
        "seconds": statistics.median(r["wall"] for r in runs),
        "cpu_seconds": statistics.median(r["cpu"] for r in runs),
        "peak_rss_mib": max(r["rss"] for r in runs) / 2**20,
        "runs": [[round(r["wall"], 3), round(r["cpu"], 3)] for r in runs],
        "summary": next((x for x in output.splitlines() if x.startswith("Plan:")), ""),
        "changes": _parse_changes(output),
    }


def _parse_changes(output: str) -> dict[str, int]:
    m = re.search(r"members: \+([\d,]+) -([\d,]+) ~([\d,]+)", output)
    if not m:
        return {}
    add, remove, update = (int(g.replace(",", "")) for g in m.groups())
    return {"add": add, "remove": remove, "update": update}


def baseline_runs(times: int) -> int:
    """The baselines are short and the machine is shared: always the median of 3 or more."""
    return max(times, 3)


def timed_sql(root: Path, db: Path, sql: str, times: int) -> dict:
    """A baseline statement: wall and CPU (this process, all threads), median of ``times``."""
    walls, cpus, result = [], [], None
    for _ in range(times):
        con = connect()
        con.execute(f"ATTACH '{db}' AS src (READ_ONLY)")
        con.execute(f"ATTACH '{root / 'prev_members.duckdb'}' AS prev (READ_ONLY)")
        con.execute("USE src")
        wall, cpu = time.perf_counter(), time.process_time()
        result = con.execute(sql).fetchone()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
        con.close()
    return {"seconds": statistics.median(walls), "cpu_seconds": statistics.median(cpus),
            "result": list(result)}  # fmt: skip


def timed_hashing(db: Path, times: int) -> dict:
    con = connect()
    try:
        con.execute(f"ATTACH '{db}' AS src (READ_ONLY)")
        con.execute("USE src")
        values = [r[0] for r in con.execute(SENT_VALUES_SQL).fetchall()]
    finally:
        con.close()
    walls, cpus = [], []
    for _ in range(times):
        wall, cpu = time.perf_counter(), time.process_time()
        baseline_c(values)
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    cpu = statistics.median(cpus)
    return {"values": len(values), "seconds": statistics.median(walls), "cpu_seconds": cpu,
            "cpu_us_per_value": 1e6 * cpu / max(len(values), 1)}  # fmt: skip


def startup(root: Path, times: int = 5) -> dict:
    runs = [measured(root, "--help") for _ in range(times)]
    return {"seconds": statistics.median(r["wall"] for r in runs),
            "cpu_seconds": statistics.median(r["cpu"] for r in runs)}  # fmt: skip


# ---------------------------------------------------------------- one size
def bench(
    n: int,
    work: Path,
    times: int,
    churns: list[float],
    batch_size: int,
    reuse: bool,
    declared_key: bool = False,
):
    root = work / f"n{n}"
    if not reuse:
        shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(root / ".reconcile", ignore_errors=True)
    write_workspace(root, batch_size)
    t = time.perf_counter()
    make_data(root, n, reuse)
    db = reset_data(root, declared_key)
    res: dict = {"profiles": n, "generate_seconds": round(time.perf_counter() - t, 2)}
    res["declared_key"] = declared_key
    res["load_before"] = os.getloadavg()
    res["plan"] = repeat(root, times, ["plan"], before=lambda: restore(root, ""))
    res["apply"] = repeat(root, times, ["apply", "--auto-approve"], lambda: restore(root, ""))
    snapshot(root, "applied")
    save_previous_members(root, db)
    res["hashing"] = timed_hashing(db, baseline_runs(times))
    members = res["apply"]["changes"].get("add", 0)
    res["apply"]["members"] = members
    res["churn"] = []
    for share in churns:
        db = reset_data(root, declared_key)
        churn(db, share)
        c: dict = {"share": share}
        c["replan"] = repeat(root, times, ["plan"], before=lambda: restore(root, "applied"))
        c["reapply"] = repeat(
            root, times, ["apply", "--auto-approve"], before=lambda: restore(root, "applied")
        )
        c["baseline_a"] = timed_sql(root, db, BASELINE_A_SQL, baseline_runs(times))
        c["baseline_b"] = timed_sql(root, db, BASELINE_B_SQL, baseline_runs(times))
        res["churn"].append(c)
    res["startup"] = startup(root)
    res["load_after"] = os.getloadavg()
    res["ratios"] = ratios(res)
    return res


def snapshot(root: Path, name: str) -> None:
    dst = root / ".snapshots" / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(root / ".reconcile", dst, ignore=shutil.ignore_patterns("tmp"))


def restore(root: Path, name: str) -> None:
    shutil.rmtree(root / ".reconcile", ignore_errors=True)
    if name:
        shutil.copytree(root / ".snapshots" / name, root / ".reconcile")


def ratios(res: dict) -> dict:
    def div(a: float, b: float) -> float:
        return a / b if b > 0 else float("inf")

    apply, members = res["apply"], res["apply"]["members"]
    cpu_us = 1e6 * apply["cpu_seconds"] / max(members, 1)
    out = {
        "apply_cpu_us_per_member": cpu_us,
        "send_cpu_us_per_member": 1e6
        * (apply["cpu_seconds"] - res["plan"]["cpu_seconds"])
        / max(members, 1),
        "apply_vs_hashing": div(cpu_us, res["hashing"]["cpu_us_per_value"]),
        "apply_members_per_second": div(members, apply["seconds"]),
        "peak_rss_mib": max(
            [res[s]["peak_rss_mib"] for s in ("plan", "apply")]
            + [c[s]["peak_rss_mib"] for c in res["churn"] for s in ("replan", "reapply")]
        ),
        "startup_seconds": res["startup"]["seconds"],
        "churn": [],
    }
    for c in res["churn"]:
        r, a, b = c["replan"], c["baseline_a"], c["baseline_b"]
        out["churn"].append({
            "share": c["share"],
            "replan_vs_a": div(r["seconds"], a["seconds"]),
            "replan_vs_b": div(r["seconds"], b["seconds"]),
            "replan_vs_a_cpu": div(r["cpu_seconds"], a["cpu_seconds"]),
            "replan_vs_b_cpu": div(r["cpu_seconds"], b["cpu_seconds"]),
        })  # fmt: skip
    return out


# ---------------------------------------------------------------- report
def _pct(share: float) -> str:
    return f"{100 * share:g}%"


def _run(s: dict) -> str:
    """wall / CPU / peak RSS of a step."""
    return f"{s['seconds']:.2f} s / {s['cpu_seconds']:.2f} s / {s['peak_rss_mib']:.0f} MiB"


def _sql(b: dict) -> str:
    return f"{b['seconds']:.2f} s / {b['cpu_seconds']:.2f} s"


def _changes(ch: dict) -> str:
    return f"+{ch['add']:,} -{ch['remove']:,} ~{ch['update']:,}" if ch else ""


def table(results: list[dict]) -> str:
    """Three Markdown tables: the first run, the runs after churn, the targets."""
    lines = [
        "| profiles | members sent | plan | first apply | (c) Python sha256 of the values |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        h = r["hashing"]
        key = " (declared key)" if r.get("declared_key") else ""
        lines.append(
            f"| {r['profiles']:,}{key} | {r['apply']['members']:,} | {_run(r['plan'])} | "
            f"{_run(r['apply'])} | {h['seconds']:.2f} s / {h['cpu_seconds']:.2f} s |"
        )
    lines += [
        "",
        "| profiles | churn | changes | re-plan | re-apply | (a) anti-join | (b) + attributes |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        key = " (declared key)" if r.get("declared_key") else ""
        for c in r["churn"]:
            lines.append(
                f"| {r['profiles']:,}{key} | {_pct(c['share'])} | {_changes(c['replan']['changes'])} "
                f"| {_run(c['replan'])} | {_run(c['reapply'])} | {_sql(c['baseline_a'])} "
                f"| {_sql(c['baseline_b'])} |"
            )
    sizes = " | ".join(
        f"{r['profiles']:,}" + (" (declared key)" if r.get("declared_key") else "") for r in results
    )
    lines += ["", f"| measure | target | {sizes} |", "|---|---|" + "---:|" * len(results)]

    def row(measure: str, target: str, cell) -> None:  # type: ignore[no-untyped-def]
        lines.append(f"| {measure} | {target} | " + " | ".join(cell(r) for r in results) + " |")

    for i, share in enumerate(c["share"] for c in results[0]["churn"]):
        for key, name, target in (("a", "(a)", "<= 2x at 10M"), ("b", "(b)", "<= 1.3x at 10M")):
            row(
                f"re-plan / {name}, {_pct(share)} churn (wall; CPU)",
                target,
                lambda r, i=i, k=key: (
                    f"{r['ratios']['churn'][i][f'replan_vs_{k}']:.1f}x; "
                    f"{r['ratios']['churn'][i][f'replan_vs_{k}_cpu']:.1f}x"
                ),
            )
    row("first apply CPU per member", "<= 5 us",
        lambda r: f"{r['ratios']['apply_cpu_us_per_member']:.1f} us")  # fmt: skip
    row("... of which beyond its plan", "",
        lambda r: f"{r['ratios']['send_cpu_us_per_member']:.1f} us")  # fmt: skip
    row("(c) CPU per value", "", lambda r: f"{r['hashing']['cpu_us_per_value']:.2f} us")
    row("first apply CPU per member / (c) per value", "<= 8x",
        lambda r: f"{r['ratios']['apply_vs_hashing']:.1f}x")  # fmt: skip
    row("first apply members per second (wall)", ">= 150,000 at 10M",
        lambda r: f"{r['ratios']['apply_members_per_second']:,.0f}")  # fmt: skip
    row("largest peak RSS of any step", "< 1,536 MiB",
        lambda r: f"{r['ratios']['peak_rss_mib']:,.0f} MiB")  # fmt: skip
    row("`reconcile --help` (wall, median of 5; CPU)", "<= 0.25 s",
        lambda r: f"{r['startup']['seconds']:.2f} s; {r['startup']['cpu_seconds']:.2f} s")  # fmt: skip
    row("load average (1 min) before -> after", f"{os.cpu_count()} CPUs",
        lambda r: f"{r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f}")  # fmt: skip
    lines.append("")
    lines.append("Steps: wall (median) / CPU seconds, user + sys (median) / peak RSS (max).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profiles", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--churn", type=float, nargs="+", default=[0.001, 0.01, 0.1])
    ap.add_argument("--batch-size", type=int, default=10_000)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / ".work")
    ap.add_argument("--reuse-data", action="store_true", help="keep generated profiles")
    ap.add_argument("--json", type=Path, help="raw figures (default: <work>/bench.json)")
    ap.add_argument("--report", type=Path, nargs="+", help="only print the tables of saved runs")
    ap.add_argument(
        "--declared-key",
        action="store_true",
        help="the profiles table declares customer_id PRIMARY KEY (plans skip the duplicate probe)",
    )
    args = ap.parse_args(argv)
    if args.report:
        results = [r for f in args.report for r in json.loads(f.read_text())]
        for r in results:
            r["ratios"] = ratios(r)
        print(table(results))
        return results
    results = []
    compile_package()
    for n in args.profiles:
        r = bench(
            n,
            args.work,
            args.repeat,
            args.churn,
            args.batch_size,
            args.reuse_data,
            args.declared_key,
        )
        results.append(r)
        print(json.dumps(r, indent=2), file=sys.stderr)
    return write_report(results, args.json or args.work / "bench.json")


def write_report(results: list[dict], out: Path) -> list[dict]:
    """Print the tables; keep the raw figures in ``out`` and the tables beside it (.md)."""
    text = table(results)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()
