"""Usage the CLI refuses before doing anything (exit 1, as every error), and output it keeps
safe: option combinations and ranges, `init` on a path it cannot create, GitHub annotations
and destination names printed in tables."""

from __future__ import annotations

import duckdb
import pytest
from click.testing import CliRunner

from reconciler.cli.main import main
from reconciler.cli.reports import printable
from reconciler.errors import ConfigError, Location
from reconciler.render.problems import render_github
from tests.conftest import cli, profile

ACT = "segments: [seg-a]\ndestination: sandbox\nname: A\n"
OTHER = "segments: [seg-b]\ndestination: sandbox\nname: B\n"


def _usage_error(res, *expected: str) -> None:
    assert res.exit_code == 1, res.output + res.stderr
    assert "Traceback" not in res.stderr
    for text in expected:
        assert text in res.stderr, res.stderr


# ---------------------------------------------------------------------- apply PLANFILE -t
@pytest.mark.parametrize(
    ("args", "named", "flags"),
    [
        (["-t", "act"], "-t/--target cannot be used with a saved plan file", "-t ID"),
        (["--target", "act"], "-t/--target cannot be used with a saved plan file", "-t ID"),
        (["--due"], "--due cannot be used with a saved plan file", "--due"),
        (["-t", "act", "--due"], "-t/--target and --due cannot be used", "-t ID --due"),
    ],
)
def test_apply_refuses_targets_with_a_saved_plan(workspace, tmp_path, args, named, flags):
    ws = workspace(
        {"act": ACT, "other": OTHER}, profiles=[profile(i, a=True, b=True) for i in range(3)]
    )
    out = tmp_path / "both.plan"
    assert cli(ws, "plan", "--out", str(out)).exit_code == 0
    res = cli(ws, "apply", str(out), *args, "--auto-approve")
    _usage_error(res, "Usage:", named, f"(`reconcile plan {flags} --out PLANFILE`)")
    assert ws.sandbox_keys() == {}  # nothing applied
    assert not (ws.root / ".reconcile" / "state.duckdb").exists()
    res = cli(ws, "apply", str(out), "--auto-approve")  # the plan as it is still applies
    assert res.exit_code == 0, res.stderr
    assert set(ws.sandbox_keys()) == {"A", "B"}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["plan", "--out", ""], "--out needs a file name"),
        (["plan", "--out", "  "], "--out needs a file name"),
        (["apply", "", "--auto-approve"], "PLANFILE is empty"),
        (["show", ""], "PLANFILE is empty"),
    ],
)
def test_an_empty_plan_file_name_is_a_usage_error(workspace, args, expected):
    """`plan --out "$PLANFILE" && apply "$PLANFILE"` with PLANFILE unset must not plan and
    apply something nobody reviewed."""
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(3)])
    _usage_error(cli(ws, *args), expected)
    assert ws.sandbox_keys() == {}  # nothing applied


# ---------------------------------------------------------------------- numeric ranges
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["segments", "seg-a", "--limit", "-3"], "-3 is not in the range 0<=x<=10000"),
        (["segments", "seg-a", "--limit", "100000000000000000000"], "not in the range"),
        (["log", "act", "--limit", "999999999999999999999"], "not in the range 1<=x<=1000000"),
        (["log", "act", "--limit", "0"], "0 is not in the range 1<=x<=1000000"),
        (["log", "act", "--rejected", "--limit", "-1"], "not in the range"),
    ],
)
def test_out_of_range_limits_are_usage_errors(workspace, args, expected):
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(3)])
    res = cli(ws, *args)
    _usage_error(res, "Invalid value for '--limit'", expected)
    assert "database engine" not in res.stderr


def test_segments_limit_0_shows_sizes_only(workspace):
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(3)])
    res = cli(ws, "segments", "seg-a", "--limit", "0")
    assert res.exit_code == 0, res.stderr
    assert res.output == "seg-a: 3 profiles  (segments/seg-a.yaml)\n"
    (seg,) = cli(ws, "segments", "seg-a", "--limit", "0", "--format", "json").json()["segments"]
    assert seg["size"] == 3 and seg["preview"] == [] and seg["note"] is None
    (seg,) = cli(ws, "segments", "seg-a", "--limit", "2", "--format", "json").json()["segments"]
    assert seg["preview"] == ["c00000", "c00001"]


