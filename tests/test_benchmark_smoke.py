"""The benchmark at a tiny size: it must run end to end (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_plan_apply.py"


@pytest.mark.slow
def test_benchmark_smoke(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_plan_apply", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--profiles", "10000", "--repeat", "1", "--churn", "0.02", "--work", str(tmp_path)]
    (result,) = bench.main(argv)
    assert result["profiles"] == 10_000
    (churned,) = result["churn"]
    steps = [result["plan"], result["apply"], churned["replan"], churned["reapply"]]
    for step in steps:
        assert step["seconds"] > 0 and step["cpu_seconds"] > 0 and step["peak_rss_mib"] > 0
    added = result["plan"]["changes"]["add"]
    assert added > 1000 and result["apply"]["members"] == added
    # (c) hashes the e-mails the first apply sends: the members matched on e-mail
    assert result["hashing"]["values"] == added
    # churn moved about 2% both ways and renamed about 1%; the plan never changes more than
    # the baselines see (members without an e-mail were never sent, so are not removed)
    assert_churn_within_baselines(churned)
    ratios = result["ratios"]
    assert ratios["apply_cpu_us_per_member"] > 0 and ratios["startup_seconds"] > 0
    # the raw figures and the table are written next to each other
    assert json.loads((tmp_path / "bench.json").read_text())[0]["profiles"] == 10_000
    text = (tmp_path / "bench.md").read_text()
    assert f"| 10,000 | {added:,} |" in text and "| re-plan / (a), 2% churn (wall; CPU) |" in text
    # and the tables can be printed again from the raw figures
    (again,) = bench.main(["--report", str(tmp_path / "bench.json")])
    assert again["ratios"] == ratios
    # the same profiles with their key declared PRIMARY KEY plan the same changes
    argv += ["--reuse-data", "--declared-key", "--json", str(tmp_path / "key.json")]
    (keyed,) = bench.main(argv)
    assert keyed["declared_key"] and not result["declared_key"]
    assert keyed["plan"]["changes"] == result["plan"]["changes"]
    assert keyed["churn"][0]["replan"]["changes"] == churned["replan"]["changes"]
    assert "| 10,000 (declared key) |" in (tmp_path / "key.md").read_text()


def test_record_windows_benchmark_smoke() -> None:
    path = BENCH.with_name("bench_record_windows.py")
    spec = importlib.util.spec_from_file_location("bench_record_windows", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--members", "25000", "--batch", "1000", "--calls", "2", "3", "--rows", "2500"]
    results = bench.main(argv)
    assert [r["members_per_transaction"] for r in results] == [2000, 3000, 2500]
    assert [r["calls_cut"] for r in results] == [False, False, True]
    for r in results:  # every member written, each window in its own file
        assert r["rows"] == 25_000 and r["cpu"] > 0 and r["total_blocks"] >= r["free_blocks"]


@pytest.mark.slow
def test_postgres_benchmark_smoke(tmp_path: Path, pg_dsn) -> None:
    """The PostgreSQL variant (profiles in PostgreSQL, baselines run there) at a tiny size."""
    path = BENCH.with_name("bench_plan_apply_pg.py")
    spec = importlib.util.spec_from_file_location("bench_plan_apply_pg", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--dsn", pg_dsn.base, "--schema", pg_dsn.schema, "--profiles", "5000",
            "--repeat", "1", "--churn", "0.02", "--work", str(tmp_path)]  # fmt: skip
    (result,) = bench.main(argv)
    added = result["plan"]["changes"]["add"]
    assert added > 500 and result["apply"]["members"] == added
    (churned,) = result["churn"]
    assert_churn_within_baselines(churned)
    assert f"| 5,000 | {added:,} |" in (tmp_path / "bench-pg.md").read_text()


def assert_churn_within_baselines(churned: dict) -> None:
    """The re-plan after churn changes no more than the baselines see, and in each way
    something; the re-apply applies exactly those changes."""
    entering, leaving, renamed = churned["baseline_b"]["result"]
    assert churned["baseline_a"]["result"] == [entering, leaving]
    changes = churned["replan"]["changes"]
    assert 0 < changes["add"] <= entering and 0 < changes["remove"] <= leaving
    assert 0 < changes["update"] <= renamed
    assert churned["reapply"]["changes"] == changes


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH.with_name(f"{name}.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.slow
def test_meta_benchmark_smoke() -> None:
    """Apply to the Meta fake in its own process, then 1% churn: the re-apply sends only
    the churn."""
    report = _load("bench_meta_apply").main(["--profiles", "5000"])
    members = report["members"]
    assert 1000 < members <= 5000
    assert report["first_apply"]["summary"] == f"bench: Complete (+{members:,} -0 ~0)"
    assert (
        f"add: {members:,} of {members:,} members sent" in report["first_apply"]["send_phases"][0]
    )
    again = report["reapply_after_1pct_churn"]["summary"]
    added, removed = (int(again.split(sign)[1].split()[0]) for sign in ("+", "-"))
    assert 0 < added + removed <= members * 0.01 + 2 and "~0" in again
    # the baseline hashed every identifier value the apply sent (e-mail and phone)
    assert members <= report["values_hashed_by_baseline"] <= 2 * members
    assert report["cpu_per_member_over_baseline_per_member"] > 0


@pytest.mark.slow
def test_export_benchmark_smoke(tmp_path: Path) -> None:
    (result,) = _load("bench_export").main(
        ["--profiles", "5000", "--format", "csv", "--work", str(tmp_path)]
    )
    assert result["profiles"] == 5000 and sum(result["files"].values()) > 0
    assert result["first_export"] and result["re_export"]


@pytest.mark.slow
def test_identity_benchmark_smoke() -> None:
    results = _load("bench_identity").main(["--values", "2000"])
    assert [r["case"] for r in results][-1] == "meta, 7 types"
    assert all(r["python_s_per_million"] > 0 and r["sql_s_per_million"] > 0 for r in results)


@pytest.mark.slow
def test_state_snapshot_benchmark_smoke(tmp_path: Path) -> None:
    (row,) = _load("bench_state_snapshot").main(
        ["--members", "5000", "--repeat", "1", "--work", str(tmp_path / "snap")]
    )
    assert row["members"] == 5000 and row["state_bytes"] > 0 and row["backup_bytes"] > 0


def test_sql_profiler_smoke(workspace) -> None:
    """benchmarks/profile_sql.py runs a real apply with every connection timed: the apply
    still does its work, and the statements that did it are the ones listed."""
    import subprocess
    import sys

    from tests.conftest import profile

    act = "segments: [seg-a]\ndestination: sandbox\nname: Smoke\n"
    ws = workspace({"act": act}, profiles=[profile(i, a=i < 10) for i in range(20)])
    tool = BENCH.with_name("profile_sql.py")
    args = ["--top", "40", "--", "-C", str(ws.root), "apply", "--auto-approve"]
    run = subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "act: Complete (+10" in run.stdout + run.stderr
    assert len(ws.sandbox_keys("Smoke")["Smoke"]) == 10  # the destination holds the members
    lines = run.stdout.splitlines()
    head = next(line for line in lines if line.startswith("CPU "))
    assert float(head.split()[1]) > 0 and "in SQL statements of the main thread" in head
    listed = [line for line in lines if line[:7].strip().replace(".", "").isdigit()]
    assert any("CREATE OR REPLACE TABLE __reconcile_scratch.send" in line for line in listed)
    assert any("INSERT INTO __reconcile_state.members" in line for line in listed)
