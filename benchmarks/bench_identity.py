"""Python vs DuckDB SQL: seconds per million values to normalise and hash identifiers.

    python benchmarks/bench_identity.py [--values 1000000] [--country AU]

Prints one line per case (e-mail, phone, the sandbox's records of a member, Meta's records
of a member). Not a test: no assertion on time.
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
import time
from pathlib import Path

import duckdb

from destinations.identity import META, SANDBOX, NormaliseContext, records
from destinations.identity.sql import records_sql

_FIRST = ["Jane", "John", "Anne-Marie", "José", "Li", "O'Neil"]


def _members(n: int, seed: int = 7) -> list[dict[str, str | None]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        out.append(
            {
                "email": f" User{i}.{rnd.randint(0, 99)}@Example.com "
                if rnd.random() < 0.95
                else "n/a",
                "phone": f"04{rnd.randint(10, 99)} {rnd.randint(100, 999)} {rnd.randint(100, 999)}"
                if rnd.random() < 0.7
                else None,
                "first_name": rnd.choice(_FIRST),
                "last_name": f"Smith{i % 97}",
                "date_of_birth": f"19{rnd.randint(40, 99)}-{rnd.randint(1, 12)}-{rnd.randint(1, 28)}",
                "country": "AU",
                "postal_code": str(rnd.randint(2000, 7999)),
            }
        )
    return out


def _python(members, accepted, rules, country) -> float:  # type: ignore[no-untyped-def]
    context = NormaliseContext(country)
    start = time.perf_counter()
    for member in members:
        records(member, accepted, rules, context)
    return time.perf_counter() - start


def _sql(con, accepted, rules, country) -> float:  # type: ignore[no-untyped-def]
    sql = records_sql(accepted, rules, {n: n for n in accepted}, country)
    start = time.perf_counter()
    con.execute(f"SELECT count(*), sum(len({sql})) FROM m").fetchall()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> list[dict[str, float | str]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--values", type=int, default=1_000_000)
    parser.add_argument("--country", default="AU")
    args = parser.parse_args(argv)
    members = _members(args.values)
    columns = list(members[0])
    con = duckdb.connect()
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "members.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows([m[c] for c in columns] for m in members)
        con.execute(
            "CREATE TABLE m AS SELECT * FROM read_csv(?, all_varchar = true, header = true)",
            [str(path)],
        )
    results = []
    scale = 1_000_000 / args.values
    for label, accepted, rules in (
        ("email (sandbox)", ("email",), SANDBOX),
        ("phone (sandbox)", ("phone",), SANDBOX),
        ("email+phone (sandbox)", ("email", "phone"), SANDBOX),
        ("meta, 7 types", tuple(columns), META),
    ):
        py = _python(members, accepted, rules, args.country) * scale
        sq = _sql(con, accepted, rules, args.country) * scale
        results.append({"case": label, "python_s_per_million": py, "sql_s_per_million": sq})
        print(f"{label:24} python {py:6.2f} s/M   duckdb {sq:6.2f} s/M")
    return results


if __name__ == "__main__":
    main()
