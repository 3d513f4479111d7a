"""`validate` binds segment SQL, consent conditions and freshness_sql against the source's
tables: a missing table or column fails in `validate`, naming file:line: field, together with
the schema and reference problems, in every --format; a source that does not exist yet is a
warning."""

from __future__ import annotations

import json

import pytest

from tests.conftest import RECONCILE_YAML, SANDBOX_YAML, SEGMENTS, cli, profile

ACT = "segments: [seg-a]\ndestination: sandbox\n"
MISSING_COLUMN = """\
description: reads a column the profiles table does not have
sql: |
  SELECT customer_id
  FROM profiles
  WHERE loyalty_tier = 'gold'
"""


def _problems(ws, *args):
    res = cli(ws, "validate", "--format", "json", *args)
    return res, json.loads(res.output)


def test_a_segment_reading_a_missing_column_fails_validate_at_its_line(workspace):
    ws = workspace({"act": ACT}, segments={**SEGMENTS, "gold": MISSING_COLUMN})
    res = cli(ws, "validate")
    assert res.exit_code == 1
    line = next(x.strip() for x in res.stderr.splitlines() if "gold.yaml" in x)
    assert line.startswith("segments/gold.yaml:5: sql: segment 'gold' does not run against the")
    assert 'Referenced column "loyalty_tier" not found' in line
    assert "\n" not in line and "LINE" not in line  # one line, no engine excerpt
    # the same segment is fine once the column exists: nothing else was wrong
    ws.write("segments/gold.yaml", MISSING_COLUMN.replace("loyalty_tier", "country"))
    assert cli(ws, "validate").exit_code == 0


def test_a_declared_table_that_does_not_exist_fails_validate(workspace):
    config = RECONCILE_YAML.replace(
        "  path: data/profiles.duckdb\n", "  path: data/profiles.duckdb\n  tables: [orders]\n"
    )
    segment = "sql: SELECT customer_id FROM orders WHERE total > 100\n"
    ws = workspace({"act": ACT}, segments={**SEGMENTS, "big": segment}, reconcile_yaml=config)
    res, doc = _problems(ws)
    assert res.exit_code == 1 and doc["valid"] is False
    (p,) = doc["problems"]
    assert (p["file"], p["line"], p["field"]) == ("segments/big.yaml", 1, "sql")
    assert "Table with name orders does not exist" in p["message"]


def test_a_consent_condition_over_a_missing_column_fails_validate(workspace):
    integration = SANDBOX_YAML.replace("consent: email_consent", "consent: sms_consent AND TRUE")
    ws = workspace({"act": ACT}, integration=integration)
    res, doc = _problems(ws)
    assert res.exit_code == 1
    (p,) = doc["problems"]
    assert (p["file"], p["line"], p["field"]) == ("integrations/sandbox.yaml", 2, "consent")
    assert p["message"].startswith("the consent condition does not run against the profiles")
    assert "sms_consent" in p["message"]


def test_a_segment_returning_two_columns_fails_validate(workspace):
    two = "sql: SELECT customer_id, email FROM profiles\n"
    ws = workspace({"act": ACT}, segments={**SEGMENTS, "two": two})
    res, doc = _problems(ws)
    (p,) = doc["problems"]
    assert p["file"] == "segments/two.yaml" and "exactly one column" in p["message"]
    assert "['customer_id', 'email']" in p["message"]


def test_freshness_sql_and_the_profiles_contract_are_checked(workspace):
    config = RECONCILE_YAML.replace(
        "    default_phone_country: AU\n",
        "    default_phone_country: AU\n  freshness_sql: SELECT max(updated_at) FROM profiles\n",
    )
    ws = workspace({"act": ACT}, reconcile_yaml=config)
    res, doc = _problems(ws)
    (p,) = doc["problems"]
    assert (p["file"], p["field"]) == ("reconcile.yaml", "source.freshness_sql")
    assert "updated_at" in p["message"]
    # a declared attribute column the table lacks: named at its line in reconcile.yaml
    config = RECONCILE_YAML.replace("email_consent, seg_a", "email_consent, tier, seg_a")
    ws.write("reconcile.yaml", config)
    res, doc = _problems(ws)
    (p,) = doc["problems"]
    assert (p["file"], p["line"], p["field"]) == (
        "reconcile.yaml",
        10,
        "source.profiles.attributes.4",
    )
    assert "has no column(s) ['tier']" in p["message"]


