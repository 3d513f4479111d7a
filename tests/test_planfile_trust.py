"""What a saved plan may contain and where `plan --out` may write it.

A plan file is untrusted even when its checksums match (someone who can rewrite the artifact
can recompute them): its strings get the rules the workspace's own names get, and the counts
it shows must be the member changes it carries. ``--out`` replaces only a plan file."""

from __future__ import annotations

import json
import os
import sys
import unicodedata
import zipfile
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from reconciler.plan import planfile
from reconciler.plan.planfile_checks import UNSAFE_NAME
from reconciler.workspace.templating import TemplateFailed, render_name
from tests.conftest import cli, profile
from tests.test_planfile import members, refused, write_plan

#: the text-direction overrides render_name refuses besides control characters
BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
MAINTAIN = "segments: [seg-a]\ndestination: sandbox\nname: Audience A\n"


def tampered(tmp_path: Path, good: Path, name: str, edit) -> Path:
    """``good`` with plan.json edited by ``edit(doc)`` and the checksums recomputed."""
    parts = members(good)
    doc = json.loads(parts["plan.json"])
    edit(doc)
    parts["plan.json"] = json.dumps(doc).encode()
    return write_plan(tmp_path / f"{name}.plan", parts)


def _set(*path, value):
    def edit(doc):
        node = doc
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value

    return edit


AUDIENCE = ("activations", 0, "audiences", 0)


@pytest.mark.parametrize(
    ("case", "value", "expected"),
    [
        ("esc", "A\x1b[2J\x1b[31mowned", "holds a control character (U+001B)"),
        ("bel", "A\x07", "holds a control character (U+0007)"),
        ("newline", "A\nPlan: 0 to create", "holds a control character (U+000A)"),
        ("bidi", "A\u202egnp.exe", "holds a control character (U+202E)"),
        ("empty", "  ", "is empty"),
        ("huge", "x" * 10_000_000, "is longer than"),
    ],
)
def test_a_tampered_audience_name_is_refused(saved, tmp_path, case, value, expected):
    ws, good = saved
    plan = tampered(tmp_path, good, case, _set(*AUDIENCE, "name", value=value))
    refused(ws, plan, "activations.0.audiences.0.name")
    refused(ws, plan, expected)


def test_the_name_rule_is_the_one_yaml_names_get():
    """A plan file's names are refused for exactly the characters render_name refuses in a
    name from YAML (``UNSAFE_NAME`` is a regular expression: plan.json may be 64 MB)."""
    refused_by_yaml = set()
    for code in range(sys.maxunicode + 1):
        c = chr(code)
        if unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs") or c in BIDI:
            refused_by_yaml.add(c)
    refused_here = {c for c in map(chr, range(sys.maxunicode + 1)) if UNSAFE_NAME.match(c)}
    assert refused_here == refused_by_yaml
    for c in sorted(refused_by_yaml):
        with pytest.raises(TemplateFailed, match="control character"):
            render_name(
                "a{{ activation }}b",
                as_of=datetime(2026, 1, 1, tzinfo=UTC),
                timezone="UTC",
                date_created=date(2026, 1, 1),
                activation=c,
                segments=[],
            )


@pytest.mark.parametrize(
    ("case", "edit", "expected"),
    [
        (
            "id",
            _set("activations", 0, "id", value="Bad Id"),
            'activations.0.id "Bad Id" is not an id',
        ),
        ("note", _set("activations", 0, "notes", value=["\x1b]0;x\x07"]), "activations.0.notes.0"),
        ("workspace", _set("workspace", value="w\x1bs"), "workspace holds a control character"),
        ("rename", _set(*AUDIENCE, "rename_from", value="old\rnew"), "rename_from"),
        (
            "surrogate",
            _set("activations", 0, "notes", value=["\ud800"]),
            "activations.0.notes.0 holds an unpaired surrogate (U+D800)",
        ),
        ("share", _set("activations", 0, "max_removal_share", value=-1), "max_removal_share"),
        ("nan", _set("activations", 0, "max_removal_share", value=float("nan")), "share"),
    ],
)
def test_other_tampered_strings_are_refused(saved, tmp_path, case, edit, expected):
    ws, good = saved
    refused(ws, tampered(tmp_path, good, case, edit), expected)


def test_counts_that_are_not_the_carried_changes_are_refused(saved, tmp_path):
    """`show` said +5 while apply would send every carried row: now the file is refused."""
    ws, good = saved

    def five(doc):  # the audience and the summary agree: only the rows tell
        doc["activations"][0]["audiences"][0]["add"] = 5
        doc["summary"]["add"] = 5

    plan = tampered(tmp_path, good, "add", five)
    refused(
        ws,
        plan,
        'audience group "all" of activation "act" shows +5 -0 ~0 (forget 0) but '
        "changes.parquet carries +4 -0 ~0 (forget 0)",
    )

    def summary(doc):
        doc["summary"]["add"] = 1

    refused(ws, tampered(tmp_path, good, "summary", summary), "summary does not add up")

    def twice(doc):
        doc["activations"][0]["audiences"].append(doc["activations"][0]["audiences"][0])

    refused(ws, tampered(tmp_path, good, "twice", twice), 'lists audience group "all" twice')


def test_a_plan_of_action_remove_round_trips(workspace, tmp_path):
    """`action: remove` stages `purge` rows: a saved plan holding them is a plan, not corrupt."""
    ws = workspace(
        {"own": "segments: [seg-b]\ndestination: sandbox\nname: Existing\n"},
        profiles=[profile(i, a=True, b=i < 2) for i in range(4)],
    )
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write(
        "activations/rm.yaml",
        "segments: [seg-a]\ndestination: sandbox\naction: remove\nlist: {existing: Existing}\n",
    )
    out = tmp_path / "rm.plan"
    assert cli(ws, "plan", "--out", str(out)).exit_code == 0
    res = cli(ws, "show", str(out))
    assert res.exit_code == 0, res.stderr
    assert cli(ws, "apply", str(out), "--auto-approve").exit_code == 0
    assert ws.sandbox_keys("Existing") == {"Existing": set()}


