"""A call the destination applied whose answer was lost, and whose retry the destination then
refused outright: the first attempt may have been applied, so the call's members stay in
flight and the next apply records them as possibly sent. Only a refusal at the first attempt
means none was taken."""

from __future__ import annotations

import pytest

from destinations.identity import HASHED, NormaliseContext, records
from destinations.webhook.payload import ENTERED, LEFT
from tests.conftest import cli, plan_json, profile
from tests.engine_conformance import HEALTHY_YAML, TARGET
from tests.fakes.webhook import WebhookReceiver
from tests.test_webhook_destination import SECRET

ACT = f"segments: [seg-a]\ndestination: {TARGET}\nname: Hook\n"


def integration(url: str) -> str:
    return (
        "type: webhook\nconsent: email_consent\ncredentials:\n  secret: ${env:WH_SECRET}\n"
        f"endpoint: {url}\nconfig:\n  url: https://hooks.example.com/audiences\n"
        "  identifiers: [email]\n  batch_size: 3\n"
    )


def wanted(rows: list[dict]) -> set[str]:
    ctx = NormaliseContext("AU")
    return {
        s
        for r in rows
        if r["seg_a"] and r["email_consent"]
        for s in records({"email": r["email"]}, ["email"], HASHED, ctx)
    }


def workspace_on(workspace, fake, rows):
    ws = workspace({"act": ACT}, profiles=rows, integration=HEALTHY_YAML)
    ws.write(f"integrations/{TARGET}.yaml", integration(fake.url))
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    return ws


def recorded_before_sent_as(ws) -> dict:
    """Rewrite the state's spec as a release before `sent_as` recorded it; returns it."""
    import json

    import duckdb

    from reconciler.plan.recorded import digest

    con = duckdb.connect(str(ws.root / ".reconcile" / "state.duckdb"))
    try:
        (spec,) = con.execute("SELECT spec FROM activations").fetchone()
        older = {k: v for k, v in json.loads(spec).items() if k != "sent_as"}
        assert older != json.loads(spec)
        con.execute(
            "UPDATE activations SET spec = ?, spec_digest = ?", [json.dumps(older), digest(older)]
        )
    finally:
        con.close()
    return older


@pytest.mark.parametrize("status", [401, 400])
def test_an_addition_applied_then_refused_on_retry_leaves_no_phantom(
    workspace, monkeypatch, status
):
    monkeypatch.setenv("WH_SECRET", SECRET)
    with WebhookReceiver(SECRET) as fake:
        ws = workspace_on(workspace, fake, [profile(i, a=i < 3) for i in range(6)])
        rows = [profile(i, a=True) for i in range(6)]  # 3 enter
        ws.set_profiles(rows)
        fake.fail(500, apply=True, on=ENTERED)  # applied, the answer lost
        fake.fail(status, on=ENTERED)  # the retry refused outright
        assert cli(ws, "apply", "--auto-approve").exit_code == 1
        assert fake.held()["Hook"] == wanted(rows)
        rows = [profile(i, a=i < 3) for i in range(6)]  # they leave again
        ws.set_profiles(rows)
        res = cli(ws, "apply", "--auto-approve", "--allow-mass-removal")
        assert res.exit_code == 0, res.output + res.stderr
        assert fake.held()["Hook"] == wanted(rows)


def test_a_removal_applied_then_refused_on_retry_loses_no_member(workspace, monkeypatch):
    monkeypatch.setenv("WH_SECRET", SECRET)
    with WebhookReceiver(SECRET) as fake:
        rows = [profile(i, a=True) for i in range(6)]
        ws = workspace_on(workspace, fake, rows)
        ws.set_profiles([profile(i, a=i >= 2) for i in range(6)])  # 0 and 1 leave
        fake.fail(500, apply=True, on=LEFT)
        fake.fail(401, on=LEFT)
        assert cli(ws, "apply", "--auto-approve", "--allow-mass-removal").exit_code == 1
        ws.set_profiles(rows)  # they come back
        res = cli(ws, "apply", "--auto-approve")
        assert res.exit_code == 0, res.output + res.stderr
        assert fake.held()["Hook"] == wanted(rows)


