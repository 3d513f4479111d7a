"""Integrations checked before anything is sent: unset credential variables, plain-http
endpoints, and activations asking a destination for what it cannot do (its Capabilities).
Each is an error naming file:line: field, from `validate` and from `plan`, exit 1.

A destination with fewer capabilities is installed for real: a module and a dist-info
folder with its entry point on ``sys.path``, found through the ``reconciler.destinations``
entry-point group like any adapter."""

from __future__ import annotations

import textwrap

import pytest

from destinations import registry
from tests.conftest import SANDBOX_YAML, cli, plan_json, profile

ACT = "segments: [seg-a]\ndestination: sandbox\nname: A\n"
TOKEN_VAR = "RECONCILE_TEST_SANDBOX_TOKEN"
WITH_TOKEN = SANDBOX_YAML.replace(
    "consent: email_consent\n",
    f"consent: email_consent\ncredentials:\n  token: ${{env:{TOKEN_VAR}}}\n",
)

LIMITED = '''
from destinations.base import Capabilities, Limits
from destinations.sandbox import SandboxDestination


class LimitedDestination(SandboxDestination):
    """The sandbox, declaring it can neither remove, rename nor take attributes."""

    type_name = "limited"
    capabilities = Capabilities(remove=False, rename=False, attributes=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = Limits(members_per_call=2, requests_per_minute=60, concurrency=2)
'''

LIMITED_YAML = """\
type: limited
attributes:
  FIRST_NAME: first_name
config:
  path: .reconcile/sandbox.duckdb
"""


@pytest.fixture
def limited(tmp_path, monkeypatch):
    """Install the ``limited`` destination type for this test."""
    site = tmp_path / "site"
    (site / "limited_dest-0.1.dist-info").mkdir(parents=True)
    (site / "limited_dest.py").write_text(textwrap.dedent(LIMITED))
    (site / "limited_dest-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: limited-dest\nVersion: 0.1\n"
    )
    (site / "limited_dest-0.1.dist-info" / "entry_points.txt").write_text(
        "[reconciler.destinations]\nlimited = limited_dest:LimitedDestination\n"
    )
    monkeypatch.syspath_prepend(str(site))
    registry.load.cache_clear()
    yield
    registry.load.cache_clear()


def _errors(res) -> str:
    assert res.exit_code == 1, res.output + res.stderr
    return res.stderr


# ---------------------------------------------------------------------- credentials
def test_unset_credential_is_an_error_in_validate_and_plan(workspace, monkeypatch):
    monkeypatch.delenv(TOKEN_VAR, raising=False)
    ws = workspace({"act": ACT}, profiles=[profile(1, a=True)], integration=WITH_TOKEN)
    where = "integrations/sandbox.yaml:4: credentials.token:"
    for command in (["validate"], ["plan"], ["apply", "--auto-approve"]):
        err = _errors(cli(ws, *command))
        assert where in err and TOKEN_VAR in err, command
    assert ws.sandbox_keys() == {}  # nothing sent
    assert not (ws.root / ".reconcile/state.duckdb").exists()
    offline = plan_json(ws, "--refresh=false")  # contacts no destination: no credential needed
    assert offline["has_changes"]


def test_offline_validate_needs_no_secrets_like_the_pull_request_job(workspace, monkeypatch):
    """The pull request's job has no destination secrets: `validate --offline` and
    `plan --refresh=false` (what the workflow `init` writes runs) pass without them."""
    monkeypatch.delenv(TOKEN_VAR, raising=False)
    ws = workspace({"act": ACT}, profiles=[profile(1, a=True)], integration=WITH_TOKEN)
    assert "credentials.token" in _errors(cli(ws, "validate"))
    res = cli(ws, "validate", "--offline")
    assert res.exit_code == 0 and "Valid" in res.output, res.stderr
    assert plan_json(ws, "--refresh=false")["has_changes"]
    broken = ACT + "colour: red\n"  # everything else is still checked
    ws.write("activations/act.yaml", broken)
    assert "colour: unknown field" in _errors(cli(ws, "validate", "--offline"))


