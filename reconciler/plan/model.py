"""The plan: a frozen value built only by :mod:`reconciler.plan.planner`, consumed by
:mod:`reconciler.apply.applier` and the renderers. It holds specs, counts and digests; the
member changes themselves (keys) are staged in engine tables (see
:mod:`reconciler.plan.staging`), never in this object.

Its JSON form (``Plan.to_json()``) is the documented, versioned ``--format json`` output:
see ``docs/plan-json.md``. Bump ``FORMAT_VERSION`` on any incompatible change.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

FORMAT_VERSION = 1


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Change(StrEnum):
    """What happens to an activation (Terraform's Action)."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    NOOP = "noop"
    PAUSED = "paused"


class MemberOp(StrEnum):
    """What happens to one member of one audience (the ``op`` of a staged change)."""

    ADD = "add"  # enters: sent, then recorded
    REMOVE = "remove"  # leaves: the recorded record is sent for removal, then forgotten
    UPDATE = "update"  # identifiers or mapped attributes changed: sent again
    PURGE = "purge"  # `action: remove`: removed from a list although never sent by us
    FORGET = "forget"  # the record is dropped without a destination call


class Status(StrEnum):
    """An activation's status (the product guide's FAQ) and a run's outcome."""

    NEW = "New"
    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"
    DISABLED = "Disabled"
    REFUSED = "Refused"  # apply refused to start it (mass-removal guard, stale saved plan)


class ConfigChange(Frozen):
    """One field of the recorded spec that differs from the file (deepdiff)."""

    path: str  # dotted, e.g. "split" or "segment_sql.vip"
    kind: str  # "changed" | "added" | "removed"
    old: Any = None
    new: Any = None


class SegmentInfo(Frozen):
    name: str
    size: int
    changed: bool = False  # the segment's definition changed since the last apply


class AudienceChange(Frozen):
    """Member changes for one destination audience (one split group)."""

    group: str  # "all" | "A" | "B" | "experiment" | "control"
    name: str  # audience name at the destination
    sent: bool = True  # False for a control group: recorded, never sent
    resource_id: str | None = None  # the destination's id, when known
    create: bool = False  # the audience is created by this apply
    rename_from: str | None = None
    add: int = 0
    remove: int = 0
    update: int = 0
    forget: int = 0  # state-only: records dropped without a destination call
    #: of ``update``, members left with no usable identifier: what was sent for them is
    #: removed at the destination (counted by the mass-removal guard); 0 when not checked
    lose: int = 0
    size_before: int = 0  # members recorded before the apply
    size_after: int = 0  # members recorded after the apply
    mass_removal: bool = False
    #: id of an audience of this name already at the destination, not created by this tool
    #: (shown as a conflict; taken over only with ``adopt: true``)
    name_taken_by: str | None = None
    adopt: bool = False  # the creation takes over ``name_taken_by`` (``adopt: true``)
    #: with an empty state: an audience at the destination named as this one would have been
    #: on another creation date (``reconciler.plan.twins``), its id and name
    earlier_id: str | None = None
    earlier_name: str | None = None
    #: ``goal: sync_attributes``: destination field -> values this apply changes there
    attributes: dict[str, int] = Field(default_factory=dict)

    @property
    def has_changes(self) -> bool:
        return bool(
            self.create or self.rename_from or self.add or self.remove or self.update or self.forget
        )


def trips_mass_removal(before: int, removed: int, after: int, share: float) -> bool:
    """The mass-removal guard: an audience that has members loses some (``removed``, of
    ``before``) and is left empty (``after``) or loses more than ``share`` of them."""
    return before > 0 and removed > 0 and (after <= 0 or removed > share * before)


class ExportChange(Frozen):
    """What a ``goal: export_data`` apply writes: one delta file (entered / left / changed
    rows) and, when ``export.full`` says it is time, a full file of the audience."""

    location: str  # where the files go (folder or URL)
    delta_rows: int = 0
    full: bool = False  # a full file is written too
    full_rows: int = 0  # rows of the full file (the audience after the apply)
    full_policy: str = "weekly"  # export.full: daily | weekly | never
    resume: str | None = None  # stamp of an interrupted export this apply writes again
    #: why this export starts a new series of files (moved, another format), with a full
    #: file: a reader of the new place has none of the earlier deltas. None: it does not
    new_series: str | None = None
    #: where an interrupted export (``resume``) may have left files this apply does not
    #: replace: it was writing elsewhere or in another format
    stale_files: str | None = None


class ActivationPlan(Frozen):
    id: str
    change: Change
    destination: str
    destination_type: str
    goal: str
    action: str
    frequency: str
    paused: bool = False
    moved_from: str | None = None
    file: str | None = None
    spec_digest: str | None = None  # digest of the resolved spec the plan was made from
    state_serial: int = 0  # serial of the activation's state when planned
    config_changes: list[ConfigChange] = Field(default_factory=list)
    segments: list[SegmentInfo] = Field(default_factory=list)
    audience_size: int = 0  # de-duplicated, after suppression and consent
    matchable: int = 0  # of audience_size, profiles with an identifier the destination takes
    #: of the members to add or update, those with no identifier the destination takes once
    #: normalised (recorded, not sent); None: not checked (more than the plan checks)
    unsendable: int | None = None
    excluded: dict[str, int] = Field(default_factory=dict)  # rule -> profiles excluded
    audiences: list[AudienceChange] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    #: problems shown even when nothing changes (held profiles, a name taken at the destination)
    warnings: list[str] = Field(default_factory=list)
    max_removal_share: float = Field(0.5, gt=0, le=1, allow_inf_nan=False)
    on_delete: str = "keep"  # "keep" | "clear": what deleting the file does to the audience
    due: bool = False
    export: ExportChange | None = None  # `goal: export_data`: the files apply writes
    #: ``append_to_profiles``: rows of the source's write-back that do not match the recorded
    #: members (an apply died before writing them); the next apply writes them
    writeback_pending: int = 0

    @property
    def member_changes(self) -> bool:
        return any(a.has_changes for a in self.audiences)

    @property
    def has_changes(self) -> bool:
        return (
            self.change in (Change.CREATE, Change.UPDATE, Change.DELETE)
            or self.member_changes
            or bool(self.writeback_pending)
        )

    @property
    def mass_removal(self) -> bool:
        return any(a.mass_removal for a in self.audiences)

    def totals(self) -> dict[str, int]:
        return {
            k: sum(getattr(a, k) for a in self.audiences if a.sent)
            for k in ("add", "remove", "update")
        }


class NameConflict(Frozen):
    """An audience the plan would create whose name the destination already has (an audience
    this tool has no record of)."""

    activation: str
    group: str
    name: str
    audience_id: str
    destination: str
    #: the name the plan would create, when the audience found has another one (its name is
    #: this one on an earlier creation date): ``reconcile import`` takes it back, by its id
    planned: str | None = None


class Summary(Frozen):
    create: int = 0
    update: int = 0
    delete: int = 0
    noop: int = 0
    paused: int = 0
    add: int = 0
    remove: int = 0
    update_members: int = 0
    mass_removal: int = 0  # activations flagged by the mass-removal guard


class Plan(Frozen):
    format_version: int = FORMAT_VERSION
    plan_id: str
    as_of: datetime
    created_at: datetime
    workspace: str
    targets: list[str] = Field(default_factory=list)
    include_inactive: bool = False
    state_lineage: str | None = None  # the lineage id of the state planned against
    activations: list[ActivationPlan] = Field(default_factory=list)
    summary: Summary = Field(default_factory=Summary)
    #: the state records no run, yet the destinations already hold audiences named as
    #: the ones this plan would create: was the state lost? ``apply`` refuses until they are
    #: adopted or ``--allow-duplicate-audiences`` is given (see ``reconciler/plan/state_loss.py``)
    state_loss: list[NameConflict] = Field(default_factory=list)
    #: set when the plan read the state as of the start of an apply that was running
    state_notice: str | None = None

    @property
    def has_changes(self) -> bool:
        return any(a.has_changes for a in self.activations)

    def get(self, activation_id: str) -> ActivationPlan:
        for a in self.activations:
            if a.id == activation_id:
                return a
        raise KeyError(activation_id)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def summarise(activations: list[ActivationPlan]) -> Summary:
    counts = {c.value: 0 for c in Change}
    for a in activations:
        counts[a.change.value] += 1
    totals = [a.totals() for a in activations]
    return Summary(
        **counts,
        add=sum(t["add"] for t in totals),
        remove=sum(t["remove"] for t in totals),
        update_members=sum(t["update"] for t in totals),
        mass_removal=sum(1 for a in activations if a.mass_removal),
    )
