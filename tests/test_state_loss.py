"""State loss is never silent: with an empty state, audiences the plan would create whose
names the destination already has are shown prominently by `plan` and refused by `apply`
until they are adopted (`reconcile import`, `adopt: true`) or `--allow-duplicate-audiences`
is given."""

from __future__ import annotations

import duckdb

from tests.conftest import WS, cli, plan_json, profile
from tests.test_recovery import activation, assert_converged, audiences, desired, held

ROWS = [profile(i, a=True) for i in range(6)]


def applied_then_lost(workspace) -> WS:
    """Two activations applied, then the state (and its backup) gone: a new CI runner."""
    ws = workspace({"alpha": activation("Alpha"), "beta": activation("Beta")}, profiles=ROWS)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    for name in ("state.duckdb", "state.duckdb.backup"):
        (ws.root / ".reconcile" / name).unlink(missing_ok=True)
    return ws


def ids(ws: WS) -> dict[str, str]:
    return {name: aid for aid, name in audiences(ws)}


def test_plan_shows_the_lost_state_in_every_format(workspace):
    ws = applied_then_lost(workspace)
    existing = ids(ws)
    text = cli(ws, "plan").output
    assert "! STATE LOSS? The state is empty (no run recorded), but 2 audience(s)" in text
    assert f'activation "alpha": audience "Alpha" (id {existing["Alpha"]}) at sandbox' in text
    assert f'activation "beta": audience "Beta" (id {existing["Beta"]}) at sandbox' in text
    assert "reconcile import" in text and "--allow-duplicate-audiences" in text
    doc = plan_json(ws)
    assert [(c["activation"], c["name"], c["audience_id"]) for c in doc["state_loss"]] == [
        ("alpha", "Alpha", existing["Alpha"]),
        ("beta", "Beta", existing["Beta"]),
    ]
    md = cli(ws, "plan", "--format", "markdown").output
    assert "> [!CAUTION]" in md and "> **STATE LOSS?" in md and "Beta" in md


def test_apply_refuses_naming_activations_and_audiences(workspace):
    ws = applied_then_lost(workspace)
    before = audiences(ws)
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 1
    assert "refusing to apply: the state is empty (no run recorded)" in res.stderr
    assert 'activation "alpha": audience "Alpha"' in res.stderr
    assert 'activation "beta": audience "Beta"' in res.stderr
    assert audiences(ws) == before, "nothing was created"
    res = cli(ws, "run", "alpha", "--auto-approve")
    assert res.exit_code == 1 and "refusing to apply" in res.stderr
    # a plan file saved meanwhile is refused the same way
    out = ws.root / "lost.plan"
    assert cli(ws, "plan", "--out", str(out)).exit_code == 0
    res = cli(ws, "apply", str(out), "--auto-approve")
    assert res.exit_code == 1 and "refusing to apply" in res.stderr
    assert audiences(ws) == before


def test_import_by_name_and_adopt_are_the_ways_out(workspace):
    ws = applied_then_lost(workspace)
    before = audiences(ws)
    res = cli(ws, "import", "alpha")
    assert res.exit_code == 0, res.stderr
    assert f"Imported audience 'Alpha' (id {ids(ws)['Alpha']})" in res.output
    # beta is still not adopted: still refused, naming only beta now
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 1 and '"beta"' in res.stderr and '"alpha"' not in res.stderr
    ws.write("activations/beta.yaml", activation("Beta", extra="adopt: true\n"))
    assert plan_json(ws)["state_loss"] == []
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert audiences(ws) == before, "no duplicate audience"
    assert held(ws) == {"Alpha": desired(ROWS), "Beta": desired(ROWS)}
    assert_converged(ws)


def test_import_by_id_and_its_errors(workspace):
    ws = applied_then_lost(workspace)
    alpha = ids(ws)["Alpha"]
    res = cli(ws, "import", "alpha", "nope")
    assert res.exit_code == 1 and "has no audience with id 'nope'" in res.stderr
    res = cli(ws, "import", "ghost")
    assert res.exit_code == 1 and "unknown activation 'ghost'" in res.stderr
    res = cli(ws, "import", "alpha", "--group", "A")
    assert res.exit_code == 1 and "no group 'A'" in res.stderr
    ws.write("activations/gamma.yaml", activation("Gamma"))
    res = cli(ws, "import", "gamma")
    assert res.exit_code == 1 and "no audience named 'Gamma'" in res.stderr
    from destinations.sandbox import store  # two audiences named Gamma: which one is not guessed

    con = store.connect(ws.root / ".reconcile" / "sandbox.duckdb")
    try:
        twins = [store.create(con, "Gamma", key).id for key in ("g1", "g2")]
    finally:
        con.close()
    res = cli(ws, "import", "gamma")
    assert res.exit_code == 1 and "2 audiences at 'sandbox' are named 'Gamma'" in res.stderr
    assert all(t in res.stderr for t in twins)
    assert cli(ws, "import", "alpha", alpha).exit_code == 0
    res = cli(ws, "import", "alpha", alpha)
    assert res.exit_code == 1 and "already records audience 'Alpha'" in res.stderr
    ws.remove("activations/gamma.yaml")
    assert cli(ws, "import", "beta").exit_code == 0
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert len(audiences(ws)) == 4  # Alpha, Beta and the two Gamma made above
    assert_converged(ws)