def test_a_due_plan_carries_only_its_own_changes(workspace, tmp_path):
    """`plan --due --out`: an activation that is not due is left out, and so are its rows."""
    ws = workspace({"a": MAINTAIN}, profiles=[profile(i, a=True, b=True) for i in range(4)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.set_profiles([profile(i, a=True, b=True) for i in range(6)])  # `a` changes, not due
    ws.write("activations/b.yaml", "segments: [seg-b]\ndestination: sandbox\nname: B\n")
    out = tmp_path / "due.plan"
    assert cli(ws, "plan", "--due", "--out", str(out)).exit_code == 0
    res = cli(ws, "show", str(out), "--format", "json")
    assert res.exit_code == 0, res.stderr
    assert [a["id"] for a in res.json()["activations"]] == ["b"]


# ---------------------------------------------------------------------- plan --out PATH
def test_out_never_replaces_what_is_not_a_plan_file(saved, tmp_path):
    ws, good = saved
    config = ws.root / "reconcile.yaml"
    before = config.read_bytes()
    res = cli(ws, "plan", "--out", str(config))
    assert res.exit_code == 1
    assert res.stderr.startswith(f"Error: {config} exists and is not a plan file")
    assert config.read_bytes() == before

    fifo = tmp_path / "pipe.plan"
    os.mkfifo(fifo)
    link = tmp_path / "link.plan"
    link.symlink_to(good)
    foreign = tmp_path / "foreign.plan"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("readme.txt", "hello")
    for path, why in (
        (fifo, "is not a regular file (a named pipe)"),
        (link, "is not a regular file (a symbolic link)"),
        (tmp_path, "is a directory"),  # click's own check of --out
        (foreign, "exists and is not a plan file"),
    ):
        res = cli(ws, "plan", "--out", str(path))
        assert res.exit_code == 1, (path, res.output)
        assert str(path) in res.stderr and why in res.stderr, res.stderr
        assert "\n" not in res.stderr.strip() or "Usage" in res.stderr
    assert fifo.is_fifo() and link.is_symlink() and zipfile.ZipFile(foreign).namelist()
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*.partial"))


def test_out_may_replace_an_older_plan_file(saved, tmp_path):
    ws, good = saved
    older = good.read_bytes()
    assert cli(ws, "plan", "--out", str(good)).exit_code == 0
    assert good.read_bytes() != older
    assert cli(ws, "show", str(good)).exit_code == 0
    # a plan file of another format version is a plan file too
    parts = members(good)
    manifest = json.loads(parts["manifest.json"])
    manifest["plan_file_format"] = 1
    parts["manifest.json"] = json.dumps(manifest).encode()
    old = write_plan(tmp_path / "v1.plan", parts, reseal=False)
    assert cli(ws, "plan", "--out", str(old)).exit_code == 0
    assert cli(ws, "show", str(old)).exit_code == 0


def test_save_checks_the_path_too(saved, tmp_path):
    """planfile.save itself refuses (the CLI checks before planning; save checks again)."""
    _, good = saved
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    with pytest.raises(planfile.PlanError, match="exists and is not a plan file"):
        planfile.check_out(target)
    planfile.check_out(good)
    planfile.check_out(tmp_path / "new.plan")
    assert target.read_text() == "keep me"


def test_a_member_holding_more_than_its_entry_declares_is_refused_unread(saved, tmp_path):
    """A zip entry declaring plan.json's real size and checksum but holding 64 MiB more of
    deflated spaces: ``ZipFile.read`` inflated all of it in memory (a few MB of file took
    gigabytes) and the file was accepted, as only the declared bytes were checked."""
    import struct
    import zlib

    ws, good = saved
    parts = members(good)
    real = parts["plan.json"]
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = co.compress(real) + b"".join(co.compress(b" " * (1 << 20)) for _ in range(64))
    bomb += co.flush()
    out = write_plan(tmp_path / "bomb.plan", {**parts, "plan.json": b"x"}, deflate=())
    data = bytearray(out.read_bytes())
    info = zipfile.ZipFile(out).getinfo("plan.json")
    head = info.header_offset
    names = struct.unpack("<HH", data[head + 26 : head + 30])
    start = head + 30 + sum(names)
    data[start : start + info.compress_size] = bomb
    shift = len(bomb) - info.compress_size
    fields = (zlib.crc32(real), len(bomb), len(real))
    struct.pack_into("<III", data, head + 14, *fields)
    cd = data.find(b"PK\x01\x02", start + len(bomb))
    while cd >= 0:
        n = struct.unpack("<H", data[cd + 28 : cd + 30])[0]
        offset = struct.unpack("<I", data[cd + 42 : cd + 46])[0]
        if bytes(data[cd + 46 : cd + 46 + n]) == b"plan.json":
            struct.pack_into("<III", data, cd + 16, *fields)
        if offset > head:
            struct.pack_into("<I", data, cd + 42, offset + shift)
        cd = data.find(b"PK\x01\x02", cd + 4)
    end = data.rfind(b"PK\x05\x06")
    struct.pack_into(
        "<I", data, end + 16, struct.unpack("<I", data[end + 16 : end + 20])[0] + shift
    )
    out.write_bytes(bytes(data))
    assert zipfile.ZipFile(out).getinfo("plan.json").file_size == len(real)
    refused(ws, out, "its plan.json holds more data than its zip entry says")
