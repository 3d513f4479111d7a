"""Models of ``activations/*.yaml``: the goal, action, split and audience list of an activation,
its export settings, and the resolved activation the planner works with."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    WithJsonSchema,
    field_serializer,
    field_validator,
    model_validator,
)

from reconciler.workspace import schema_rules as rules
from reconciler.workspace.notify_spec import NotifySpec
from reconciler.workspace.spec import Defaults
from reconciler.workspace.spec_base import (
    EMAIL_PATTERN,
    EMAIL_RE,
    FieldError,
    Strict,
    listed_once,
)


class Goal(StrEnum):
    SEND_SEGMENTS = "send_segments"
    SYNC_ATTRIBUTES = "sync_attributes"
    EXPORT_DATA = "export_data"


class ActionMode(StrEnum):
    MAINTAIN = "maintain"
    APPEND = "append"
    REMOVE = "remove"


class SplitMode(StrEnum):
    NONE = "none"
    AB = "ab"
    CONTROL = "control"


class ListTarget(Strict):
    """``create: true`` or ``existing: <id or name>`` (``{A: .., B: ..}`` for an A/B split)."""

    model_config = ConfigDict(json_schema_extra=rules.LIST_TARGET)

    create: bool | None = Field(None, description="true: create a new audience named `name`")
    existing: str | dict[Literal["A", "B"], str] | None = Field(
        None,
        json_schema_extra={
            "anyOf": [
                {"type": "string", "pattern": r"\S"},
                {
                    "type": "object",
                    "additionalProperties": {"type": "string", "pattern": r"\S"},
                    "propertyNames": {"enum": ["A", "B"]},
                },
                {"type": "null"},
            ]
        },
        description="an audience that exists at the destination, by id or name "
        "({A: .., B: ..} with `split: ab`)",
    )

    @field_validator("existing")
    @classmethod
    def _not_blank(cls, value: str | dict[str, str] | None) -> str | dict[str, str] | None:
        # a blank id or name passed validate and was refused only by plan
        names = value.values() if isinstance(value, dict) else [value] if value is not None else []
        if any(not n.strip() for n in names):
            raise ValueError("an existing audience is named by its id or name, not a blank")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> ListTarget:
        if (self.create is True) == (self.existing is not None):
            raise FieldError("set exactly one of `create: true` or `existing: <id or name>`")
        if self.create is False:
            raise FieldError(
                "`create: false` means nothing; use `existing: <id or name>`", "create"
            )
        return self

    def existing_for(self, group: str) -> str | None:
        """The existing audience (id or name) of split group ``group``: the one audience, or
        that group's of an ``{A: .., B: ..}`` pair; None for ``create: true``."""
        if isinstance(self.existing, dict):
            return self.existing.get(group)  # type: ignore[call-overload]
        return self.existing


_Email = Annotated[str, WithJsonSchema({"type": "string", "pattern": EMAIL_PATTERN})]


class ExportSpec(Strict):
    """``export:`` of a ``goal: export_data`` activation: where below the integration's
    location its files go, and how often a full file is written besides the daily delta."""

    path: str | None = Field(
        None,
        description="folder below the integration's location (relative, no `..`); "
        "default: the activation id",
    )
    full: Literal["daily", "weekly", "never"] = Field(
        "weekly",
        description="also write a full file of the audience: every run, when the last one is "
        "7 days old, or never (each run always writes a delta file)",
    )

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is None:
            return value
        p = value.replace("\\", "/")
        if not p.strip(" /"):
            raise ValueError("must name a folder below the integration's location")
        if "://" in p or p.startswith(("/", "~")) or ":" in p or ".." in p.split("/"):
            raise ValueError(
                f"{value!r} is outside the integration's location (folder or URL prefix): "
                "write a relative path such as `vip/weekly`, without `..`"
            )
        if any(part.startswith(".") for part in p.split("/") if part):
            raise ValueError(f"{value!r}: folder names must not start with '.'")
        return value