def test_switching_pii_sends_every_member_again_in_the_new_form(workspace, monkeypatch):
    """`pii: raw` -> `hashed` changes no record string and no fingerprint: without the spec
    recording how identifiers are sent, the receiver kept raw e-mails while the plan said
    it matched."""
    monkeypatch.setenv("WH_SECRET", SECRET)
    rows = [profile(i, a=True) for i in range(5)]
    with WebhookReceiver(SECRET, pii="raw") as fake:
        ws = workspace({"act": ACT}, profiles=rows, integration=HEALTHY_YAML)
        raw = integration(fake.url) + "  pii: raw\n"
        ws.write(f"integrations/{TARGET}.yaml", raw)
        assert cli(ws, "apply", "--auto-approve").exit_code == 0
        (audience,) = fake.audiences.values()
        assert all("email" in r["identifiers"] for r in audience.rows.values())

        ws.write(f"integrations/{TARGET}.yaml", integration(fake.url))  # pii: hashed
        fake.pii = "hashed"
        res = cli(ws, "plan", "--format", "json")
        (planned,) = res.json()["activations"]
        assert planned["audiences"][0]["update"] == 5, planned
        assert any("form identifiers are sent in changed" in n for n in planned["notes"])
        res = cli(ws, "apply", "--auto-approve")
        assert res.exit_code == 0, res.output + res.stderr
        assert fake.held()["Hook"] == wanted(rows)
        assert all(set(r["identifiers"]) == {"email_sha256"} for r in audience.rows.values())
        assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0


def test_a_spec_recorded_before_sent_as_plans_no_change(workspace, monkeypatch):
    """A state recorded before the spec held `sent_as` is compared without it: no update of
    every member, no configuration change shown, on the first plan after an upgrade."""

    monkeypatch.setenv("WH_SECRET", SECRET)
    with WebhookReceiver(SECRET) as fake:
        ws = workspace_on(workspace, fake, [profile(i, a=True) for i in range(4)])
        recorded_before_sent_as(ws)
        res = cli(ws, "plan", "--detailed-exitcode")
        assert res.exit_code == 0, res.output + res.stderr


def test_a_plan_saved_before_sent_as_existed_still_applies(workspace, monkeypatch, tmp_path):
    """A plan saved by a release before `sent_as` carries a digest of the spec without it:
    against a state recorded without it too, it is not refused as stale."""
    import json

    from reconciler.plan.recorded import digest
    from tests.test_planfile import members, write_plan

    monkeypatch.setenv("WH_SECRET", SECRET)
    rows = [profile(i, a=i < 3) for i in range(5)]
    with WebhookReceiver(SECRET) as fake:
        ws = workspace_on(workspace, fake, rows)
        older = recorded_before_sent_as(ws)
        rows = [profile(i, a=True) for i in range(5)]
        ws.set_profiles(rows)
        good = tmp_path / "now.plan"
        assert cli(ws, "plan", "--out", str(good)).exit_code == 0
        parts = members(good)  # as the older release wrote it: the digest without sent_as
        doc = json.loads(parts["plan.json"])
        doc["activations"][0]["spec_digest"] = digest(older)
        parts["plan.json"] = json.dumps(doc).encode()
        res = cli(ws, "apply", str(write_plan(tmp_path / "older.plan", parts)), "--auto-approve")
        assert res.exit_code == 0, res.output + res.stderr
        assert fake.held()["Hook"] == wanted(rows)


def test_a_state_from_before_sent_as_sends_raw_receivers_every_member_once(workspace, monkeypatch):
    """A state recorded before `sent_as` does not say how members were sent; hashed (the
    default) is assumed. A webhook now set to `pii: raw` — set before the upgrade or just
    after it — gets every member once in raw form, then the plan settles."""

    monkeypatch.setenv("WH_SECRET", SECRET)
    rows = [profile(i, a=True) for i in range(4)]
    with WebhookReceiver(SECRET) as fake:
        ws = workspace_on(workspace, fake, rows)
        recorded_before_sent_as(ws)
        ws.write(f"integrations/{TARGET}.yaml", integration(fake.url) + "  pii: raw\n")
        fake.pii = "raw"
        (planned,) = plan_json(ws)["activations"]
        assert planned["audiences"][0]["update"] == 4, planned
        assert any("not recorded (a state from an earlier release)" in n for n in planned["notes"])
        assert cli(ws, "apply", "--auto-approve").exit_code == 0
        (audience,) = fake.audiences.values()
        assert all("email" in r["identifiers"] for r in audience.rows.values())
        assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0
