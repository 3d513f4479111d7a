"""The GitHub workflows: linted (actionlint), schema-checked (the vendored GitHub workflow schema),
and their shell steps run for real, in order, against a workspace in a local git repository,
with `gh` and `pip` replaced by recorder scripts on PATH (no act, no network).

Expressions (``${{ ... }}``) are resolved from a table of the event's values: an unknown one
fails the test, so a new expression in a workflow needs a value here. ``run:`` scripts use none
(they read environment variables), which the tests also check: it keeps PR text out of shells.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from reconciler.workspace.scaffold import render_workflows

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
HEAD = "1111111111111111111111111111111111111111"
GITHUB_LIMIT = 65_536

# `gh`: records each call, answers from responses.json (endpoint substring -> stdout), and
# serves `gh run download` from the artifact store the upload step filled.
FAKE_GH = r"""#!{python}
import json, os, shutil, sys
from pathlib import Path
state = Path(os.environ["FAKE_STATE"])
args = sys.argv[1:]
call = {{"args": args}}
for i, a in enumerate(args):
    if a == "-F" and args[i + 1].startswith("body=@"):
        call["body"] = Path(args[i + 1][6:]).read_text()
with open(state / "gh.jsonl", "a") as f:
    f.write(json.dumps(call) + "\n")
if args[:2] == ["run", "download"]:
    name = args[args.index("--name") + 1]
    src = state / "artifacts" / name
    if not src.is_dir():
        sys.exit("no artifact " + name)
    shutil.copytree(src, args[args.index("--dir") + 1], dirs_exist_ok=True)
    sys.exit(0)
responses = json.loads((state / "responses.json").read_text())
for key, out in responses.items():
    if any(key in a for a in args if not a.startswith("-")):
        print(out)
        break
"""

FAKE_PIP = """#!/bin/sh
echo "$*" >> "$FAKE_STATE/pip.log"
"""


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=yaml.BaseLoader)  # `on` stays a string


def all_workflow_files(tmp_path: Path) -> list[Path]:
    """This repository's workflows, and the templates rendered for a root and a subdirectory."""
    out = sorted(WORKFLOWS.glob("*.yml"))
    for ws in (".", "team/audiences"):
        for name, text in render_workflows(ws).items():
            path = tmp_path / ("root" if ws == "." else "sub") / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            out.append(path)
    return out


