"""An endpoint override is where a destination's credentials go: a pull request pointing
one at its own host got the Meta token (plan reads audiences back) and, through an S3
``endpoint_url`` in ``storage_options`` (never checked, plain http accepted), the AWS session
token. Only loopback hosts and hosts the job's environment allows are used."""

from __future__ import annotations

import pytest

from reconciler.endpoints import ALLOWED_ENV, check_endpoints
from reconciler.errors import ConfigError, Location
from tests.conftest import cli, profile

WHERE = Location("integrations/x.yaml", 3, "endpoint")
S3 = {"location": "s3://b/p", "storage_options": {"client_kwargs": {"endpoint_url": None}}}


def s3(url: str) -> dict:
    return {**S3, "storage_options": {"client_kwargs": {"endpoint_url": url}}}


@pytest.mark.parametrize(
    ("endpoint", "config", "env", "refused"),
    [
        ("http://127.0.0.1:8081", {}, "", None),
        ("https://localhost", {}, "", None),
        ("https://evil.example.com", {}, "", "sends its requests (and their credentials)"),
        ("https://proxy.example.com", {}, "proxy.example.com", None),
        ("https://proxy.example.com:8443", {}, "other.example.com", "proxy.example.com"),
        (None, s3("http://203.0.113.5:8080"), "203.0.113.5", "must use https://"),
        (None, s3("https://minio.example.com"), "", "config.storage_options.client_kwargs"),
        (None, s3("https://minio.example.com"), " minio.example.com ,x", None),
        (None, s3("http://127.0.0.1:9000"), "", None),
        (None, {"location": "exports"}, "", None),
    ],
)
def test_an_endpoint_override_needs_loopback_or_the_jobs_permission(endpoint, config, env, refused):
    run = lambda: check_endpoints("x", endpoint, config, WHERE, {ALLOWED_ENV: env})  # noqa: E731
    if refused is None:
        run()
    else:
        with pytest.raises(ConfigError, match=refused.replace("(", r"\(").replace(")", r"\)")):
            run()


def test_plan_never_sends_a_token_to_a_host_the_workspace_chose(workspace, monkeypatch):
    monkeypatch.setenv("META_TOKEN", "secret-meta-token")
    monkeypatch.delenv(ALLOWED_ENV, raising=False)
    meta = (
        "type: meta_custom_audiences\nconsent: email_consent\n"
        "credentials:\n  access_token: ${env:META_TOKEN}\n"
        "endpoint: https://graph.attacker.example\n"
        "config:\n  ad_account_id: '123'\n"
    )
    ws = workspace({"act": "segments: [seg-a]\ndestination: meta\nname: A\n"})
    ws.write("integrations/meta.yaml", meta)
    res = cli(ws, "plan")
    assert res.exit_code == 1
    assert "integrations/meta.yaml:5: endpoint: integration 'meta' sends its requests" in (
        res.stderr
    ), res.stderr
    assert "secret-meta-token" not in res.output + res.stderr


def test_a_plan_without_endpoint_overrides_never_loads_the_http_stack(workspace):
    """Only some commands need httpx (issue: imports only some commands need are lazy): a
    sandbox plan checks the integrations' endpoints without parsing any URL."""
    import subprocess
    import sys

    act = "segments: [seg-a]\ndestination: sandbox\nname: Audience A\n"
    ws = workspace({"act": act}, profiles=[profile(i, a=True) for i in range(3)])
    probe = (
        "import sys\nfrom reconciler.cli.main import main\n"
        "try:\n    main(['-C', sys.argv[1], 'plan'])\nexcept SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('httpx' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(ws.root)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout
