"""A segment that only filters the profiles table is planned from one scan of it
(reconciler/plan/one_scan.py): the same plan, member changes and held keys as the general path
(materialise the segment's keys, join them back), which every other shape still takes."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import pytest

from reconciler.engine import make_plan
from reconciler.errors import SegmentError
from reconciler.plan import held as held_keys
from reconciler.plan import one_scan
from reconciler.plan.planner import PlanRequest
from reconciler.plan.segments import SegmentRunner
from reconciler.workspace.loader import load
from reconciler.workspace.spec import ProfilesTable
from tests.conftest import cli, profile

PROFILES = ProfilesTable(
    table="profiles",
    key="customer_id",
    identifiers={"email": "email"},
    attributes=["first_name", "country", "total_spend", "seg_a", "seg_b"],
)

AS_OF = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)

#: segments that only filter the profiles table: planned from one scan
FAST = [
    "SELECT customer_id FROM profiles WHERE seg_a",
    "SELECT customer_id FROM profiles",
    "SELECT p.customer_id AS id FROM profiles p WHERE p.seg_a AND p.total_spend >= 10",
    "SELECT profiles.customer_id FROM profiles WHERE lower(country) IN ('au', 'nz')",
    "SELECT CUSTOMER_ID FROM Profiles WHERE seg_a OR (seg_b AND first_name LIKE 'N%')",
    "SELECT customer_id FROM profiles WHERE CASE WHEN seg_b THEN total_spend > 5 END",
    "SELECT customer_id FROM profiles WHERE total_spend BETWEEN 1 AND 50 AND NOT seg_b",
    "SELECT customer_id FROM profiles WHERE CAST(total_spend AS INTEGER) % 2 = 0",
    "SELECT customer_id FROM profiles WHERE first_name ILIKE 'n%' AND email IS NOT NULL",
    "SELECT customer_id FROM profiles WHERE first_name NOT IN ('O''Brien', 'N1') "
    "AND country IS DISTINCT FROM 'NZ'",
    "SELECT customer_id FROM profiles WHERE regexp_matches(email, '^user[0-9]$') "
    "OR coalesce(length(first_name), 0) > 2 AND total_spend::INTEGER > 5",
    "SELECT customer_id FROM profiles WHERE first_name LIKE 'N%' OR NOT (seg_a IS NULL OR seg_b)",
]

#: everything else: the general path
GENERAL = [
    "SELECT DISTINCT customer_id FROM profiles WHERE seg_a",
    "SELECT customer_id FROM profiles WHERE seg_a LIMIT 3",
    "SELECT customer_id FROM profiles WHERE seg_a ORDER BY customer_id",
    "SELECT customer_id FROM profiles WHERE seg_a UNION SELECT customer_id FROM profiles "
    "WHERE seg_b",
    "SELECT customer_id FROM profiles WHERE seg_a UNION ALL SELECT customer_id FROM profiles "
    "WHERE seg_a",
    "SELECT customer_id FROM profiles GROUP BY customer_id HAVING bool_or(seg_a)",
    "SELECT customer_id FROM profiles QUALIFY row_number() OVER (PARTITION BY country "
    "ORDER BY customer_id) <= 3",
    "SELECT customer_id FROM profiles WHERE total_spend > (SELECT avg(total_spend) FROM profiles)",
    "SELECT customer_id FROM profiles WHERE customer_id IN (SELECT customer_id FROM orders)",
    "SELECT p.customer_id FROM profiles p JOIN orders o USING (customer_id)",
    "SELECT customer_id FROM orders",
    "WITH x AS (SELECT * FROM profiles WHERE seg_a) SELECT customer_id FROM x",
    "SELECT customer_id FROM (SELECT * FROM profiles WHERE seg_a) q",
    "SELECT email FROM profiles WHERE seg_a",
    "SELECT upper(customer_id) FROM profiles WHERE seg_a",
    "SELECT customer_id FROM profiles WHERE seg_a AND now() > TIMESTAMP '2000-01-01'",
    "SELECT customer_id FROM profiles WHERE current_date > DATE '2000-01-01'",
    "SELECT customer_id FROM profiles WHERE random() < 2",
    "SELECT customer_id FROM profiles USING SAMPLE 100%",
    "SELECT customer_id FROM profiles WHERE seg_a AND no_such_column",
]


@pytest.fixture
def con():
    c = duckdb.connect()
    c.execute(
        "CREATE TABLE profiles (customer_id VARCHAR, email VARCHAR, first_name VARCHAR, "
        "country VARCHAR, total_spend DOUBLE, seg_a BOOLEAN, seg_b BOOLEAN)"
    )
    c.execute("CREATE TABLE orders (customer_id VARCHAR, amount DOUBLE)")
    yield c
    c.close()


@pytest.mark.parametrize("sql", FAST)
def test_plain_filters_are_scanned(con, sql):
    rows = one_scan.row_filter(con, sql, PROFILES)
    assert rows is not None and rows.upper().startswith("SELECT * FROM")
    # the filter DuckDB regenerated from its parse tree selects what the segment does
    for p in _rows(0, 0) + _rows(3, 2):
        p["customer_id"] += f"-{len(p['first_name'])}-{p['total_spend']}"
        p["first_name"] = {3: "O'Brien", 7: "N_x", 8: None}.get(
            int(p["total_spend"]), p["first_name"]
        )
        del p["phone"], p["email_consent"]
        con.execute(
            f"INSERT INTO profiles BY NAME SELECT {', '.join(f'${k} AS {k}' for k in p)}", p
        )
    wanted = sorted(con.execute(sql).fetchall())
    assert sorted(con.execute(f"SELECT customer_id FROM ({rows})").fetchall()) == wanted
    assert wanted


@pytest.mark.parametrize("sql", GENERAL)
def test_other_shapes_take_the_general_path(con, sql):
    assert one_scan.row_filter(con, sql, PROFILES) is None


def test_unique_rows_refuses_repeated_and_null_keys(con):
    rows = one_scan.row_filter(con, "SELECT customer_id FROM profiles WHERE seg_a", PROFILES)
    assert rows is not None

    def unique() -> int | None:  # a new session's answer (the hashes are made once)
        con.execute(f"DROP TABLE IF EXISTS {one_scan.KEY_HASHES}")
        return one_scan.unique_rows(con, rows, PROFILES)

    con.execute("INSERT INTO profiles VALUES ('a', NULL, NULL, 'AU', 1, TRUE, FALSE)")
    con.execute("INSERT INTO profiles VALUES ('b', NULL, NULL, 'AU', 1, FALSE, FALSE)")
    con.execute("INSERT INTO profiles VALUES (NULL, NULL, NULL, 'AU', 1, FALSE, FALSE)")
    con.execute("INSERT INTO profiles VALUES ('c', NULL, NULL, 'AU', 1, FALSE, FALSE)")
    con.execute("INSERT INTO profiles VALUES ('c', NULL, NULL, 'AU', 1, FALSE, FALSE)")
    assert unique() == 1  # NULL and repeated keys the filter does not select: no matter
    # a selected key on another row (not selected): the join back would find two rows
    con.execute("INSERT INTO profiles VALUES ('a', NULL, NULL, 'NZ', 1, FALSE, FALSE)")
    assert unique() is None
    con.execute("DELETE FROM profiles WHERE country = 'NZ'")
    assert unique() == 1
    con.execute("UPDATE profiles SET seg_a = TRUE WHERE customer_id = 'c'")
    assert unique() is None  # twice among the selected
    con.execute("DELETE FROM profiles WHERE customer_id = 'c'")
    con.execute("UPDATE profiles SET seg_a = TRUE WHERE customer_id IS NULL")
    assert unique() is None  # a NULL key: reported by the general path


# ------------------------------------------------------------------ the same plan, both paths
def _plan(ws_root, monkeypatch, fast: bool) -> tuple[dict, list[tuple], set[str]]:
    """The plan (without its id and times), its staged changes, and the segments scanned."""
    scanned: set[str] = set()
    scan = SegmentRunner.scan

    def spy(self, name):
        result = scan(self, name)
        if result.rows is not None:
            scanned.add(name)
        return result

    with monkeypatch.context() as m:
        m.setattr(SegmentRunner, "scan", spy)
        if not fast:
            m.setattr(one_scan, "row_filter", lambda *a: None)
        try:
            staged = make_plan(load(ws_root), PlanRequest(refresh=False), AS_OF)
        except SegmentError as exc:  # e.g. a NULL key: the same error both ways
            return {"error": str(exc)}, [], scanned
    try:
        con = duckdb.connect(str(staged.staging), read_only=True)
        try:
            changes = con.execute(
                "SELECT activation_id, grp, op, key FROM changes ORDER BY ALL"
            ).fetchall()
        finally:
            con.close()
    finally:
        staged.discard()
    plan = staged.plan.to_json()
    for k in ("plan_id", "created_at"):
        plan.pop(k)
    return plan, changes, scanned


ACTIVATIONS = {
    "maintain": "segments: [{seg}]\ndestination: sandbox\nname: M\nattributes: [FIRST_NAME]\n",
    "append": "segments: [{seg}]\ndestination: sandbox\nname: P\naction: append\n",
    "ab": "segments: [{seg}]\ndestination: sandbox\nname: AB\nsplit: ab\n",
    "control": "segments: [{seg}]\ndestination: sandbox\nname: C\nsplit: control\n"
    "control_percent: 30\n",
    "sync": "segments: [{seg}]\ndestination: sandbox\ngoal: sync_attributes\n"
    "attributes: [FIRST_NAME, COUNTRY]\n",
}
#: added after the first apply: it removes the segment from the list the first one made
REMOVE = "segments: [{seg}]\ndestination: sandbox\naction: remove\nlist: {{existing: M}}\n"


def _rows(i: int, step: int) -> list[dict]:
    """Profiles after ``step`` changes: members leave and enter, names and consent change."""
    rows = []
    for n in range(40):
        p = profile(
            n,
            a=(n + step) % 3 != 0,
            b=n % 4 == step % 4,
            consent=(n + i) % 11 != step,
            name=f"N{n}-{step}" if n % 5 == step else None,
            spend=float((n * 7 + step) % 30),
        )
        p["country"] = "NZ" if n % 6 == 0 else "AU"
        rows.append(p)
    return rows


@pytest.mark.parametrize("segment", [*FAST[:4], GENERAL[0], GENERAL[3]])
@pytest.mark.parametrize("dups", ["none", "segment", "leaver", "other"])
def test_fast_and_general_paths_plan_the_same(workspace, monkeypatch, segment, dups):
    acts = {name: text.format(seg="s") for name, text in ACTIVATIONS.items()}
    acts["two"] = ACTIVATIONS["maintain"].format(seg="s").replace("[s]", "[s, t]")
    acts["two"] = acts["two"].replace("name: M", "name: T")
    ws = workspace(
        acts,
        profiles=_rows(0, 0),
        segments={
            "s": f'sql: "{segment}"\n',
            "t": "sql: SELECT customer_id FROM profiles WHERE seg_b\n",
            "never": "sql: SELECT customer_id FROM profiles WHERE total_spend = 3\n",
        },
    )
    config = ws.root / "reconcile.yaml"
    config.write_text(config.read_text().replace("suppression: []", "suppression: [never]"))
    # a first apply records members; the next plan has leavers, entrants and updates
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write("activations/remove.yaml", REMOVE.format(seg="s"))
    rows = _rows(1, 1)
    if dups == "segment":  # a member's key on a second row (not in the segment)
        rows.append(dict(rows[1], seg_a=False, seg_b=False, first_name="Twin"))
        rows.append(dict(rows[2], first_name="Twin"))  # and twice in it
    elif dups == "leaver":  # a recorded member that left, on two rows
        left = next(r for r in rows if not r["seg_a"])
        rows.append(dict(left, first_name="Twin"))
    elif dups == "other":  # repeated and NULL keys no segment returns
        rows.append(dict(rows[0], customer_id="zz", seg_a=False, seg_b=False))
        rows.append(dict(rows[0], customer_id="zz", seg_a=False, seg_b=False))
        rows.append(dict(rows[0], customer_id=None, seg_a=False, seg_b=False))
    ws.set_profiles(rows)
    fast, fast_changes, scanned = _plan(ws.root, monkeypatch, fast=True)
    general, general_changes, none = _plan(ws.root, monkeypatch, fast=False)
    assert not none
    assert fast == general
    assert fast_changes == general_changes
    if "error" in fast:  # the segment returns the NULL key
        assert dups == "other" and "NULL key" in fast["error"] and not scanned
        return
    assert fast_changes  # the plan has changes to compare
    if segment not in FAST:
        assert not scanned
    elif dups in ("none", "other") or (dups == "leaver" and segment in (FAST[0], FAST[2])):
        assert scanned == {"s"}  # no selected key on two rows (a leaver's twin is not): one scan
    if dups == "segment":  # held profiles are named when a twin key is in the segment
        with duckdb.connect(str(ws.db), read_only=True) as db:
            selected = {k for (k,) in db.execute(segment).fetchall()}
        (act,) = (a for a in fast["activations"] if a["id"] == "maintain")
        warned = [w for w in act["warnings"] if "held" in w]
        assert bool(warned) == bool(selected & {rows[1]["customer_id"], rows[2]["customer_id"]})


# ------------------------------------------------------------------ a key the table declares
@pytest.mark.parametrize(
    ("ddl", "unique"),
    [
        ("customer_id VARCHAR PRIMARY KEY, seg_a BOOLEAN", True),
        ("customer_id BIGINT UNIQUE, seg_a BOOLEAN", True),
        ("CUSTOMER_ID UUID, seg_a BOOLEAN, PRIMARY KEY (CUSTOMER_ID)", True),
        ("customer_id VARCHAR, seg_a BOOLEAN", False),  # nothing declared
        ("customer_id VARCHAR, seg_a BOOLEAN, PRIMARY KEY (customer_id, seg_a)", False),
        ("customer_id VARCHAR, seg_a BOOLEAN UNIQUE", False),  # another column
        ("customer_id DOUBLE PRIMARY KEY, seg_a BOOLEAN", False),  # its text can repeat
    ],
)
def test_declared_unique_reads_the_catalog(ddl, unique):
    with duckdb.connect() as c:
        c.execute(f"CREATE TABLE profiles ({ddl})")
        assert one_scan.declared_unique(c, PROFILES) is unique
        c.execute("CREATE TABLE t AS SELECT * FROM profiles")
        c.execute("DROP TABLE profiles")
        c.execute("CREATE VIEW profiles AS SELECT * FROM t")  # a view declares nothing
        assert one_scan.declared_unique(c, PROFILES) is False


def _hashes_made(c) -> bool:
    name = one_scan.KEY_HASHES
    return bool(c.execute(f"SELECT count(*) FROM duckdb_tables() WHERE table_name = '{name}'")
                .fetchall()[0][0])  # fmt: skip


def test_a_declared_key_skips_the_probe_but_not_the_null_check():
    with duckdb.connect() as c:
        c.execute("CREATE TABLE profiles (customer_id VARCHAR UNIQUE, seg_a BOOLEAN)")
        c.execute("INSERT INTO profiles VALUES ('a', TRUE), ('b', FALSE), ('c', TRUE)")
        rows = one_scan.row_filter(c, "SELECT customer_id FROM profiles WHERE seg_a", PROFILES)
        assert rows is not None
        assert one_scan.unique_rows(c, rows, PROFILES) == 2
        assert not _hashes_made(c)  # DuckDB's constraint stands for the probe
        c.execute("INSERT INTO profiles VALUES (NULL, TRUE)")  # UNIQUE allows NULL keys
        assert one_scan.unique_rows(c, rows, PROFILES) is None
        c.execute("CREATE TABLE plain AS SELECT * FROM profiles WHERE customer_id IS NOT NULL")
        c.execute("DROP TABLE profiles")
        c.execute("ALTER TABLE plain RENAME TO profiles")
        assert one_scan.unique_rows(c, rows, PROFILES) == 2
        assert _hashes_made(c)  # without the constraint the table is probed


def _declare_key(db, constraint: str) -> None:
    """Recreate the profiles table with its key declared ``constraint``, rows unchanged."""
    with duckdb.connect(str(db)) as c:
        cols = c.execute("DESCRIBE profiles").fetchall()
        ddl = ", ".join(
            f"{n} {t}{' ' + constraint if n == 'customer_id' else ''}" for n, t, *_ in cols
        )
        c.execute("ALTER TABLE profiles RENAME TO undeclared")
        c.execute(f"CREATE TABLE profiles ({ddl})")
        c.execute("INSERT INTO profiles SELECT * FROM undeclared")
        c.execute("DROP TABLE undeclared")


@pytest.mark.parametrize("segment", [*FAST[:4], GENERAL[0]])
@pytest.mark.parametrize("constraint", ["PRIMARY KEY", "UNIQUE"])
def test_a_declared_key_plans_what_the_probe_does(workspace, monkeypatch, segment, constraint):
    acts = {name: text.format(seg="s") for name, text in ACTIVATIONS.items()}
    ws = workspace(acts, profiles=_rows(0, 0), segments={"s": f'sql: "{segment}"\n'})
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write("activations/remove.yaml", REMOVE.format(seg="s"))
    rows = _rows(1, 1)
    if constraint == "UNIQUE":  # NULL keys no segment returns: allowed by UNIQUE
        rows.append(dict(rows[0], customer_id=None, seg_a=False, seg_b=False))
    ws.set_profiles(rows)
    probed, probed_changes, _ = _plan(ws.root, monkeypatch, fast=True)
    general, general_changes, _ = _plan(ws.root, monkeypatch, fast=False)
    _declare_key(ws.db, constraint)
    calls: list[str] = []
    complete = held_keys.complete

    def spy(con, desired, profiles, candidates, hashes=None, unique=False):
        calls.append("unique" if unique else "read")
        return complete(con, desired, profiles, candidates, hashes, unique)

    monkeypatch.setattr(held_keys, "complete", spy)
    declared, declared_changes, scanned = _plan(ws.root, monkeypatch, fast=True)
    assert declared == probed == general
    assert declared_changes == probed_changes == general_changes
    if "error" in declared:  # the segment returns the NULL key: the same error each way
        assert constraint == "UNIQUE" and "NULL key" in declared["error"]
        return
    assert declared_changes and set(calls) == {"unique"}  # leavers were not read again
    assert scanned == ({"s"} if segment in FAST else set())
    # the apply (no check for repeated keys in what it sends) leaves nothing to do
    res = cli(ws, "apply", "--auto-approve", "--allow-mass-removal")
    assert res.exit_code == 0, res.output + res.stderr
    again = cli(ws, "plan", "--detailed-exitcode")
    assert again.exit_code == 0, again.output
