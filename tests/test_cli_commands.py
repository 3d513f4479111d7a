"""The smaller commands (init: test_init.py): segments, lists, plan formats and --refresh=false."""

from __future__ import annotations

from tests.conftest import cli, plan_json, profile

ACT = "segments: [seg-a]\ndestination: sandbox\nname: A\n"


def test_segments_preview_hides_pii_unless_asked(workspace):
    ws = workspace({"act": ACT}, profiles=[profile(i, a=i < 3) for i in range(5)])
    res = cli(ws, "segments", "seg-a", "--format", "json").json()
    (seg,) = res["segments"]
    assert seg["size"] == 3 and seg["preview"] == ["c00000", "c00001", "c00002"]
    assert "@" not in cli(ws, "segments").output
    shown = cli(ws, "segments", "seg-a", "--show-pii").output
    assert "user0@example.com" in shown
    missing = cli(ws, "segments", "nope")
    assert missing.exit_code == 1 and "unknown segment 'nope'" in missing.stderr


def test_lists_shows_destination_audiences(workspace):
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(4)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    lists = cli(ws, "lists", "sandbox", "--format", "json").json()
    assert [(a["name"], a["size"]) for a in lists] == [("A", 4)]
    res = cli(ws, "lists", "nope")
    assert res.exit_code == 1 and "unknown integration 'nope'" in res.stderr


def test_existing_list_is_checked_unless_refresh_is_off(workspace):
    ws = workspace({"act": ACT + "list: {existing: Not There}\n"}, profiles=[profile(1, a=True)])
    res = cli(ws, "plan")
    assert res.exit_code == 1
    assert "activations/act.yaml:4: list.existing" in res.stderr
    assert "reconcile lists sandbox" in res.stderr
    offline = plan_json(ws, "--refresh=false")
    assert any("--refresh=false" in n for n in offline["activations"][0]["notes"])


def test_markdown_plan_is_a_pr_comment(workspace):
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(2)])
    res = cli(ws, "plan", "--format", "markdown")
    assert res.exit_code == 0
    assert "| act | create | sandbox (sandbox) | A (new) | 2 | 0 | 0 |" in res.output
    assert "**Plan:** 1 to create, 0 to update, 0 to delete" in res.output
    assert "<details><summary><b>act</b>: create" in res.output
    assert "\x1b[" not in res.output
