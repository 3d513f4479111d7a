"""What a saved plan's content must be, beyond its format (:mod:`reconciler.plan.planfile`).

A plan file is untrusted even when its checksums match: whoever can rewrite the artifact can
recompute them. So its strings get the rules the workspace's own names get — an audience name
is what :func:`~reconciler.workspace.templating.render_name` would accept from YAML, an
activation, integration or segment id is what a file stem may be, and no other text holds a
control character (``show`` prints them to a terminal) — and the counts it shows must be those
of the member changes it carries (``apply`` sends the rows, not the counts).

Each check returns why the plan is refused, or ``None``; the caller names the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from reconciler.errors import UNPRINTABLE
from reconciler.plan.model import Change, Plan, summarise
from reconciler.workspace.spec_base import NAME_RE
from reconciler.workspace.template_budget import LIMITS

#: what render_name refuses in an audience name (a regular expression: plan.json is up to 64 MB)
UNSAFE_NAME = UNPRINTABLE
#: the same in other text (notes, a segment's SQL in a config change): tab and newline allowed
UNSAFE_TEXT = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
#: a rendered name (at most the templates' output limit) with a split group's suffix
MAX_NAME = LIMITS.output + len(" - experiment")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-]{1,40}")
COUNTED = ("add", "remove", "update", "forget")


def check_text(doc: Any) -> str | None:
    """Every string of plan.json, keys included: no control character but tab and newline."""
    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            if bad := UNSAFE_TEXT.search(node):
                return f"plan.json: {where or 'a value'} holds {_control(bad.group())}"
        elif isinstance(node, dict):
            for key, value in node.items():
                stack.append((key, f"a key of {where}" if where else "a key"))
                stack.append((value, _join(where, key)))
        elif isinstance(node, list):
            stack.extend((value, _join(where, i)) for i, value in enumerate(node))
    return None


def check_plan(plan: Plan) -> str | None:
    """Ids, audience names, unique activations and groups, and a summary that adds up."""
    seen: set[str] = set()
    for i, a in enumerate(plan.activations):
        at = f"activations.{i}"
        ids = [(f"{at}.id", a.id), (f"{at}.destination", a.destination)]
        ids += [(f"{at}.moved_from", a.moved_from)] if a.moved_from is not None else []
        ids += [(f"{at}.segments.{j}.name", s.name) for j, s in enumerate(a.segments)]
        why = _ids(ids)
        if why:
            return why
        if a.id in seen:
            return f"plan.json lists activation {_clip(a.id)} twice"
        seen.add(a.id)
        groups: set[str] = set()
        for j, au in enumerate(a.audiences):
            if au.group in groups:
                return (
                    f"plan.json: activation {_clip(a.id)} lists audience group {_clip(au.group)} "
                    "twice"
                )
            groups.add(au.group)
            names = [(f"{at}.audiences.{j}.name", au.name)]
            names += [(f"{at}.audiences.{j}.rename_from", au.rename_from)] if au.rename_from else []
            if why := _names(names):
                return why
    conflicts = plan.state_loss
    why = _ids([(f"targets.{i}", t) for i, t in enumerate(plan.targets)])
    why = why or _ids(
        [(f"state_loss.{i}.activation", c.activation) for i, c in enumerate(conflicts)]
    )
    why = why or _names([(f"state_loss.{i}.name", c.name) for i, c in enumerate(conflicts)])
    if why:
        return why
    if plan.summary != summarise(plan.activations):
        return "plan.json: its summary does not add up to its activations"
    return None


def check_counts(plan: Plan, counted: Iterable[tuple[str, str, str, int]]) -> str | None:
    """The counts each audience shows against the rows of changes.parquet
    (``(activation, group, op, rows)``): ``purge`` rows are shown as removals, and a deleted
    activation forgets its records without a row each."""
    carried: dict[tuple[str, str], dict[str, int]] = {}
    for aid, grp, op, n in counted:
        rows = carried.setdefault((aid, grp), dict.fromkeys(COUNTED, 0))
        rows["remove" if op == "purge" else op] += n
    for a in plan.activations:
        for au in a.audiences:
            shown = {"add": au.add, "remove": au.remove, "update": au.update, "forget": au.forget}
            has = carried.pop((a.id, au.group), dict.fromkeys(COUNTED, 0))
            if a.change is Change.DELETE:
                shown["forget"] = has["forget"] = 0
            if has != shown:
                return (
                    f"audience group {_clip(au.group)} of activation {_clip(a.id)} shows "
                    f"{_counts(shown)} but changes.parquet carries {_counts(has)}"
                )
    if carried:
        aid, grp = next(iter(carried))
        return (
            f"changes.parquet carries changes for audience group {_clip(grp)} of activation "
            f"{_clip(aid)}, which the plan does not show"
        )
    return None


def _ids(values: list[tuple[str, str]]) -> str | None:
    for where, value in values:
        if not NAME_RE.fullmatch(value):
            return (
                f"plan.json: {where} {_clip(value)} is not an id (lowercase letters, digits, "
                "'-' and '_')"
            )
    return None


def _names(values: list[tuple[str, str]]) -> str | None:
    for where, name in values:
        if len(name) > MAX_NAME:
            return f"plan.json: the audience name at {where} is longer than {MAX_NAME:,} characters"
        if bad := UNSAFE_NAME.search(name):
            return f"plan.json: the audience name at {where} holds {_control(bad.group())}"
        if not name.strip():
            return f"plan.json: the audience name at {where} is empty"
    return None


def _counts(c: dict[str, int]) -> str:
    return f"+{c['add']:,} -{c['remove']:,} ~{c['update']:,} (forget {c['forget']:,})"


def _control(c: str) -> str:
    if 0xD800 <= ord(c) <= 0xDFFF:  # valid as a JSON escape, not as text
        return f"an unpaired surrogate (U+{ord(c):04X})"
    return f"a control character (U+{ord(c):04X})"


def _join(where: str, step: Any) -> str:
    step = str(step) if isinstance(step, int) or _PLAIN_KEY.fullmatch(step) else _clip(step)
    return f"{where}.{step}" if where else step


def _clip(value: str, width: int = 40) -> str:
    shown = json.dumps(value)
    return shown if len(shown) <= width else shown[: width - 4] + '..."'
