"""The JSON Schema accepts exactly what `validate` accepts, file by file: the example
workspaces' files pass both, and each file of a corpus of good and bad files gets the same
verdict from both (`validate` names the file, or the schema has an error).

Outside the schema by nature, so not in the corpus: what needs another file (an unknown
segment or integration, e-mail without a mail server), the environment (a credential's
variable set) or the data (segment SQL, consent conditions), and the type coercions pydantic
makes (`paused: "true"`, `max_removal_share: "0.5"`), where the schema asks for the plain type.
"""

from __future__ import annotations

import base64
import json
from functools import cache
from pathlib import Path

import jsonschema
import pytest

from reconciler.workspace import yamlfile
from reconciler.workspace.schema import json_schema
from tests.conftest import RECONCILE_YAML, cli

REPO = Path(__file__).resolve().parent.parent
KIND_OF = {"integrations": "integration", "segments": "segment", "activations": "activation"}
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
ENV = {
    "META_TOKEN": "token",
    "WEBHOOK_SECRET": SECRET,
    "CASE_TOKEN": "token",
    # the PostgreSQL example: validate checks the variable is set (not the server)
    "RECONCILE_SOURCE_DSN": "postgresql://reader@127.0.0.1:5432/test",
    # notification logins and webhook URLs of the cases below (validate checks they are set)
    "U": "mailer",
    "P": "secret",
    "HOOK": "https://hooks.example.com/x",
}
SMTP = "notifications:\n  smtp:\n    host: 127.0.0.1\n    port: 2525\n    security: none\n"

GOOD = [
    (
        "activation",
        "segments: [seg-a]\ndestination: sandbox\nlist: {existing: L}\naction: remove\n",
    ),
    (
        "activation",
        "segments: [seg-a, seg-b]\ndestination: sandbox\nsplit: ab\nlist:\n  existing: {A: a, B: b}\n",
    ),
    (
        "activation",
        "segments: [seg-a]\ndestination: sandbox\nsplit: control\ncontrol_percent: 20\n",
    ),
    ("activation", "segments: [seg-a]\ndestination: sandbox\nadopt: true\nlist: {create: true}\n"),
    (
        "activation",
        "segments: [seg-a]\ndestination: sandbox\nnotify:\n  webhook: [https://hooks.example.com/x, 'http://127.0.0.1:9/x', '${env:HOOK}']\n  on: [failed]\n",
    ),
    (
        "activation",
        "segments: [seg-a]\ndestination: sandbox\nnotify: []\nfrequency: once\non_delete: clear\n",
    ),
    (
        "integration",
        "type: meta_custom_audiences\ncredentials: {access_token: '${env:CASE_TOKEN}'}\nconfig: {ad_account_id: 1234, api_version: v23.0, identifiers: [email, madid]}\n",
    ),
    (
        "integration",
        "type: webhook\ncredentials: {secret: '${env:WEBHOOK_SECRET}'}\nendpoint: http://localhost:8080/x\nconfig: {url: 'https://example.com/h', identifiers: [email], pii: raw}\n",
    ),
    (
        "integration",
        "type: sandbox\ncredentials: {token: '${env:CASE_TOKEN}'}\nconfig: {batch_size: 3, reject_rate: 0.5}\n",
    ),
    ("segment", "description: all\nsql: SELECT customer_id FROM profiles\n"),
    (
        "reconcile",
        RECONCILE_YAML.replace("timezone: UTC", "timezone: Europe/Berlin")
        + SMTP
        + "    from: ops@example.com\n    username: ${env:U}\n    password: ${env:P}\n",
    ),
    (
        "reconcile",
        RECONCILE_YAML.replace("    table: profiles\n", "    table: profiles\n").replace(
            "  profiles:\n", "  tables: [orders, crm.accounts]\n  profiles:\n"
        ),
    ),
]

