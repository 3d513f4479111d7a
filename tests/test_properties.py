"""Property tests of the engine's invariants (DESIGN §5): over random membership histories,
apply then plan is empty and the destination holds exactly what the action mode implies;
removals never exceed what was sent (except `action: remove`, bounded by its segment); and a
profile's split group is a pure function of (activation, key), the same in SQL and Python.

One workspace holds one activation per (action, split) combination, so every apply of a
history exercises them all; it is reset between examples (state and sandbox files removed).
The CLI runs in-process. ``HYPOTHESIS_PROFILE`` (conftest: ``dev``/``ci``) scales examples.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

import duckdb
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from destinations.base import DestinationContext
from destinations.identity import hashed_identifiers
from destinations.sandbox import SandboxConfig, SandboxDestination
from destinations.sandbox.config import SandboxCredentials
from reconciler.plan import membership, splits
from reconciler.workspace.activation_spec import SplitMode
from tests.conftest import PROFILE_COLUMNS, SANDBOX_YAML, WS, cli, profile
from tests.duckfiles import attached
from tests.duckfiles import query as read_file
from tests.seeding import Member, seed

N = 30  # profiles per history
CONTROL_PERCENT = 30
BOTH = ("email", "phone")
# small batches: every history spans several batches per op (a bug class of its own)
SANDBOX = SANDBOX_YAML.replace("batch_size: 7", "batch_size: 3")
# `action: remove` matches on phone numbers, which never change here: its model needs no
# opinion on a member whose identifiers change while it stays in the segment
PHONES = SANDBOX.replace(".reconcile/sandbox.duckdb", ".reconcile/phones.duckdb").replace(
    "identifiers: [email, phone]", "identifiers: [phone]"
)
DESTINATIONS = {"sandbox": ("sandbox.duckdb", BOTH), "phones": ("phones.duckdb", ("phone",))}

MODES = [
    ("maintain", SplitMode.NONE),
    ("maintain", SplitMode.AB),
    ("maintain", SplitMode.CONTROL),
    ("append", SplitMode.NONE),
    ("append", SplitMode.AB),
    ("append", SplitMode.CONTROL),
    ("remove", SplitMode.NONE),
]
IDS = [f"{action}-{split.value}" for action, split in MODES]  # also each one's split seed
FOREIGN = [
    Member(f"f{j}", {"email": f"foreign{j}@example.org", "phone": f"029876543{j}"})
    for j in range(3)
]  # rows of an existing list that this tool never sent

# a profile at one step: in seg-a, consent, first-name variant, e-mail variant
Row = tuple[bool, bool, int, int]
rows_st = st.lists(
    st.tuples(
        st.sampled_from([True, True, False]),
        st.sampled_from([True, True, True, False]),
        st.integers(0, 2),
        st.integers(0, 3),
    ),
    min_size=N,
    max_size=N,
)
history_st = st.lists(rows_st, min_size=2, max_size=4)
# which activations send to an existing list (with foreign rows) rather than a new one
existing_st = st.lists(st.booleans(), min_size=len(MODES) - 1, max_size=len(MODES) - 1)
# always tried too: every kind of change at once, then everybody back with new addresses:
# the shared inboxes of step 2 move to other profiles (lower keys, earlier batches) while
# their holders move on; addresses are lost and regained
CHURN = [
    [(True, True, 0, 0)] * N,
    [
        (i % 5 != 0, i % 5 != 1, 1 if i % 5 == 2 else 0, {3: 2, 4: 1}.get(i % 5, 0))
        for i in range(N)
    ],
    [(True, True, 2, 1 if i % 5 == 3 else i % 4) for i in range(N)],
]


def email(i: int, variant: int) -> str | None:
    """0: own address, 1: another own one, 2: a shared inbox (4 profiles per address), 3: none
    (then matched on the phone alone)."""
    return (f"user{i}@example.com", f"alt{i}@example.com", f"shared{i % 4}@example.com", None)[
        variant
    ]


def to_profiles(step: list[Row]) -> list[dict]:
    rows = []
    for i, (seg, consent, name, variant) in enumerate(step):
        row = profile(i, a=seg, consent=consent, name=f"Name{i}-{name}", email=email(i, variant))
        row["phone"] = f"04{i:08d}"
        rows.append(row)
    return rows


def records(identifiers: dict, accepted: tuple[str, ...]) -> tuple[str, ...]:
    return hashed_identifiers({k: identifiers.get(k) for k in BOTH}, accepted, "AU")


# ---------------------------------------------------------------------- the model
@dataclass
class Model:
    """What the state must record per key after each apply, and what each run must count.
    ``sent[key]`` = (group, record, fingerprint) as last sent (or recorded, for control)."""

    id: str
    action: str
    split: SplitMode
    accepted: tuple[str, ...]
    existing: bool
    sent: dict[str, tuple[str, tuple[str, ...], tuple]] = field(default_factory=dict)
    removed_by_remove: set[str] = field(default_factory=set)  # action: remove

    def group(self, key: str) -> str:
        pct = CONTROL_PERCENT if self.split is SplitMode.CONTROL else None
        return splits.group(self.split, pct, self.id, key)

    def step(self, profiles: list[dict]) -> dict[str, tuple[int, int, int]]:
        """Advance to this step's profiles; return the expected (add, remove, update) counts
        per group."""
        counts: dict[str, list[int]] = {}

        def count(grp: str, i: int) -> None:
            counts.setdefault(grp, [0, 0, 0])[i] += 1

        by_key = {p["customer_id"]: p for p in profiles}
        if self.action == "remove":
            targets = {k for k, p in by_key.items() if p["seg_a"] and records(p, self.accepted)}
            for k in sorted(targets - set(self.sent)):
                self.removed_by_remove.update(records(by_key[k], self.accepted))
                count(splits.ALL, 1)
            self.sent = {k: (splits.ALL, (), ()) for k in targets}
            return {g: tuple(c) for g, c in counts.items()}
        eligible = {
            k
            for k, p in by_key.items()
            if p["seg_a"] and p["email_consent"] and records(p, self.accepted)
        }
        if self.action == "maintain":
            leaving = set(self.sent) - eligible
        else:  # append: only those who lost consent leave
            leaving = {k for k in self.sent if not by_key[k]["email_consent"]}
        for k in leaving:
            count(self.sent.pop(k)[0], 1)
        for k in sorted(eligible):
            p = by_key[k]
            fp = (p["email"], p["phone"], p["first_name"])
            if k not in self.sent:
                count(self.group(k), 0)
            elif self.sent[k][2] != fp:
                count(self.group(k), 2)
            else:
                continue
            self.sent[k] = (self.group(k), records(p, self.accepted), fp)
        return {g: tuple(c) for g, c in counts.items()}

    def members(self, grp: str) -> set[str]:
        return {k for k, (g, _, _) in self.sent.items() if g == grp}

    def held(self, grp: str, start: set[str]) -> set[str]:
        """Match keys the group's audience must hold (a set: shared inboxes count once)."""
        if self.action == "remove":
            return start - self.removed_by_remove
        sent = {r for g, rec, _ in self.sent.values() if g == grp for r in rec}
        return sent | (start if self.existing else set())

    def audience(self, grp: str) -> str:
        if self.existing:
            return f"{self.id} {grp}" if self.split is SplitMode.AB else f"{self.id} list"
        return f"{self.id} - {grp}" if self.split is SplitMode.AB else self.id


