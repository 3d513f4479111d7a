"""Bad input through the CLI: every case is one clear ``Error: ...`` paragraph on stderr naming
the file, line and field, exit code 1, and nothing written (no state, nothing in the sandbox,
no staging files left behind). ``validate`` reports every problem at once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import click
import duckdb
import pytest
from click.testing import CliRunner

from reconciler.cli.common import handle_errors
from tests.conftest import RECONCILE_YAML, SANDBOX_YAML, SEGMENTS, WS, cli, profile

MAINTAIN = """\
segments: [seg-a]
destination: sandbox
name: Audience A
attributes: [FIRST_NAME]
"""
ROWS = [profile(i, a=i < 4, b=i % 2 == 0) for i in range(8)]


def fails(ws: WS, *args: str) -> str:
    """Run a command that must fail cleanly; return its stderr."""
    res = cli(ws, *args)
    assert res.exit_code == 1, res.output + res.stderr
    err = res.stderr
    assert err.startswith("Error: "), err
    assert "Traceback" not in err and "\n\n" not in err.strip(), err
    return err


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def assert_nothing_written(ws: WS) -> None:
    dot = ws.root / ".reconcile"
    assert not (dot / "state.duckdb").exists()
    assert not (dot / "sandbox.duckdb").exists()
    # a failed apply may leave the (empty, released) lock file; nothing else
    left = [f for f in files_under(dot) if f != "state.lock"] if dot.exists() else []
    assert left == []
    if (dot / "state.lock").exists():
        assert (dot / "state.lock").read_text() == ""


def seg(sql_yaml: str) -> dict[str, str]:
    """Segment seg-a replaced (for the ``workspace`` fixture's ``segments=``)."""
    return {"seg-a": sql_yaml, "seg-b": SEGMENTS["seg-b"]}


def seg_file(sql_yaml: str) -> dict[str, str]:
    """Segment seg-a replaced (as files to write)."""
    return {"segments/seg-a.yaml": sql_yaml}


# ---------------------------------------------------------------------- static problems
# (files to write, what stderr must contain). Each is caught by `validate` and refused by
# `plan` and `apply` before anything is opened.
STATIC = [
    pytest.param(
        {"activations/act.yaml": "segments: [seg-a\ndestination: sandbox\n"},
        ["activations/act.yaml:2: malformed YAML: expected ',' or ']'"],
        id="malformed-yaml",
    ),
    pytest.param(
        {"activations/act.yaml": "segments: [seg-a]\n  destination: sandbox\n"},
        ["activations/act.yaml:2: malformed YAML"],
        id="bad-indentation",
    ),
    pytest.param(
        {"activations/act.yaml": "segments: [seg-a]\n\tdestination: sandbox\n"},
        ["activations/act.yaml:2: malformed YAML: found character '\\t'"],
        id="tab",
    ),
    pytest.param(
        {"activations/act.yaml": "- seg-a\n- seg-b\n"},
        ["activations/act.yaml:1: the file must hold a mapping of fields"],
        id="not-a-mapping",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "colour: red\n"},
        ["activations/act.yaml:5: colour: unknown field (not part of the format"],
        id="unknown-field",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "list: {create: true, colour: red}\n"},
        ["activations/act.yaml:5: list.colour: unknown field"],
        id="unknown-nested-field",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "paused: maybe\n"},
        ["activations/act.yaml:5: paused: Input should be a valid boolean", "(got 'maybe')"],
        id="wrong-type-bool",
    ),
    pytest.param(
        {"activations/act.yaml": "segments: seg-a\ndestination: sandbox\n"},
        ["activations/act.yaml:1: segments: Input should be a valid list (got 'seg-a')"],
        id="wrong-type-list",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "list: {existing: 5}\n"},
        [
            "activations/act.yaml:5: list.existing: Input should be a valid string or a valid "
            "dictionary (got 5)"
        ],
        id="wrong-type-union",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "frequency: weekly\n"},
        ["activations/act.yaml:5: frequency: Input should be 'daily' or 'once' (got 'weekly')"],
        id="wrong-enum",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "split: control\ncontrol_percent: 80\n"},
        ["activations/act.yaml:6: control_percent: Input should be less than or equal to 50"],
        id="out-of-range",
    ),
    pytest.param(
        {"activations/act.yaml": "destination: sandbox\n"},
        ["activations/act.yaml:1: segments: required field is missing"],
        id="missing-field",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "action: remove\n"},
        ["activations/act.yaml:5: action: `action: remove` needs `list: {existing:"],
        id="rule-across-fields",
    ),
    pytest.param(
        {"activations/act.yaml": "segments:\n  - seg-a\n  - nope\ndestination: sandbox\n"},
        ["activations/act.yaml:3: segments.1: unknown segment 'nope' (known: seg-a, seg-b)"],
        id="unknown-segment",
    ),
    pytest.param(
        {"activations/act.yaml": "segments: [seg-a]\ndestination: nope\n"},
        ["activations/act.yaml:2: destination: unknown integration 'nope' (known: sandbox)"],
        id="unknown-integration",
    ),
    pytest.param(
        {"reconcile.yaml": RECONCILE_YAML.replace("suppression: []", "suppression: [nope]")},
        ["reconcile.yaml:14: suppression.0: unknown segment 'nope' (known: seg-a, seg-b)"],
        id="unknown-suppression-segment",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN.replace("[FIRST_NAME]", "[FIRST_NAME, EMAIL]")},
        [
            "activations/act.yaml:4: attributes.1: attribute 'EMAIL' is not in the mapping of "
            "integration 'sandbox' (allowed: ['COUNTRY', 'FIRST_NAME'])"
        ],
        id="attribute-not-in-mapping",
    ),
    pytest.param(
        {"integrations/sandbox.yaml": SANDBOX_YAML.replace("COUNTRY: country", "COUNTRY: nope")},
        [
            "integrations/sandbox.yaml:5: attributes.COUNTRY: maps to 'nope', which is not an "
            "attribute column of the profiles table"
        ],
        id="mapping-to-undeclared-column",
    ),
    pytest.param(
        {"integrations/sandbox.yaml": SANDBOX_YAML.replace("type: sandbox", "type: nope")},
        [
            "integrations/sandbox.yaml:1: type: unknown destination type 'nope'; available: ",
            "sandbox",
        ],
        id="unknown-destination-type",
    ),
    pytest.param(
        {"integrations/sandbox.yaml": SANDBOX_YAML + "  colour: red\n"},
        ["integrations/sandbox.yaml:10: config.colour: unknown field"],
        id="unknown-config-key",
    ),
    pytest.param(
        {"integrations/sandbox.yaml": SANDBOX_YAML.replace("batch_size: 7", "batch_size: lots")},
        [
            "integrations/sandbox.yaml:9: config.batch_size: Input should be a valid integer",
            "(got 'lots')",
        ],
        id="wrong-config-type",
    ),
    pytest.param(
        {"integrations/sandbox.yaml": SANDBOX_YAML + "credentials:\n  token: sk_live_SECRET\n"},
        [
            "integrations/sandbox.yaml:11: credentials.token: credential 'token' must be an "
            "${env:VAR} reference, never a literal secret"
        ],
        id="literal-credential",
    ),
    pytest.param(
        {
            "integrations/sandbox.yaml": SANDBOX_YAML.replace(
                "consent: email_consent", "consent: 'true; DROP TABLE profiles'"
            )
        },
        [
            "integrations/sandbox.yaml:2: consent: the consent condition must be one true/false "
            "SQL condition over the profiles columns"
        ],
        id="consent-not-a-condition",
    ),
    pytest.param(
        {
            "integrations/sandbox.yaml": SANDBOX_YAML.replace(
                "consent: email_consent",
                "consent: customer_id IN (SELECT key FROM __reconcile_state.members)",
            )
        },
        [
            "integrations/sandbox.yaml:2: consent: the consent condition must be one true/false ",
            "(segment SQL may not read the engine's '__reconcile_state' tables)",
        ],
        id="consent-reads-internal-catalog",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "destination: other\n"},
        ["activations/act.yaml:5: destination: duplicate key 'destination'"],
        id="duplicate-key",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "list:\n  create: true\n  create: true\n"},
        ["activations/act.yaml:7: list.create: duplicate key 'create'"],
        id="duplicate-nested-key",
    ),
    pytest.param(
        {"activations/act.yaml": "segments: &s [seg-a, *s]\ndestination: sandbox\n"},
        ["activations/act.yaml:1: segments.1: a YAML alias refers to its own anchor"],
        id="recursive-alias",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "paused: !!python/object/apply:os.system [ls]\n"},
        [
            "activations/act.yaml:5: paused: unsupported YAML tag "
            "'tag:yaml.org,2002:python/object/apply:os.system'"
        ],
        id="python-tag-on-a-list",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "moved_from: !!python/name:os.system ''\n"},
        [
            "activations/act.yaml:5: moved_from: unsupported YAML tag "
            "'tag:yaml.org,2002:python/name:os.system'"
        ],
        id="python-tag",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "moved_from: !custom old\n"},
        ["activations/act.yaml:5: moved_from: unsupported YAML tag '!custom'; remove it"],
        id="custom-tag",
    ),
    pytest.param(
        {
            "activations/act.yaml": "base: &base {destination: sandbox}\n<<: *base\n"
            "segments: [seg-a]\n"
        },
        ["activations/act.yaml:2: YAML merge keys (<<) are not supported"],
        id="merge-key",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "true: 1\n"},
        ["activations/act.yaml:5: a key must be text, but YAML reads this one as True"],
        id="yaml-1.1-boolean-key",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "~: 1\n"},
        ["activations/act.yaml:5: a key must be text, but YAML reads this one as null"],
        id="null-key",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "[a, b]: 1\n"},
        ["activations/act.yaml:5: a key must be text, but YAML reads this one as a list"],
        id="list-key",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "notify: [ops@example.com]\n"},
        ["activations/act.yaml:5: notify: e-mail notifications need a mail server"],
        id="notify-email-without-smtp",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "append_to_profiles: true\n"},
        [
            "activations/act.yaml:5: append_to_profiles: `append_to_profiles` writes the "
            "activation name into the source (table included_in_audience), but the source is "
            "read-only: set `source.writable: true`"
        ],
        id="append-to-profiles-without-writable-source",
    ),
    pytest.param(
        {
            "activations/act.yaml": MAINTAIN.replace("attributes: [FIRST_NAME]\n", "")
            + "goal: sync_attributes\n"
        },
        [
            "activations/act.yaml:4: goal: `goal: sync_attributes` needs at least one attribute: "
            "list the destination fields to sync under `attributes` (integration 'sandbox' maps: "
            "COUNTRY, FIRST_NAME)"
        ],
        id="goal-sync-attributes-without-attributes",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "goal: export_data\n"},
        [
            "activations/act.yaml:5: goal: `goal: export_data` writes files, but destination "
            "'sandbox' does not; use an integration of a type that does (`type: files`)"
        ],
        id="goal-export-data-needs-a-files-destination",
    ),
    pytest.param(
        {"reconcile.yaml": RECONCILE_YAML.replace("type: duckdb", "type: mysql")},
        [
            "reconcile.yaml:4: source.type: unknown value 'mysql'; expected one of 'duckdb', "
            "'postgres'"
        ],
        id="unknown-source-type",
    ),
    pytest.param(  # the state's union member ("embedded") is no key of the file
        {
            "reconcile.yaml": RECONCILE_YAML.replace(
                "{path: .reconcile/state.duckdb,", "{bogus_state: 1, path: .reconcile/state.duckdb,"
            )
        },
        ["reconcile.yaml:13: state.bogus_state: unknown field"],
        id="unknown-state-key",
    ),
    pytest.param(
        {"reconcile.yaml": RECONCILE_YAML.replace("timezone: UTC", "timezone: Mars/Olympus")},
        ["reconcile.yaml:2: timezone: unknown timezone 'Mars/Olympus'"],
        id="unknown-timezone",
    ),
    pytest.param(  # the machine's own zone: a laptop and a CI runner would read values apart
        {"reconcile.yaml": RECONCILE_YAML.replace("timezone: UTC", "timezone: localtime")},
        ["reconcile.yaml:2: timezone: unknown timezone 'localtime'"],
        id="localtime-timezone",
    ),
    pytest.param(
        {"activations/VIP Meta.yaml": MAINTAIN},
        ["activations/VIP Meta.yaml:1: file name 'VIP Meta.yaml' is not a valid activation id"],
        id="file-name-not-an-id",
    ),
    pytest.param(
        {"activations/act.yml": MAINTAIN},
        ["activations/act.yml: two files define the activation 'act'"],
        id="yaml-and-yml-same-id",
    ),
    # segment SQL: checked statically (sqlglot) before anything runs
    pytest.param(
        seg_file("sql: SELECT customer_id FROM profiles; DROP TABLE profiles\n"),
        ["segments/seg-a.yaml:1: sql: segment 'seg-a': expected one SELECT statement, found 2"],
        id="sql-two-statements",
    ),
    pytest.param(
        seg_file("sql: DELETE FROM profiles\n"),
        ["segments/seg-a.yaml:1: sql: segment 'seg-a': only a SELECT is allowed, found DELETE"],
        id="sql-delete",
    ),
    pytest.param(
        seg_file("sql: ATTACH '/tmp/other.db' AS other\n"),
        ["segments/seg-a.yaml:1: sql: segment 'seg-a': only a SELECT is allowed, found ATTACH"],
        id="sql-attach",
    ),
    pytest.param(
        seg_file("sql: ''\n"),
        ["segments/seg-a.yaml:1: sql: segment 'seg-a': expected one SELECT statement, found 0"],
        id="sql-empty",
    ),
    pytest.param(
        seg_file("description: broken\nsql: |\n  SELECT customer_id\n  FROM profiles WHERE (\n"),
        ["segments/seg-a.yaml:4: sql: segment 'seg-a': SQL does not parse (SQL line 2"],
        id="sql-parse-error-line",
    ),
    pytest.param(
        seg_file("sql: SELECT * FROM read_csv('/etc/passwd')\n"),
        [
            "segments/seg-a.yaml:1: sql: segment 'seg-a': table functions are not allowed in "
            "segment SQL (found 'read_csv')"
        ],
        id="sql-table-function",
    ),
    pytest.param(
        seg_file(
            "sql: SELECT customer_id FROM profiles WHERE customer_id IN "
            "(SELECT column0 FROM read_csv('/etc/passwd'))\n"
        ),
        ["segments/seg-a.yaml:1: sql: segment 'seg-a': table functions are not allowed"],
        id="sql-table-function-in-subquery",
    ),
    pytest.param(
        seg_file("sql: SELECT * FROM '/etc/passwd'\n"),
        [
            "segments/seg-a.yaml:1: sql: segment 'seg-a': reading files is not allowed in segment "
            "SQL (found '/etc/passwd')"
        ],
        id="sql-file-as-table",
    ),
    pytest.param(
        seg_file("sql: SELECT key FROM __reconcile_state.members\n"),
        [
            "segments/seg-a.yaml:1: sql: segment 'seg-a': segment SQL may not read the engine's "
            "'__reconcile_state' tables"
        ],
        id="sql-internal-catalog",
    ),
    pytest.param(
        seg_file(
            "sql: SELECT customer_id FROM profiles WHERE customer_id NOT IN "
            '(SELECT key FROM "__RECONCILE_STATE".main.members)\n'
        ),
        [
            "segments/seg-a.yaml:1: sql: segment 'seg-a': segment SQL may not read the engine's "
            "'__RECONCILE_STATE' tables"
        ],
        id="sql-internal-catalog-quoted-in-subquery",
    ),
    pytest.param(
        seg_file("sql: SELECT customer_id FROM orders\n"),
        [
            "segments/seg-a.yaml:1: sql: segment 'seg-a': table 'orders' is not allowed in "
            "segment SQL; it may read the profiles table 'profiles', the tables listed under "
            "`source.tables` (none) and CTEs the query defines"
        ],
        id="sql-undeclared-table",
    ),
    pytest.param(
        # a file-reading function used as a scalar: not on the allow-list of functions
        seg_file(
            "sql: SELECT customer_id FROM profiles "
            "WHERE length(read_text('/etc/passwd')::varchar) > 0\n"
        ),
        [
            "segments/seg-a.yaml:1: sql: segment 'seg-a': function read_text is not allowed in "
            "segment SQL; allowed: see docs/segment-sql.md"
        ],
        id="sql-scalar-file-access",
    ),
    # Jinja in segment SQL and audience names: sandboxed, undefined names are errors
    pytest.param(
        seg_file(
            "description: x\nsql: |\n  SELECT customer_id FROM profiles\n"
            "  WHERE first_order_date > {{ nope }}\n"
        ),
        [
            "segments/seg-a.yaml:4: sql: segment 'seg-a': template error: 'nope' is undefined; "
            "the names available are today, days_ago(n)"
        ],
        id="sql-jinja-undefined",
    ),
    pytest.param(
        seg_file("sql: \"SELECT customer_id FROM profiles WHERE '{{ ''.__class__ }}' <> ''\"\n"),
        [
            "segments/seg-a.yaml:1: sql: segment 'seg-a': template error: access to attribute "
            "'__class__' of 'str' object is unsafe"
        ],
        id="sql-jinja-sandbox-escape",
    ),
    pytest.param(
        seg_file("sql: SELECT customer_id FROM profiles WHERE {{ days_ago.__globals__ }}\n"),
        [
            "segments/seg-a.yaml:1: sql: segment 'seg-a': template error: access to attribute "
            "'__globals__'"
        ],
        id="sql-jinja-globals-escape",
    ),
    pytest.param(
        seg_file("sql: SELECT customer_id FROM profiles WHERE {{ \n"),
        ["segments/seg-a.yaml:1: sql: segment 'seg-a': template error: unexpected"],
        id="sql-jinja-syntax",
    ),
    pytest.param(
        seg_file("sql: \"SELECT customer_id FROM profiles WHERE x > {{ days_ago('a week') }}\"\n"),
        ["segments/seg-a.yaml:1: sql: segment 'seg-a': days_ago() takes a whole number of days"],
        id="sql-jinja-bad-argument",
    ),
    pytest.param(
        seg_file('sql: "SELECT customer_id FROM profiles WHERE x > {{ days_ago(2**40) }}"\n'),
        ["segments/seg-a.yaml:1: sql: segment 'seg-a': days_ago() takes at most"],
        id="sql-jinja-days-before-year-1",  # it said "Python int too large to convert to C int"
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN.replace("Audience A", "'{{ nope }}'")},
        [
            "activations/act.yaml:3: name: template error: 'nope' is undefined; the names "
            "available are date_created, today, activation, segments"
        ],
        id="name-jinja-undefined",
    ),
    pytest.param(
        {
            "activations/act.yaml": MAINTAIN.replace(
                "Audience A", "\"{{ ''.__class__.__mro__[1].__subclasses__() }}\""
            )
        },
        [
            "activations/act.yaml:3: name: template error: access to attribute '__class__' of "
            "'str' object is unsafe"
        ],
        id="name-jinja-sandbox-escape",
    ),
    pytest.param(
        {
            "activations/act.yaml": MAINTAIN.replace(
                "Audience A", "'{{ segments|map(attribute=\"__class__\")|list }}'"
            )
        },
        [
            "activations/act.yaml:3: name: template error: access to attribute '__class__' of "
            "'str' object is unsafe"
        ],
        id="name-jinja-unsafe-attribute-in-a-list",  # it named the audience "[Undefined]"
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN.replace("Audience A", "'{% if %}'")},
        ["activations/act.yaml:3: name: template error:"],
        id="name-jinja-syntax",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN.replace("Audience A", "'{{ \"\" }}'")},
        ["activations/act.yaml:3: name: the audience name renders empty"],
        id="name-renders-empty",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "moved_from: act\n"},
        ["activations/act.yaml:5: moved_from: moved_from names this activation itself"],
        id="moved-from-itself",
    ),
    pytest.param(
        {
            "activations/heir1.yaml": MAINTAIN.replace("Audience A", "Heir 1")
            + "moved_from: old\n",
            "activations/heir2.yaml": MAINTAIN.replace("Audience A", "Heir 2")
            + "moved_from: old\n",
        },
        ["moved_from: moved_from 'old' is claimed by activations/heir"],
        id="moved-from-claimed-twice",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN + "moved_from: Bad Id!\n"},
        ["activations/act.yaml:5: moved_from: moved_from 'Bad Id!' is not an activation id"],
        id="moved-from-not-an-id",
    ),
    pytest.param(
        {
            "reconcile.yaml": RECONCILE_YAML.replace(
                ".reconcile/state.duckdb", "./data/profiles.duckdb"
            )
        },
        ["state.path: './data/profiles.duckdb' is the source database (source.path)"],
        id="state-file-is-the-source",
    ),
    pytest.param(
        {"reconcile.yaml": RECONCILE_YAML.replace(".reconcile/state.duckdb", "''")},
        ["state.path: the state file's path is empty"],
        id="state-path-empty",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN.replace("[FIRST_NAME]", "[FIRST_NAME, FIRST_NAME]")},
        ["activations/act.yaml:4: attributes: attribute(s) listed twice: ['FIRST_NAME']"],
        id="attribute-listed-twice",
    ),
    pytest.param(
        {"activations/other.YAML": MAINTAIN},
        ["activations/other.YAML: is not read: rename it to other.yaml"],
        id="uppercase-extension",
    ),
    pytest.param(
        {"activations/act.yaml": MAINTAIN.replace("name: Audience A", "name: ''")},
        ["activations/act.yaml:3: name: is empty; omit `name` for the default"],
        id="name-empty",
    ),
    pytest.param(
        {
            "reconcile.yaml": RECONCILE_YAML.replace(
                "  profiles:\n", "  tables: [__reconcile_state.members]\n  profiles:\n"
            )
        },
        ["source.tables.0: '__reconcile_state.members' is one of reconcile's own tables"],
        id="tables-name-the-state",
    ),
    pytest.param(
        {"segments/more/seg-c.yaml": "sql: SELECT customer_id FROM profiles\n"},
        ["segments/more/seg-c.yaml: is not read: segments are the YAML files directly in"],
        id="yaml-in-a-subfolder",
    ),
    pytest.param(
        {
            "reconcile.yaml": RECONCILE_YAML.replace(
                "suppression: []", "suppression: [seg-b, seg-b]"
            )
        },
        ["suppression: segment(s) listed twice: ['seg-b']"],
        id="suppression-listed-twice",
    ),
    pytest.param(
        {
            "integrations/sandbox.yaml": SANDBOX_YAML.replace(
                ".reconcile/sandbox.duckdb", "./data/../.reconcile/state.duckdb"
            )
        },
        [
            "integrations/sandbox.yaml:7: config.path: './data/../.reconcile/state.duckdb' is "
            "the state file of this workspace; choose a file of its own"
        ],
        id="destination-file-is-the-state",
    ),
    pytest.param(
        {
            "integrations/sandbox.yaml": SANDBOX_YAML.replace(
                ".reconcile/sandbox.duckdb", "data/profiles.duckdb"
            )
        },
        ["config.path: 'data/profiles.duckdb' is the source database of this workspace"],
        id="destination-file-is-the-source",
    ),
]


