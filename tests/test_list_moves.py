"""An applied activation cannot be moved to another list by editing `list:`: its members are
recorded in the list it sends to, so a plan would send nothing to the new list (and believe
it full), or rename a list that is not its own. Both are refused, naming the file."""

from __future__ import annotations

from tests.conftest import cli, profile

OWNER = "segments: [seg-b]\ndestination: sandbox\nname: Other team list\n"
CREATED = "segments: [seg-a]\ndestination: sandbox\nname: Mine\n"
EXISTING = "segments: [seg-a]\ndestination: sandbox\nlist: {existing: Other team list}\n"


def rows():
    return [profile(i, a=i < 3, b=i >= 3) for i in range(6)]


def test_create_then_existing_is_refused(workspace):
    ws = workspace({"act": CREATED, "owner": OWNER}, profiles=rows())
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    before = ws.sandbox_keys()
    ws.write("activations/act.yaml", EXISTING)
    for args in (["plan"], ["plan", "--refresh=false"], ["apply", "--auto-approve"]):
        res = cli(ws, *args)
        assert res.exit_code == 1, (args, res.output)
        assert "activations/act.yaml" in res.stderr and "cannot move them" in res.stderr
    assert ws.sandbox_keys() == before


def test_existing_then_create_does_not_rename_a_list_not_its_own(workspace):
    ws = workspace({"owner": OWNER}, profiles=rows())
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write("activations/act.yaml", EXISTING.replace("seg-a", "seg-a, seg-b"))
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    before = ws.sandbox_keys()
    ws.write("activations/act.yaml", CREATED)
    res = cli(ws, "plan")
    assert res.exit_code == 1
    assert "activations/act.yaml" in res.stderr and "would rename that list" in res.stderr
    assert cli(ws, "apply", "--auto-approve").exit_code == 1
    assert ws.sandbox_keys() == before and "Other team list" in before


def test_plan_while_another_process_holds_the_sandbox_warns(workspace):
    """An apply writing the sandbox holds its file: a plan in the meantime cannot read the
    audience back, and says so instead of failing on the database's lock."""
    import subprocess
    import sys

    ws = workspace({"act": CREATED}, profiles=rows())
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('held', flush=True); time.sleep(60)", str(ws.root / ".reconcile/sandbox.duckdb")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        res = cli(ws, "plan")
        assert res.exit_code == 0, res.output + res.stderr
        assert "in use by another process" in res.output + res.stderr
        assert "database engine failed" not in res.output + res.stderr
    finally:
        holder.kill()
        holder.wait()


def test_moving_to_another_destination_sends_everyone_there_and_says_so(workspace):
    ws = workspace({"act": CREATED}, profiles=rows())
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    before = ws.sandbox_keys()
    other = (
        (ws.root / "integrations/sandbox.yaml").read_text().replace("sandbox.duckdb", "two.duckdb")
    )
    ws.write("integrations/two.yaml", other)
    ws.write("activations/act.yaml", CREATED.replace("destination: sandbox", "destination: two"))
    res = cli(ws, "plan")
    assert res.exit_code == 0, res.stderr
    text = " ".join(res.output.split())
    assert "moved from destination 'sandbox' to 'two'" in text and "left as it is" in text
    assert "was deleted at the destination" not in text
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert ws.sandbox_keys() == before  # the old one: untouched
    assert ws.sandbox_keys(path=".reconcile/two.duckdb") == before  # everyone, at the new one
    assert "No changes" in cli(ws, "plan").output


def test_an_interrupted_run_with_nothing_left_is_finished_by_the_next_apply(workspace):
    """The run was killed after its last batch was recorded: nothing is left to send, and
    the next apply still records a finished run instead of leaving it Pending."""
    import duckdb

    ws = workspace({"act": CREATED}, profiles=rows())
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    con = duckdb.connect(str(ws.root / ".reconcile/state.duckdb"))
    con.execute("UPDATE activations SET status = 'Pending'")
    con.close()
    assert "Pending" in cli(ws, "status").output
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert "act: Complete (+0 -0 ~0)" in res.output
    assert "Complete" in cli(ws, "status").output and "Pending" not in cli(ws, "status").output
    assert "No changes" in cli(ws, "apply", "--auto-approve").output  # and then nothing more


def test_ctrl_c_during_an_export_still_exits_non_zero(workspace, monkeypatch):
    """Ctrl-C lands while an export writes its files: the export is finished and recorded
    (it writes its files whole), and the run still exits 1, as every stopped run does."""
    import os
    import signal

    from destinations.files.adapter import FilesDestination
    from tests.test_files_export import EXPORT_ACT, FILES_YAML

    original = FilesDestination.write_export

    def write_then_ctrl_c(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C during the export
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FilesDestination, "write_export", write_then_ctrl_c)
    ws = workspace({"vip-export": EXPORT_ACT.format(full="never")}, profiles=rows())
    ws.write("integrations/files.yaml", FILES_YAML.format(format="csv", pii="hashed", extra=""))
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 1, res.output + res.stderr
    assert "Interrupted" in res.stderr
    monkeypatch.undo()
    assert "No changes" in cli(ws, "plan").output  # the export was recorded whole