def test_import_a_split_group(workspace):
    ws = workspace({"ab": activation("Split", extra="split: ab\n")}, profiles=ROWS)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    (ws.root / ".reconcile" / "state.duckdb").unlink()
    res = cli(ws, "import", "ab")
    assert res.exit_code == 1 and "--group" in res.stderr
    assert cli(ws, "import", "ab", "--group", "A").exit_code == 0
    doc = plan_json(ws)
    assert [(c["group"], c["name"]) for c in doc["state_loss"]] == [("B", "Split - B")]
    assert cli(ws, "import", "ab", "--group", "B").exit_code == 0
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert sorted(name for _, name in audiences(ws)) == ["Split - A", "Split - B"]
    assert_converged(ws)


def test_allow_duplicate_audiences_creates_new_ones(workspace):
    ws = applied_then_lost(workspace)
    res = cli(ws, "apply", "--auto-approve", "--allow-duplicate-audiences")
    assert res.exit_code == 0, res.output + res.stderr
    assert sorted(name for _, name in audiences(ws)) == ["Alpha", "Alpha", "Beta", "Beta"]
    assert_converged(ws)


def test_a_taken_name_with_a_state_that_has_run_is_only_a_warning(workspace):
    ws = workspace({"alpha": activation("Alpha")}, profiles=ROWS)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write("activations/other.yaml", activation("Alpha"))  # a second activation, same name
    doc = plan_json(ws)
    assert doc["state_loss"] == []
    (other,) = [a for a in doc["activations"] if a["id"] == "other"]
    assert any("already has an audience named 'Alpha'" in w for w in other["warnings"])


def test_a_saved_plan_made_without_refresh_is_checked_again_at_apply(workspace):
    ws = applied_then_lost(workspace)
    before = audiences(ws)
    out = ws.root / "blind.plan"
    res = cli(ws, "plan", "--refresh=false", "--out", str(out))
    assert res.exit_code == 0 and "STATE LOSS" not in res.output  # it did not ask
    res = cli(ws, "apply", str(out), "--auto-approve")
    assert res.exit_code == 1
    assert "refusing to apply" in res.stderr and 'audience "Alpha"' in res.stderr
    assert audiences(ws) == before
    res = cli(ws, "apply", str(out), "--auto-approve", "--allow-duplicate-audiences")
    assert res.exit_code == 0, res.output + res.stderr
    assert len(audiences(ws)) == 4


# ------------------------------------------------- audiences named by the date they were made
DATED = "segments: [seg-a]\ndestination: sandbox\nattributes: [FIRST_NAME]\n"  # the default name


def made_earlier_then_lost(workspace, day: str = "2026-10-02") -> tuple[WS, str, str]:
    """An activation with the default name ("<date created> <segments>") applied, its audience
    dated ``day`` (as if made then), then the state lost: today's plan names another audience.
    Returns the workspace, the audience's id and its name."""
    ws = workspace({"dated": DATED}, profiles=ROWS)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ((audience_id, name),) = audiences(ws)
    old = f"{day} {name.split(' ', 1)[1]}"
    con = duckdb.connect(str(ws.root / ".reconcile" / "sandbox.duckdb"))
    try:
        con.execute("UPDATE audiences SET name = ? WHERE id = ?", [old, audience_id])
    finally:
        con.close()
    for file in ("state.duckdb", "state.duckdb.backup"):
        (ws.root / ".reconcile" / file).unlink(missing_ok=True)
    return ws, audience_id, old


