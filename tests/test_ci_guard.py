"""Under CI=true, apply refuses the embedded state backend (a file that dies with the runner)
unless the workspace or the environment opts in."""

from __future__ import annotations

import re

import pytest

from tests.conftest import RECONCILE_YAML, cli, profile
from tests.test_recovery import activation, held

# the test workspace without its opt-in
NOT_OPTED_IN = RECONCILE_YAML.replace(", allow_ephemeral: true}", "}")


@pytest.fixture
def ci(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("CI", "true")
    monkeypatch.delenv("RECONCILE_ALLOW_EPHEMERAL_STATE", raising=False)
    return monkeypatch


def test_apply_and_run_refuse_an_ephemeral_state_under_ci(workspace, ci):
    assert NOT_OPTED_IN != RECONCILE_YAML
    ws = workspace(
        {"act": activation("A")}, profiles=[profile(1, a=True)], reconcile_yaml=NOT_OPTED_IN
    )
    for args in (["apply", "--auto-approve"], ["run", "act", "--auto-approve"]):
        res = cli(ws, *args)
        assert res.exit_code == 1
        assert res.stderr.startswith("Error: reconcile.yaml:12: state: apply refuses the embedded")
        assert "does not outlive it" in res.stderr and "PostgreSQL state backend" in res.stderr
        assert "docs/state-recovery.md" in res.stderr and "allow_ephemeral: true" in res.stderr
        assert "Traceback" not in res.stderr
    assert held(ws) == {}
    assert not (ws.root / ".reconcile" / "state.duckdb").exists()
    # planning is not guarded: it records nothing
    assert cli(ws, "plan").exit_code == 0


@pytest.mark.parametrize("value", ["true", "1"])
def test_the_environment_opts_in(workspace, ci, value):
    ci.setenv("RECONCILE_ALLOW_EPHEMERAL_STATE", value)
    ws = workspace(
        {"act": activation("A")}, profiles=[profile(1, a=True)], reconcile_yaml=NOT_OPTED_IN
    )
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.stderr
    assert list(held(ws)) == ["A"]


def test_the_workspace_opts_in(workspace, ci):
    ws = workspace({"act": activation("A")}, profiles=[profile(1, a=True)])  # allow_ephemeral
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.stderr


def test_outside_ci_nothing_is_asked(workspace, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("RECONCILE_ALLOW_EPHEMERAL_STATE", raising=False)
    ws = workspace(
        {"act": activation("A")}, profiles=[profile(1, a=True)], reconcile_yaml=NOT_OPTED_IN
    )
    assert cli(ws, "apply", "--auto-approve").exit_code == 0


def test_a_wrong_value_names_the_line(workspace):
    bad = RECONCILE_YAML.replace("allow_ephemeral: true", "allow_ephemeral: sometimes")
    ws = workspace({"act": activation("A")}, profiles=[profile(1, a=True)], reconcile_yaml=bad)
    res = cli(ws, "validate")
    assert res.exit_code == 1
    assert re.search(r"reconcile\.yaml:1[23]: state\.(\w+\.)?allow_ephemeral: ", res.stderr)
