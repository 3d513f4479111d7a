"""Terraform-like text rendering of a :class:`~reconciler.plan.model.Plan` for the terminal.

One block per changed activation, headed by a symbol (``+`` create, ``~`` update, ``-`` delete,
``#`` paused), then one short line per unchanged activation and a final ``Plan: ...`` line.
Colour is ANSI via :func:`click.style`, and only when asked for. The small helpers here
(:func:`num`, :func:`audience_line`, :func:`text_diff`, ...) are shared with the Markdown renderer.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Sequence
from typing import Any

import click

from reconciler.plan import state_loss
from reconciler.plan.model import ActivationPlan, AudienceChange, Change, ConfigChange, Plan
from reconciler.render.estimates import DestinationCalls, summary_line

__all__ = [
    "attribute_line",
    "audience_line",
    "effective_change",
    "export_lines",
    "header",
    "mass_removal_line",
    "num",
    "pct",
    "render_text",
    "text_diff",
    "value",
]

SYMBOLS = {
    Change.CREATE: "+",
    Change.UPDATE: "~",
    Change.DELETE: "-",
    Change.NOOP: "=",
    Change.PAUSED: "#",
}
COLORS = {"+": "green", "~": "yellow", "-": "red", "#": "cyan", "!": "red"}
LONG_TEXT = 60  # strings longer than this (or multi-line, e.g. SQL) are shown as a short diff
CLIP = 76  # width of one line of a long value
DIFF_LINES = 4  # changed lines of a long value shown before "... N more"
PAD = "    "

Styler = Callable[[str, str], str]  # (text, symbol) -> text, coloured or not


def num(n: int) -> str:
    """An integer with thousands separators: ``1,234``."""
    return f"{n:,}"


def pct(part: int, whole: int) -> str:
    """``part`` as a percentage of ``whole`` with one decimal (``0.0%`` when ``whole`` is 0)."""
    return f"{(100.0 * part / whole) if whole else 0.0:.1f}%"


def value(v: Any) -> str:
    """A config value as Terraform shows it: JSON, so strings are quoted and ``None`` is null."""
    return _clip(json.dumps(v, ensure_ascii=False, sort_keys=True, default=str), 2 * CLIP)


def _clip(s: str, width: int = CLIP) -> str:
    return s if len(s) <= width else s[: width - 3] + "..."


def _is_long(v: Any) -> bool:
    return isinstance(v, str) and ("\n" in v or len(v) > LONG_TEXT)


def effective_change(a: ActivationPlan) -> Change:
    """The change to show: an unchanged spec whose members move is shown as an update."""
    if a.change is Change.NOOP and a.member_changes:
        return Change.UPDATE
    return a.change


def text_diff(old: Any, new: Any, limit: int = DIFF_LINES) -> list[tuple[str, str]]:
    """A short before/after of a long (multi-line) value: ``(sign, line)`` pairs, clipped."""
    before = old.splitlines() if isinstance(old, str) else ([] if old is None else [value(old)])
    after = new.splitlines() if isinstance(new, str) else ([] if new is None else [value(new)])
    out = [
        (line[0], _clip(line[1:].strip()))
        for line in difflib.unified_diff(before, after, lineterm="", n=0)
        if not line.startswith(("---", "+++", "@@"))
    ]
    if len(out) > limit:
        out = out[:limit] + [("", f"... {len(out) - limit} more changed lines")]
    return out


def _lines(v: Any) -> str:
    n = len(v.splitlines()) if isinstance(v, str) else 0
    return f"{n} line" if n == 1 else f"{n} lines"


def config_change_lines(c: ConfigChange) -> list[str]:
    """``~ split: "none" -> "ab"``, ``+ field: value``, ``- field: value``; long text as a diff."""
    sign = {"added": "+", "removed": "-"}.get(c.kind, "~")
    if _is_long(c.old) or _is_long(c.new):
        sizes = {"+": _lines(c.new), "-": _lines(c.old)}.get(sign)
        sizes = sizes or f"{_lines(c.old)} -> {_lines(c.new)}"
        head = f"{sign} {c.path}: ({sizes})"
        return [head] + [f"    {s} {line}".rstrip() for s, line in text_diff(c.old, c.new)]
    if sign == "+":
        return [f"+ {c.path}: {value(c.new)}"]
    if sign == "-":
        return [f"- {c.path}: {value(c.old)}"]
    return [f"~ {c.path}: {value(c.old)} -> {value(c.new)}"]


def header(a: ActivationPlan) -> str:
    """The activation's one-line header, without its symbol."""
    name = f'activation "{a.id}"'
    if a.moved_from:
        name += f' (moved from "{a.moved_from}")'
    change = effective_change(a)
    if change is Change.CREATE:
        return f"{name} will be created"
    if change is Change.DELETE:
        fate = "cleared" if a.on_delete == "clear" else "kept"
        return (
            f"{name} will be deleted (leaves management; the audience at the destination is {fate})"
        )
    if change is Change.UPDATE:
        if a.change is Change.NOOP:
            return f"{name} will be updated in place (members only; configuration unchanged)"
        return f"{name} will be updated in place"
    if change is Change.PAUSED:
        if a.member_changes:
            return f"{name} is paused; only suppression and consent removals will be sent"
        return f"{name} is paused; nothing will be sent"
    return f"{name}: no changes"


