"""What apply records and plan compares: the resolved spec of an activation together with
every definition its membership depends on, its digest, and the field-by-field diff."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from destinations.base import Identity
from destinations.identity.rules import RULES_VERSION
from reconciler.errors import ConfigError
from reconciler.plan.model import ConfigChange
from reconciler.state.store import RecordedActivation
from reconciler.workspace.activation_spec import Activation, Goal, ResolvedActivation
from reconciler.workspace.loader import Workspace

#: spec keys added after states were recorded without them: a spec recorded before is compared
#: without them (no change shown for them), and their absence reads as "as now"
LATER_KEYS = ("sent_as",)


def sent_as(identity: Identity) -> list[str]:
    """How the destination is sent each identifier (field, type, form, hash). A change — a
    webhook's ``pii: raw`` becoming ``hashed`` — changes no record string and no fingerprint
    (both hash the value either way), so the plan sends every member again."""
    return sorted(f"{e.field}={e.identifier}/{e.form}/{e.hash.value}" for e in identity.encodings)


def comparable(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` as compared with the recorded spec ``old``: without the keys ``old`` predates."""
    if not old:
        return new
    return {k: v for k, v in new.items() if k in old or k not in LATER_KEYS}


def recorded_spec(
    ws: Workspace, act: Activation, identity: Identity | None = None
) -> dict[str, Any]:
    """What is recorded at apply and compared at plan: the resolved activation plus every
    definition its membership depends on (so a segment edit shows under each user of it) and,
    given the destination's ``identity``, how its identifiers are sent (:func:`sent_as`)."""
    integ = ws.integrations[act.destination]
    spec = act.resolved(ws.config.defaults).model_dump(mode="json", by_alias=True)
    if spec.get("export") is None:  # specs recorded before `export` existed keep their digest
        spec.pop("export", None)
    spec["segment_sql"] = {s: ws.segments[s].sql for s in act.segments}
    spec["suppression_sql"] = {s: ws.segments[s].sql for s in ws.config.suppression}
    spec["consent"] = integ.consent
    spec["attribute_mapping"] = {f: integ.attributes[f] for f in act.attributes}
    # phone numbers without a country code are read in this country: it changes what is sent
    spec["default_phone_country"] = ws.config.source.profiles.default_phone_country.upper()
    # how identifiers were normalised (a newer version re-checks the recorded members)
    spec["identity_rules"] = RULES_VERSION
    if identity is not None:
        spec["sent_as"] = sent_as(identity)
    return spec


def digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def config_diff(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[ConfigChange]:
    if old is None or new is None:
        return []
    if json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True):
        return []  # the same values of the same types: nothing to diff (nor to import)
    from deepdiff import DeepDiff  # only when a spec is compared (imports cost ~30 ms)

    diff = DeepDiff(old, new, verbose_level=2)
    out: list[ConfigChange] = []
    for kind, key in (
        ("changed", "values_changed"),
        ("changed", "type_changes"),
        ("added", "dictionary_item_added"),
        ("removed", "dictionary_item_removed"),
        ("added", "iterable_item_added"),
        ("removed", "iterable_item_removed"),
    ):
        for path, value in diff.get(key, {}).items():
            if kind == "changed":
                old_v, new_v = value.get("old_value"), value.get("new_value")
            elif kind == "added":
                old_v, new_v = None, value
            else:
                old_v, new_v = value, None
            out.append(ConfigChange(path=_dotted(path), kind=kind, old=old_v, new=new_v))
    return sorted(out, key=lambda c: c.path)


def _dotted(path: str) -> str:
    # "root['segment_sql']['vip']" -> "segment_sql.vip"; "root['segments'][1]" -> "segments[1]"
    out = path[len("root") :]
    out = out.replace("']['", ".").replace("['", ".").replace("']", "")
    return out.lstrip(".")


def frozen(act: ResolvedActivation, rec: RecordedActivation | None, include_inactive: bool) -> bool:
    """Whether a run of the resolved activation ``act`` (recorded as ``rec``, or None) sends
    nothing but exclusions: it is paused, or a one-time activation that ran and is not being
    re-run (``reconcile run``: ``include_inactive``)."""
    ran_once = rec is not None and rec.ran and act.frequency == "once"
    return bool(act.paused or (ran_once and not include_inactive))


