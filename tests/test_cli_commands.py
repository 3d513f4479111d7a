"""The smaller commands (init: test_init.py): segments, lists, plan formats and --refresh=false."""

from __future__ import annotations

import json

import duckdb

from tests.conftest import SANDBOX_YAML, cli, plan_json, profile

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


def test_an_existing_list_named_by_a_name_two_lists_share_is_refused(workspace):
    """Two lists of the same name at the destination: which one to take over is not guessed."""
    from destinations.sandbox import store

    ws = workspace({"act": ACT + "list: {existing: Twins}\n"}, profiles=[profile(1, a=True)])
    con = store.connect(ws.root / ".reconcile" / "sandbox.duckdb")
    try:
        ids = [store.create(con, "Twins", key).id for key in ("k1", "k2")]
    finally:
        con.close()
    res = cli(ws, "plan")
    assert res.exit_code == 1
    assert "activations/act.yaml:4: list.existing: 2 lists" in res.stderr, res.stderr
    assert all(i in res.stderr for i in ids) and "by its id" in res.stderr
    ws.write("activations/act.yaml", ACT + f"list: {{existing: {ids[0]}}}\n")
    planned = plan_json(ws)
    assert planned["activations"][0]["audiences"][0]["resource_id"] == ids[0]


def test_markdown_plan_is_a_pr_comment(workspace):
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(2)])
    res = cli(ws, "plan", "--format", "markdown")
    assert res.exit_code == 0
    assert "| act | create | sandbox (sandbox) | A (new) | 2 | 0 | 0 |" in res.output
    assert "**Plan:** 1 to create, 0 to update, 0 to delete" in res.output
    assert "<details><summary><b>act</b>: create" in res.output
    assert "\x1b[" not in res.output


# ---------------------------------------------------------------------- rejected members
def _rejecting(workspace, share: str = "0.5"):
    integration = SANDBOX_YAML + "  reject_add_keys: [c00001]\n"
    act = ACT + f"max_rejected_share: {share}\n"
    return workspace(
        {"act": act}, profiles=[profile(i, a=True) for i in range(5)], integration=integration
    )


def test_apply_reports_rejections_below_the_share_as_a_warning(workspace):
    ws = _rejecting(workspace)
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.stderr
    assert "act: Complete (+4 -0 ~0), 1 rejected" in res.output
    assert "  warning: 1 of 5 member(s) refused by the destination" in res.stderr
    assert "reconcile log ID --rejected" in res.stderr


def test_apply_fails_when_rejections_exceed_the_share(workspace):
    ws = _rejecting(workspace, "0.1")
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 1
    assert "act: Failed (+4 -0 ~0), 1 rejected" in res.output
    assert "warning:" not in res.stderr and "refused by the destination" in res.stderr


def test_log_rejected_lists_keys_reasons_and_no_raw_identifiers(workspace):
    ws = _rejecting(workspace)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    doc = cli(ws, "log", "act", "--rejected", "--format", "json").json()
    (row,) = doc["rejected"]
    assert doc["activation"] == "act"
    assert (row["group"], row["key"], row["op"]) == ("all", "c00001", "add")
    assert row["reason"] == "rejected by the sandbox (listed in the integration's config)"
    assert row["run_id"] and row["rejected_at"]
    text = cli(ws, "log", "act", "--rejected")
    assert text.exit_code == 0
    header, line = text.output.splitlines()
    assert header.split()[:6] == ["REJECTED", "AT", "RUN", "GROUP", "KEY", "OP"]
    assert "c00001" in line and "add" in line and "rejected by the sandbox" in line
    assert "@" not in text.output + json.dumps(doc)  # hashed identifiers only
    assert cli(ws, "log", "act").output.count("\n") >= 2  # the runs view is unchanged


