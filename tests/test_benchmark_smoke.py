"""The benchmark at a tiny size: it must run end to end (no timing assertions)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_plan_apply.py"


@pytest.mark.slow
def test_benchmark_smoke(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_plan_apply", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (result,) = bench.main(["--profiles", "10000", "--repeat", "1", "--work", str(tmp_path)])
    assert result["profiles"] == 10_000
    for step in ("plan", "apply", "replan", "reapply"):
        assert result[step]["seconds"] > 0 and result[step]["peak_rss_mib"] > 0
    first = re.search(r"members: \+([\d,]+) -0", result["plan"]["summary"])
    assert first and int(first.group(1).replace(",", "")) > 1000
    # churn moved about 1% both ways; the plan never removes more than the baseline's leavers
    # (members without an e-mail were never sent, so they are not removed either)
    changes = re.search(r"members: \+([\d,]+) -([\d,]+)", result["replan"]["summary"])
    added, removed = (int(g.replace(",", "")) for g in changes.groups())
    base = result["baseline"]
    assert 0 < added <= base["entering"] and 0 < removed <= base["leaving"]