def _members(au: AudienceChange) -> str:
    parts = [
        f"{sign}{num(n)}" for sign, n in (("+", au.add), ("-", au.remove), ("~", au.update)) if n
    ]
    if au.forget:
        parts.append(f"forget {num(au.forget)}")
    return " ".join(parts) or "no member changes"


def audience_line(a: ActivationPlan, au: AudienceChange) -> tuple[str, str]:
    """``(symbol, text)`` for one audience: creation, rename, member counts, size."""
    group = "" if au.group == "all" else f"group {au.group}"
    if not au.sent:
        group = f"{group}; recorded, not sent" if group else "recorded, not sent"
    label = f'audience "{au.name}"' + (f" ({group})" if group else "")
    members = _members(au)
    if au.create:
        size = f" ({num(au.size_after)} members)" if au.size_after else ""
        return "+", f"{label} will be created: {members}{size}"
    size = f" ({num(au.size_before)} -> {num(au.size_after)} members)"
    if a.action == "remove":  # the state records what was removed, not what the list holds
        size = f" (removed from the list where present; {num(au.size_after)} recorded as removed)"
    if au.rename_from:
        renamed = f'audience "{au.rename_from}" -> "{au.name}"' + (f" ({group})" if group else "")
        return "~", f"{renamed} will be renamed: {members}{size}"
    if effective_change(a) is Change.DELETE:
        return "-", f"{label} leaves management: {members}"
    if au.has_changes:
        return "~", f"{label}: {members}{size}"
    return " ", f"{label}: no member changes ({num(au.size_after)} members)"


def export_lines(a: ActivationPlan) -> list[tuple[str, str]]:
    """``(symbol, text)`` lines of an export: the delta file's rows, and the full file."""
    if a.export is None or a.change is Change.DELETE:
        return []
    e, au = a.export, next(iter(a.audiences), None)
    counts = _members(au) if au is not None else "no member changes"
    out = [("+", f"export to {e.location}: delta file of {_rows(e.delta_rows)} ({counts})")]
    if e.full:
        out.append(("+", f"full file of {_rows(e.full_rows)} (export.full: {e.full_policy})"))
    else:
        out.append((" ", f"no full file this run (export.full: {e.full_policy})"))
    return out


def _rows(n: int) -> str:
    return f"{num(n)} row" if n == 1 else f"{num(n)} rows"


def attribute_line(au: AudienceChange) -> str | None:
    """``goal: sync_attributes``: how many values each destination field gets."""
    if not au.attributes:
        return None
    counts = ", ".join(f"{field} {num(n)}" for field, n in au.attributes.items())
    return f"profiles to update: {num(au.add + au.update)}; attribute values to change: {counts}"


def mass_removal_line(a: ActivationPlan, au: AudienceChange) -> str:
    """The loud warning for an audience flagged by the mass-removal guard."""
    why = (
        "which empties it"
        if au.size_after - au.lose <= 0
        else f"more than max_removal_share {a.max_removal_share:.0%}"
    )
    gone = au.remove + au.lose
    lose = f" ({num(au.lose)} left with no usable identifier)" if au.lose else ""
    return (
        f'audience "{au.name}" would remove {num(gone)} of {num(au.size_before)} members{lose} '
        f"({pct(gone, au.size_before)}), {why}: apply needs --allow-mass-removal"
    )


