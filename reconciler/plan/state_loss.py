"""State loss is never silent.

A state that records no run at all, while the destinations already hold audiences with
the very names the plan would create, most likely means the state was lost (a deleted file, an
evicted CI cache, a new runner). Applying would create a second audience of each name and send
`once` activations again. The plan lists those audiences (:attr:`Plan.state_loss`) and apply
refuses (:func:`refusal`) until each is adopted — ``adopt: true`` in the activation, or
``reconcile import ACTIVATION`` — or the user confirms with ``--allow-duplicate-audiences``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from reconciler.plan.model import ActivationPlan, NameConflict, Plan

__all__ = ["WAYS_OUT", "conflicts", "recheck", "refusal", "summary_lines"]

WAYS_OUT = (
    "If the state was lost, restore it from its backup (docs/state-recovery.md); otherwise "
    "adopt each audience (`adopt: true` in the activation, or `reconcile import ACTIVATION`), "
    "or apply with --allow-duplicate-audiences to create new audiences anyway"
)


def conflicts(plans: Sequence[ActivationPlan], state_is_empty: bool) -> list[NameConflict]:
    """The audiences to be created whose names are taken at the destination, when the state
    is empty — it has recorded no run (of any activation, deleted ones included); audiences
    recorded by ``reconcile import`` do not count (otherwise none: a taken name is then a
    per-activation warning)."""
    if not state_is_empty:
        return []
    found = []
    for a in plans:
        for au in a.audiences:
            if not au.create or not au.sent or au.adopt:
                continue
            if au.name_taken_by:
                found.append(
                    NameConflict(
                        activation=a.id,
                        group=au.group,
                        name=au.name,
                        audience_id=au.name_taken_by,
                        destination=a.destination,
                    )
                )
            elif au.earlier_id and au.earlier_name:  # made on another date, by its name
                found.append(
                    NameConflict(
                        activation=a.id,
                        group=au.group,
                        name=au.earlier_name,
                        audience_id=au.earlier_id,
                        destination=a.destination,
                        planned=au.name,
                    )
                )
    return found


def recheck(
    plan: Plan,
    find: Callable[[str, str], tuple[str, str] | None],
    skip: Collection[str] = (),
) -> Plan:
    """A saved plan about to be applied to an empty state, with the destinations asked again
    (``find(destination, name)`` -> (id, name) of an audience of exactly that name, or of that
    name made on another date): a plan made with ``--refresh=false`` did not ask, and one may
    have appeared since."""
    found = list(plan.state_loss)
    known = {(c.activation, c.group) for c in found}
    for a in plan.activations:
        if a.id in skip:
            continue
        for au in a.audiences:
            if not (au.create and au.sent) or au.adopt or (a.id, au.group) in known:
                continue
            taken = find(a.destination, au.name)
            if taken is not None:
                found.append(
                    NameConflict(
                        activation=a.id,
                        group=au.group,
                        name=taken[1],
                        audience_id=taken[0],
                        destination=a.destination,
                        planned=au.name if taken[1] != au.name else None,
                    )
                )
    return plan.model_copy(update={"state_loss": found})


def _item(c: NameConflict) -> str:
    group = "" if c.group == "all" else f" (group {c.group})"
    item = f'activation "{c.activation}"{group}: audience "{c.name}" (id {c.audience_id}) at {c.destination}'
    if c.planned is None:
        return item
    command = f"reconcile import {c.activation} {c.audience_id}"
    command += "" if c.group == "all" else f" --group {c.group}"
    return (
        f'{item}, its name made on another date (this plan would create "{c.planned}"): '
        f"`{command}` takes it back"
    )


def summary_lines(plan: Plan) -> list[str]:
    """The prominent block the renderers show: a headline, one line per audience, what to do."""
    if not plan.state_loss:
        return []
    n = len(plan.state_loss)
    head = (
        f"STATE LOSS? The state is empty (no run recorded), but {n} audience(s) this plan would "
        "create already exist at the destination with the same name"
        + (" or the same name made on another date:" if _dated(plan) else ":")
    )
    return [head, *(f"  {_item(c)}" for c in plan.state_loss), WAYS_OUT + "."]


def _dated(plan: Plan) -> bool:
    return any(c.planned is not None for c in plan.state_loss)


def refusal(plan: Plan) -> str | None:
    """Why ``apply`` refuses this plan (None: it does not)."""
    if not plan.state_loss:
        return None
    items = "; ".join(_item(c) for c in plan.state_loss)
    return (
        "refusing to apply: the state is empty (no run recorded), but the destination already has "
        f"audiences with the names this plan would create{' (or made on another date)' if _dated(plan) else ''} "
        f"({items}). Applying would create "
        f"duplicates and send one-time activations again. {WAYS_OUT}"
    )