def test_log_says_when_there_is_more_than_it_shows(workspace):
    """`--limit` (20 by default) cut the list without a word: it looked complete."""
    integration = SANDBOX_YAML + "  reject_add_keys: [c00001, c00002]\n"
    ws = workspace(
        {"act": ACT + "max_rejected_share: 0.5\n"},
        profiles=[profile(i, a=True) for i in range(5)],
        integration=integration,
    )
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.set_profiles([profile(i, a=True) for i in range(6)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0  # a second run
    one = cli(ws, "log", "act", "--rejected", "--limit", "1")
    assert "... more: the newest 1 rejected members are shown" in one.output, one.output
    assert "more" not in cli(ws, "log", "act", "--rejected", "--limit", "2").output
    assert cli(ws, "log", "act", "--rejected", "--limit", "1", "--format", "json").json()["more"]
    runs = cli(ws, "log", "act", "--limit", "1")
    assert "... more: the newest 1 runs are shown" in runs.output, runs.output
    assert not cli(ws, "log", "act", "--format", "json").json()["more"]


def test_log_rejected_reads_a_state_written_before_rejections_were_kept(workspace):
    ws = _rejecting(workspace)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    con = duckdb.connect(str(ws.root / ".reconcile/state.duckdb"))
    con.execute("DROP TABLE rejections")
    con.close()
    res = cli(ws, "log", "act", "--rejected")
    assert res.exit_code == 0, res.stderr
    assert res.output == "act: no rejected members.\n"
    assert cli(ws, "log", "act", "--rejected", "--format", "json").json()["rejected"] == []


def test_plan_counts_requests_for_a_destination_without_a_rate_limit(workspace):
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(15)])
    res = cli(ws, "plan")
    # 15 members in calls of 7 (the sandbox's batch_size): 3, plus creating the audience
    assert "Destination calls:\n    sandbox (sandbox): 4 requests of up to 7 members (no " in (
        res.output
    )
    (calls,) = plan_json(ws)["destination_calls"]
    assert calls["requests"] == 4 and calls["estimated_seconds"] is None
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert plan_json(ws)["destination_calls"] == []  # nothing to send
    assert "Destination calls" not in cli(ws, "plan").output


def test_the_schema_bundle_resolves_every_reference():
    """`reconcile schema` with no argument is one document a JSON Schema validator resolves:
    every `$ref` names a definition at its root, and a bad file is refused through it."""
    import jsonschema
    from click.testing import CliRunner

    from reconciler.cli.main import main

    bundle = json.loads(CliRunner().invoke(main, ["schema"]).stdout)
    refs: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(bundle)
    assert refs and all(r.removeprefix("#/$defs/") in bundle["$defs"] for r in refs)
    validator = jsonschema.Draft202012Validator(bundle)
    good = {"activation": {"segments": ["x"], "destination": "y", "list": {"existing": "L"}}}
    assert list(validator.iter_errors(good)) == []
    bad = {"activation": {"segments": ["x"], "destination": "y", "list": {"existing": 3}}}
    assert list(validator.iter_errors(bad))


def test_validate_reports_sorted_problems_as_json_and_github_annotations(workspace):
    ws = workspace(
        {
            "b-act": "segments: [nope]\ndestination: sandbox\n",
            "a-act": "segments: [seg-a]\ndestination: sandbox\nbogus: 1\n",
        }
    )
    text = cli(ws, "validate")
    assert text.exit_code == 1
    lines = [line.strip() for line in text.stderr.splitlines()[1:]]
    assert lines == sorted(lines) and lines[0].startswith("activations/a-act.yaml:3: bogus")
    res = cli(ws, "validate", "--format", "json")
    assert res.exit_code == 1
    doc = json.loads(res.output)
    assert doc["valid"] is False
    assert [(p["file"], p["line"], p["field"]) for p in doc["problems"]] == [
        ("activations/a-act.yaml", 3, "bogus"),
        ("activations/b-act.yaml", 1, "segments.0"),
    ]
    gh = cli(ws, "validate", "--format", "github")
    assert gh.exit_code == 1
    assert gh.output.splitlines()[0].startswith(
        "::error file=activations/a-act.yaml,line=3,title=reconcile validate::bogus: "
    )
    ws.remove("activations/b-act.yaml")
    ws.write("activations/a-act.yaml", "segments: [seg-a]\ndestination: sandbox\n")
    ok = cli(ws, "validate", "--format", "json")
    assert ok.exit_code == 0 and json.loads(ok.output)["valid"] is True