@pytest.mark.parametrize(("files", "expected"), STATIC)
def test_static_problem_is_reported_and_refused(workspace, files, expected):
    ws = workspace({"act": MAINTAIN}, profiles=ROWS)
    for path, text in files.items():
        (ws.root / path).parent.mkdir(parents=True, exist_ok=True)
        (ws.root / path).write_text(text)
    for args in (["validate"], ["plan"], ["apply", "--auto-approve"]):
        err = fails(ws, *args)
        assert err.startswith("Error: the workspace has 1 problem:\n"), err
        for fragment in expected:
            assert fragment in err, f"{fragment!r} not in {err!r}"
    assert "sk_live_SECRET" not in err  # a literal secret is never echoed back
    assert_nothing_written(ws)


def test_validate_reports_every_problem_at_once(workspace):
    ws = workspace(
        {
            "broken": "segments: [seg-a\n",
            "typo": MAINTAIN + "colour: red\n",
            "dangling": "segments: [nope]\ndestination: sandbox\n",
            "later": MAINTAIN + "notify: [ops@example.com]\n",
        },
        segments=seg("sql: DELETE FROM profiles\n"),
        integration=SANDBOX_YAML.replace("batch_size: 7", "batch_size: -1"),
        reconcile_yaml=RECONCILE_YAML.replace("suppression: []", "suppression: [gone]"),
        profiles=ROWS,
    )
    err = fails(ws, "validate")
    expected = [
        "reconcile.yaml:14: suppression.0: unknown segment 'gone'",
        "integrations/sandbox.yaml:9: config.batch_size: Input should be greater than or equal",
        "segments/seg-a.yaml:1: sql: segment 'seg-a': only a SELECT is allowed",
        "activations/broken.yaml:2: malformed YAML",
        "activations/typo.yaml:5: colour: unknown field",
        "activations/dangling.yaml:1: segments.0: unknown segment 'nope'",
        "activations/later.yaml:5: notify: e-mail notifications need a mail server",
    ]
    assert err.startswith(f"Error: the workspace has {len(expected)} problems:\n"), err
    lines = err.strip().splitlines()[1:]
    assert len(lines) == len(expected), err
    for fragment in expected:
        assert sum(line.strip().startswith(fragment) for line in lines) == 1, (fragment, err)
    assert_nothing_written(ws)