# ---------------------------------------------------------------------- status, init
def test_status_active_and_inactive_are_mutually_exclusive(workspace):
    ws = workspace({"act": ACT}, profiles=[profile(1, a=True)])
    res = cli(ws, "status", "--active", "--inactive")
    _usage_error(res, "--active and --inactive are mutually exclusive")
    assert res.output == ""
    assert "act" in cli(ws, "status", "--active").output
    assert cli(ws, "status", "--inactive").output == "No activations.\n"


def test_init_where_nothing_can_be_created_is_one_error_naming_the_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for target, reason in (
        (blocker / "ws", "Not a directory"),
        ("/proc/1/nope", "No such file or directory"),
    ):
        res = CliRunner().invoke(main, ["init", str(target)])
        assert res.exit_code == 1, res.output
        assert res.stderr.startswith(f"Error: cannot create the workspace in {target}: ")
        assert reason in res.stderr and "internal error" not in res.stderr
        assert res.stderr.count("\n") == 1


# ---------------------------------------------------------------------- github annotations
def test_github_annotations_escape_properties_and_data():
    file = "activations/a,line=99,title=x::%0Aevil.yaml"
    error = ConfigError("bad\r\nvalue: 100%", Location(file, 3, "name"))
    (line,) = render_github([error], []).splitlines()
    assert line == (
        "::error file=activations/a%2Cline=99%2Ctitle=x%3A%3A%250Aevil.yaml,line=3,"
        "title=reconcile validate::name: bad%0D%0Avalue: 100%25"
    )
    head, _, _ = line.partition("::name")
    assert head.count("::") == 1 and head.count(",") == 2  # file, line, title: no others


def test_validate_github_escapes_a_forged_file_name(workspace):
    ws = workspace({"ok": ACT})
    ws.write("activations/a,line=99,title=x::%0Aevil.yaml", "segments: [nope]\n")
    res = cli(ws, "validate", "--format", "github")
    assert res.exit_code == 1
    forged = [ln for ln in res.output.splitlines() if "evil" in ln]
    assert forged and all(
        ln.startswith("::error file=activations/a%2Cline=99%2Ctitle=x%3A%3A%250Aevil.yaml,")
        for ln in forged
    )


def test_validate_text_prints_a_file_name_with_a_newline_on_one_line(workspace):
    """A file name holding a newline or an escape is printed escaped: the problem stays one
    line, and no terminal sequence reaches the screen."""
    ws = workspace({"ok": ACT})
    ws.write("activations/a\x1b[31mred\nx.yaml", "segments: [nope]\n")
    res = cli(ws, "validate")
    assert res.exit_code == 1
    (line,) = [ln for ln in res.stderr.splitlines() if "red" in ln]
    assert line.strip().startswith("activations/a\\x1b[31mred\\nx.yaml:1: "), line
    assert "\x1b" not in res.stderr


# ---------------------------------------------------------------------- lists
def test_lists_escapes_control_characters_in_destination_names(workspace):
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(2)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    con = duckdb.connect(str(ws.root / ".reconcile/sandbox.duckdb"))
    con.execute("UPDATE audiences SET name = ?", ["A\x1b[2J\x07\nB\u202eC"])
    con.close()
    res = cli(ws, "lists", "sandbox")
    assert res.exit_code == 0, res.stderr
    header, row = res.output.splitlines()
    assert "A\\x1b[2J\\x07\\nB\\u202eC" in row
    assert not any(c in res.output for c in "\x1b\x07\u202e")
    listed = cli(ws, "lists", "sandbox", "--format", "json").json()
    assert listed[0]["name"] == "A\x1b[2J\x07\nB\u202eC"  # JSON escapes them itself


