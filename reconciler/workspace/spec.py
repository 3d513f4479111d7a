"""Pydantic models of the workspace files. Unknown fields are errors everywhere.

``reconcile.yaml`` -> :class:`WorkspaceConfig`; ``integrations/*.yaml`` -> :class:`Integration`;
``segments/*.yaml`` -> :class:`Segment`; ``activations/*.yaml`` -> :class:`Activation`.
Cross-file rules (unknown segment, unknown integration, ...) live in ``workspace.py``.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
IDENTIFIER_TYPES = ("email", "phone")


class FieldError(ValueError):
    """A model rule broken by one field: ``loc`` (below the validated value) lets the error
    name that field's line instead of the start of the file."""

    def __init__(self, message: str, *loc: str | int):
        super().__init__(message)
        self.loc = loc


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------- reconcile.yaml


class ProfilesTable(Strict):
    """The source's profiles-table contract."""

    table: str = "profiles"
    key: str = "customer_id"
    identifiers: dict[str, str] = Field(
        default_factory=lambda: {"email": "email", "phone": "phone"},
        description="identifier type (email, phone) -> column",
    )
    attributes: list[str] = Field(default_factory=list, description="attribute columns")
    default_phone_country: str = Field("US", min_length=2, max_length=2)

    @field_validator("identifiers")
    @classmethod
    def _known_identifier_types(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(IDENTIFIER_TYPES))
        if unknown:
            raise ValueError(
                f"unknown identifier type(s) {unknown}; known: {list(IDENTIFIER_TYPES)}"
            )
        return value


class DuckDBSource(Strict):
    type: Literal["duckdb"] = "duckdb"
    path: str = ".reconcile/demo.duckdb"
    demo: bool = Field(
        False, description="generate the deterministic demo customer database on first use"
    )
    demo_profiles: int = Field(50_000, ge=100)
    profiles: ProfilesTable = Field(default_factory=ProfilesTable)
    tables: list[str] = Field(
        default_factory=list,
        description="other tables or views of the source that segment SQL, consent conditions "
        "and freshness_sql may read ('name' or 'schema.name'); the profiles table is always "
        "readable, nothing else is (see docs/segment-sql.md)",
    )
    freshness_sql: str | None = None
    query_timeout: float = Field(
        120,
        gt=0,
        description="seconds any query running untrusted SQL (segments, consent, "
        "freshness_sql) may take before it is stopped",
    )
    threads: int | None = Field(None, ge=1)
    memory_limit: str | None = Field(
        None, description="DuckDB memory limit of the engine session (default 1GB)"
    )
    max_temp_directory_size: str | None = Field(
        None,
        description="how much a query may spill to .reconcile/tmp when it exceeds "
        "memory_limit (default 10GB)",
    )

    @field_validator("tables")
    @classmethod
    def _plain_table_names(cls, value: list[str]) -> list[str]:
        for i, name in enumerate(value):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?", name):
                raise FieldError(f"{name!r} is not a table name; write 'name' or 'schema.name'", i)
        return value


class PostgresSource(Strict):
    type: Literal["postgres"]
    dsn: str
    profiles: ProfilesTable = Field(default_factory=ProfilesTable)
    freshness_sql: str | None = None


class LocalState(Strict):
    backend: Literal["local"] = "local"
    path: str = ".reconcile/state.duckdb"


class Defaults(Strict):
    max_removal_share: float = Field(0.5, gt=0, le=1)
    frequency: Literal["daily", "once"] = "daily"
    action: Literal["maintain", "append", "remove"] = "maintain"


class WorkspaceConfig(Strict):
    version: Literal[1] = 1
    timezone: str = "UTC"
    source: DuckDBSource | PostgresSource = Field(
        default_factory=DuckDBSource, discriminator="type"
    )
    state: LocalState = Field(default_factory=LocalState)
    defaults: Defaults = Field(default_factory=Defaults)
    suppression: list[str] = Field(
        default_factory=list, description="segments excluded from every activation"
    )
    notifications: dict[str, Any] | None = None

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r} (use an IANA name)") from exc
        return value


# --------------------------------------------------------------------------- integrations


