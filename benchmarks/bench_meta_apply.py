"""Benchmark: apply N new members to the Meta fake (its own process, validating every row),
end to end — normalise, hash, batch, HTTP, journal, record — then 1% churn and re-apply.

Measures the `reconcile apply` child process (wall, CPU seconds user+sys from `os.wait4`,
peak RSS) and, in this process on the same data, the baseline written verbatim below: a
plain Python loop hashing every identifier value the apply sends.

    python benchmarks/bench_meta_apply.py --profiles 1000000        # on demand
    python benchmarks/bench_meta_apply.py --profiles 5000           # smoke size

Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from reconciler.sources import demo

_spec = importlib.util.spec_from_file_location(
    "bench_plan_apply", Path(__file__).with_name("bench_plan_apply.py")
)
assert _spec is not None and _spec.loader is not None
core = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(core)

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
ACCOUNT = "1234567890"
#: the segment `demo.churn` moves members in and out of
SEGMENT = core.SEGMENT_SQL


def baseline(values: list[str]) -> float:
    """Seconds for the plain loop over every identifier value the apply sends (verbatim)."""
    start = time.perf_counter()
    for v in values:
        hashlib.sha256(v.strip().lower().encode()).hexdigest()
    return time.perf_counter() - start


def workspace(root: Path, port: int, n: int, memory_limit: str) -> None:
    for d in ("segments", "activations", "integrations", "data"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "reconcile.yaml").write_text(
        "version: 1\ntimezone: UTC\nsource:\n  type: duckdb\n  path: data/profiles.duckdb\n"
        f"  threads: 2\n  memory_limit: {memory_limit}\n"
        "  profiles:\n    table: profiles\n    key: customer_id\n"
        "    identifiers: {email: email, phone: phone}\n"
        "    attributes: [first_name, country, total_spend, email_consent]\n"
        "    default_phone_country: AU\nstate:\n  path: .reconcile/state.duckdb\n  allow_ephemeral: true\n"
    )
    (root / "integrations" / "meta.yaml").write_text(
        "type: meta_custom_audiences\ncredentials:\n  access_token: ${env:META_TOKEN}\n"
        f"endpoint: http://127.0.0.1:{port}\nconfig:\n  ad_account_id: act_{ACCOUNT}\n"
        "  identifiers: [email, phone]\n  batch_size: 10000\n"
    )
    (root / "segments" / "everyone.yaml").write_text(f'sql: "{SEGMENT}"\n')
    (root / "activations" / "bench.yaml").write_text(
        "segments: [everyone]\ndestination: meta\nname: Benchmark\nmax_removal_share: 1\n"
    )
    demo.generate(root / "data" / "profiles.duckdb", n, as_of=core.AS_OF, threads=2)


def run(root: Path, *args: str) -> dict:
    r = core.measured(root, *args, env=os.environ | {"META_TOKEN": TOKEN})
    return {
        "wall": r["wall"],
        "cpu": r["cpu"],
        "rss_mib": r["rss"] / 2**20,
        # the apply's own lines: "<op>: N of M members sent in Xs (R/s)"
        "send_phases": [
            line.strip()
            for line in (root / "child.err").read_text().splitlines()
            if " sent in " in line
        ],
        "summary": next((line for line in r["output"].splitlines() if ": Complete" in line), ""),
    }


def sent_values(root: Path) -> list[str]:
    """Every identifier value the apply sends: e-mail and phone of the segment's members."""
    con = duckdb.connect(str(root / "data" / "profiles.duckdb"), read_only=True)
    try:
        rows = con.execute(
            f"SELECT email, phone FROM profiles WHERE customer_id IN ({SEGMENT})"
        ).fetchall()
    finally:
        con.close()
    return [v for row in rows for v in row if v]


def churn(root: Path, share: float) -> None:
    demo.churn(root / "data" / "profiles.duckdb", share, seed=11)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument(
        "--memory-limit",
        default=core.MEMORY_LIMIT,
        help="the workspace's source.memory_limit (DuckDB's; the sandbox benchmark's setting)",
    )
    args = parser.parse_args(argv)
    core.compile_package()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        fake = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.meta", "--token", TOKEN, "--account", ACCOUNT],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            line = fake.stdout.readline() if fake.stdout else ""
            port = int(line.rsplit(":", 1)[1])
            workspace(root, port, args.profiles, args.memory_limit)
            values = sent_values(root)
            base = statistics.median(baseline(values) for _ in range(3))  # a shared machine
            first = run(root, "apply", "--auto-approve")
            members = int(first["summary"].split("+")[1].split()[0].replace(",", ""))
            churn(root, 0.01)
            again = run(root, "apply", "--auto-approve")
        finally:
            fake.terminate()
            fake.wait()
            if fake.stdout:
                fake.stdout.close()
    per_member_cpu = first["cpu"] / max(members, 1)
    per_value_base = base / max(len(values), 1)
    report = {
        "profiles": args.profiles,
        "memory_limit": args.memory_limit,
        "members": members,
        "values_hashed_by_baseline": len(values),
        "first_apply": first,
        "reapply_after_1pct_churn": again,
        "baseline_seconds": base,
        "members_per_second_wall": members / first["wall"],
        "cpu_us_per_member": per_member_cpu * 1e6,
        "baseline_us_per_value": per_value_base * 1e6,
        "cpu_per_member_over_baseline_per_member": per_member_cpu
        / max(base / max(members, 1), 1e-12),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