# ------------------------------------------------------------------------- static checks
def test_actionlint(tmp_path: Path):
    files = all_workflow_files(tmp_path)
    res = subprocess.run(
        [str(BIN / "actionlint"), *map(str, files)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_github_workflow_schema(tmp_path: Path):
    files = all_workflow_files(tmp_path)
    res = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, files),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_committed_copies_match_the_templates():
    """This repository's own workspace uses the workflows init writes (installing itself)."""
    rendered = render_workflows(".", install=".", allow_ephemeral_state=True)
    if os.environ.get("RECONCILE_UPDATE_WORKFLOWS"):
        for name, text in rendered.items():
            (WORKFLOWS / name).write_text(text)
    for name, text in rendered.items():
        assert (WORKFLOWS / name).read_text() == text, (
            f"{name} is out of date: RECONCILE_UPDATE_WORKFLOWS=1 pytest {__file__}"
        )


def test_least_privilege_and_no_cache():
    plan = load(WORKFLOWS / "reconcile-plan.yml")
    apply = load(WORKFLOWS / "reconcile-apply.yml")
    for flow in (plan, apply):
        assert flow["permissions"] == {}  # nothing by default; each job asks
    assert plan["jobs"]["plan"]["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert "environment" not in plan["jobs"]["plan"]  # no apply secrets for pull requests
    assert apply["jobs"]["apply"]["permissions"] == {
        "contents": "read",
        "actions": "read",
        "pull-requests": "read",
    }
    assert apply["jobs"]["refresh"]["permissions"] == {"contents": "read"}
    for job in apply["jobs"].values():
        assert job["environment"] == "reconcile-apply"
    text = (WORKFLOWS / "reconcile-plan.yml").read_text() + (
        WORKFLOWS / "reconcile-apply.yml"
    ).read_text()
    assert "actions/cache" not in text  # state never lives in the cache
    assert "--edit-last" not in text


def test_concurrency_plan_never_cancels_an_apply():
    plan = load(WORKFLOWS / "reconcile-plan.yml")
    apply = load(WORKFLOWS / "reconcile-apply.yml")
    # on each applying job, not the workflow: a run whose jobs are all skipped (a push to
    # another branch, a manual run elsewhere) would otherwise replace a queued merge apply
    assert "concurrency" not in apply
    for job in apply["jobs"].values():
        assert job["concurrency"] == {"group": "reconcile-apply", "cancel-in-progress": "false"}
    assert plan["concurrency"]["group"].startswith("reconcile-plan-")
    assert plan["concurrency"]["group"] != "reconcile-apply"


def test_triggers_and_default_branch_guards():
    apply = load(WORKFLOWS / "reconcile-apply.yml")
    on = apply["on"]
    assert set(on) == {"push", "schedule", "workflow_dispatch"}
    default = "github.ref == format('refs/heads/{0}', github.event.repository.default_branch)"
    assert default in apply["jobs"]["apply"]["if"]
    refresh_if = apply["jobs"]["refresh"]["if"]
    # dispatch only on the default branch; schedule payloads have no repository (always default)
    assert f"(github.event_name == 'workflow_dispatch' && {default})" in refresh_if
    assert "github.event_name == 'schedule'" in refresh_if
    steps = apply["jobs"]["refresh"]["steps"]
    assert steps[-1]["run"] == "reconcile apply --due --auto-approve"


def test_no_expression_inside_shell_scripts(tmp_path: Path):
    for path in all_workflow_files(tmp_path):
        for job in load(path)["jobs"].values():
            for step in job.get("steps", []):
                assert "${{" not in step.get("run", ""), (path.name, step.get("name"))
                assert "if" not in step, "the step runner below does not evaluate step `if:`"


def test_install_is_pinned():
    for text in render_workflows(".").values():
        env = yaml.safe_load(text)["env"]
        assert re.fullmatch(r"activation-reconciler==\d+\.\d+\.\d+.*", env["RECONCILE_REQUIREMENT"])
    assert 'pip install "$RECONCILE_REQUIREMENT"' in (WORKFLOWS / "reconcile-plan.yml").read_text()


def test_comment_limit_leaves_room_under_githubs():
    plan = load(WORKFLOWS / "reconcile-plan.yml")
    # the marker, a blank line and the link line are added around the rendered comment
    assert int(plan["env"]["COMMENT_LIMIT"]) + 1_000 < GITHUB_LIMIT


def test_release_workflow():
    rel = load(WORKFLOWS / "release.yml")
    assert rel["on"]["push"]["tags"] == ["v*"]
    assert rel["permissions"] == {}
    jobs = rel["jobs"]
    publish = jobs["publish"]
    assert publish["permissions"] == {"id-token": "write"}
    assert publish["environment"]["name"] == "pypi"
    assert any(
        s.get("uses", "").startswith("pypa/gh-action-pypi-publish@") for s in publish["steps"]
    )
    build = "\n".join(s.get("run", "") for s in jobs["build"]["steps"])
    assert "python -m build" in build
    image = "\n".join(s.get("run", "") for s in jobs["image"]["steps"])
    assert "docker build" in image
    assert re.search(r'docker run --rm "activation-reconciler:\$TAG" --version', image)
    for name, job in jobs.items():
        if name != "publish":
            assert "id-token" not in job.get("permissions", {}), name


def test_dockerfile_basics():
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0].startswith("FROM python:3.11-slim")
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")  # runs as a non-root user
    (entry,) = [line for line in lines if line.startswith("ENTRYPOINT")]
    assert json.loads(entry.removeprefix("ENTRYPOINT").strip()) == ["reconcile"]


# ------------------------------------------------------------------------- the steps, run
@dataclass
class Repo:
    """A git repository holding a workspace at ``team/audiences``, and the fakes' state."""

    root: Path
    state: Path
    flows: dict[str, dict]
    responses: dict[str, str] = field(default_factory=dict)

    def git(self, *args: str) -> str:
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com",
        }
        res = subprocess.run(["git", *args], cwd=self.root, env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")

    def respond(self, answers: dict[str, str]) -> None:
        """What the fake `gh` prints for a call naming an endpoint containing a key."""
        self.responses.update(answers)
        (self.state / "responses.json").write_text(json.dumps(self.responses))

    def calls(self) -> list[dict]:
        log = self.state / "gh.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@dataclass
class JobRun:
    returncode: int
    output: str
    summary: str


def make_repo(tmp_path: Path) -> Repo:
    from click.testing import CliRunner

    from reconciler.cli.main import main

    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    res = CliRunner().invoke(main, ["init", str(root / "team/audiences")])
    assert res.exit_code == 0, res.output
    config = root / "team/audiences/reconcile.yaml"
    config.write_text(config.read_text().replace("demo: true ", "demo: true\n  demo_profiles: 300"))
    flows = {}
    for name, text in render_workflows("team/audiences", allow_ephemeral_state=True).items():
        (root / ".github/workflows" / name).write_text(text)
        flows[name.split("-")[1]] = yaml.load(text, Loader=yaml.BaseLoader)
    state = tmp_path / "fake"
    (state / "bin").mkdir(parents=True)
    (state / "artifacts").mkdir()
    for name, body in (("gh", FAKE_GH.format(python=sys.executable)), ("pip", FAKE_PIP)):
        (state / "bin" / name).write_text(body)
        (state / "bin" / name).chmod(0o755)
    r = Repo(root, state, flows)
    r.respond({})
    r.commit("init")
    return r


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return make_repo(tmp_path)


@pytest.fixture(scope="module")
def _planned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A pull request planned once (the plan job ran), shared by the apply tests as copies."""
    base = tmp_path_factory.mktemp("planned")
    repo = make_repo(base)
    ctx = pr_context(repo)
    run = run_job(repo, "plan", "plan", ctx)
    assert run.returncode == 0, run.output
    (repo.state / "gh.jsonl").unlink()
    return base, ctx


@pytest.fixture
def merged(_planned, tmp_path: Path) -> tuple[Repo, dict[str, str]]:
    """A copy of the planned repository, with the pull request merged (a merge commit on top
    of its head); `gh` answers which pull request that was and where its plan artifact is."""
    base, ctx = _planned
    shutil.copytree(base, tmp_path, dirs_exist_ok=True, symlinks=True)
    repo = Repo(tmp_path / "repo", tmp_path / "fake", {})
    for name in ("plan", "apply"):
        text = (repo.root / f".github/workflows/reconcile-{name}-team-audiences.yml").read_text()
        repo.flows[name] = yaml.load(text, Loader=yaml.BaseLoader)
    head = ctx["github.sha"]
    merge = repo.git("commit-tree", f"{head}^{{tree}}", "-p", head, "-m", "Merge pull request #7")
    repo.git("reset", "-q", "--hard", merge)
    repo.respond(
        {
            f"commits/{merge}/pulls": head,
            f"reconcile-plan-team-audiences-{head}": "98765",
            "actions/runs/98765": PLAN_RUN.format(head=head),
        }
    )
    return repo, {"github.sha": merge, "head": head}


#: what `gh api repos/R/actions/runs/ID --jq '"\(.path) \(.event) \(.head_sha)"'` prints for
#: the run of the plan workflow on the pull request
PLAN_RUN = ".github/workflows/reconcile-plan-team-audiences.yml pull_request {head}"


def run_job(repo: Repo, flow: str, job_name: str, context: dict[str, str], **env: str) -> JobRun:
    """Run a job's steps in order as Actions would: `run:` through bash -eo pipefail in the
    job's working directory, `$GITHUB_ENV` carried between steps, uploads into the store."""
    workflow = repo.flows[flow]
    job = workflow["jobs"][job_name]
    temp = Path(repo.state / f"runner-{job_name}")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    files = {k: temp / k for k in ("github_env", "summary")}
    for f in files.values():
        f.write_text("")
    context = {
        "runner.temp": str(temp),
        "github.token": "t0ken",
        "github.repository": "acme/audiences",
        "github.repository_id": "4242",
        "github.server_url": "https://github.example",
        "github.run_id": "555",
        "secrets.RECONCILE_STATE_DSN": "",
        "secrets.RECONCILE_STATE_DSN_READONLY": "",
        "vars.RECONCILE_ENDPOINTS": "",
        **context,
    }

    def resolve(value: str) -> str:
        return EXPR.sub(lambda m: context[m.group(1)], value)

    base = {
        "PATH": f"{repo.state / 'bin'}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", str(temp)),
        "FAKE_STATE": str(repo.state),
        "RUNNER_TEMP": str(temp),
        "GITHUB_ENV": str(files["github_env"]),
        "GITHUB_STEP_SUMMARY": str(files["summary"]),
        "GITHUB_REPOSITORY": context["github.repository"],
        "GITHUB_SHA": context.get("github.sha", ""),
        "NO_COLOR": "1",
    }
    variables = {k: resolve(v) for k, v in {**workflow["env"], **job.get("env", {})}.items()}
    variables.update(env)
    workdir = repo.root / job["defaults"]["run"]["working-directory"]
    output = []
    for step in job["steps"]:
        if "uses" in step:
            action = step["uses"].split("@")[0]
            if action == "actions/upload-artifact":
                name, path = resolve(step["with"]["name"]), Path(resolve(step["with"]["path"]))
                shutil.copytree(path, repo.state / "artifacts" / name)
            else:
                assert action in ("actions/checkout", "actions/setup-python"), action
            continue
        script = temp / "step.sh"
        script.write_text(step["run"])
        exported = dict(
            line.split("=", 1) for line in files["github_env"].read_text().splitlines() if line
        )
        step_env = {**base, **variables, **exported}
        step_env.update({k: resolve(v) for k, v in step.get("env", {}).items()})
        res = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=workdir,
            env=step_env,
            capture_output=True,
            text=True,
        )
        output.append(f"--- {step.get('name', step['run'][:30])}\n{res.stdout}{res.stderr}")
        if res.returncode:
            return JobRun(res.returncode, "".join(output), files["summary"].read_text())
    return JobRun(0, "".join(output), files["summary"].read_text())


