"""State loss is never silent.

A state that records no run at all, while the destinations already hold audiences with
the very names the plan would create, most likely means the state was lost (a deleted file, an
evicted CI cache, a new runner). Applying would create a second audience of each name and send
`once` activations again. The plan lists those audiences (:attr:`Plan.state_loss`) and apply
refuses (:func:`refusal`) until each is adopted — ``adopt: true`` in the activation, or
``reconcile import ACTIVATION`` — or the user confirms with ``--allow-duplicate-audiences``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    return [
        NameConflict(
            activation=a.id,
            group=au.group,
            name=au.name,
            audience_id=au.name_taken_by or "",
            destination=a.destination,
        )
        for a in plans
        for au in a.audiences
        if au.create and au.sent and au.name_taken_by and not au.adopt
    ]


def recheck(plan: Plan, find: Callable[[str, str], str | None]) -> Plan:
    """A saved plan about to be applied to an empty state, with the destinations asked again
    (``find(destination, name)`` -> the id of an audience of exactly that name): a plan made
    with ``--refresh=false`` did not ask, and one may have appeared since."""
    found = list(plan.state_loss)
    known = {(c.activation, c.group) for c in found}
    for a in plan.activations:
        for au in a.audiences:
            if not (au.create and au.sent) or au.adopt or (a.id, au.group) in known:
                continue
            taken = find(a.destination, au.name)
            if taken is not None:
                found.append(
                    NameConflict(
                        activation=a.id,
                        group=au.group,
                        name=au.name,
                        audience_id=taken,
                        destination=a.destination,
                    )
                )
    return plan.model_copy(update={"state_loss": found})


def _item(c: NameConflict) -> str:
    group = "" if c.group == "all" else f" (group {c.group})"
    return f'activation "{c.activation}"{group}: audience "{c.name}" (id {c.audience_id}) at {c.destination}'


def summary_lines(plan: Plan) -> list[str]:
    """The prominent block the renderers show: a headline, one line per audience, what to do."""
    if not plan.state_loss:
        return []
    n = len(plan.state_loss)
    head = (
        f"STATE LOSS? The state is empty (no run recorded), but {n} audience(s) this plan would "
        "create already exist at the destination with the same name:"
    )
    return [head, *(f"  {_item(c)}" for c in plan.state_loss), WAYS_OUT + "."]


def refusal(plan: Plan) -> str | None:
    """Why ``apply`` refuses this plan (None: it does not)."""
    if not plan.state_loss:
        return None
    items = "; ".join(_item(c) for c in plan.state_loss)
    return (
        "refusing to apply: the state is empty (no run recorded), but the destination already has "
        f"audiences with the names this plan would create ({items}). Applying would create "
        f"duplicates and send one-time activations again. {WAYS_OUT}"
    )
