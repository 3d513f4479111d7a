"""The three plan renderers (text, markdown, json) on hand-built plans."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from reconciler.plan.model import (
    FORMAT_VERSION,
    ActivationPlan,
    AudienceChange,
    Change,
    ConfigChange,
    Plan,
    SegmentInfo,
    summarise,
)
from reconciler.render import FORMATS, render
from reconciler.render.markdown import escape_md, render_markdown

ANSI = re.compile(r"\x1b\[[0-9;]*m")
AS_OF = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)


def make_plan(*activations: ActivationPlan) -> Plan:
    return Plan(
        plan_id="p-123",
        as_of=AS_OF,
        created_at=AS_OF,
        workspace="demo",
        activations=list(activations),
        summary=summarise(list(activations)),
    )


def create_ab() -> ActivationPlan:
    """A new activation split A/B into two audiences."""
    return ActivationPlan(
        id="vip-meta",
        change=Change.CREATE,
        destination="meta-prod",
        destination_type="meta_custom_audiences",
        goal="send_segments",
        action="maintain",
        frequency="daily",
        segments=[SegmentInfo(name="vip", size=12_345), SegmentInfo(name="lapsed", size=2_000)],
        audience_size=14_000,
        matchable=13_000,
        excluded={"suppression:unsubscribed": 120, "consent": 34},
        audiences=[
            AudienceChange(group="A", name="VIP - A", create=True, add=7_001, size_after=7_001),
            AudienceChange(group="B", name="VIP - B", create=True, add=6_999, size_after=6_999),
        ],
    )


def update_mass_removal() -> ActivationPlan:
    """Config changes (a scalar, an added field, SQL) and an audience removing most members."""
    return ActivationPlan(
        id="churn-google",
        change=Change.UPDATE,
        destination="google-ads",
        destination_type="google_customer_match",
        goal="send_segments",
        action="maintain",
        frequency="daily",
        config_changes=[
            ConfigChange(path="split", kind="changed", old="none", new="control"),
            ConfigChange(path="control_percent", kind="added", new=10),
            ConfigChange(path="notify", kind="removed", old=["ops@example.com"]),
            ConfigChange(
                path="segment_sql.churn",
                kind="changed",
                old="select key\nfrom profiles\nwhere days_since_order > 90",
                new="select key\nfrom profiles\nwhere days_since_order > 180",
            ),
        ],
        segments=[SegmentInfo(name="churn", size=4_000, changed=True)],
        audience_size=4_000,
        matchable=3_000,
        audiences=[
            AudienceChange(
                group="experiment",
                name="Churn | risk",
                rename_from="Churn",
                add=12,
                remove=6_000,
                update=1,
                size_before=10_000,
                size_after=4_012,
                mass_removal=True,
            ),
            AudienceChange(
                group="control", name="Churn - control", sent=False, create=True, add=400
            ),
        ],
        notes=["segment churn changed definition"],
    )


def delete_kept() -> ActivationPlan:
    return ActivationPlan(
        id="old-list",
        change=Change.DELETE,
        destination="mc",
        destination_type="mailchimp",
        goal="send_segments",
        action="append",
        frequency="daily",
        audiences=[AudienceChange(group="all", name="Old list", forget=250, size_before=250)],
    )


def noop() -> ActivationPlan:
    return ActivationPlan(
        id="steady",
        change=Change.NOOP,
        destination="sandbox",
        destination_type="sandbox",
        goal="send_segments",
        action="maintain",
        frequency="daily",
        audiences=[AudienceChange(group="all", name="Steady", size_before=50, size_after=50)],
    )


def paused() -> ActivationPlan:
    return ActivationPlan(
        id="on-hold",
        change=Change.PAUSED,
        destination="sandbox",
        destination_type="sandbox",
        goal="send_segments",
        action="maintain",
        frequency="daily",
        paused=True,
        audiences=[AudienceChange(group="all", name="Hold", size_before=9, size_after=9)],
    )


@pytest.fixture
def plan() -> Plan:
    return make_plan(create_ab(), update_mass_removal(), delete_kept(), noop(), paused())


# --- text ------------------------------------------------------------------------------------


def test_text_headers_and_symbols(plan: Plan) -> None:
    out = render(plan, "text")
    assert '+ activation "vip-meta" will be created' in out
    assert '~ activation "churn-google" will be updated in place' in out
    assert (
        '- activation "old-list" will be deleted '
        "(leaves management; the audience at the destination is kept)"
    ) in out
    assert '= activation "steady": no changes' in out
    assert '# activation "on-hold" is paused; nothing will be sent' in out


def test_text_create_details(plan: Plan) -> None:
    out = render(plan, "text")
    assert "destination: meta-prod (meta_custom_audiences)" in out
    assert "goal: send_segments, action: maintain, frequency: daily" in out
    assert 'segment "vip": 12,345 profiles\n' in out
    assert "can match 13,000 of 14,000 (92.9%)" in out
    assert 'excluded by "suppression:unsubscribed": 120' in out
    assert 'excluded by "consent": 34' in out
    assert '+ audience "VIP - A" (group A) will be created: +7,001 (7,001 members)' in out
    assert '+ audience "VIP - B" (group B) will be created: +6,999 (6,999 members)' in out


def test_text_update_config_and_members(plan: Plan) -> None:
    out = render(plan, "text")
    assert 'segment "churn": 4,000 profiles (definition changed)' in out
    assert '~ split: "none" -> "control"' in out
    assert "+ control_percent: 10" in out
    assert '- notify: ["ops@example.com"]' in out
    assert "~ segment_sql.churn: (3 lines -> 3 lines)" in out
    assert "- where days_since_order > 90" in out
    assert "+ where days_since_order > 180" in out
    assert "select key" not in out  # unchanged SQL lines are not repeated
    assert (
        '~ audience "Churn" -> "Churn | risk" (group experiment) will be renamed: '
        "+12 -6,000 ~1 (10,000 -> 4,012 members)"
    ) in out
    assert "(group control; recorded, not sent) will be created: +400" in out
    assert '! audience "Churn | risk" would remove 6,000 of 10,000 members (60.0%)' in out
    assert "more than max_removal_share 50%: apply needs --allow-mass-removal" in out
    assert "    note: segment churn changed definition" in out
    assert 'audience "Old list" leaves management: forget 250' in out


def test_text_summary_line(plan: Plan) -> None:
    lines = render(plan, "text").splitlines()
    # the control group's 400 are recorded, not sent, so not counted
    assert lines[-1] == "Plan: 1 to create, 1 to update, 1 to delete; members: +14,012 -6,000 ~1."
    assert lines[-2].startswith("! 1 activation is held by the mass-removal guard")


def test_text_color_only_when_asked(plan: Plan) -> None:
    plain = render(plan, "text")
    colored = render(plan, "text", color=True)
    assert not ANSI.search(plain)
    assert "\x1b[32m+ activation" in colored  # green create
    assert "\x1b[33m~ activation" in colored  # yellow update
    assert "\x1b[31m- activation" in colored  # red delete
    assert ANSI.sub("", colored) == plain


def test_text_no_changes() -> None:
    out = render(make_plan(noop(), paused()), "text")
    assert "No changes. Your destinations match the configuration." in out
    assert "(2 activations checked.)" in out
    assert "Plan:" not in out


def test_text_member_only_refresh_and_cleared_delete() -> None:
    refresh = noop().model_copy(
        update={"audiences": [AudienceChange(group="all", name="Steady", add=3, size_before=50)]}
    )
    cleared = delete_kept().model_copy(
        update={
            "audiences": [AudienceChange(group="all", name="Old list", remove=250)],
            "on_delete": "clear",
        }
    )
    out = render(make_plan(refresh, cleared), "text")
    assert '~ activation "steady" will be updated in place (members only' in out
    assert "the audience at the destination is cleared" in out
    assert 'audience "Old list" leaves management: -250' in out


def test_paused_with_removals_lists_them() -> None:
    held = paused().model_copy(
        update={"audiences": [AudienceChange(group="all", name="Hold", remove=2, size_before=9)]}
    )
    out = render(make_plan(held), "text")
    assert '# activation "on-hold" is paused; only suppression and consent removals' in out
    assert '~ audience "Hold": -2 (9 -> 0 members)' in out


# --- markdown --------------------------------------------------------------------------------


def test_markdown_summary_and_table(plan: Plan) -> None:
    md = render(plan, "markdown")
    assert "**Plan:** 1 to create, 1 to update, 1 to delete; members: +14,012 -6,000 ~1" in md
    assert "| Activation | Change | Destination | Audience | Add | Remove | Update |" in md
    assert (
        "| vip-meta | create | meta-prod (meta\\_custom\\_audiences) | VIP - A (new) "
        "| 7,001 | 0 | 0 |"
    ) in md
    assert "| old-list | delete | mc (mailchimp) | Old list (forget 250) | 0 | 0 | 0 |" in md
    assert "(new, control: recorded, not sent) | 400 | 0 | 0 |" in md
    assert "Unchanged: steady, on-hold (paused)" in md
    assert "| steady |" not in md


def test_markdown_escapes_pipe_and_backtick(plan: Plan) -> None:
    md = render(plan, "markdown")
    row = next(line for line in md.splitlines() if line.startswith("| churn-google | ⚠️"))
    assert "Churn → Churn \\| risk" in row
    assert len(re.findall(r"(?<!\\)\|", row)) == 8  # unescaped pipes: 7 columns intact
    assert "⚠️ update" in row
    assert escape_md("a|b`c") == "a\\|b\\`c"
    assert escape_md("two\nlines") == "two lines"
    assert escape_md("<b>~x_") == "\\<b\\>\\~x\\_"
    assert escape_md("VIP @team") == "VIP @\u200bteam"  # no GitHub notification
    # an entity would render as '@' (a mention after all); '#123' would reference an issue
    assert escape_md("&#64;octocat #12 o/r#7") == "\\&#\u200b64;octocat #\u200b12 o/r#\u200b7"
    # no autolink (a name "approve at https://..." was a link in the bot's comment), and a
    # name of 30,000 characters is cut (it pushed the deletions out of the comment)
    shown = escape_md("ok at https://evil.example/x and WWW.evil.example")
    assert "https://" not in shown and "WWW." not in shown and "evil.example/x" in shown
    assert escape_md("n" * 30_000).endswith("… (30,000 characters)")


def test_markdown_details_and_warning(plan: Plan) -> None:
    md = render(plan, "markdown")
    assert md.count("<details>") == 4  # create, update, delete; the unchanged ones collapsed
    assert "<details><summary>2 unchanged activations</summary>" in md
    assert "<summary><b>churn-google</b>: update (google-ads)</summary>" in md
    assert '**⚠️ Mass removal in churn-google: audience "Churn \\| risk" would remove 6,000' in md
    assert "\\-\\-allow-mass-removal" not in md
    assert '```diff\n- split: "none"\n+ split: "control"\n+ control_percent: 10\n' in md
    assert "@@ segment_sql.churn @@\n- where days_since_order > 90\n" in md
    assert "  - suppression:unsubscribed: 120" in md
    assert "- **Segments:** churn (4,000, definition changed)" in md


def test_markdown_no_changes() -> None:
    md = render(make_plan(noop()), "markdown")
    assert "**No changes.** Your destinations match the configuration." in md
    assert "| Activation |" not in md


def _many(n: int) -> Plan:
    """``n`` new activations, each with a long name, detail block and SQL: a big comment."""
    base = update_mass_removal()
    acts = [
        base.model_copy(update={"id": f"act-{i:04d}-{'x' * 40}", "change": Change.UPDATE})
        for i in range(n)
    ]
    return make_plan(*acts, noop())


def test_markdown_separates_spec_changes_from_data_movement(plan: Plan) -> None:
    md = render(plan, "markdown")
    spec, data = md.index("#### Spec changes"), md.index("#### Data movement")
    assert spec < data < md.index("<details>")
    spec_part = md[spec:data]
    assert (
        "| vip-meta | create | meta-prod (meta\\_custom\\_audiences) | new activation |"
        in spec_part
    )
    assert "split, control\\_percent, notify, segment\\_sql.churn" in spec_part
    assert "| old-list | delete | mc (mailchimp) | leaves management (the audience is kept) |" in (
        spec_part
    )
    assert "| 7,001 |" not in spec_part  # member counts only in the data-movement table


def test_markdown_members_only_refresh_is_data_movement_only() -> None:
    refresh = noop().model_copy(
        update={"audiences": [AudienceChange(group="all", name="Steady", add=3, size_before=50)]}
    )
    md = render(make_plan(refresh), "markdown")
    assert "#### Spec changes" not in md
    assert "| steady | update | sandbox (sandbox) | Steady | 3 | 0 | 0 |" in md


def test_markdown_names_the_commit(plan: Plan) -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    md = render_markdown(plan, commit=sha)
    assert f"Planned at commit {sha}." in md
    assert md.rstrip().endswith(f"· commit {sha}</sub>")
    with pytest.raises(ValueError, match="not a commit id"):
        render_markdown(plan, commit="main; rm -rf /")


def test_markdown_unlimited_by_default() -> None:
    md = render(_many(200), "markdown")
    assert len(md) > 65_536  # what GitHub refuses, hence the budget below
    assert "Truncated" not in md


@pytest.mark.parametrize("limit", [2_000, 20_000, 65_536])
def test_markdown_budget_keeps_comment_under_the_limit(limit: int) -> None:
    md = render_markdown(_many(200), max_chars=limit)
    assert len(md) <= limit
    assert "**Truncated to fit a comment:**" in md
    assert "job summary" in md
    assert md.startswith("### Reconcile plan: demo")
    assert "**Plan:** 0 to create, 200 to update" in md  # the summary always stays
    assert md.rstrip().endswith("· plan p-123</sub>")
    # only whole pieces: every <details> that opens also closes; tables keep their header
    assert md.count("<details>") == md.count("</details>")
    if "| act-0000" in md:
        assert "| Activation | Change | Destination | What changes |" in md


def test_markdown_budget_counts_what_was_left_out() -> None:
    full = render_markdown(_many(3))
    assert render_markdown(_many(3), max_chars=len(full)) == full
    cut = render_markdown(_many(3), max_chars=len(full) - 1)
    assert len(cut) < len(full)
    left_out = re.search(r"(\d+) more rows? or sections? of this plan are not shown", cut)
    assert left_out and int(left_out.group(1)) >= 1
    assert "Unchanged: steady" in full and "Unchanged: steady" not in cut  # cut from the end


def test_a_comment_cut_to_fit_keeps_deletions_and_removals_first() -> None:
    """Cut to fit after many additions, the comment left out the one activation to delete
    (and the audience losing members) that the plan listed last."""
    adds = [create_ab().model_copy(update={"id": f"new-{i:03d}-{'x' * 40}"}) for i in range(60)]
    plan = make_plan(*adds, update_mass_removal(), delete_kept())
    md = render_markdown(plan, max_chars=6_000)
    assert "**Truncated to fit a comment:**" in md
    assert "| old-list | delete |" in md
    assert "Mass removal in churn-google" in md  # a mass removal is a warning at the top


def test_markdown_budget_too_small_for_the_summary(plan: Plan) -> None:
    with pytest.raises(ValueError, match="no room for the plan's summary"):
        render_markdown(plan, max_chars=100)


# --- json ------------------------------------------------------------------------------------


def test_json_round_trips(plan: Plan) -> None:
    doc = json.loads(render(plan, "json"))
    assert list(doc)[:2] == ["format_version", "has_changes"]
    assert doc["format_version"] == FORMAT_VERSION
    assert doc["has_changes"] is True
    assert doc["summary"]["add"] == 14_012
    assert doc["activations"][1]["audiences"][0]["name"] == "Churn | risk"
    doc.pop("has_changes")
    assert Plan.model_validate(doc) == plan


def test_json_no_changes() -> None:
    doc = json.loads(render(make_plan(noop(), paused()), "json"))
    assert doc["has_changes"] is False
    assert [a["change"] for a in doc["activations"]] == ["noop", "paused"]


# --- dispatch --------------------------------------------------------------------------------


def test_unknown_format() -> None:
    assert FORMATS == ("text", "markdown", "json")
    with pytest.raises(ValueError, match="unknown plan format 'yaml'"):
        render(make_plan(), "yaml")


def test_a_mass_removal_that_empties_says_so() -> None:
    from reconciler.plan.model import ActivationPlan, AudienceChange, Change
    from reconciler.render.text import mass_removal_line

    act = ActivationPlan(id="a", change=Change.UPDATE, destination="d", destination_type="t",
                         goal="send_segments", action="maintain", frequency="daily",
                         max_removal_share=1.0)  # fmt: skip
    au = AudienceChange(group="all", name="N", remove=5, size_before=5, size_after=0)
    line = mass_removal_line(act, au)
    assert "which empties it: apply needs --allow-mass-removal" in line
    assert "more than" not in line


def test_an_export_held_by_the_mass_removal_guard_says_which() -> None:
    """The text plan of an export names what the guard holds, as for an audience (the summary
    line alone did not say which activation)."""
    from reconciler.plan.model import ActivationPlan, AudienceChange, Change, ExportChange

    au = AudienceChange(
        group="all", name="pve", remove=3, size_before=4, size_after=1, mass_removal=True
    )
    act = ActivationPlan(id="pve", change=Change.UPDATE, destination="files",
                         destination_type="files", goal="export_data", action="maintain",
                         frequency="daily", audiences=[au],
                         export=ExportChange(location="exports/", delta_rows=3))  # fmt: skip
    text = render(make_plan(act), "text")
    assert "would remove 3 of 4 members" in text and "--allow-mass-removal" in text, text