def check_goal_change(
    ws: Workspace,
    aid: str,
    act: ResolvedActivation,
    rec: RecordedActivation | None,
    *,
    synced: bool = False,
) -> None:
    """Refuse a ``goal`` change the recorded state cannot follow. ``send_segments`` ->
    ``sync_attributes`` is fine (its members are all recorded). Not the other way: a profile
    that left while attributes were synced was forgotten, not removed, so it is still in the
    audience and no longer in the state — the audience could not be kept to its segments.
    Nor to or from ``export_data``: files and an audience keep different records.

    ``synced``: the state holds attribute hashes of the activation (only ``sync_attributes``
    keeps them): its goal when no run completed yet, so no spec says it."""
    old = rec.spec.get("goal") if rec is not None and rec.spec else None
    if old is None and rec is not None and synced:
        old = Goal.SYNC_ATTRIBUTES.value
    new = act.goal.value
    if old is None or old == new:
        return
    if old == Goal.SEND_SEGMENTS.value and new == Goal.SYNC_ATTRIBUTES.value:
        return
    if old == Goal.SYNC_ATTRIBUTES.value and new == Goal.SEND_SEGMENTS.value:
        why = (
            "profiles that left it while it synced attributes were forgotten, not removed: "
            "they are still in its audience at the destination and no longer in the state, "
            "so the audience could not be kept to its segments"
        )
    else:
        why = "an export writes files and the other goals an audience: they keep different records"
    raise ConfigError(
        f"activation {aid!r}: `goal` changed from {old} to {new}, which its recorded state "
        f"cannot follow: {why}. Put `goal: {old}` back, or give the activation a new id "
        "(rename its file: the new one starts from an empty state, the old id is deleted and "
        "its `on_delete` applies)",
        ws.location("activations", aid, "goal"),
    )


def sent_anew(
    rec: RecordedActivation | None, spec: dict[str, Any], act: ResolvedActivation, *, frozen: bool
) -> tuple[bool, list[str]]:
    """Whether every member is updated although no fingerprint changed, and the plan's notes
    saying why: a destination field renamed or mapped to another column (the fingerprint
    covers the values only), or identifiers sent in another form (``sent_as``: a webhook's
    ``pii``). Under ``action: append`` a member kept after it left gets nothing."""
    old = rec.spec if rec is not None and rec.spec else {}
    mapping = spec["attribute_mapping"]
    remapped = old.get("attribute_mapping", mapping) != mapping
    append = act.action.value == "append"
    whom = "every member still in its segments" if append else "every member"
    notes = []
    if remapped and not frozen:
        was = old.get("attribute_mapping") or {}
        added = sorted(set(mapping) - set(was))
        kept_alike = all(mapping.get(f) == c for f, c in was.items())
        if added and kept_alike:  # fields added, none renamed or remapped
            notes.append(
                f"attribute(s) {', '.join(added)} added to what is sent: {whom} is updated "
                "to carry them"
            )
        else:
            notes.append(
                "the attribute mapping changed (a destination field renamed, removed or "
                f"mapped to another column): {whom} is updated with the fields as now mapped"
            )
    before = old.get("sent_as")
    now = spec.get("sent_as") or []
    # a state from before `sent_as` does not say how its members were sent: hashed, the
    # default, is assumed; a destination now sent raw values gets every member once
    legacy_raw = bool(old) and before is None and any(s.endswith("/raw") for s in now)
    if (
        (legacy_raw or (before is not None and before != now))
        and act.goal is not Goal.EXPORT_DATA
        and not frozen
    ):
        remapped = True
        why = (
            "how its members' identifiers were sent is not recorded (a state from an earlier "
            "release) and they are now sent raw (`pii: raw`)"
            if legacy_raw
            else "the form identifiers are sent in changed (a webhook's `pii`, for one)"
        )
        notes.append(f"{why}: {whom} is updated with its identifiers as now sent")
    return remapped, notes