BAD = [
    # activations
    ("activation", "segments: [seg-a]\ndestination: sandbox\nlist: {existing: ''}\n"),
    (
        "activation",
        "segments: [seg-a, seg-b]\ndestination: sandbox\nsplit: ab\nlist:\n  existing: {A: a, B: ' '}\n",
    ),
    (
        "activation",
        "segments: [seg-a]\ndestination: sandbox\naction: remove\nlist: {existing: M}\n"
        "on_delete: clear\n",
    ),
    ("activation", "segments: []\ndestination: sandbox\n"),
    ("activation", "segments: [seg-a, seg-a]\ndestination: sandbox\n"),
    ("activation", 'segments: [seg-a]\ndestination: sandbox\nname: "VIP\\u200b"\n'),
    ("activation", "segments: [seg-a]\ndestination: sandbox\nname: ' '\n"),
    ("activation", 'segments: [seg-a]\ndestination: sandbox\nname: "VIP\\e[31m"\n'),
    ("activation", 'segments: [seg-a]\ndestination: sandbox\nname: "VIP\\u202eX"\n'),
    (
        "activation",
        "segments: [seg-a]\ndestination: sandbox\nattributes: [FIRST_NAME, FIRST_NAME]\n",
    ),
    ("activation", "segments: [seg-a]\n"),
    ("activation", "segments: [seg-a]\ndestination: sandbox\nfrequency: weekly\n"),
    ("activation", "segments: [seg-a]\ndestination: sandbox\nlist: {create: false}\n"),
    ("activation", "segments: [seg-a]\ndestination: sandbox\nlist: {}\n"),
    ("activation", "segments: [seg-a]\ndestination: sandbox\nlist: {create: true, existing: L}\n"),
    ("activation", "segments: [seg-a]\ndestination: sandbox\nlist: {existing: 3}\n"),
    (
        "activation",
        "segments: [seg-a]\ndestination: sandbox\nsplit: ab\naction: remove\nlist: {existing: {A: a, B: b}}\n",
    ),
    ("activation", "segments: [seg-a]\ndestination: sandbox\nsplit: control\ngoal: export_data\n"),
    ("activation", "segments: [seg-a]\ndestination: sandbox\ncontrol_percent: 20\n"),
    (
        "activation",
        "segments: [seg-a]\ndestination: sandbox\nsplit: control\ncontrol_percent: 60\n",
    ),
    ("activation", "segments: [seg-a]\ndestination: sandbox\nadopt: true\nlist: {existing: L}\n"),
    ("activation", "segments: [seg-a]\ndestination: sandbox\naction: remove\n"),
    ("activation", "segments: [seg-a]\ndestination: sandbox\nlist: {existing: {A: a, B: b}}\n"),
    ("activation", "segments: [seg-a]\ndestination: sandbox\nsplit: ab\nlist: {existing: L}\n"),
    ("activation", "segments: [seg-a]\ndestination: sandbox\nnotify: [not-an-address]\n"),
    (
        "activation",
        "segments: [seg-a]\ndestination: sandbox\nnotify: {webhook: ['http://example.com/x']}\n",
    ),
    (
        "activation",
        "segments: [seg-a]\ndestination: sandbox\nnotify: {webhook: [https://x.example.com], on: []}\n",
    ),
    (
        "activation",
        "segments: [seg-a]\ndestination: sandbox\nnotify: {webhook: [https://x.example.com], on: [sometimes]}\n",
    ),
    ("activation", "segments: [seg-a]\ndestination: sandbox\nmax_removal_share: 0\n"),
    ("activation", "segments: [seg-a]\ndestination: sandbox\nbogus: 1\n"),
    # integrations
    ("integration", "type: nope\n"),
    ("integration", "type: sandbox\ncredentials: {token: sk_live_literal}\n"),
    ("integration", "type: sandbox\ncredentials: {secret: '${env:CASE_TOKEN}'}\n"),
    ("integration", "type: sandbox\nconfig: {bogus: 1}\n"),
    ("integration", "type: sandbox\nconfig: {batch_size: 0}\n"),
    ("integration", "type: sandbox\nconfig: {identifiers: [fax]}\n"),
    ("integration", "type: sandbox\nendpoint: http://example.com/api\n"),
    ("integration", "type: webhook\nconfig: {url: 'https://example.com/h'}\n"),
    (
        "integration",
        "type: webhook\ncredentials: {secret: '${env:WEBHOOK_SECRET}'}\nconfig: {url: 'http://example.com/h'}\n",
    ),
    (
        "integration",
        "type: webhook\ncredentials: {secret: '${env:WEBHOOK_SECRET}'}\nconfig: {url: 'https://e.com', identifiers: [email, email]}\n",
    ),
    (
        "integration",
        "type: webhook\ncredentials: {secret: '${env:WEBHOOK_SECRET}'}\nconfig: {url: 'https://e.com', identifiers: [fax]}\n",
    ),
    (
        "integration",
        "type: meta_custom_audiences\ncredentials: {access_token: '${env:CASE_TOKEN}'}\nconfig: {ad_account_id: acct-12}\n",
    ),
    (
        "integration",
        "type: meta_custom_audiences\ncredentials: {access_token: '${env:CASE_TOKEN}'}\nconfig: {ad_account_id: '12', api_version: '24'}\n",
    ),
    (
        "integration",
        "type: meta_custom_audiences\ncredentials: {access_token: '${env:CASE_TOKEN}'}\nconfig: {ad_account_id: '12', identifiers: [fax]}\n",
    ),
    ("integration", "type: meta_custom_audiences\nconfig: {ad_account_id: '12'}\n"),
    ("integration", "description: no type\n"),
    # segments
    ("segment", "description: no sql\n"),
    ("segment", "sql: 3\n"),
    ("segment", "sql: SELECT customer_id FROM profiles\nsq: typo\n"),
    # reconcile.yaml
    ("reconcile", RECONCILE_YAML.replace("version: 1", "version: 2")),
    ("reconcile", RECONCILE_YAML.replace("timezone: UTC", "timezone: Mars/Olympus")),
    ("reconcile", RECONCILE_YAML.replace("timezone: UTC", "timezone: posix/Europe/Berlin")),
    ("reconcile", RECONCILE_YAML.replace("type: duckdb", "type: sqlite")),
    (
        "reconcile",
        RECONCILE_YAML.replace("{email: email, phone: phone}", "{email: email, fax: fax}"),
    ),
    ("reconcile", RECONCILE_YAML.replace("  profiles:\n", "  tables: ['a b']\n  profiles:\n")),
    *(
        ("reconcile", RECONCILE_YAML.replace("  profiles:\n", f"  tables: [{t}]\n  profiles:\n"))
        for t in ("__reconcile_state.members", "information_schema.tables", "pg_roles", "System.x")
    ),
    (
        "reconcile",
        RECONCILE_YAML.replace("default_phone_country: AU", "default_phone_country: AUS"),
    ),
    ("reconcile", RECONCILE_YAML + "defaults: {max_removal_share: 0}\n"),
    ("reconcile", RECONCILE_YAML + "bogus: 1\n"),
    ("reconcile", RECONCILE_YAML + SMTP),
    ("reconcile", RECONCILE_YAML + SMTP + "    from: not-an-address\n"),
    (
        "reconcile",
        RECONCILE_YAML
        + SMTP
        + "    from: a@example.com\n    password: hunter2\n    username: ${env:U}\n",
    ),
    ("reconcile", RECONCILE_YAML + SMTP + "    from: a@example.com\n    username: ${env:U}\n"),
    (
        "reconcile",
        RECONCILE_YAML
        + SMTP.replace("127.0.0.1", "mail.example.com")
        + "    from: a@example.com\n",
    ),
    ("reconcile", RECONCILE_YAML + "notifications: {templates: ../elsewhere}\n"),
    ("reconcile", RECONCILE_YAML + "notifications: {webhook_secret: whsec_literal}\n"),
    ("reconcile", RECONCILE_YAML.replace("{path: .reconcile/state.duckdb", "{path: ~/s.duckdb")),
    ("reconcile", RECONCILE_YAML.replace("{path: .reconcile/state.duckdb", "{path: .reconcile/")),
]