def _details(a: ActivationPlan, style: Styler) -> list[str]:
    lines = [f"destination: {a.destination} ({a.destination_type})"]
    freq = f"{a.frequency} (one-time send)" if a.frequency == "once" else a.frequency
    lines.append(f"goal: {a.goal}, action: {a.action}, frequency: {freq}")
    for s in a.segments:
        changed = " (definition changed)" if s.changed else ""
        lines.append(f'segment "{s.name}": {num(s.size)} profiles{changed}')
    if a.change is not Change.DELETE:
        lines.append(
            f"audience: {num(a.audience_size)} profiles, can match {num(a.matchable)} "
            f"of {num(a.audience_size)} ({pct(a.matchable, a.audience_size)})"
        )
    lines += [f'excluded by "{rule}": {num(n)}' for rule, n in a.excluded.items()]
    if a.config_changes:
        lines.append("config:")
        for c in a.config_changes:
            cl = config_change_lines(c)
            lines += ["  " + style(cl[0], cl[0][0])] + ["  " + line for line in cl[1:]]
    for sym, text in export_lines(a):
        lines.append(style(f"{sym} {text}", sym))
    for au in a.audiences:
        if a.export is None:  # an export's audience is its files (above)
            sym, text = audience_line(a, au)
            lines.append(style(f"{sym} {text}", sym))
            if attrs := attribute_line(au):
                lines.append(f"    {attrs}")
        if au.mass_removal and au.sent:
            lines.append(style(f"! {mass_removal_line(a, au)}", "!"))
    lines += [f"note: {n}" for n in a.notes]
    lines += [style(f"! warning: {w}", "!") for w in a.warnings]
    return [PAD + line for line in lines]


def render_text(
    plan: Plan, *, color: bool = False, calls: Sequence[DestinationCalls] | None = None
) -> str:
    """The plan as Terraform-like text; ANSI colours only when ``color`` is true; ``calls``
    adds one line per destination with the requests needed and their estimated duration."""

    def style(text: str, symbol: str) -> str:
        fg = COLORS.get(symbol)
        return click.style(text, fg=fg, bold=(symbol == "!") or None) if color and fg else text

    out = [f'Reconcile plan for workspace "{plan.workspace}" as of {plan.as_of.isoformat()}']
    if plan.targets:
        out.append("targets: " + ", ".join(plan.targets))
    if plan.state_notice:
        out.append(f"note: {plan.state_notice}")
    out.append("")
    if plan.state_loss:
        out += [style(f"! {line}", "!") for line in state_loss.summary_lines(plan)] + [""]
    if not plan.has_changes:
        n = len(plan.activations)
        if any(a.warnings for a in plan.activations):  # e.g. an audience not read back
            out.append(style("No changes planned; read the warnings below.", "+"))
        else:
            out.append(style("No changes. Your destinations match the configuration.", "+"))
        out.append(f"({num(n)} activation{'' if n == 1 else 's'} checked.)")
        for a in plan.activations:
            out += [style(f'! activation "{a.id}": {w}', "!") for w in a.warnings]
            # a finished one-time activation is not planned again: say how to re-run it, so
            # "match" is not read as "the segment did not change"
            out += [
                f'= activation "{a.id}": {note.replace("`reconcile run`", f"`reconcile run {a.id}`")}'
                for note in a.notes
                if note.startswith("one-time activation already ran")
            ]
        return "\n".join(out) + "\n"
    unchanged = []
    for a in plan.activations:
        sym = SYMBOLS[effective_change(a)]
        if not a.has_changes:
            unchanged.append(style(f"{sym} {header(a)}", sym))
            unchanged += [style(f"{PAD}! warning: {w}", "!") for w in a.warnings]
            continue
        out.append(style(f"{sym} {header(a)}", sym))
        out += _details(a, style)
        out.append("")
    if unchanged:
        out += unchanged + [""]
    s = plan.summary
    if s.mass_removal:
        noun = "activation is" if s.mass_removal == 1 else "activations are"
        warning = f"! {num(s.mass_removal)} {noun} held by the mass-removal guard: apply needs --allow-mass-removal"
        out.append(style(warning, "!"))
    out.append(
        f"Plan: {num(s.create)} to create, {num(s.update)} to update, {num(s.delete)} to delete; "
        f"members: +{num(s.add)} -{num(s.remove)} ~{num(s.update_members)}."
    )
    if calls:
        out.append("Destination calls:")
        out += [f"{PAD}{summary_line(c)}" for c in calls]
    return "\n".join(out) + "\n"