def test_empty_credential_counts_as_unset_and_a_set_one_passes(workspace, monkeypatch):
    ws = workspace({"act": ACT}, profiles=[profile(1, a=True)], integration=WITH_TOKEN)
    monkeypatch.setenv(TOKEN_VAR, "")
    err = _errors(cli(ws, "validate"))
    assert "credentials.token" in err and f"{TOKEN_VAR}, which is empty" in err
    monkeypatch.setenv(TOKEN_VAR, "  \t")
    err = _errors(cli(ws, "plan"))
    assert "credentials.token" in err and f"{TOKEN_VAR}, which is only whitespace" in err
    monkeypatch.setenv(TOKEN_VAR, "s3cret-value")
    res = cli(ws, "validate")
    assert res.exit_code == 0, res.stderr
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0 and "s3cret-value" not in res.output + res.stderr


@pytest.mark.parametrize("secret", ["notasecret", "whsec_c2hvcnQ="])
def test_a_malformed_credential_is_refused_by_validate_as_by_plan(workspace, monkeypatch, secret):
    """The adapter's credential model (a webhook secret's `whsec_` form and length) is checked
    by `validate` too, not first by `plan`; the value is never printed."""
    monkeypatch.setenv("WH_SECRET", secret)
    hook = (
        "type: webhook\ncredentials:\n  secret: ${env:WH_SECRET}\n"
        "config:\n  url: https://hooks.example.com/audiences\n  identifiers: [email]\n"
    )
    ws = workspace({"act": ACT}, profiles=[profile(1, a=True)], integration=hook)
    for command in (["validate"], ["plan"]):
        err = _errors(cli(ws, *command))
        assert "integrations/sandbox.yaml" in err and "secret" in err, (command, err)
        assert secret not in err, err


def test_a_misspelt_credential_is_one_problem(workspace, monkeypatch):
    monkeypatch.setenv("WH_SECRET", "whsec_" + "A" * 44)
    hook = (
        "type: webhook\ncredentials:\n  secrett: ${env:WH_SECRET}\n"
        "config:\n  url: https://hooks.example.com/audiences\n  identifiers: [email]\n"
    )
    ws = workspace({"act": ACT}, profiles=[profile(1, a=True)], integration=hook)
    res = cli(ws, "validate")
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()[1:]
    assert len(lines) == 2, lines  # the unknown key and the one missing, not a third
    assert any("takes no credential 'secrett'" in line for line in lines), lines


def test_commands_that_contact_no_destination_need_no_credentials(workspace, monkeypatch):
    monkeypatch.delenv(TOKEN_VAR, raising=False)
    ws = workspace({"act": ACT}, profiles=[profile(1, a=True)], integration=WITH_TOKEN)
    assert cli(ws, "status").exit_code == 0
    assert cli(ws, "segments").exit_code == 0


# ---------------------------------------------------------------------- endpoint
@pytest.mark.parametrize(
    "endpoint, ok",
    [
        ("http://ads.example.com/api", False),
        ("http://10.0.0.8:8080", False),
        ("ftp://ads.example.com", False),
        ("https://ads.example.com/api", True),
        ("http://127.0.0.1:8080", True),
        ("http://localhost:9000/v1", True),
        ("http://[::1]:9000", True),
    ],
)
def test_plain_http_endpoint_only_to_loopback(workspace, endpoint, ok):
    integration = SANDBOX_YAML.replace("type: sandbox\n", f"type: sandbox\nendpoint: {endpoint}\n")
    ws = workspace({"act": ACT}, profiles=[profile(1, a=True)], integration=integration)
    res = cli(ws, "validate")
    if ok:
        assert res.exit_code == 0, res.stderr
        return
    assert "integrations/sandbox.yaml:2: endpoint:" in _errors(res)
    assert "integrations/sandbox.yaml:2: endpoint:" in _errors(cli(ws, "plan"))


# ---------------------------------------------------------------------- capabilities
def _limited_ws(workspace, act: str):
    return workspace(
        {"act": act.replace("destination: sandbox", "destination: limited")},
        profiles=[profile(i, a=True) for i in range(5)],
        integration=SANDBOX_YAML,
    )