class Activation(Strict):
    """One activation (one file). Its id is the file stem."""

    model_config = ConfigDict(json_schema_extra=rules.ACTIVATION)

    goal: Goal = Field(
        Goal.SEND_SEGMENTS, description="send_segments, sync_attributes or export_data"
    )
    segments: list[str] = Field(
        min_length=1,
        description="segment names; the audience is their union",
        json_schema_extra={"uniqueItems": True},
    )
    frequency: Literal["daily", "once"] | None = Field(
        None, description="daily (auto-update) or once (one-time send); default: defaults.frequency"
    )
    destination: str = Field(description="an integration name from integrations/")
    name: str | None = Field(
        None,
        description="audience name template; default '<date created> <segment names>'",
        json_schema_extra={"pattern": rules.NAME_TEXT_PATTERN},
    )
    notify: NotifySpec = Field(
        default_factory=NotifySpec,
        description="{email: [...], webhook: [...], on: [...]}, or a list of e-mail addresses",
    )
    append_to_profiles: bool = Field(
        False,
        description="after each successful apply, record every included profile with this "
        "activation's name in the source's included_in_audience table (the 'Included in "
        "Audience' attribute); needs `source.writable: true`",
    )
    target: ListTarget = Field(
        default_factory=lambda: ListTarget(create=True),
        alias="list",
        description="`create: true` or `existing: <id or name>`",
    )
    action: ActionMode | None = Field(
        None,
        description="maintain (add and remove), append (only add) or remove (remove the "
        "segment's profiles from an existing list); default: defaults.action",
    )
    split: SplitMode = Field(
        SplitMode.NONE,
        description="none, ab (two equal audiences '<name> - A' and '- B') or control "
        "(a held-out group, recorded, never sent)",
    )
    control_percent: int | None = Field(
        None, ge=1, le=50, description="size of the control group in percent (default 10)"
    )
    attributes: list[str] = Field(
        default_factory=list,
        description="destination fields (from the integration mapping)",
        json_schema_extra={"uniqueItems": True},
    )
    paused: bool = Field(False, description="Stop Updates: keep the audience, send nothing more")
    adopt: bool = Field(
        False,
        description="when the audience is created, take over an existing audience of the same "
        "name at the destination instead of creating a second one",
    )
    on_delete: Literal["keep", "clear"] = Field(
        "keep",
        description="when this file is deleted: keep the audience, or clear its members",
    )
    moved_from: str | None = Field(
        None, description="the id this activation had before its file was renamed"
    )
    max_removal_share: float | None = Field(
        None, gt=0, le=1, description="overrides defaults.max_removal_share"
    )
    max_rejected_share: float | None = Field(
        None, ge=0, le=1, description="overrides defaults.max_rejected_share"
    )
    export: ExportSpec | None = Field(
        None, description="`goal: export_data` only: {path: <folder>, full: daily|weekly|never}"
    )

    @field_validator("notify", mode="before", json_schema_input_type=list[_Email] | NotifySpec)
    @classmethod
    def _short_notify(cls, value: Any) -> Any:
        if isinstance(value, list):
            for i, address in enumerate(value):
                if not isinstance(address, str) or not EMAIL_RE.fullmatch(address):
                    shown = repr(address) if isinstance(address, str) else "this entry"
                    raise FieldError(f"{shown} is not an e-mail address", i)
            return {"email": value}
        return value

    @field_serializer("notify")
    def _dump_notify(self, value: NotifySpec) -> Any:
        # no notifications dumps as it did before `notify` had fields, so recorded specs
        # (and their digests) of activations without notify do not change
        return value.model_dump(mode="json") if value.configured else []

    @field_validator("segments")
    @classmethod
    def _unique_segments(cls, value: list[str]) -> list[str]:
        return listed_once(value, "segment(s)")

    @field_validator("attributes")
    @classmethod
    def _unique_attributes(cls, value: list[str]) -> list[str]:
        return listed_once(value, "attribute(s)")

    @field_validator("name")
    @classmethod
    def _named(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():  # `name:` left blank by mistake?
            raise ValueError("is empty; omit `name` for the default (date created, segments)")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Activation:
        if self.split is not SplitMode.NONE and self.action is ActionMode.REMOVE:
            raise FieldError("`split` cannot be combined with `action: remove`", "split")
        if self.split is not SplitMode.NONE and self.goal is not Goal.SEND_SEGMENTS:
            raise FieldError(
                f"`split` is only for `goal: send_segments`, not {self.goal.value}", "split"
            )
        if self.export is not None and self.goal is not Goal.EXPORT_DATA:
            raise FieldError("`export` is only for `goal: export_data`", "export")
        if self.goal is Goal.SYNC_ATTRIBUTES and self.action is ActionMode.REMOVE:
            raise FieldError(
                "`goal: sync_attributes` updates attribute values and never removes; "
                "use `action: maintain` or `append`",
                "action",
            )
        if self.control_percent is not None and self.split is not SplitMode.CONTROL:
            raise FieldError("`control_percent` needs `split: control`", "control_percent")
        if self.adopt and self.target.existing is not None:
            raise FieldError(
                "`adopt: true` is for `list: {create: true}`; `existing` already names the list",
                "adopt",
            )
        if self.action is ActionMode.REMOVE and self.target.existing is None:
            raise FieldError("`action: remove` needs `list: {existing: <id or name>}`", "action")
        if self.action is ActionMode.REMOVE and self.on_delete == "clear":
            raise FieldError(
                "`on_delete: clear` does not go with `action: remove`: the list is not this "
                "activation's, and what it recorded are the members it removed",
                "on_delete",
            )
        if isinstance(self.target.existing, dict) and self.split is not SplitMode.AB:
            raise FieldError(
                "`list.existing` as {A: .., B: ..} needs `split: ab`", "list", "existing"
            )
        if isinstance(self.target.existing, dict) and {
            str(k).upper() for k in self.target.existing
        } != {"A", "B"}:
            raise FieldError(
                "`split: ab` with existing lists names one list per group: {A: id, B: id}",
                "list",
                "existing",
            )
        if (
            self.split is SplitMode.AB
            and self.target.existing is not None
            and not isinstance(self.target.existing, dict)
        ):
            raise FieldError(
                "`split: ab` with an existing list needs `existing: {A: id, B: id}`",
                "list",
                "existing",
            )
        return self

    def resolved(self, defaults: Defaults) -> ResolvedActivation:
        """This spec with workspace defaults filled in (what is recorded and compared)."""
        return ResolvedActivation.model_construct(
            _fields_set=self.model_fields_set,
            **{
                **{name: getattr(self, name) for name in type(self).model_fields},
                "frequency": self.frequency or defaults.frequency,
                "action": self.action or ActionMode(defaults.action),
                "control_percent": (
                    (self.control_percent or 10) if self.split is SplitMode.CONTROL else None
                ),
                "max_removal_share": self.max_removal_share or defaults.max_removal_share,
                "max_rejected_share": (
                    defaults.max_rejected_share
                    if self.max_rejected_share is None
                    else self.max_rejected_share
                ),
            },
        )


class ResolvedActivation(Activation):
    """An activation with the workspace defaults filled in: no optional settings left."""

    frequency: Literal["daily", "once"]
    action: ActionMode
    max_removal_share: float
    max_rejected_share: float
