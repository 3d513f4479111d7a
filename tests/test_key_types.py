"""A segment's keys are read as the profiles table's key column writes them: a number key
column (a DOUBLE one loaded through pandas, an INTEGER one) matches a segment returning the
same numbers in another type, and a value the key's type would only hold rounded matches no
profile (never a neighbour's)."""

from __future__ import annotations

import pytest

from tests.conftest import audience_counts, cli, plan_json, profile

ACT = "segments: [seg-a]\ndestination: sandbox\nname: Keys\n"


@pytest.mark.parametrize(
    "key_type,segment",
    [
        # an order table's BIGINT ids against a DOUBLE key ("1.0")
        ("DOUBLE", "SELECT CAST(customer_id AS BIGINT) FROM profiles WHERE seg_a"),
        # zero-padded text against an INTEGER key
        ("INTEGER", "SELECT lpad(CAST(customer_id AS VARCHAR), 6, '0') FROM profiles WHERE seg_a"),
        ("DECIMAL(10,2)", "SELECT CAST(customer_id AS INTEGER) FROM profiles WHERE seg_a"),
    ],
)
def test_a_segment_of_another_type_finds_its_number_keys(workspace, key_type, segment):
    ws = workspace({"act": ACT}, profiles=[profile(i, a=i <= 3) for i in range(1, 6)])
    ws.alter_profiles(
        f"ALTER TABLE profiles ALTER customer_id TYPE {key_type} "
        f"USING CAST(customer_id[2:] AS {key_type})"
    )
    ws.write("segments/seg-a.yaml", f"sql: {segment}\n")
    plan = plan_json(ws)
    (act,) = plan["activations"]
    assert not act["warnings"], act["warnings"]
    assert audience_counts(plan, "act") == {"all": (3, 0, 0)}
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0  # no changes


@pytest.mark.parametrize(
    "key_type,segment",
    [
        ("INTEGER", "SELECT 1.6 AS k UNION ALL SELECT 3.0"),  # 1.6 is not the key 2
        ("DECIMAL(10,2)", "SELECT 0.995 AS k UNION ALL SELECT 3"),  # 0.995 is not 1.00
    ],
)
def test_a_value_the_key_type_would_round_is_no_key(workspace, key_type, segment):
    """A value the key's type holds only rounded matches no profile, never a neighbour's;
    the same number in another type (3.0, 3) is its profile's key."""
    ws = workspace({"act": ACT}, profiles=[profile(i) for i in range(1, 4)])
    ws.alter_profiles(
        f"ALTER TABLE profiles ALTER customer_id TYPE {key_type} "
        f"USING CAST(customer_id[2:] AS {key_type})"
    )
    ws.write("segments/seg-a.yaml", f"sql: {segment}\n")
    plan = plan_json(ws)
    assert audience_counts(plan, "act") == {"all": (1, 0, 0)}  # 3 only


def test_a_single_precision_key_is_refused_by_name(workspace):
    """A FLOAT key holds about 7 digits: keys above 2^24 are rounded into each other."""
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(1, 3)])
    ws.alter_profiles(
        "ALTER TABLE profiles ALTER customer_id TYPE FLOAT USING CAST(customer_id[2:] AS FLOAT)"
    )
    res = cli(ws, "plan")
    assert res.exit_code == 1, res.output
    text = res.output + res.stderr
    assert "source.profiles.key" in text and "is REAL (about 7 significant digits)" in text, text