def test_catalog_and_schema_problems_are_reported_together_sorted(workspace):
    ws = workspace(
        {"b-act": ACT + "bogus: 1\n", "a-act": "segments: [nope]\ndestination: sandbox\n"},
        segments={**SEGMENTS, "gold": MISSING_COLUMN},
    )
    res, doc = _problems(ws)
    assert [(p["file"], p["line"]) for p in doc["problems"]] == [
        ("activations/a-act.yaml", 1),
        ("activations/b-act.yaml", 3),
        ("segments/gold.yaml", 5),
    ]
    gh = cli(ws, "validate", "--format", "github")
    assert gh.exit_code == 1
    lines = gh.output.splitlines()
    assert len(lines) == 3 and all(x.startswith("::error file=") for x in lines)
    assert lines[2].startswith(
        "::error file=segments/gold.yaml,line=5,title=reconcile validate::sql: "
    )
    text = cli(ws, "validate")
    listed = [x.strip() for x in text.stderr.splitlines()[1:]]
    assert [x.split(":")[0] for x in listed] == [
        "activations/a-act.yaml",
        "activations/b-act.yaml",
        "segments/gold.yaml",
    ]


def test_a_source_that_does_not_exist_yet_is_one_warning(workspace):
    ws = workspace({"act": ACT}, segments={**SEGMENTS, "gold": MISSING_COLUMN})
    ws.db.unlink()
    before = sorted(p.relative_to(ws.root) for p in ws.root.rglob("*"))
    text = cli(ws, "validate")
    assert text.exit_code == 0, text.stderr
    warnings = [x for x in text.stderr.splitlines() if x.startswith("Warning:")]
    assert warnings == [
        "Warning: reconcile.yaml:5: source.path: the source database data/profiles.duckdb does "
        "not exist yet (check `source.path`), so segment SQL and consent conditions were not "
        "checked against its tables"
    ]
    assert text.output.startswith("Valid: 1 activation(s)")
    res, doc = _problems(ws)
    assert res.exit_code == 0 and doc["valid"] is True and len(doc["warnings"]) == 1
    assert doc["warnings"][0]["field"] == "source.path"
    gh = cli(ws, "validate", "--format", "github")
    assert gh.exit_code == 0
    assert gh.output.splitlines()[0].startswith("::warning file=reconcile.yaml,line=5,")
    # validate created nothing (no demo data, no state, no temp files)
    assert sorted(p.relative_to(ws.root) for p in ws.root.rglob("*")) == before


def test_validate_reads_the_source_without_changing_it(workspace):
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(3)])
    stamp = ws.db.stat().st_mtime_ns, ws.db.read_bytes()
    assert cli(ws, "validate").exit_code == 0
    assert (ws.db.stat().st_mtime_ns, ws.db.read_bytes()) == stamp
    assert not (ws.root / ".reconcile" / "state.duckdb").exists()


def test_plan_agrees_a_segment_that_validate_refuses_does_not_run(workspace):
    ws = workspace(
        {"act": "segments: [gold]\ndestination: sandbox\n"},
        segments={**SEGMENTS, "gold": MISSING_COLUMN},
    )
    assert cli(ws, "validate").exit_code == 1
    res = cli(ws, "plan", "--refresh=false")
    assert res.exit_code == 1 and "loyalty_tier" in res.stderr


def test_sql_the_guard_refuses_is_reported_once(workspace):
    ws = workspace(
        {"act": ACT}, segments={**SEGMENTS, "odd": "sql: SELECT customer_id FROM secrets\n"}
    )
    res, doc = _problems(ws)
    (p,) = doc["problems"]
    assert p["file"] == "segments/odd.yaml" and "is not allowed in segment SQL" in p["message"]


def test_no_workspace_is_one_problem_in_the_format_asked_for(tmp_path):
    from click.testing import CliRunner

    from reconciler.cli.main import main

    res = CliRunner().invoke(main, ["-C", str(tmp_path), "validate", "--format", "json"])
    assert res.exit_code == 1
    (p,) = json.loads(res.stdout)["problems"]
    assert p["file"] is None and p["message"].startswith("no reconcile.yaml in ")
    gh = CliRunner().invoke(main, ["-C", str(tmp_path), "validate", "--format", "github"])
    assert gh.exit_code == 1 and gh.stdout.startswith("::error title=reconcile validate::no ")