# ---------------------------------------------------------------------- the workspace
def spec(m: Model) -> str:
    dest = "phones" if m.action == "remove" else "sandbox"
    text = f"segments: [seg-a]\ndestination: {dest}\nname: {m.id}\n"
    if m.action != "remove":
        text += "attributes: [FIRST_NAME]\n"
    if m.action != "maintain":
        text += f"action: {m.action}\n"
    if m.split is not SplitMode.NONE:
        text += f"split: {m.split.value}\n"
    if m.split is SplitMode.CONTROL:
        text += f"control_percent: {CONTROL_PERCENT}\n"
    if m.existing and m.split is SplitMode.AB:
        text += f"list: {{existing: {{A: {m.audience('A')}, B: {m.audience('B')}}}}}\n"
    elif m.existing:
        text += f"list: {{existing: {m.audience(splits.ALL)}}}\n"
    return text


def reset(ws: WS, models: list[Model], first: list[dict]) -> dict[str, set[str]]:
    """Forget the previous example: no state, empty sandboxes but for the existing lists
    (foreign rows; for `action: remove` every profile of the first step). Returns each
    existing list's rows."""
    shutil.rmtree(ws.root / ".reconcile", ignore_errors=True)
    start: dict[str, set[str]] = {}
    context = DestinationContext(root=ws.root, default_phone_country="AU")
    for m in models:
        ws.write(f"activations/{m.id}.yaml", spec(m))
        if not m.existing:
            continue
        path = DESTINATIONS["phones" if m.action == "remove" else "sandbox"][0]
        dest = SandboxDestination(
            SandboxConfig(path=f".reconcile/{path}", identifiers=list(m.accepted)),
            SandboxCredentials(),
            context,
        )
        people = list(FOREIGN)
        if m.action == "remove":
            people += [Member(p["customer_id"], {k: p[k] for k in BOTH}) for p in first]
        try:
            for grp in splits.groups(m.split):
                if not splits.sent(grp):
                    continue
                name = m.audience(grp)
                ref = dest.create_audience(name, idempotency_key=f"setup-{name}")
                seed(dest, ref, people, f"setup-add-{name}")
                start[name] = {r for p in people for r in records(p.identifiers, m.accepted)}
        finally:
            dest.close()
    return start


def set_profiles(ws: WS, rows: list[dict]) -> None:
    """``WS.set_profiles``, column-wise (one statement: fast enough to run per step)."""
    cols = list(rows[0])
    with attached(ws.db, read_only=False) as con:
        con.execute(f"CREATE OR REPLACE TABLE profiles ({PROFILE_COLUMNS})")
        con.execute(
            f"INSERT INTO profiles ({', '.join(cols)}) SELECT "
            + ", ".join(f"unnest(${c})" for c in cols),
            {c: [r[c] for r in rows] for c in cols},
        )