def test_a_broken_reconcile_yaml_does_not_make_other_files_look_wrong(workspace):
    """The other files are checked against reconcile.yaml: against the defaults standing in
    for a broken one they would show problems that are not there (a read-only source, an
    unknown table, no mail server). Their own schema errors are still reported."""
    config = RECONCILE_YAML.replace("default_phone_country: AU", "default_phone_country: XX")
    config = config.replace(
        "  path: data/profiles.duckdb\n", "  path: data/profiles.duckdb\n  writable: true\n"
    )
    ws = workspace(
        {"act": MAINTAIN + "append_to_profiles: true\n", "typo": MAINTAIN + "colour: red\n"},
        reconcile_yaml=config.replace("suppression: []", "suppression: [seg-b]"),
        profiles=ROWS,
    )
    err = fails(ws, "validate")
    lines = err.strip().splitlines()[1:]
    assert len(lines) == 2, err
    assert (
        "reconcile.yaml:12: source.profiles.default_phone_country: unknown default phone "
        "country 'XX'; use one of" in err
    )
    assert "activations/typo.yaml:5: colour: unknown field" in err
    assert "integrations/sandbox.yaml" not in err  # not blamed for the country
    assert "Valid" not in cli(ws, "plan").output


def test_a_malformed_reconcile_yaml_does_not_make_other_files_look_wrong(workspace):
    config = RECONCILE_YAML.replace(
        "  path: data/profiles.duckdb\n", "  path: data/profiles.duckdb\n  writable: true\n"
    ).replace("    key: customer_id\n", "    key: [oops\n")
    ws = workspace({"act": MAINTAIN + "append_to_profiles: true\n"}, reconcile_yaml=config)
    err = fails(ws, "validate")
    lines = err.strip().splitlines()[1:] or [err]
    assert len(lines) == 1 and "reconcile.yaml" in lines[0] and "malformed YAML" in err, err