def test_python_m_reconciler_runs_after_the_commands_were_imported(capsys, monkeypatch):
    """`python -m reconciler` in a process that already imported the commands (an embedder,
    the profilers in benchmarks/): the submodule `reconciler.cli.main` shadows the package's
    `main`, so the module entry uses a name it cannot shadow."""
    import runpy
    import sys

    import pytest

    import reconciler.cli.main  # noqa: F401  (what a test run or an embedder has done)

    monkeypatch.setattr(sys, "argv", ["reconcile", "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("reconciler", run_name="__main__")
    assert done.value.code == 0
    assert "Usage:" in capsys.readouterr().out


def test_two_activations_sending_to_one_audience_are_warned(workspace):
    """The second takes over the first's audience (`list: existing`): each would remove what
    the other adds while each plan looked right alone; both plans say so."""
    other = "segments: [seg-b]\ndestination: sandbox\nlist: {existing: A}\n"
    rows = [profile(i, a=i < 2, b=i >= 2) for i in range(4)]
    ws = workspace({"act": ACT}, profiles=rows)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write("activations/other.yaml", other)
    planned = plan_json(ws)
    warned = {a["id"]: a["warnings"] for a in planned["activations"]}
    assert any("also managed by act" in w for w in warned["other"]), warned
    assert any("also managed by other" in w for w in warned["act"]), warned
    text = cli(ws, "plan").output
    assert "also managed by" in text
    ws.remove("activations/act.yaml")  # handing the audience over: no warning
    handed = {a["id"]: a["warnings"] for a in plan_json(ws)["activations"]}
    assert not any("also managed" in w for w in handed["other"]), handed


def test_two_activations_creating_audiences_of_one_name_are_warned(workspace):
    """Two activations naming their audiences alike at one destination make two audiences of
    one name (ambiguous for `list: existing` and `import`): both plans say so, before and after
    the apply; one audience shared by id is not warned of twice."""
    other = ACT.replace("seg-a", "seg-b")
    ws = workspace(
        {"act": ACT, "other": other}, profiles=[profile(i, a=True, b=True) for i in range(3)]
    )
    for _ in range(2):
        warned = {a["id"]: a["warnings"] for a in plan_json(ws)["activations"]}
        assert any("also the name of an audience of other" in w for w in warned["act"]), warned
        assert any("also the name of an audience of act" in w for w in warned["other"]), warned
        assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write("activations/other.yaml", other.replace("name: A", "name: B"))
    assert not any(a["warnings"] for a in plan_json(ws)["activations"])


def test_action_remove_says_removed_where_present_not_a_size(workspace):
    """`action: remove` cannot know which of its profiles the list holds: the plan says the
    removals apply where present, and counts what is recorded as removed, not a list size."""
    from destinations.sandbox import store

    act = "segments: [seg-a]\ndestination: sandbox\naction: remove\nlist: {existing: M}\n"
    ws = workspace({"act": act}, profiles=[profile(i, a=True) for i in range(3)])
    con = store.connect(ws.root / ".reconcile" / "sandbox.duckdb")
    try:
        store.create(con, "M", "k1")
    finally:
        con.close()
    text = cli(ws, "plan").output
    assert "-3" in text and "removed from the list where present" in text, text
    assert "0 -> 3 members" not in text


def test_an_ab_split_naming_a_list_for_one_group_only_is_a_clear_error(workspace):
    act = ACT + "split: ab\nlist: {existing: {A: Some list}}\n"
    ws = workspace({"act": act}, profiles=[profile(1, a=True)])
    from destinations.sandbox import store

    con = store.connect(ws.root / ".reconcile" / "sandbox.duckdb")
    try:
        store.create(con, "Some list", "k1")
    finally:
        con.close()
    res = cli(ws, "plan")
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert "activations/act.yaml:5: list.existing: `split: ab` with existing lists names one " in (
        res.stderr
    ), res.stderr


def test_github_annotations_name_files_from_the_repository_root(tmp_path, monkeypatch):
    """GitHub reads an annotation's file from the repository's root: a workspace in a
    subfolder (`reconcile init marketing/audiences`) put its problems on no line of the PR."""
    import subprocess

    from click.testing import CliRunner

    from reconciler.cli.main import main

    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    root = repo / "marketing" / "audiences"
    assert CliRunner().invoke(main, ["init", str(root)]).exit_code == 0
    (root / "activations" / "b.yaml").write_text(
        "segments: [first-order-last-7-days]\ndestination: sandbox\nbogus: 1\n"
    )
    for where in (root, repo):
        args = ["-C", str(root), "validate", "--format", "github", "--offline"]
        monkeypatch.chdir(where)
        gh = CliRunner().invoke(main, args)
        assert gh.exit_code == 1
        assert gh.output.startswith(
            "::error file=marketing/audiences/activations/b.yaml,line=3,"
        ), gh.output
    monkeypatch.setenv("GITHUB_WORKSPACE", str(repo / "marketing"))  # the checkout's root
    gh = CliRunner().invoke(main, ["-C", str(root), "validate", "--format", "github", "--offline"])
    assert gh.output.startswith("::error file=audiences/activations/b.yaml,line=3,"), gh.output


def test_status_and_log_read_the_state_while_an_activation_file_is_broken(workspace):
    """A merged pull request broke one file: the daily job fails, and `status` / `log` are
    what a user runs next. They read the state, say that the workspace has problems, and
    show the broken file's activation as the state recorded it."""
    act = "segments: [seg-a]\ndestination: sandbox\nname: Audience A\n"
    ws = workspace({"act": act, "other": act.replace("A\n", "O\n")}, profiles=[profile(1, a=True)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write("activations/act.yaml", "segments: [seg-a\n")  # unparseable YAML
    res = cli(ws, "status")
    assert res.exit_code == 0, res.stderr
    assert "the workspace has 1 problem" in res.stderr and "reconcile validate" in res.stderr
    rows = {line.split()[0]: line.split() for line in res.output.splitlines() if line[:1].isalpha()}
    assert rows["act"][1] == "Complete" and rows["other"][1] == "Complete", res.output
    doc = cli(ws, "status", "--format", "json").json()
    assert doc["workspace_problems"] == 1
    assert {r["id"]: r["in_workspace"] for r in doc["activations"]} == {"act": False, "other": True}
    res = cli(ws, "log", "act")
    assert res.exit_code == 0 and "Complete" in res.output, res.output + res.stderr
    assert cli(ws, "state", "show", "act").exit_code == 0
    assert cli(ws, "plan").exit_code == 1  # what changes things still refuses


def test_status_refuses_a_broken_reconcile_yaml_it_cannot_find_the_state_without(workspace):
    ws = workspace({}, profiles=[profile(1, a=True)])
    ws.write("reconcile.yaml", (ws.root / "reconcile.yaml").read_text() + "state: [\n")
    res = cli(ws, "status")
    assert res.exit_code == 1 and "reconcile.yaml" in res.stderr, res.stderr


def test_status_and_log_show_times_in_the_workspace_time_zone_and_json_in_utc(workspace):
    from tests.conftest import RECONCILE_YAML

    act = "segments: [seg-a]\ndestination: sandbox\nname: Audience A\n"
    yaml_text = "timezone: Asia/Kolkata\n" + RECONCILE_YAML.replace("timezone: UTC\n", "")
    ws = workspace({"act": act}, profiles=[profile(1, a=True)], reconcile_yaml=yaml_text)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    row = next(line for line in cli(ws, "status").output.splitlines() if line.startswith("act"))
    assert "+05:30" in row, row
    assert (
        cli(ws, "status", "--format", "json")
        .json()["activations"][0]["last_run"]
        .endswith("+00:00")
    )
    runs = [line for line in cli(ws, "log", "act").output.splitlines() if "Complete" in line]
    assert runs and "+05:30" in runs[0], runs
