"""Attribute values Arrow cannot carry as they are go to the destination as their exact text:
a 128-bit integer (Arrow's 38-digit decimal wrapped the largest to a negative number, and the
sandbox's write failed on it) and a time with its offset (Arrow dropped the offset, so two
different times arrived the same)."""

from __future__ import annotations

import json

from tests.conftest import RECONCILE_YAML, SANDBOX_YAML, cli, profile
from tests.duckfiles import query

ACT = "segments: [seg-a]\ndestination: sandbox\nname: Wide\nattributes: [BIG, HUGE, AT, SEEN]\n"
MAPPING = "attributes:\n  BIG: big\n  HUGE: huge\n  AT: at_tz\n  SEEN: seen\n"


def test_wide_integers_and_times_with_offsets_arrive_as_their_text(workspace) -> None:
    ws = workspace(
        {"act": ACT},
        profiles=[profile(i, a=True) for i in range(3)],
        integration=SANDBOX_YAML.replace("attributes:\n", MAPPING),
        reconcile_yaml=RECONCILE_YAML.replace(
            "seg_a, seg_b]", "seg_a, seg_b, big, huge, at_tz, seen]"
        ),
    )
    ws.alter_profiles(
        "ALTER TABLE profiles ADD COLUMN big UHUGEINT",
        "ALTER TABLE profiles ADD COLUMN huge HUGEINT",
        "ALTER TABLE profiles ADD COLUMN at_tz TIMETZ",
        "ALTER TABLE profiles ADD COLUMN seen TIMESTAMPTZ",
        "UPDATE profiles SET big = CASE customer_id WHEN 'c00000' THEN "
        "'340282366920938463463374607431768211455'::UHUGEINT WHEN 'c00001' THEN "
        "'170141183460469231731687303715884105728'::UHUGEINT ELSE 5 END",
        "UPDATE profiles SET huge = -170141183460469231731687303715884105728",
        "UPDATE profiles SET at_tz = CASE customer_id WHEN 'c00000' THEN TIMETZ '12:00:00+05' "
        "ELSE TIMETZ '12:00:00-03:30' END",
        "UPDATE profiles SET seen = TIMESTAMPTZ '2024-06-30 00:00:00+00'",
    )
    applied = cli(ws, "apply", "--auto-approve")
    assert applied.exit_code == 0, applied.output + applied.stderr
    rows = query(
        ws.root / ".reconcile" / "sandbox.duckdb", "SELECT attributes FROM members ORDER BY 1"
    )
    got = sorted((json.loads(r[0]) for r in rows), key=lambda a: a["BIG"])
    assert [a["BIG"] for a in got] == [
        "170141183460469231731687303715884105728",
        "340282366920938463463374607431768211455",
        "5",
    ]
    assert {a["HUGE"] for a in got} == {"-170141183460469231731687303715884105728"}
    assert sorted(a["AT"] for a in got) == ["12:00:00+05", "12:00:00-03:30", "12:00:00-03:30"]
    assert {a["SEEN"] for a in got} == {"2024-06-30T00:00:00+00"}
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0