def test_a_broken_file_is_not_also_reported_as_unknown(workspace):
    # the activation names a segment and an integration whose files exist but do not load:
    # their own errors say why; "unknown segment" would send the user looking elsewhere
    ws = workspace(
        {"act": MAINTAIN},
        segments=seg("sql: [\n"),
        integration="type: sandbox\nfoo: 1\n",
        profiles=ROWS,
    )
    err = fails(ws, "validate")
    assert "unknown" not in err.replace("unknown field", "")
    assert "segments/seg-a.yaml:2: malformed YAML" in err
    assert "integrations/sandbox.yaml:2: foo: unknown field" in err


def test_an_integration_with_two_problems_reports_both_at_once(workspace):
    """An unknown top-level field hid the `config:` problem until it was fixed."""
    ws = workspace(
        {"act": MAINTAIN},
        integration="type: sandbox\nfoo: 1\nconfig:\n  colour: red\n",
        profiles=ROWS,
    )
    err = fails(ws, "validate")
    assert "integrations/sandbox.yaml:2: foo: unknown field" in err, err
    assert "integrations/sandbox.yaml:4: config.colour: unknown field" in err, err


def test_a_date_like_name_is_text(workspace):
    ws = workspace({"act": MAINTAIN.replace("Audience A", "2024-06-01")}, profiles=ROWS)
    plan = cli(ws, "plan", "--format", "json")
    assert plan.exit_code == 0, plan.stderr
    assert plan.json()["activations"][0]["audiences"][0]["name"] == "2024-06-01"