def test_a_profile_key_that_is_an_identifier_column_is_a_warning(workspace):
    """Keys are kept in the state, run logs and saved plans: keyed by the e-mail column, they
    would hold raw e-mail addresses (which the docs promise they never do), without a word."""
    ws = workspace(
        {"act": ACT},
        segments={**SEGMENTS, "seg-a": "sql: SELECT email FROM profiles WHERE seg_a\n"},
        reconcile_yaml=RECONCILE_YAML.replace("key: customer_id", "key: email"),
        profiles=[profile(i, a=True) for i in range(3)],
    )
    for args in (["validate"], ["plan"]):
        res = cli(ws, *args)
        assert res.exit_code == 0, res.output + res.stderr
        assert (
            "source.profiles.key: the profile key 'email' is also the email identifier column"
            in res.stderr
        ), res.stderr
    clean = workspace({"act": ACT}, profiles=[profile(1, a=True)])
    assert "is also the" not in cli(clean, "validate").stderr


@pytest.mark.parametrize(
    ("data_type", "dialect", "hint"),
    [
        ("JSON", "duckdb", "(col ->> '$')"),
        ("VARCHAR[]", "duckdb", "(col[1])"),
        ("STRUCT(a VARCHAR)", "duckdb", "(col.<field>)"),
        ("BLOB", "duckdb", "decode(col)"),
        ("bytea", "postgres", "convert_from(col, 'UTF8')"),
        ("ARRAY", "postgres", "(col[1])"),
    ],
)
def test_an_identifier_column_that_is_not_text_gets_a_hint_for_its_type(data_type, dialect, hint):
    """The hint named JSON's and a list's extraction for every type, a BLOB's included."""
    from reconciler.errors import SourceError
    from reconciler.sources.identifier_columns import check_identifier_columns
    from reconciler.workspace.spec import ProfilesTable

    profiles = ProfilesTable(table="p", key="k", identifiers={"email": "col"})
    with pytest.raises(SourceError) as err:
        check_identifier_columns(profiles, {"col": data_type}, lambda *a: "x", dialect)
    assert hint in str(err.value), str(err.value)


def test_an_offset_for_a_timezone_is_refused_in_words(workspace):
    """YAML reads an unquoted +10:00 as 600: the message said "Input should be a valid
    string (got 600)"."""
    ws = workspace(
        {"act": ACT}, reconcile_yaml=RECONCILE_YAML.replace("timezone: UTC", "timezone: +10:00")
    )
    res = cli(ws, "validate")
    assert res.exit_code == 1
    assert "timezone: a number (600) is not a time zone; write an IANA name" in res.stderr


def test_a_declared_table_the_source_lacks_is_a_warning(workspace):
    yaml = RECONCILE_YAML.replace(
        "  path: data/profiles.duckdb\n", "  path: data/profiles.duckdb\n  tables: [ordres]\n"
    )
    ws = workspace({"act": ACT}, reconcile_yaml=yaml, profiles=[profile(1, a=True)])
    res = cli(ws, "validate")
    assert res.exit_code == 0, res.stderr
    assert "source.tables.0: 'ordres' is not a table or view of the source" in res.stderr


def test_a_source_file_that_is_not_duckdb_is_refused_without_fetching_a_reader(workspace):
    """A SQLite file as `source.path`: the engine auto-detected it and tried to download its
    SQLite extension from the network, during `validate --offline` too."""
    import sqlite3

    ws = workspace({"act": ACT}, profiles=[profile(1, a=True)])
    db = ws.root / "data" / "profiles.duckdb"
    db.unlink()
    with sqlite3.connect(db) as lite:
        lite.execute("CREATE TABLE profiles (customer_id TEXT)")
    for args in (("validate",), ("plan", "--refresh=false")):
        res = cli(ws, *args)
        assert res.exit_code == 1, res.output
        assert "not a valid DuckDB database file" in res.stderr, res.stderr
        assert "extension" not in res.stderr.lower(), res.stderr