def pr_context(repo: Repo) -> dict[str, str]:
    head = repo.git("rev-parse", "HEAD")
    return {
        "github.event.pull_request.head.sha": head,
        "github.event.pull_request.number": "7",
        "github.sha": head,
    }


def posted(repo: Repo) -> list[dict]:
    return [c for c in repo.calls() if "body" in c]


@pytest.mark.slow
def test_plan_job_posts_one_sticky_comment(repo: Repo):
    ctx = pr_context(repo)
    head = ctx["github.sha"]
    run = run_job(repo, "plan", "plan", ctx)
    assert run.returncode == 0, run.output
    (call,) = posted(repo)
    assert call["args"][:4] == ["api", "--method", "POST", "repos/acme/audiences/issues/7/comments"]
    body = call["body"]
    assert body.startswith("<!-- reconcile-plan:team/audiences -->\n### Reconcile plan:")
    assert len(body) < GITHUB_LIMIT
    assert f"Planned at commit {head}." in body
    assert "#### Spec changes" in body and "| new-customers | create |" in body
    assert "https://github.example/acme/audiences/actions/runs/555" in body
    # the lookup of an earlier comment goes by the marker, never by --edit-last
    lookup = repo.calls()[0]["args"]
    assert lookup[:3] == ["api", "--paginate", "repos/acme/audiences/issues/7/comments"]
    assert 'startswith("<!-- reconcile-plan:team/audiences -->")' in lookup[-1]
    # the full plan in the job summary; the plan file as an artifact named with the commit
    assert "### Reconcile plan:" in run.summary and "<details>" in run.summary
    artifact = repo.state / "artifacts" / f"reconcile-plan-team-audiences-{head}"
    assert (artifact / "reconcile.plan").is_file()
    assert (artifact / "commit").read_text().strip() == head
    pip = (repo.state / "pip.log").read_text()
    assert pip.strip() == "install activation-reconciler==" + pip.split("==")[1].strip()

    # the next push updates that comment in place
    repo.respond({"issues/7/comments": "4242"})
    (repo.state / "gh.jsonl").unlink()
    shutil.rmtree(artifact)
    assert run_job(repo, "plan", "plan", ctx).returncode == 0
    (call,) = posted(repo)
    assert call["args"][:4] == [
        "api",
        "--method",
        "PATCH",
        "repos/acme/audiences/issues/comments/4242",
    ]