def test_alias_bomb_is_refused_quickly(workspace):
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcde", "bcdef", strict=True):
        levels.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    ws = workspace({"act": MAINTAIN + "\n".join(levels) + "\n"}, profiles=ROWS)
    err = fails(ws, "validate")
    assert "activations/act.yaml:" in err and "expands to more than 100,000 values" in err


# ---------------------------------------------------------------------- problems found at run time
RUNTIME = [
    pytest.param(
        {
            "segments/seg-a.yaml": "description: x\nsql: |\n  SELECT customer_id\n"
            "  FROM profiles WHERE nosuchcol > 1\n"
        },
        [
            "segments/seg-a.yaml:4: sql: segment 'seg-a' failed when run: Binder Error: "
            'Referenced column "nosuchcol" not found',
            "fix the SQL",
        ],
        id="sql-fails-at-run-time-names-the-line",
    ),
    pytest.param(
        seg_file("sql: SELECT customer_id FROM profiles WHERE CAST(first_name AS INTEGER) > 1\n"),
        ["segments/seg-a.yaml:1: sql: segment 'seg-a' failed when run: Conversion Error"],
        id="sql-conversion-error",
    ),
    pytest.param(
        {  # declared readable (`source.tables`), but not in the database
            **seg_file("sql: SELECT customer_id FROM orders\n"),
            "reconcile.yaml": RECONCILE_YAML.replace(
                "  profiles:\n", "  tables: [orders]\n  profiles:\n"
            ),
        },
        [
            "segments/seg-a.yaml:1: sql: segment 'seg-a' failed when run: Catalog Error: Table "
            "with name orders does not exist"
        ],
        id="sql-unknown-table",
    ),
    pytest.param(
        seg_file("sql: SELECT CASE WHEN seg_a THEN customer_id END AS customer_id FROM profiles\n"),
        [
            "segments/seg-a.yaml:1: sql: segment 'seg-a' returned 4 NULL key(s); filter them out "
            "(WHERE customer_id IS NOT NULL)"
        ],
        id="sql-null-keys",
    ),
    pytest.param(
        seg_file("sql: SELECT customer_id, email FROM profiles\n"),
        [
            "segments/seg-a.yaml:1: sql: segment 'seg-a' must return exactly one column (the "
            "profile key), it returns 2: ['customer_id', 'email']; select only customer_id"
        ],
        id="sql-two-columns",
    ),
    pytest.param(
        seg_file("sql: SELECT [customer_id] AS ids FROM profiles\n"),
        [
            "segments/seg-a.yaml:1: sql: segment 'seg-a' returns 'ids' of type VARCHAR[], not a "
            "profile key; select customer_id itself"
        ],
        id="sql-list-key",
    ),
    pytest.param(
        seg_file("sql: \"SELECT {'id': customer_id} AS k FROM profiles\"\n"),
        [
            "segments/seg-a.yaml:1: sql: segment 'seg-a' returns 'k' of type STRUCT(id VARCHAR), "
            "not a profile key"
        ],
        id="sql-struct-key",
    ),
    pytest.param(
        {
            "integrations/sandbox.yaml": SANDBOX_YAML.replace(
                "consent: email_consent", "consent: opted_in"
            )
        },
        [
            "integrations/sandbox.yaml:2: consent: the consent condition fails: Binder Error: "
            'Referenced column "opted_in" not found'
        ],
        id="consent-unknown-column",
    ),
    pytest.param(
        {"reconcile.yaml": RECONCILE_YAML.replace("data/profiles.duckdb", "data/missing.duckdb")},
        ["reconcile.yaml:5: source.path: the source database ", "missing.duckdb does not exist"],
        id="source-missing",
    ),
    pytest.param(
        {"reconcile.yaml": RECONCILE_YAML.replace("data/profiles.duckdb", "data")},
        ["reconcile.yaml:5: source.path: the source database ", "is not a file"],
        id="source-is-a-directory",
    ),
    pytest.param(
        {"data/profiles.duckdb": "this is not a database " * 200},
        [
            "reconcile.yaml:5: source.path: cannot open the source DuckDB file ",
            "not a valid DuckDB database file",
        ],
        id="source-unreadable",
    ),
    pytest.param(
        {
            "reconcile.yaml": RECONCILE_YAML.replace("table: profiles", "table: customers").replace(
                "  profiles:\n", "  tables: [profiles]\n  profiles:\n"
            )
        },
        [
            "reconcile.yaml:8: source.profiles.table: the source DuckDB file ",
            "has no table 'customers'",
        ],
        id="profiles-table-missing",
    ),
    pytest.param(
        {"reconcile.yaml": RECONCILE_YAML.replace("seg_a, seg_b]", "seg_a, seg_b, loyalty]")},
        [
            "reconcile.yaml:10: source.profiles.attributes.6: the profiles table 'profiles' ",
            "has no column(s) ['loyalty']",
        ],
        id="profiles-column-missing",
    ),
    pytest.param(
        {"reconcile.yaml": RECONCILE_YAML.replace("key: customer_id", "key: id")},
        [
            "reconcile.yaml:8: source.profiles.key: the profiles table 'profiles' ",
            "has no column(s) ['id']",
        ],
        id="profiles-key-column-missing",
    ),
]


