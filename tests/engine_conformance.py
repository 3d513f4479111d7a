"""The end-to-end layer of the destination conformance suite: ``reconcile apply`` (in-process,
through the CLI) against an adapter's fake, with faults injected at the fake.

Import it from :mod:`tests.destination_conformance`. A subclass provides:

- ``fake`` fixture: the adapter's fake (a local server, or the sandbox file) with the fault
  hooks of :class:`Faults`; it is set up before :meth:`EngineConformance.integration_yaml`
  is called, so that method may read it from ``self``;
- :meth:`EngineConformance.integration_yaml`: the text of ``integrations/target.yaml``, the
  integration under test, pointing at the fake (``endpoint:``), credentials included;
- :meth:`EngineConformance.held`: what the fake holds, audience name -> record strings.

The workspace (``tests/conftest.py``) has profiles ``c00000``... with an e-mail each; the
activations send segment ``seg-a`` to the integration under test. A second integration,
``sandbox`` (a sandbox at ``.reconcile/healthy.duckdb``), stays healthy whatever the fake does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Protocol

import pytest

from destinations.base import Identity
from destinations.identity import NormaliseContext, records
from reconciler.integrations import Connections
from reconciler.workspace import loader
from tests.conftest import SANDBOX_YAML, WS, cli, plan_json, profile
from tests.test_recovery import assert_converged, runs, state_rows
from tests.test_recovery import status_of as recovery_status

__all__ = ["HEALTHY", "TARGET", "EngineConformance", "Faults"]

TARGET = "target"  # integrations/target.yaml: the integration under test
HEALTHY = "sandbox"  # integrations/sandbox.yaml: a healthy sandbox beside it
HEALTHY_YAML = SANDBOX_YAML.replace(".reconcile/sandbox.duckdb", ".reconcile/healthy.duckdb")
COUNTRY = "AU"  # the test workspace's default phone country

# Runs the CLI with one adapter method hooked so the process SIGKILLs itself right after the
# destination applied the call and before the engine recorded it: the worst moment to die.
CRASH_AFTER = """\
import os, signal, sys
from destinations import registry
cls, method = registry.load(sys.argv[1]), sys.argv[2]
real = getattr(cls, method)
def crash(self, *args, **kwargs):
    real(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
setattr(cls, method, crash)
from reconciler.cli.main import main
main(sys.argv[3:], prog_name="reconcile")
"""


class Faults(Protocol):
    """Fault hooks of an adapter's fake. Each fault lasts until :meth:`heal`."""

    def throttle_storm(self) -> None:
        """Throttle many write calls (several in a row), as the vendor signals it."""

    def throttled(self) -> int | None:
        """How many calls were answered "throttled" so far; None when the fake cannot tell."""

    def expire_token(self) -> None:
        """Refuse every call as the vendor refuses an expired or revoked token."""

    def reject(self, members: Mapping[str, Mapping[str, str | None]]) -> None:
        """Reject these members (profile key -> raw identifiers by type) on every add, as the
        vendor reports a row it will not take."""

    def delete_audience(self, name: str) -> None:
        """Delete the audience of this name at the destination, outside reconcile."""

    def heal(self) -> None:
        """Every fault off."""


def activation(name: str, destination: str = TARGET) -> str:
    return f"segments: [seg-a]\ndestination: {destination}\nname: {name}\n"


def member_rows(n: int, *, out: Iterable[int] = ()) -> list[dict]:
    """Profiles ``c00000``.. with consent, in ``seg-a`` unless listed in ``out``."""
    gone = set(out)
    return [profile(i, a=i not in gone) for i in range(n)]


def status_of(ws: WS, activation_id: str) -> str:
    return recovery_status(ws, activation_id)["status"]


def apply(ws: WS, *args: str, code: int = 0) -> str:
    res = cli(ws, "apply", "--auto-approve", *args)
    assert res.exit_code == code, res.output + res.stderr
    return res.output + res.stderr


def killed_after(ws: WS, method: str, *args: str) -> None:
    """`reconcile apply` in a child process that SIGKILLs itself right after the target
    adapter's ``method`` was applied (:data:`CRASH_AFTER`)."""
    kind = loader.load(ws.root).integrations[TARGET].type
    cmd = [sys.executable, "-c", CRASH_AFTER, kind, method, "-C", str(ws.root), "apply"]
    done = subprocess.run(
        [*cmd, "--auto-approve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ws.root,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr


def healthy_keys(ws: WS) -> dict[str, set[str]]:
    return ws.sandbox_keys(path=".reconcile/healthy.duckdb")


class EngineConformance:
    """``reconcile apply`` against the adapter's fake (see the module docstring)."""

    # -- hooks -------------------------------------------------------------------------------
    @pytest.fixture
    def fake(self) -> Iterator[Faults]:
        raise NotImplementedError("subclasses provide a `fake` fixture")

    def integration_yaml(self, tmp: Path, **knobs: object) -> str:
        """The integration under test (``tmp`` is the workspace root)."""
        raise NotImplementedError("subclasses write their integration file")

    def held(self, fake: Faults) -> dict[str, set[str]]:
        """Audience name -> record strings the fake holds (every audience, empty ones too)."""
        raise NotImplementedError("subclasses read what their fake holds")

    # -- helpers -----------------------------------------------------------------------------
    def make_ws(self, workspace, activations: dict[str, str], rows: list[dict]) -> WS:
        ws = workspace(activations, profiles=rows, integration=HEALTHY_YAML)
        ws.write(f"integrations/{TARGET}.yaml", self.integration_yaml(ws.root))
        return ws

    def _target(self, ws: WS):
        conns = Connections(loader.load(ws.root), require_credentials=False)
        return conns, conns.get(TARGET)

    def identity(self, ws: WS) -> Identity:
        conns, dest = self._target(ws)
        try:
            return dest.identity
        finally:
            conns.close()

    def audience_names(self, ws: WS) -> list[str]:
        """Every audience the destination lists, read through the adapter (duplicates kept)."""
        conns, dest = self._target(ws)
        try:
            return sorted(a.name for a in dest.list_audiences())
        finally:
            conns.close()

    def records(self, ws: WS, rows: list[dict]) -> dict[str, tuple[str, ...]]:
        """Profile key -> the record strings the adapter's identity gives it."""
        identity, context = self.identity(ws), NormaliseContext(COUNTRY)
        return {
            r["customer_id"]: records(
                {"email": r["email"], "phone": r["phone"]},
                identity.accepted,
                identity.rules,
                context,
            )
            for r in rows
        }

    def desired(self, ws: WS, rows: list[dict], *, without: Iterable[str] = ()) -> set[str]:
        """Record strings the destination must hold: ``seg-a`` members with consent."""
        skip = set(without)
        wanted = [r for r in rows if r["seg_a"] and r["email_consent"]]
        recs = self.records(ws, wanted)
        return {s for r in wanted if r["customer_id"] not in skip for s in recs[r["customer_id"]]}

    @staticmethod
    def raw(rows: list[dict], keys: Iterable[str]) -> dict[str, dict[str, str | None]]:
        wanted = set(keys)
        return {
            r["customer_id"]: {"email": r["email"], "phone": r["phone"]}
            for r in rows
            if r["customer_id"] in wanted
        }

    # -- the journey -------------------------------------------------------------------------
    def test_create_add_then_the_plan_is_empty(self, workspace, fake: Faults) -> None:
        rows = member_rows(12)
        ws = self.make_ws(workspace, {"conf": activation("Conf")}, rows)
        apply(ws)
        assert self.held(fake) == {"Conf": self.desired(ws, rows)}
        assert self.audience_names(ws) == ["Conf"]
        assert_converged(ws)
        assert [r["status"] for r in runs(ws, "conf")] == ["Complete"]
        assert runs(ws, "conf")[0]["added"] == 12

    def test_members_leave_and_re_enter(self, workspace, fake: Faults) -> None:
        rows = member_rows(10)
        ws = self.make_ws(workspace, {"conf": activation("Conf")}, rows)
        apply(ws)
        left = member_rows(10, out=(0, 1, 2))
        ws.set_profiles(left)
        apply(ws)
        assert self.held(fake) == {"Conf": self.desired(ws, left)}
        assert runs(ws, "conf")[0]["removed"] == 3
        ws.set_profiles(rows)
        apply(ws)
        assert self.held(fake) == {"Conf": self.desired(ws, rows)}
        assert runs(ws, "conf")[0]["added"] == 3
        assert_converged(ws)

    def test_a_throttling_storm_is_waited_out(self, workspace, fake: Faults) -> None:
        rows = member_rows(30)
        ws = self.make_ws(workspace, {"conf": activation("Conf")}, rows)
        fake.throttle_storm()
        apply(ws)
        assert fake.throttled() != 0  # the storm happened (None: the fake cannot count)
        (run,) = runs(ws, "conf")
        assert run["status"] == "Complete" and run["failed"] == 0  # waits are not failures
        assert self.held(fake) == {"Conf": self.desired(ws, rows)}
        assert self.audience_names(ws) == ["Conf"]

    def test_an_expired_token_disables_only_its_activation(self, workspace, fake: Faults) -> None:
        rows = member_rows(8)
        acts = {"a-conf": activation("Conf"), "b-healthy": activation("Healthy", HEALTHY)}
        ws = self.make_ws(workspace, acts, rows)
        fake.expire_token()
        out = apply(ws, code=1)
        assert "a-conf: Disabled" in out and "b-healthy: Complete" in out
        assert status_of(ws, "a-conf") == "Disabled"
        assert healthy_keys(ws) == {"Healthy": self.desired(ws, rows)}
        assert not any(self.held(fake).values())
        members = "SELECT count(*) FROM members WHERE activation_id = 'a-conf'"
        assert state_rows(ws, members) == [(0,)]
        fake.heal()
        apply(ws)
        assert self.held(fake) == {"Conf": self.desired(ws, rows)}
        assert status_of(ws, "a-conf") == "Complete"

    def _rejected(self, ws: WS, aid: str) -> list[tuple[str, list[str]]]:
        """(key, records) of the rejections recorded for an activation."""
        sql = "SELECT key, record FROM rejections WHERE activation_id = ? ORDER BY key"
        return [(k, list(r)) for k, r in state_rows(ws, sql, [aid])]

    def test_rejections_under_the_share_complete_with_a_warning(
        self, workspace, fake: Faults
    ) -> None:
        rows = member_rows(40)
        ws = self.make_ws(workspace, {"conf": activation("Conf")}, rows)
        fake.reject(self.raw(rows, ["c00003"]))
        out = apply(ws)  # 1 of 40 is under the default max_rejected_share (5%)
        assert "conf: Complete" in out and "1 rejected" in out
        (run,) = runs(ws, "conf")
        assert run["status"] == "Complete" and run["failed"] == 1
        assert "1 of 40 member(s) refused" in run["error"]  # the warning, kept in the log
        assert self.held(fake) == {"Conf": self.desired(ws, rows, without=["c00003"])}
        assert [k for k, _ in self._rejected(ws, "conf")] == ["c00003"]
        # not sent again: neither by the next plan nor once the destination would take it
        assert_converged(ws)
        fake.heal()
        apply(ws)
        assert self.desired(ws, [rows[3]]).isdisjoint(self.held(fake)["Conf"])
        # until its identifiers change: then it is sent again
        rows[3]["email"] = "fixed3@example.com"
        ws.set_profiles(rows)
        apply(ws)
        assert self.held(fake) == {"Conf": self.desired(ws, rows)}
        assert_converged(ws)

    def test_rejected_members_are_listed_with_their_hashed_records(
        self, workspace, fake: Faults
    ) -> None:
        rows = member_rows(40)
        ws = self.make_ws(workspace, {"conf": activation("Conf")}, rows)
        fake.reject(self.raw(rows, ["c00003"]))
        apply(ws)
        listed = cli(ws, "log", "conf", "--rejected")
        if "--rejected" in cli(ws, "log", "--help").output:
            assert listed.exit_code == 0 and "c00003" in listed.output
            assert "user3@example.com" not in listed.output + listed.stderr
        assert "user3@example.com" not in str(state_rows(ws, "SELECT * FROM rejections"))
        recorded = self.records(ws, rows)["c00003"]
        assert self._rejected(ws, "conf") == [("c00003", list(recorded))]

    def test_rejections_over_the_share_fail_the_run(self, workspace, fake: Faults) -> None:
        rows = member_rows(40)
        ws = self.make_ws(workspace, {"conf": activation("Conf")}, rows)
        refused = ["c00001", "c00002", "c00005", "c00008"]
        fake.reject(self.raw(rows, refused))
        out = apply(ws, code=1)
        assert "conf: Failed" in out
        (run,) = runs(ws, "conf")
        assert run["status"] == "Failed" and run["failed"] == 4 and run["added"] == 36
        assert "4 of 40 member(s) refused" in run["error"]
        assert [k for k, _ in self._rejected(ws, "conf")] == refused
        fake.heal()
        apply(ws)  # the rejected members are not re-sent
        assert self.held(fake) == {"Conf": self.desired(ws, rows, without=refused)}

    #: whether the destination can read an audience back (``Capabilities.refresh``): drift
    #: is only seen where it can
    refreshes = True

    def test_an_audience_deleted_outside_is_created_again(self, workspace, fake: Faults) -> None:
        if not self.refreshes:
            pytest.skip("this destination cannot read an audience back (no drift detection)")
        rows = member_rows(9)
        ws = self.make_ws(workspace, {"conf": activation("Conf")}, rows)
        apply(ws)
        fake.delete_audience("Conf")
        assert "Conf" not in self.held(fake)
        (audience,) = next(a for a in plan_json(ws)["activations"] if a["id"] == "conf")[
            "audiences"
        ]
        assert audience["create"] is True and audience["add"] == 9
        apply(ws)
        assert self.held(fake) == {"Conf": self.desired(ws, rows)}
        assert self.audience_names(ws) == ["Conf"]
        assert_converged(ws)

    def test_a_gone_existing_list_fails_its_activation_only(self, workspace, fake: Faults) -> None:
        """`list: existing` names a list that is not the activation's: deleted at the
        destination, it cannot be created again. The plan warns, the apply fails that
        activation only; the others are applied (a deleted audience never blocks apply)."""
        if not self.refreshes:
            pytest.skip("this destination cannot read an audience back (no drift detection)")
        rows = member_rows(6)
        ws = self.make_ws(workspace, {"conf": activation("Conf")}, rows)
        conns, dest = self._target(ws)
        try:
            dest.create_audience("Outside", idempotency_key="outside-list-1")
        finally:
            conns.close()
        ext = f"segments: [seg-a]\ndestination: {TARGET}\nlist: {{existing: Outside}}\n"
        ws.write("activations/ext.yaml", ext)
        apply(ws)
        fake.delete_audience("Outside")
        rows = member_rows(7)
        ws.set_profiles(rows)
        planned = {a["id"]: a for a in plan_json(ws)["activations"]}
        assert any("gone from the destination" in w for w in planned["ext"]["warnings"]), planned
        apply(ws, code=1)
        assert self.held(fake)["Conf"] == self.desired(ws, rows)  # applied
        ext = recovery_status(ws, "ext")
        assert ext["status"] == "Failed", ext
        assert "gone" in (ext.get("error") or "") and "creates it again" not in (
            ext.get("error") or ""
        )
        assert recovery_status(ws, "conf")["status"] == "Complete"

    def test_a_paused_activation_whose_audience_is_gone_removes_nothing_and_completes(
        self, workspace, fake: Faults
    ) -> None:
        """Paused (no refresh), its audience deleted outside, a member withdraws consent:
        the scheduled run's removal finds nothing to remove and completes (it failed every
        day: "the next plan creates it again", which a paused activation never does).
        Resumed, the audience is created again with every member."""
        if not self.refreshes:
            pytest.skip("this destination cannot say an audience is gone")
        rows = member_rows(6)
        ws = self.make_ws(workspace, {"conf": activation("Conf")}, rows)
        apply(ws)
        ws.write("activations/conf.yaml", activation("Conf") + "paused: true\n")
        fake.delete_audience("Conf")
        rows[2]["email_consent"] = False
        ws.set_profiles(rows)
        apply(ws, "--due")
        assert status_of(ws, "conf") == "Complete"
        assert "Conf" not in self.held(fake)  # nothing was created while paused
        ws.write("activations/conf.yaml", activation("Conf"))
        apply(ws)
        assert self.held(fake) == {"Conf": self.desired(ws, rows)}
        assert_converged(ws)

    def test_a_saved_plan_is_refused_once_its_audience_was_deleted_outside(
        self, workspace, fake: Faults, tmp_path
    ) -> None:
        """The plan was saved, then the audience deleted at the destination: applying the saved
        plan's few changes to a new, empty audience would lose the others for good (the state
        still records them). The activation is refused as stale; a new plan refills it."""
        if not self.refreshes:
            pytest.skip("this destination cannot read an audience back (no drift detection)")
        rows = member_rows(9)
        ws = self.make_ws(workspace, {"conf": activation("Conf")}, rows)
        apply(ws)
        rows = member_rows(10)  # one more
        ws.set_profiles(rows)
        saved = tmp_path / "before.plan"
        assert cli(ws, "plan", "--out", str(saved)).exit_code == 0
        fake.delete_audience("Conf")
        res = cli(ws, "apply", str(saved), "--auto-approve")
        assert res.exit_code == 1, res.output + res.stderr
        assert "gone from the destination since the plan" in res.stderr, res.stderr
        assert "Conf" not in self.held(fake)  # nothing sent
        apply(ws)
        assert self.held(fake) == {"Conf": self.desired(ws, rows)}
        assert_converged(ws)

    @pytest.mark.slow
    @pytest.mark.parametrize("method", ["create_audience", "add"])
    def test_killed_between_intent_and_outcome_then_apply_converges(
        self, workspace, fake: Faults, method: str
    ) -> None:
        rows = member_rows(12)
        ws = self.make_ws(workspace, {"conf": activation("Conf")}, rows)
        killed_after(ws, method)
        assert runs(ws, "conf")[0]["status"] == "Pending"
        assert self.audience_names(ws) == ["Conf"]  # the call reached the destination
        apply(ws)
        assert self.audience_names(ws) == ["Conf"]  # no second audience
        assert self.held(fake) == {"Conf": self.desired(ws, rows)}  # none lost, no phantom
        assert_converged(ws)
        assert [r["status"] for r in runs(ws, "conf")] == ["Complete", "Pending"]

    @pytest.mark.slow
    @pytest.mark.parametrize("method", ["add", "remove"])
    def test_killed_after_a_call_then_its_members_change_their_minds(
        self, workspace, fake: Faults, method: str
    ) -> None:
        """The destination applied the call, the run died before recording it, and the
        call's members then left (an addition) or came back (a removal) before the next
        apply: it removes them, or sends them again — no phantom, none lost."""
        rows, gone = member_rows(12), member_rows(12, out=tuple(range(9)))
        ws = self.make_ws(workspace, {"conf": activation("Conf")}, rows)
        if method == "remove":
            apply(ws)
            ws.set_profiles(gone)
        killed_after(ws, method, "--allow-mass-removal")
        after = gone if method == "add" else rows
        ws.set_profiles(after)
        apply(ws, "--allow-mass-removal")
        assert self.held(fake) == {"Conf": self.desired(ws, after)}
        assert self.audience_names(ws) == ["Conf"]
        assert_converged(ws)

    @pytest.mark.slow
    def test_killed_after_an_e_mail_moved_then_its_members_leave(
        self, workspace, fake: Faults
    ) -> None:
        """Members' e-mails change; the run dies right after the destination took the new
        e-mails and before the state recorded them, so each member is recorded with both
        e-mails. They then leave the segment: both e-mails must go, the new one included
        (a removal payload carrying one value per identifier type left it behind)."""
        rows = member_rows(12)
        ws = self.make_ws(workspace, {"conf": activation("Conf")}, rows)
        apply(ws)
        moved = [
            profile(i, a=True, email=f"moved{i}@example.com" if i < 5 else "default")
            for i in range(12)
        ]
        ws.set_profiles(moved)
        conns, dest = self._target(ws)
        method = "update" if dest.capabilities.update else "add"
        conns.close()
        killed_after(ws, method, "--allow-mass-removal")
        after = [profile(i, a=i >= 5) for i in range(12)]
        ws.set_profiles(after)
        apply(ws, "--allow-mass-removal")
        assert self.held(fake) == {"Conf": self.desired(ws, after)}
        assert_converged(ws)