def query(ws: WS, file: str, sql: str) -> list[tuple]:
    return read_file(ws.root / ".reconcile" / file, sql)


def destination(ws: WS, file: str) -> tuple[dict[str, set[str]], int]:
    """A sandbox file's audiences (name -> match keys) and how many audiences it has."""
    rows = query(
        ws,
        file,
        "SELECT a.name, m.match_key FROM audiences a LEFT JOIN members m ON m.audience_id = a.id",
    )
    out: dict[str, set[str]] = {}
    for name, key in rows:
        out.setdefault(name, set())
        if key is not None:
            out[name].add(key)
    return out, query(ws, file, "SELECT count(*) FROM audiences")[0][0]


def run_log(ws: WS, activation_id: str) -> list[dict]:
    res = cli(ws, "log", activation_id, "--format", "json", "--limit", "100")
    assert res.exit_code == 0, res.stderr
    return res.json()["runs"]


@settings(
    max_examples=max(3, settings.default.max_examples // 5),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(history=history_st, existing=existing_st)
@example(history=CHURN, existing=[False, True, True, True, False, False])
def test_apply_then_plan_is_empty_and_destination_is_exact(workspace, history, existing):
    ws = workspace(integration=SANDBOX)
    ws.write("integrations/phones.yaml", PHONES)
    models = [
        Model(
            aid, action, split, DESTINATIONS["phones" if action == "remove" else "sandbox"][1], flag
        )
        for aid, (action, split), flag in zip(IDS, MODES, [*existing, True], strict=True)
    ]
    steps = [to_profiles(step) for step in history]
    start = reset(ws, models, steps[0])
    totals = {(m.id, g): [0, 0] for m in models for g in splits.groups(m.split)}
    n_runs = dict.fromkeys(IDS, 0)
    for profiles in steps:
        set_profiles(ws, profiles)
        expected_counts = {m.id: m.step(profiles) for m in models}
        res = cli(ws, "apply", "--auto-approve", "--allow-mass-removal")
        assert res.exit_code == 0, res.output + res.stderr
        plan = cli(ws, "plan", "--detailed-exitcode")
        assert plan.exit_code == 0, plan.output + plan.stderr

        # the destinations hold exactly what each mode implies, one audience per group
        for file, accepted in DESTINATIONS.values():
            want = {
                m.audience(g): m.held(g, start.get(m.audience(g), set()))
                for m in models
                if m.accepted == accepted
                for g in splits.groups(m.split)
                if splits.sent(g)
            }
            held, n_audiences = destination(ws, file)
            assert held == want, (file, profiles)
            assert n_audiences == len(want)

        # the state records each key once, in its deterministic group (control included)
        recorded = query(ws, "state.duckdb", "SELECT activation_id, grp, key FROM members")
        assert len(recorded) == len(set(recorded))
        for m in models:
            for g in splits.groups(m.split):
                assert {k for a, grp, k in recorded if (a, grp) == (m.id, g)} == m.members(g)
            assert all(grp == m.group(k) for a, grp, k in recorded if a == m.id)

        # the run log counts what the model says; removals never exceed what was sent
        for m in models:
            log, expected = run_log(ws, m.id), expected_counts[m.id]
            if len(log) == n_runs[m.id]:  # a run is recorded only when there were changes
                assert not expected, (m.id, expected)
                continue
            n_runs[m.id] = len(log)
            run = log[0]
            assert run["status"] == "Complete", run
            got = {a["group"]: (a["add"], a["remove"], a["update"]) for a in run["audiences"]}
            for g in splits.groups(m.split):
                assert got.get(g, (0, 0, 0)) == expected.get(g, (0, 0, 0)), (m.id, g, run)
                totals[m.id, g][0] += got.get(g, (0, 0, 0))[0]
                totals[m.id, g][1] += got.get(g, (0, 0, 0))[1]
            if m.action == "remove":
                assert run["removed"] <= sum(1 for p in profiles if p["seg_a"])
            else:
                assert all(
                    added >= removed for (aid, _), (added, removed) in totals.items() if aid == m.id
                ), totals


# ---------------------------------------------------------------------- split groups
@given(
    seed=st.text(max_size=12),
    keys=st.lists(st.text(max_size=24), min_size=1, max_size=25),
    split=st.sampled_from([SplitMode.NONE, SplitMode.AB, SplitMode.CONTROL]),
    percent=st.integers(1, 50),
)
def test_group_in_python_equals_group_in_sql(seed, keys, split, percent):
    expr = splits.group_sql(split, percent, membership._lit(seed), "k")
    con = duckdb.connect()
    try:
        got = dict(
            con.execute(
                f"SELECT k, {expr} FROM (SELECT unnest(?::VARCHAR[]) AS k)", [keys]
            ).fetchall()
        )
    finally:
        con.close()
    for k in keys:
        assert got[k] == splits.group(split, percent, seed, k)
        assert got[k] in splits.groups(split)