def test_a_name_renamed_at_the_destination_is_printed_escaped_and_the_plan_file_is_usable(
    workspace,
):
    """The plan shows the audience's current name at the destination (set in its UI): its
    control characters are escaped in the text, and the saved plan holds them escaped too (its
    reader refuses a control character: the file was refused as corrupt, plan after plan)."""
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(2)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    con = duckdb.connect(str(ws.root / ".reconcile/sandbox.duckdb"))
    con.execute("UPDATE audiences SET name = ?", ["x\x1b]0;pwned\x07\nPlan: 0 to create"])
    con.close()
    res = cli(ws, "plan")
    assert res.exit_code == 0, res.stderr
    assert not any(c in res.output for c in "\x1b\x07"), res.output
    assert 'audience "x\\x1b]0;pwned\\x07\\nPlan: 0 to create" -> ' in res.output, res.output
    planfile = ws.root / "r.plan"
    assert cli(ws, "plan", "--out", str(planfile)).exit_code == 0
    shown = cli(ws, "show", str(planfile))
    assert shown.exit_code == 0, shown.stderr
    applied = cli(ws, "apply", str(planfile), "--auto-approve")
    assert applied.exit_code == 0, applied.output + applied.stderr
    assert "No changes" in cli(ws, "plan").output


def test_printable_keeps_ordinary_text():
    assert printable("Café – VIP 2026 \\ tab") == "Café – VIP 2026 \\ tab"
    assert printable("\t\x7f\x9f\u2028") == "\\t\\x7f\\x9f\\u2028"
    assert printable(None) == "None" and printable(42) == "42"


# ---------------------------------------------------------------------- a reader that left
@pytest.mark.parametrize("command", [["status"], ["plan"], ["log", "act"]])
def test_a_closed_output_pipe_is_not_an_internal_error(workspace, command):
    """`reconcile status | head -1`: the reader went away; the command stops quietly."""
    import os
    import subprocess

    from tests.state_workspace import reconcile_command

    ws = workspace({"act": ACT}, profiles=[profile(1, a=True)])
    read, write = os.pipe()
    os.close(read)  # gone before the first line is written
    try:
        proc = subprocess.run(
            [*reconcile_command(), "-C", str(ws.root), *command],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "BrokenPipe" not in proc.stderr and proc.returncode == 1, proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["lists", "nosuch"],
        ["segments", "seg-a", "--limit", "-3"],
        ["plan", "-t", "nosuch"],
        ["lol"],
    ],
    ids=["error", "usage", "unknown-target", "unknown-command"],
)
def test_with_log_format_json_an_error_is_one_json_event(workspace, args):
    """A pipeline reading `--log-format json` events gets the error as an event too."""
    import json

    ws = workspace({"act": ACT}, profiles=[profile(1, a=True)])
    res = cli(ws, "--log-format", "json", *args)
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    events = [json.loads(line) for line in lines]  # every line is JSON
    assert events[-1]["event"] == "error" and events[-1]["message"], events
    assert not events[-1]["message"].startswith("Error:")
    text = cli(ws, *args)  # without it: the plain `Error: ...` line
    assert text.exit_code == 1 and "Error: " in text.stderr and '"event"' not in text.stderr


def test_a_workspace_directory_that_does_not_exist_is_an_error(workspace):
    """`-C examples/mata` (a typo) must not fall back to the workspace of a parent folder."""
    ws = workspace({})
    res = cli(ws, "-C", str(ws.root / "examples" / "mata"), "validate")
    assert res.exit_code == 1 and "Directory" in res.stderr and "does not exist" in res.stderr
    assert "Valid" not in res.output


def test_ctrl_c_inside_a_query_is_reported_as_interrupted(capsys):
    """DuckDB turns Ctrl-C during a query into RuntimeError('Query interrupted'): the user
    pressed Ctrl-C, so the message is `interrupted`, not an internal error."""
    import pytest

    from reconciler.cli.common import fail

    with pytest.raises(SystemExit) as info:
        fail(RuntimeError("Query interrupted"))
    assert info.value.code == 1
    assert capsys.readouterr().err.strip() == "Error: interrupted"