def _write_limited(ws):
    ws.write("integrations/limited.yaml", LIMITED_YAML)


@pytest.mark.parametrize(
    "extra, where",
    [
        ("action: maintain\n", "activations/act.yaml:4: action:"),
        ("action: append\non_delete: clear\n", "activations/act.yaml:5: on_delete:"),
        ("action: append\nattributes: [FIRST_NAME]\n", "activations/act.yaml:5: attributes:"),
    ],
)
def test_activation_asking_what_the_destination_cannot_do(workspace, limited, extra, where):
    ws = _limited_ws(workspace, ACT + extra)
    _write_limited(ws)
    for command in (["validate"], ["plan"], ["apply", "--auto-approve"]):
        err = _errors(cli(ws, *command))
        assert where in err and "'limited'" in err, command
    assert ws.sandbox_keys() == {}


def test_default_action_maintain_is_refused_too(workspace, limited):
    ws = _limited_ws(workspace, ACT)
    _write_limited(ws)
    err = _errors(cli(ws, "validate"))
    assert "activations/act.yaml:1: action:" in err and "action: append" in err


def test_renaming_at_a_destination_that_cannot_rename(workspace, limited):
    ws = _limited_ws(workspace, ACT + "action: append\n")
    _write_limited(ws)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write(
        "activations/act.yaml",
        "segments: [seg-a]\ndestination: limited\nname: B\naction: append\n",
    )
    assert cli(ws, "validate").exit_code == 0  # only the plan knows the audience exists
    for command in (["plan"], ["apply", "--auto-approve"]):
        err = _errors(cli(ws, *command))
        assert "activations/act.yaml:3: name:" in err and "cannot rename" in err, command
    assert set(ws.sandbox_keys()) == {"A"}


def test_plan_estimates_requests_and_duration_from_declared_limits(workspace, limited):
    ws = _limited_ws(workspace, ACT + "action: append\n")
    _write_limited(ws)
    # 5 members in calls of 2: 3 calls, plus creating the audience; 60 requests/minute
    res = cli(ws, "plan")
    assert res.exit_code == 0, res.stderr
    assert (
        "limited (limited): 4 requests of up to 2 members, about 4 s at 60 requests/minute"
        in res.output
    )
    calls = plan_json(ws)["destination_calls"]
    assert calls == [
        {
            "integration": "limited",
            "type": "limited",
            "requests": 4,
            "members": 5,
            "members_per_call": 2,
            "requests_per_minute": 60,
            "concurrency": 2,
            "estimated_seconds": 4.0,
        }
    ]
    md = cli(ws, "plan", "--format", "markdown").output
    assert "<sub>Destination calls: limited (limited): 4 requests" in md


BROKEN = """\
raise ImportError("this adapter is broken on purpose")
"""


def test_a_broken_adapter_breaks_only_what_uses_it(workspace, tmp_path, monkeypatch):
    """Adapters load lazily, one at a time: another installed adapter that cannot even be
    imported does not stop a workspace that does not use it; one that uses it gets a clear
    error naming the type and the integration file."""
    site = tmp_path / "site"
    (site / "broken_dest-0.1.dist-info").mkdir(parents=True)
    (site / "broken_dest.py").write_text(BROKEN)
    (site / "broken_dest-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: broken-dest\nVersion: 0.1\n"
    )
    (site / "broken_dest-0.1.dist-info" / "entry_points.txt").write_text(
        "[reconciler.destinations]\nbroken = broken_dest:Broken\n"
    )
    monkeypatch.syspath_prepend(str(site))
    registry.load.cache_clear()
    try:
        ws = workspace({"act": "segments: [seg-a]\ndestination: sandbox\n"})
        assert cli(ws, "validate").exit_code == 0
        assert cli(ws, "plan").exit_code == 0
        ws.write("integrations/other.yaml", "type: broken\n")
        res = cli(ws, "validate")
        assert res.exit_code == 1
        assert "integrations/other.yaml:1: type: the destination type 'broken'" in res.stderr
        assert "cannot be loaded: ImportError: this adapter is broken on purpose" in res.stderr
    finally:
        registry.load.cache_clear()
