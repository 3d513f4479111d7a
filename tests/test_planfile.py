"""Saved plan files are untrusted (CI artifacts): names inside them are data, never paths,
and every corrupt, truncated, foreign or edited file is one ``Error: <file> ...`` line with
exit 1 from both ``show`` and ``apply PLANFILE``, with nothing written."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import duckdb

from reconciler.plan import planfile
from tests.conftest import WS, cli

MAINTAIN = "segments: [seg-a]\ndestination: sandbox\nname: Audience A\n"


def members(plan: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(plan) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def write_plan(
    path: Path, parts: dict[str, bytes], *, reseal: bool = True, deflate: tuple[str, ...] = ()
) -> Path:
    """A plan file from ``parts``; ``reseal`` recomputes the manifest's checksums, as someone
    editing a plan on purpose would."""
    parts = dict(parts)
    if reseal and "manifest.json" in parts:
        manifest = json.loads(parts["manifest.json"])
        manifest["plan_sha256"] = hashlib.sha256(parts["plan.json"]).hexdigest()
        manifest["changes_sha256"] = hashlib.sha256(parts["changes.parquet"]).hexdigest()
        parts["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in parts.items():
            kind = zipfile.ZIP_DEFLATED if name in deflate or name.endswith(".json") else 0
            zf.writestr(name, data, compress_type=kind)
    return path


def edit_json(data: bytes, **changes) -> bytes:
    doc = json.loads(data)
    doc.update(changes)
    return json.dumps(doc).encode()


def parquet_bytes(tmp_path: Path, select: str) -> bytes:
    out = tmp_path / "x.parquet"
    con = duckdb.connect()
    con.execute(f"COPY ({select}) TO '{out}' (FORMAT parquet)")
    con.close()
    return out.read_bytes()


def refused(ws: WS, plan: Path, expected: str) -> None:
    for args in (("show", str(plan)), ("apply", str(plan), "--auto-approve")):
        res = cli(ws, *args)
        assert res.exit_code == 1, (args, res.output, res.stderr)
        err = res.stderr.strip()
        assert err.startswith("Error: ") and str(plan) in err and "\n" not in err, err
        assert expected in err, err
        assert "Traceback" not in res.output + res.stderr
    assert ws.sandbox_keys() == {}
    assert not (ws.root / ".reconcile" / "state.duckdb").exists()
    leftovers = list((ws.root / ".reconcile").rglob("*.parquet"))
    assert leftovers == []


def test_plan_id_is_data_not_a_path(saved, tmp_path):
    """A crafted plan_id naming another file must neither overwrite nor delete it."""
    ws, good = saved
    victim = tmp_path / "victim.parquet"
    victim.write_bytes(b"precious")
    parts = members(good)
    for plan_id in (str(victim.with_suffix("")), "../../../victim", "a/../../b"):
        parts["plan.json"] = edit_json(parts["plan.json"], plan_id=plan_id)
        parts["manifest.json"] = edit_json(parts["manifest.json"], plan_id=plan_id)
        crafted = write_plan(tmp_path / "crafted.plan", parts)
        res = cli(ws, "show", str(crafted), "--format", "json")
        assert res.exit_code == 0, res.stderr
        assert res.json()["plan_id"] == plan_id
        assert victim.read_bytes() == b"precious"


def test_round_trip_still_applies(saved):
    ws, good = saved
    res = cli(ws, "apply", str(good), "--auto-approve")
    assert res.exit_code == 0, res.stderr
    assert len(ws.sandbox_keys()["Audience A"]) == 4


def damaged(tmp_path: Path, good: Path) -> list[tuple[str, Path, str]]:
    parts = members(good)
    raw = good.read_bytes()
    cases: list[tuple[str, bytes | dict, dict, str]] = []

    def add(name: str, content, expected: str, **kw) -> None:
        cases.append((name, content, kw, expected))

    add("empty", b"", "is not a plan file written by `reconcile plan --out`")
    add("garbage", b"\x00\xff" * 500, "is not a plan file")
    add("text", b"format_version: 1\n", "is not a plan file")
    add("truncated", raw[: len(raw) // 2], "is not a plan file")
    add("tail-cut", raw[:-10], "is not a plan file")
    add("no-members", {}, "it holds nothing")
    add("foreign-zip", {"readme.txt": b"hello"}, "it holds readme.txt")
    add("extra-member", {**parts, "evil.sh": b"rm -rf /"}, "it holds changes.parquet, evil.sh")
    add("no-manifest", {k: v for k, v in parts.items() if k != "manifest.json"}, "it holds")
    add(
        "old-format",
        {**parts, "manifest.json": edit_json(parts["manifest.json"], plan_file_format=1)},
        "written by another version of reconcile (plan file format 1",
    )
    add(
        "manifest-not-json",
        {**parts, "manifest.json": b"{nope"},
        "its manifest.json is not valid JSON",
        reseal=False,
    )
    add(
        "manifest-a-list",
        {**parts, "manifest.json": b"[1, 2]"},
        "its manifest is not a JSON object",
        reseal=False,
    )
    add(
        "manifest-deep",
        {**parts, "manifest.json": b"[" * 50_000 + b"]" * 10_000},
        "its manifest.json is not valid JSON",
        reseal=False,
    )
    add(
        "manifest-huge",
        {**parts, "manifest.json": b" " * 70_000 + b"{}"},
        "its manifest.json is larger than 65,536 bytes",
        reseal=False,
    )
    add(
        "plan-edited",
        {**parts, "plan.json": edit_json(parts["plan.json"], workspace="elsewhere")},
        "plan.json does not match the checksum in the manifest",
        reseal=False,
    )
    add(
        "plan-version",
        {**parts, "plan.json": edit_json(parts["plan.json"], format_version=99)},
        "written by another version of reconcile (plan format 99)",
    )
    add(
        "plan-wrong-types",
        {**parts, "plan.json": edit_json(parts["plan.json"], activations="all of them")},
        "plan.json is not a valid plan (activations:",
    )
    add(
        "plan-missing-field",
        {**parts, "plan.json": edit_json(parts["plan.json"], plan_id=None)},
        "plan.json is not a valid plan (plan_id:",
    )
    add(
        "plan-not-json",
        {**parts, "plan.json": b"\xff\xfe not json"},
        "its plan.json is not valid JSON",
    )
    add(
        "plan-deep-json",
        {**parts, "plan.json": b"[" * 200_000 + b"]" * 200_000},
        "its plan.json is not valid JSON",
    )
    add(
        "manifest-other-plan",
        {**parts, "manifest.json": edit_json(parts["manifest.json"], plan_id="other")},
        "plan.json and the manifest name different plans",
    )
    add(
        "changes-edited",
        {**parts, "changes.parquet": parts["changes.parquet"][:-1] + b"X"},
        "its member changes do not match the manifest",
        reseal=False,
    )
    add(
        "changes-garbage",
        {**parts, "changes.parquet": b"PAR1 not really"},
        "changes.parquet is not a readable Parquet file",
    )
    add(
        "changes-wrong-columns",
        {**parts, "changes.parquet": parquet_bytes(tmp_path, "SELECT 1 AS a, 'x' AS b")},
        "changes.parquet has the columns (a INTEGER, b VARCHAR)",
    )
    add(
        "changes-wrong-types",
        {
            **parts,
            "changes.parquet": parquet_bytes(
                tmp_path, "SELECT 'act' activation_id, 'all' grp, 'add' op, 42 AS key"
            ),
        },
        "changes.parquet has the columns (activation_id VARCHAR, grp VARCHAR, op VARCHAR, "
        "key INTEGER)",
    )
    add(
        "changes-unknown-op",
        {
            **parts,
            "changes.parquet": parquet_bytes(
                tmp_path, "SELECT 'act' activation_id, 'all' grp, 'drop' op, 'c1' AS key"
            ),
        },
        "changes.parquet has 1 rows that match no planned change",
    )
    add(
        "changes-other-activation",
        {
            **parts,
            "changes.parquet": parquet_bytes(
                tmp_path, "SELECT '../x' activation_id, 'all' grp, 'add' op, 'c1' AS key"
            ),
        },
        "changes.parquet has 1 rows that match no planned change",
    )
    add(
        "zip-bomb",
        {**parts, "changes.parquet": b"\0" * (8 << 20)},
        "its changes.parquet is compressed inside the zip",
        deflate=("changes.parquet",),
    )
    out = []
    for name, content, kw, expected in cases:
        path = tmp_path / f"{name}.plan"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            write_plan(path, content, **kw)
        out.append((name, path, expected))
    return out


def test_damaged_plan_files_are_one_line_errors(saved, tmp_path):
    ws, good = saved
    for name, path, expected in damaged(tmp_path, good):
        try:
            refused(ws, path, expected)
        except AssertionError as exc:
            raise AssertionError(f"case {name}: {exc}") from exc


def test_missing_and_directory_plan_files(saved, tmp_path):
    ws, _ = saved
    refused(ws, tmp_path / "nope.plan", "no plan file")
    (tmp_path / "dir.plan").mkdir()
    res = cli(ws, "show", str(tmp_path / "dir.plan"))
    assert res.exit_code == 1 and "Traceback" not in res.stderr


def test_show_without_a_file_is_a_usage_error_with_exit_1(saved):
    ws, _ = saved
    res = cli(ws, "show")
    assert res.exit_code == 1
    assert "Missing argument 'PLANFILE'" in res.stderr


def test_no_temporary_file_is_named_after_the_plan(saved, tmp_path):
    ws, good = saved
    tmp = tmp_path / "tmpdir"
    staging = tmp_path / "staging.duckdb"
    plan = planfile.load(good, staging, tmp)
    assert list(tmp.iterdir()) == []
    assert plan.plan_id not in {p.stem for p in tmp_path.rglob("*")}


def test_an_unwritable_out_path_is_one_line(saved, tmp_path):
    ws, _ = saved
    out = tmp_path / "no" / "such" / "dir.plan"
    res = cli(ws, "plan", "--out", str(out))
    assert res.exit_code == 1
    assert res.stderr.startswith(f"Error: cannot write the plan to {out}: ")
    assert "\n" not in res.stderr.strip()
    assert not list((ws.root / ".reconcile").rglob("*.parquet"))