class Integration(Strict):
    """A destination connection set up by an admin ("Manage > Integrations")."""

    type: str
    description: str | None = None
    consent: str | None = Field(
        None, description="SQL condition over the profiles table a member must satisfy"
    )
    attributes: dict[str, str] = Field(
        default_factory=dict, description="destination field -> profile attribute column"
    )
    credentials: dict[str, str] = Field(
        default_factory=dict, description="values are ${env:VAR} references"
    )
    endpoint: str | None = None
    config: dict[str, Any] = Field(
        default_factory=dict, description="destination-specific settings"
    )

    @field_validator("credentials")
    @classmethod
    def _env_references_only(cls, value: dict[str, str]) -> dict[str, str]:
        for name, ref in value.items():
            if not re.fullmatch(r"\$\{env:[A-Za-z_][A-Za-z0-9_]*\}", ref):
                raise FieldError(
                    f"credential {name!r} must be an ${{env:VAR}} reference, "
                    "never a literal secret",
                    name,
                )
        return value


# --------------------------------------------------------------------------- segments


class Segment(Strict):
    description: str | None = None
    sql: str = Field(
        description="a single SELECT returning the profile key (Jinja: today, days_ago)"
    )


# --------------------------------------------------------------------------- activations


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

    create: bool | None = None
    existing: str | dict[Literal["A", "B"], str] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ListTarget:
        if (self.create is True) == (self.existing is not None):
            raise FieldError("set exactly one of `create: true` or `existing: <id or name>`")
        if self.create is False:
            raise FieldError(
                "`create: false` means nothing; use `existing: <id or name>`", "create"
            )
        return self


class Activation(Strict):
    """One activation (one file). Its id is the file stem."""

    goal: Goal = Goal.SEND_SEGMENTS
    segments: list[str] = Field(min_length=1)
    frequency: Literal["daily", "once"] | None = None
    destination: str
    name: str | None = Field(
        None, description="audience name template; default '<date created> <segment names>'"
    )
    notify: list[str] = Field(default_factory=list)
    append_to_profiles: bool = False
    target: ListTarget = Field(
        default_factory=lambda: ListTarget(create=True),
        alias="list",
        description="`create: true` or `existing: <id or name>`",
    )
    action: ActionMode | None = None
    split: SplitMode = SplitMode.NONE
    control_percent: int | None = Field(None, ge=1, le=50)
    attributes: list[str] = Field(
        default_factory=list, description="destination fields (from the integration mapping)"
    )
    paused: bool = False
    on_delete: Literal["keep", "clear"] = "keep"
    moved_from: str | None = None
    max_removal_share: float | None = Field(None, gt=0, le=1)

    @field_validator("segments")
    @classmethod
    def _unique_segments(cls, value: list[str]) -> list[str]:
        dupes = sorted({s for s in value if value.count(s) > 1})
        if dupes:
            raise ValueError(f"segment(s) listed twice: {dupes}")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Activation:
        if self.split is not SplitMode.NONE and self.action is ActionMode.REMOVE:
            raise FieldError("`split` cannot be combined with `action: remove`", "split")
        if self.split is not SplitMode.NONE and self.goal is not Goal.SEND_SEGMENTS:
            raise FieldError(
                f"`split` is only for `goal: send_segments`, not {self.goal.value}", "split"
            )
        if self.control_percent is not None and self.split is not SplitMode.CONTROL:
            raise FieldError("`control_percent` needs `split: control`", "control_percent")
        if self.action is ActionMode.REMOVE and self.target.existing is None:
            raise FieldError("`action: remove` needs `list: {existing: <id or name>}`", "action")
        if isinstance(self.target.existing, dict) and self.split is not SplitMode.AB:
            raise FieldError(
                "`list.existing` as {A: .., B: ..} needs `split: ab`", "list", "existing"
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

    def resolved(self, defaults: Defaults) -> Activation:
        """This spec with workspace defaults filled in (what is recorded and compared)."""
        return self.model_copy(
            update={
                "frequency": self.frequency or defaults.frequency,
                "action": self.action or ActionMode(defaults.action),
                "control_percent": (
                    (self.control_percent or 10) if self.split is SplitMode.CONTROL else None
                ),
                "max_removal_share": self.max_removal_share or defaults.max_removal_share,
            }
        )


FILE_MODELS: dict[str, type[Strict]] = {
    "reconcile.yaml": WorkspaceConfig,
    "integrations": Integration,
    "segments": Segment,
    "activations": Activation,
}