@pytest.mark.slow
def test_plan_comment_truncated_under_the_limit(repo: Repo):
    acts = repo.root / "team/audiences/activations"
    sample = (acts / "new-customers.yaml").read_text()
    for i in range(40):
        (acts / f"copy-{i:03d}.yaml").write_text(sample.replace("name:", f"# {i}\nname:", 1))
    repo.commit("many activations")
    run = run_job(repo, "plan", "plan", pr_context(repo), COMMENT_LIMIT="4000")
    assert run.returncode == 0, run.output
    (call,) = posted(repo)
    assert len(call["body"]) < 4000 + 500  # marker and link line around the budget
    assert "**Truncated to fit a comment:**" in call["body"]
    assert "copy-039" in run.summary  # the job summary has it all
    assert "Truncated" not in run.summary


@pytest.mark.slow
def test_apply_job_applies_the_reviewed_plan(merged):
    repo, ctx = merged
    run = run_job(repo, "apply", "apply", ctx)
    assert run.returncode == 0, run.output
    assert f"Applying the plan reviewed at {ctx['head']}." in run.output
    assert "Apply finished: 1 of 1 activation(s) complete." in run.output
    download = [c["args"] for c in repo.calls() if c["args"][:2] == ["run", "download"]]
    assert download == [
        [
            "run",
            "download",
            "98765",
            "--repo",
            "acme/audiences",
            "--name",
            f"reconcile-plan-team-audiences-{ctx['head']}",
            "--dir",
            str(repo.state / "runner-apply" / "reviewed"),
        ]
    ]
    assert not posted(repo)  # apply posts nothing
    assert "new-customers" in run.summary