def test_a_lost_state_finds_the_audience_its_default_name_dated_earlier(workspace):
    ws, audience_id, old = made_earlier_then_lost(workspace)
    before = audiences(ws)
    doc = plan_json(ws)
    (planned,) = [au["name"] for a in doc["activations"] for au in a["audiences"]]
    assert planned != old and planned.endswith(" seg-a")
    assert [
        (c["activation"], c["name"], c["audience_id"], c["planned"]) for c in doc["state_loss"]
    ] == [("dated", old, audience_id, planned)]
    text = cli(ws, "plan").output
    assert "or the same name made on another date" in text
    assert f"reconcile import dated {audience_id}" in text
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 1 and "refusing to apply" in res.stderr and old in res.stderr
    assert audiences(ws) == before, "no second audience"
    # importing it by id takes back its creation date: the plan then keeps its name
    res = cli(ws, "import", "dated")
    assert res.exit_code == 1 and f"{old!r} (id {audience_id})" in res.stderr
    assert cli(ws, "import", "dated", audience_id).exit_code == 0
    doc = plan_json(ws)
    assert doc["state_loss"] == []
    (au,) = [au for a in doc["activations"] for au in a["audiences"]]
    assert (au["name"], au["resource_id"], au["create"], au["rename_from"]) == (
        old,
        audience_id,
        False,
        None,
    )
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert audiences(ws) == before
    assert held(ws) == {old: desired(ROWS)}
    assert_converged(ws)


def test_a_saved_blind_plan_is_refused_for_a_dated_twin_too(workspace):
    ws, audience_id, old = made_earlier_then_lost(workspace)
    out = ws.root / "blind.plan"
    res = cli(ws, "plan", "--refresh=false", "--out", str(out))
    assert res.exit_code == 0 and "STATE LOSS" not in res.output  # it did not ask
    res = cli(ws, "apply", str(out), "--auto-approve")
    assert res.exit_code == 1 and "refusing to apply" in res.stderr
    assert f'audience "{old}" (id {audience_id})' in res.stderr


def test_a_dated_twin_only_counts_when_the_state_is_empty(workspace):
    # a state that has run: a second activation with the same segments is no state loss
    ws, audience_id, old = made_earlier_then_lost(workspace)
    assert cli(ws, "import", "dated", audience_id).exit_code == 0
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write("activations/again.yaml", DATED)
    doc = plan_json(ws)
    assert doc["state_loss"] == []


def test_a_name_that_does_not_show_the_creation_date_has_no_dated_twin(workspace):
    ws = workspace({"fixed": activation("Fixed 2026-10-02")}, profiles=ROWS)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    (ws.root / ".reconcile" / "state.duckdb").unlink()
    ws.write("activations/fixed.yaml", activation("Fixed 2026-10-03"))
    assert plan_json(ws)["state_loss"] == []


def test_dated_patterns():
    from datetime import date

    from destinations.base import AudienceRef
    from reconciler.plan import twins

    def render(day):
        return f"{day.isoformat()} VIP (since {day.isoformat()}) - A"

    pattern = twins.dated_pattern(render)
    assert pattern is not None
    assert twins.created_on(pattern, "2026-10-02 VIP (since 2026-10-02) - A") == date(2026, 10, 2)
    assert twins.created_on(pattern, "2026-10-02 VIP (since 2026-10-03) - A") is None
    assert twins.created_on(pattern, "2026-13-45 VIP (since 2026-13-45) - A") is None
    assert twins.created_on(pattern, "2026-10-02 VIP (since 2026-10-02) - B") is None
    assert twins.dated_pattern(lambda day: "VIP") is None
    today = render(date(2026, 12, 1))
    listed = [
        AudienceRef(id=str(i), name=render(d))
        for i, d in enumerate([date(2026, 10, 2), date(2026, 11, 5), date(2026, 12, 1)])
    ]
    assert [a.id for a in twins.earlier_twins(listed, pattern, today)] == ["1", "0"]


def test_members_recorded_without_their_audience_are_sent_to_the_new_one(workspace):
    """A state that lost its audience rows but kept the members (damaged, or edited by
    hand): the audience is created again, and its members must be sent to it. They stayed
    recorded, so the new audience was created empty and the state claimed it full."""
    rows = [profile(i, a=True) for i in range(5)]
    ws = workspace({"act": activation("Kept")}, profiles=rows)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    con = duckdb.connect(str(ws.root / ".reconcile" / "state.duckdb"))
    con.execute("DELETE FROM audiences")
    con.close()
    text = cli(ws, "plan").output
    assert "records 5 member(s) of group 'all' but no audience for them" in text, text
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    first, second = audiences(ws)  # the old one is no longer managed; a warning said so
    sandbox = duckdb.connect(str(ws.root / ".reconcile" / "sandbox.duckdb"), read_only=True)
    (count,) = sandbox.execute(
        "SELECT count(*) FROM members WHERE audience_id = ?", [second[0]]
    ).fetchone()
    sandbox.close()
    assert count == len(desired(rows))
    assert_converged(ws)