#: what only running on the data shows; `validate` binds the rest against the source's tables
DATA_ONLY = {"sql-conversion-error", "sql-null-keys", "source-missing"}


@pytest.mark.parametrize(("files", "expected"), RUNTIME)
def test_run_time_problem_is_refused_and_writes_nothing(workspace, files, expected, request):
    ws = workspace({"act": MAINTAIN}, profiles=ROWS)
    for path, text in files.items():
        (ws.root / path).parent.mkdir(parents=True, exist_ok=True)
        (ws.root / path).write_text(text)
    checked = cli(ws, "validate")
    if request.node.callspec.id in DATA_ONLY:
        assert checked.exit_code == 0, checked.stderr
    else:  # found by validate already, at the same file:line: field
        where = ": ".join(expected[0].split(": ")[:2])
        assert checked.exit_code == 1 and f"  {where}: " in checked.stderr, checked.stderr
        assert "LINE " not in checked.stderr and "DESCRIBE" not in checked.stderr
    for args in (["plan"], ["apply", "--auto-approve"], ["run", "act", "--auto-approve"]):
        err = fails(ws, *args)
        for fragment in expected:
            assert fragment in err, f"{fragment!r} not in {err!r}"
        # DuckDB's own excerpt shows our wrapping query, not the user's: it is left out
        assert "LINE " not in err and "DESCRIBE" not in err
        assert "root:" not in err  # nothing of /etc/passwd
    assert_nothing_written(ws)


def test_bad_input_after_an_apply_leaves_state_and_destination_untouched(workspace):
    ws = workspace({"act": MAINTAIN}, profiles=ROWS)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    state = ws.root / ".reconcile" / "state.duckdb"
    before = hashlib.sha256(state.read_bytes()).hexdigest()
    held = ws.sandbox_keys()
    ws.set_profiles([profile(i, a=True) for i in range(8)])  # real changes are pending
    ws.write("segments/seg-a.yaml", "sql: SELECT customer_id, email FROM profiles\n")
    fails(ws, "apply", "--auto-approve")
    ws.write("segments/seg-a.yaml", "sql: SELECT key FROM __reconcile_state.members\n")
    fails(ws, "apply", "--auto-approve")
    ws.write("segments/seg-a.yaml", SEGMENTS["seg-a"])
    ws.write("activations/act.yaml", MAINTAIN + "notify: [ops@example.com]\n")
    fails(ws, "apply", "--auto-approve")
    assert hashlib.sha256(state.read_bytes()).hexdigest() == before
    assert ws.sandbox_keys() == held
    assert files_under(ws.root / ".reconcile" / "tmp") == []