@cache
def _validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json_schema(kind)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(kind: str, path: Path, root: Path) -> list[str]:
    data = yamlfile.load(path, root).data
    return [e.message for e in _validator(kind).iter_errors({} if data is None else data)]


def _path_of(kind: str) -> str:
    return "reconcile.yaml" if kind == "reconcile" else f"{kind}s/case.yaml"


@pytest.fixture
def env(monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def _example_workspaces() -> list[Path]:
    return [REPO, *sorted(p.parent for p in (REPO / "examples").glob("*/reconcile.yaml"))]


@pytest.mark.parametrize("root", _example_workspaces(), ids=lambda p: p.name)
def test_the_example_workspaces_pass_validate_and_the_schema(root, env):
    files = [(root / "reconcile.yaml", "reconcile")] + [
        (p, KIND_OF[p.parent.name])
        for folder in KIND_OF
        for p in sorted((root / folder).glob("*.yaml"))
    ]
    assert len(files) >= 4
    for path, kind in files:
        assert schema_errors(kind, path, root) == [], path
    from click.testing import CliRunner

    from reconciler.cli.main import main

    res = CliRunner().invoke(main, ["-C", str(root), "validate", "--format", "json"])
    doc = json.loads(res.stdout)
    assert res.exit_code == 0 and doc["valid"] is True, doc["problems"]


@pytest.mark.parametrize(
    ("kind", "text", "valid"), [(*c, True) for c in GOOD] + [(*c, False) for c in BAD]
)
def test_the_schema_and_validate_agree_on_each_file(workspace, env, kind, text, valid):
    ws = workspace({"act": "segments: [seg-a]\ndestination: sandbox\n"})
    relative = _path_of(kind)
    path = ws.write(relative, text)
    by_schema = schema_errors(kind, path, ws.root)
    res = cli(ws, "validate", "--format", "json")
    named = [p for p in json.loads(res.output)["problems"] if p["file"] == relative]
    assert (not by_schema) is valid, f"schema: {by_schema}"
    assert (not named) is valid, f"validate: {named}"