@pytest.mark.slow
@pytest.mark.parametrize(
    "made_by",
    [
        ".github/workflows/evil.yml pull_request {head}",  # another workflow uploaded it
        ".github/workflows/reconcile-plan-team-audiences.yml push {head}",
        ".github/workflows/reconcile-plan-team-audiences.yml pull_request " + "2" * 40,
    ],
)
def test_apply_job_ignores_an_artifact_the_plan_job_did_not_make(merged, made_by):
    """Any workflow run (a fork's pull request's too) can upload an artifact of any name:
    only one of the plan workflow, on a pull request, for that commit is applied."""
    repo, ctx = merged
    repo.respond(
        {
            f"commits/{ctx['github.sha']}/pulls": ctx["head"],
            f"reconcile-plan-team-audiences-{ctx['head']}": "98765",
            "actions/runs/98765": made_by.format(head=ctx["head"]),
        }
    )
    run = run_job(repo, "apply", "apply", ctx)
    assert run.returncode == 0, run.output
    assert "was not made by .github/workflows/reconcile-plan-team-audiences.yml" in run.output
    assert "No plan artifact" in run.output and "Applying the plan reviewed" not in run.output
    assert not [c for c in repo.calls() if c["args"][:2] == ["run", "download"]]
    query = next(c["args"] for c in repo.calls() if "actions/artifacts" in " ".join(c["args"]))
    jq = query[query.index("--jq") + 1]
    # the artifact list is filtered to this repository's own runs (no fork's) for the commit
    assert f'.workflow_run.head_sha == "{ctx["head"]}"' in jq
    assert ".workflow_run.head_repository_id == 4242" in jq


@pytest.mark.slow
def test_apply_job_plans_afresh_when_the_workspace_moved(merged):
    repo, ctx = merged
    seg = repo.root / "team/audiences/segments/first-order-last-7-days.yaml"
    seg.write_text(seg.read_text().replace("7", "8"))
    ctx["github.sha"] = repo.commit("another change landed first")
    repo.respond({f"commits/{ctx['github.sha']}/pulls": ctx["head"]})
    run = run_job(repo, "apply", "apply", ctx)
    assert run.returncode == 0, run.output
    assert "The workspace changed since the plan reviewed" in run.output
    assert "Apply finished: 1 of 1 activation(s) complete." in run.output


@pytest.mark.slow
def test_apply_job_replans_a_stale_plan(merged):
    repo, ctx = merged
    # a daily run applied in between: the state moved since the reviewed plan
    assert run_job(repo, "apply", "refresh", {}).returncode == 0
    run = run_job(repo, "apply", "apply", ctx)
    assert run.returncode == 0, run.output
    assert "the saved plan is stale" in run.output
    assert "The reviewed plan is stale; planning again." in run.output


@pytest.mark.slow
def test_apply_job_without_a_pull_request_plans_afresh(repo: Repo):
    run = run_job(repo, "apply", "apply", {"github.sha": repo.git("rev-parse", "HEAD")})
    assert run.returncode == 0, run.output
    assert "No pull request was merged as" in run.output
    assert "Apply finished: 1 of 1 activation(s) complete." in run.output


@pytest.mark.slow
def test_apply_refuses_ephemeral_state_unless_allowed(repo: Repo):
    ctx = {"github.sha": repo.git("rev-parse", "HEAD")}
    run = run_job(repo, "apply", "refresh", ctx, RECONCILE_ALLOW_EPHEMERAL_STATE="false")
    assert run.returncode == 1
    assert "::error::Set the RECONCILE_STATE_DSN secret" in run.output
    assert not (repo.root / "team/audiences/.reconcile/state.duckdb").exists()
    ok = run_job(
        repo,
        "apply",
        "refresh",
        {**ctx, "secrets.RECONCILE_STATE_DSN": "postgresql://x"},
        RECONCILE_ALLOW_EPHEMERAL_STATE="false",
    )
    assert "::error::" not in ok.output