def test_unreadable_state_is_not_reported_as_in_use(workspace):
    ws = workspace({"act": MAINTAIN}, profiles=ROWS)
    state = ws.root / ".reconcile" / "state.duckdb"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"garbage" * 1000)
    for args in (["plan"], ["status"]):
        err = fails(ws, *args)
        assert "not a readable state database" in err and "in use" not in err
    assert state.read_bytes() == b"garbage" * 1000
    assert not (ws.root / ".reconcile" / "sandbox.duckdb").exists()


def test_external_access_is_blocked_even_if_the_sql_check_missed_it(workspace, monkeypatch):
    """Defence in depth: with the sqlglot check bypassed, DuckDB itself refuses the file."""
    from reconciler.plan import segments
    from reconciler.sources import base

    monkeypatch.setattr(base, "check_segment_sql", lambda sql, dialect, **_: sql)
    monkeypatch.setattr(segments, "check_segment_sql", lambda sql, dialect, **_: sql)
    ws = workspace(
        {"act": MAINTAIN},
        profiles=ROWS,
        segments=seg("sql: SELECT column0 FROM read_csv('/etc/passwd', header=false)\n"),
    )
    err = fails(ws, "plan")
    assert "segments/seg-a.yaml:1: sql: segment 'seg-a' failed when run: Permission Error" in err
    assert "disabled by configuration" in err and "root:" not in err
    assert_nothing_written(ws)


def test_unknown_target_is_an_error(workspace):
    ws = workspace({"act": MAINTAIN}, profiles=ROWS)
    err = fails(ws, "plan", "-t", "nope")
    assert "unknown activation(s) ['nope']; known: act" in err
    assert_nothing_written(ws)


def test_unexpected_engine_error_is_one_paragraph_not_a_traceback():
    @click.command()
    @handle_errors
    def boom() -> None:
        raise duckdb.IOException("IO Error: disk\nfull")

    res = CliRunner().invoke(boom, [], catch_exceptions=False)
    assert res.exit_code == 1
    assert res.stderr.startswith("Error: the database engine failed: IO Error: disk full.")
    assert "\n" not in res.stderr.strip()


# ---------------------------------------------------------------------- schema
def test_schema_is_json_schema_with_no_extra_fields(workspace):
    ws = workspace({"act": MAINTAIN}, profiles=ROWS)
    res = cli(ws, "schema", "activation")
    assert res.exit_code == 0
    schema = json.loads(res.output)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert "list" in props and "target" not in props  # the alias users write
    assert set(schema["required"]) == {"segments", "destination"}
    # every $ref resolves inside the document, and nested models forbid extra fields too
    refs = _refs(schema)
    assert refs and all(r.startswith("#/$defs/") for r in refs)
    assert all(r.split("/")[-1] in schema["$defs"] for r in refs)
    assert schema["$defs"]["ListTarget"]["additionalProperties"] is False

    bundle = json.loads(cli(ws, "schema").output)
    assert set(bundle["properties"]) == {"reconcile", "activation", "segment", "integration"}
    for sub in bundle["properties"].values():
        assert sub["additionalProperties"] is False


def test_schema_accepts_a_valid_activation_and_rejects_an_unknown_field(workspace):
    jsonschema = pytest.importorskip("jsonschema")
    ws = workspace({"act": MAINTAIN}, profiles=ROWS)
    schema = json.loads(cli(ws, "schema", "activation").output)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = {"segments": ["seg-a"], "destination": "sandbox", "list": {"existing": "VIPs"}}
    assert not list(validator.iter_errors(good))
    assert list(validator.iter_errors({**good, "colour": "red"}))


def _refs(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_action_remove_is_not_a_default(workspace):
    """`action: remove` needs the activation's own `list: existing`: as a workspace default
    it would reach activations whose other fields were checked without it."""
    config = RECONCILE_YAML.replace(
        "suppression: []", "defaults: {action: remove}\nsuppression: []"
    )
    ws = workspace(
        {"act": "segments: [seg-a]\ndestination: sandbox\nsplit: ab\n"}, reconcile_yaml=config
    )
    res = cli(ws, "validate")
    assert res.exit_code == 1
    assert "reconcile.yaml:" in res.stderr and "defaults.action" in res.stderr, res.stderr


def test_an_unquoted_country_no_gets_a_hint_to_quote_it(workspace):
    config = RECONCILE_YAML.replace("default_phone_country: AU", "default_phone_country: NO")
    ws = workspace({}, reconcile_yaml=config)
    res = cli(ws, "validate")
    assert res.exit_code == 1
    assert "source.profiles.default_phone_country" in res.stderr and "quote it" in res.stderr


def test_split_ab_with_one_existing_list_is_refused_by_validate(workspace):
    act = "segments: [seg-a]\ndestination: sandbox\nsplit: ab\nlist: {existing: {A: sbx_1}}\n"
    ws = workspace({"act": act})
    res = cli(ws, "validate")
    assert res.exit_code == 1
    assert "activations/act.yaml" in res.stderr and "one list per group" in res.stderr


@pytest.mark.parametrize(
    "column_type,value",
    [
        ("JSON", "'\"user0@example.com\"'"),
        ("VARCHAR[]", "['user0@example.com']"),
        ("BLOB", "'user0@example.com'::BLOB"),
        ("STRUCT(e VARCHAR)", "{'e': 'user0@example.com'}"),
    ],
)
def test_an_identifier_column_that_is_not_text_is_refused_by_name(workspace, column_type, value):
    """An e-mail column typed JSON would be hashed with its quotes (a list with its
    brackets): no platform matches such hashes. validate, plan and apply name the setting,
    the column and its type, and nothing is sent."""
    act = "segments: [seg-a]\ndestination: sandbox\nname: Typed\n"
    ws = workspace({"act": act}, profiles=[profile(0, a=True)])
    ws.alter_profiles(
        "ALTER TABLE profiles DROP COLUMN email",
        f"ALTER TABLE profiles ADD COLUMN email {column_type}",
        f"UPDATE profiles SET email = {value}",
    )
    for command in (["validate"], ["plan"], ["apply", "--auto-approve"]):
        res = cli(ws, *command)
        assert res.exit_code == 1, (command, res.output + res.stderr)
        text = res.output + res.stderr
        assert "source.profiles.identifiers.email" in text and "'email'" in text, text
    assert not (ws.root / ".reconcile" / "sandbox.duckdb").exists()


@pytest.mark.parametrize("column_type", ["FLOAT", "REAL", "FLOAT4"])
def test_a_single_precision_phone_column_is_refused_by_name(workspace, column_type):
    """A FLOAT holds about 7 significant digits: 61412345678 is stored as 6.141234e10, so
    every phone in it is a wrong number. validate, plan and apply name the setting and the
    column; nothing is sent. A DOUBLE holds a phone exactly and is accepted."""
    act = "segments: [seg-a]\ndestination: sandbox\nname: Typed\n"
    ws = workspace({"act": act}, profiles=[profile(0, a=True)])
    ws.alter_profiles(
        "ALTER TABLE profiles DROP COLUMN phone",
        f"ALTER TABLE profiles ADD COLUMN phone {column_type}",
        "UPDATE profiles SET phone = 61412345678",
    )
    for command in (["validate"], ["plan"], ["apply", "--auto-approve"]):
        res = cli(ws, *command)
        assert res.exit_code == 1, (command, res.output + res.stderr)
        text = res.output + res.stderr
        assert "source.profiles.identifiers.phone" in text and "'phone'" in text, text
        assert "REAL (about 7 significant digits)" in text, text
    assert not (ws.root / ".reconcile" / "sandbox.duckdb").exists()
    ws.alter_profiles("ALTER TABLE profiles ALTER phone TYPE DOUBLE")
    assert cli(ws, "validate").exit_code == 0


def test_a_single_precision_external_id_column_is_refused_by_name(workspace):
    """An external id in a REAL column is rounded above 16,777,216: refused like a phone."""
    act = "segments: [seg-a]\ndestination: sandbox\nname: Typed\n"
    ws = workspace({"act": act}, profiles=[profile(0, a=True)])
    ws.alter_profiles(
        "ALTER TABLE profiles ADD COLUMN ext REAL", "UPDATE profiles SET ext = 16777217"
    )
    ws.write(
        "reconcile.yaml",
        RECONCILE_YAML.replace(
            "identifiers: {email: email, phone: phone}",
            "identifiers: {email: email, phone: phone, external_id: ext}",
        ),
    )
    res = cli(ws, "plan")
    assert res.exit_code == 1, res.output + res.stderr
    text = res.output + res.stderr
    assert "source.profiles.identifiers.external_id" in text and "'ext'" in text, text
    assert "an id above 16,777,216 exactly" in text, text


def test_a_same_named_table_in_another_schema_does_not_decide_the_column_types(workspace):
    """`raw.profiles.email` is JSON, `main.profiles.email` text: only the profiles table
    the workspace reads is checked (a UNION's text is its value: accepted too)."""
    act = "segments: [seg-a]\ndestination: sandbox\nname: Typed\n"
    ws = workspace({"act": act}, profiles=[profile(0, a=True)])
    ws.alter_profiles(
        "CREATE SCHEMA raw",
        "CREATE TABLE raw.profiles (customer_id VARCHAR, email JSON, phone JSON)",
        "ALTER TABLE profiles DROP COLUMN phone",
        "ALTER TABLE profiles ADD COLUMN phone UNION(s VARCHAR, n BIGINT)",
    )
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert len(ws.sandbox_keys()["Typed"]) == 1


@pytest.mark.parametrize("kind", ["dangling link", "pipe"])
def test_an_activation_file_that_cannot_be_read_is_a_problem_not_a_deletion(workspace, kind):
    """Skipped without a word, a broken link or a pipe named like an activation's file made
    the plan delete that activation (and clear its audience under `on_delete: clear`)."""
    import os

    ws = workspace(
        {"act": "segments: [seg-a]\ndestination: sandbox\nname: Kept\n"},
        profiles=[profile(i, a=True) for i in range(3)],
    )
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    path = ws.root / "activations" / "act.yaml"
    path.unlink()
    if kind == "pipe":
        os.mkfifo(path)
        why = "activations/act.yaml: file is not a regular file"
    else:
        os.symlink(ws.root / "elsewhere" / "act.yaml", path)
        why = "activations/act.yaml: cannot read file"
    for command in ("validate", "plan"):
        res = cli(ws, command)
        assert res.exit_code == 1, res.output
        assert why in res.stderr, res.stderr
        assert "will be deleted" not in res.output


def test_a_webhook_with_no_receiver_is_found_by_validate(workspace, monkeypatch):
    monkeypatch.setenv("WH_SECRET", "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    ws = workspace({"act": "segments: [seg-a]\ndestination: hooks\nname: Hooked\n"})
    ws.write(
        "integrations/hooks.yaml",
        "type: webhook\ncredentials:\n  secret: ${env:WH_SECRET}\nconfig:\n  identifiers: [email]\n",
    )
    res = cli(ws, "validate")
    assert res.exit_code == 1, res.output
    assert "integrations/hooks.yaml:4: config: the webhook needs a receiver" in res.stderr, (
        res.stderr
    )


@pytest.mark.parametrize(
    ("extra", "field", "why"),
    [
        ("append_to_profiles: true\n", "append_to_profiles", "would be written as included"),
        ("max_removal_share: 0.1\n", "max_removal_share", "no guard applies"),
    ],
)
def test_what_action_remove_cannot_mean_is_refused_by_validate(workspace, extra, field, why):
    """`action: remove` with write-back recorded the removed profiles as included in the list;
    a `max_removal_share` on it was silently ignored."""
    config = RECONCILE_YAML.replace(
        "  path: data/profiles.duckdb\n", "  path: data/profiles.duckdb\n  writable: true\n"
    )
    act = "segments: [seg-a]\ndestination: sandbox\naction: remove\nlist: {existing: Base}\n"
    ws = workspace({"rm": act + extra}, reconcile_yaml=config)
    res = cli(ws, "validate")
    assert res.exit_code == 1, res.output
    assert f"activations/rm.yaml:5: {field}:" in res.stderr and why in res.stderr, res.stderr
