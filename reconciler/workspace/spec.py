"""Pydantic models of the workspace files. Unknown fields are errors everywhere.

``reconcile.yaml`` -> :class:`WorkspaceConfig`; ``integrations/*.yaml`` -> :class:`Integration`;
``segments/*.yaml`` -> :class:`Segment`; ``activations/*.yaml`` -> :class:`Activation`.
Cross-file rules (unknown segment, unknown integration, ...) live in ``workspace.py``.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from destinations.identity import TYPES

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
#: the identifier types a profiles table may declare (``destinations.identity`` defines them)
IDENTIFIER_TYPES = tuple(TYPES)
ENV_REF_RE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
#: a plain mailbox (no display name, no whitespace, a dotted domain); enough to catch typos
EMAIL_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,}"
)


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
    #: under CI (``CI=true``) apply refuses this backend unless set: a state file on a CI
    #: runner does not outlive it (env ``RECONCILE_ALLOW_EPHEMERAL_STATE=true`` does the same)
    allow_ephemeral: bool = False


class Defaults(Strict):
    max_removal_share: float = Field(0.5, gt=0, le=1)
    max_rejected_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="share of the members sent that a destination may reject before the run "
        "counts as Failed (below it: Complete with a warning)",
    )
    frequency: Literal["daily", "once"] = "daily"
    action: Literal["maintain", "append", "remove"] = "maintain"


# --------------------------------------------------------------------------- notifications


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env_reference(value: Any, what: str) -> Any:
    """``value`` unchanged when it is an ``${env:VAR}`` reference; never echoes a literal."""
    if value is not None and not (isinstance(value, str) and ENV_REF_RE.fullmatch(value)):
        raise FieldError(f"{what} must be an ${{env:VAR}} reference, never a literal secret")
    return value


class SmtpSettings(Strict):
    """The mail server notifications are sent through."""

    host: str = Field(min_length=1)
    port: int | None = Field(
        None, ge=1, le=65535, description="default: 587 (starttls), 465 (tls), 25 (none)"
    )
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = Field(None, description="an ${env:VAR} reference")
    password: str | None = Field(None, description="an ${env:VAR} reference")
    from_address: str = Field(alias="from", description="the sender address")

    @field_validator("username", "password", mode="before")
    @classmethod
    def _references_only(cls, value: Any, info) -> Any:
        return _env_reference(value, f"`{info.field_name}`")

    @field_validator("from_address")
    @classmethod
    def _valid_sender(cls, value: str) -> str:
        if not EMAIL_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not an e-mail address")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> SmtpSettings:
        if (self.username is None) != (self.password is None):
            missing = "password" if self.password is None else "username"
            raise FieldError("set both `username` and `password`, or neither", missing)
        if self.security == "none" and not is_loopback(self.host):
            raise FieldError(
                "`security: none` sends mail unencrypted and is only allowed to a loopback "
                f"host (localhost, 127.0.0.1), not {self.host!r}; use starttls or tls",
                "security",
            )
        return self

    @property
    def effective_port(self) -> int:
        return self.port or {"starttls": 587, "tls": 465, "none": 25}[self.security]


class NotificationSettings(Strict):
    """``notifications:`` in reconcile.yaml: how run notifications are delivered."""

    smtp: SmtpSettings | None = None
    webhook_secret: str | None = Field(
        None, description="${env:VAR} holding a Standard Webhooks secret (whsec_...)"
    )
    templates: str | None = Field(
        None, description="workspace folder with overrides of the notification templates"
    )

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _secret_reference(cls, value: Any) -> Any:
        return _env_reference(value, "`webhook_secret`")

    @field_validator("templates")
    @classmethod
    def _inside_workspace(cls, value: str) -> str:
        parts = value.replace("\\", "/").split("/")
        if value.startswith(("/", "~")) or ".." in parts or ":" in value:
            raise ValueError("must be a folder inside the workspace (a relative path, no '..')")
        return value


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
    notifications: NotificationSettings | None = None

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


class NotifyEvent(StrEnum):
    """What a run notification can be sent for (``notify.on``)."""

    COMPLETE = "complete"
    FAILED = "failed"
    DISABLED = "disabled"
    MASS_REMOVAL = "mass_removal"


class NotifySpec(Strict):
    """``notify:`` on an activation: who is told after each run, and for which outcomes.
    The short form ``notify: [a@x.com, ...]`` means ``notify: {email: [...]}``."""

    email: list[str] = Field(default_factory=list, description="e-mail addresses")
    webhook: list[str] = Field(
        default_factory=list,
        description="https URLs (http only to loopback), or ${env:VAR} holding one",
    )
    on: list[NotifyEvent] = Field(
        default_factory=lambda: list(NotifyEvent), description="default: every run"
    )

    @field_validator("email")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for i, address in enumerate(value):
            if not EMAIL_RE.fullmatch(address):
                raise FieldError(f"{address!r} is not an e-mail address", i)
        return value

    @field_validator("webhook")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for i, url in enumerate(value):
            if ENV_REF_RE.fullmatch(url):
                continue
            problem = webhook_url_problem(url)
            if problem:
                raise FieldError(problem, i)
        return value

    @field_validator("on")
    @classmethod
    def _some_event(cls, value: list[NotifyEvent]) -> list[NotifyEvent]:
        if not value:
            raise ValueError(
                f"list at least one of {[e.value for e in NotifyEvent]}, or leave `on` out "
                "to be told after every run"
            )
        return value

    @property
    def configured(self) -> bool:
        return bool(self.email or self.webhook)


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot receive notifications (None when it can): https, or http to a
    loopback host. The message never repeats the URL (it may hold a token)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "a webhook must be an https:// URL"
    if parts.scheme == "https" and host:
        return None
    if parts.scheme == "http" and host and is_loopback(host):
        return None
    if parts.scheme == "http" and host:
        return "a webhook must use https:// (plain http:// only to localhost / 127.0.0.1)"
    return "a webhook must be an https:// URL"


class Activation(Strict):
    """One activation (one file). Its id is the file stem."""

    goal: Goal = Goal.SEND_SEGMENTS
    segments: list[str] = Field(min_length=1)
    frequency: Literal["daily", "once"] | None = None
    destination: str
    name: str | None = Field(
        None, description="audience name template; default '<date created> <segment names>'"
    )
    notify: NotifySpec = Field(
        default_factory=NotifySpec,
        description="{email: [...], webhook: [...], on: [...]}, or a list of e-mail addresses",
    )
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
    adopt: bool = Field(
        False,
        description="when the audience is created, take over an existing audience of the same "
        "name at the destination instead of creating a second one",
    )
    on_delete: Literal["keep", "clear"] = "keep"
    moved_from: str | None = None
    max_removal_share: float | None = Field(None, gt=0, le=1)
    max_rejected_share: float | None = Field(
        None, ge=0, le=1, description="overrides defaults.max_rejected_share"
    )

    @field_validator("notify", mode="before", json_schema_input_type=list[str] | NotifySpec)
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
        if self.adopt and self.target.existing is not None:
            raise FieldError(
                "`adopt: true` is for `list: {create: true}`; `existing` already names the list",
                "adopt",
            )
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


FILE_MODELS: dict[str, type[Strict]] = {
    "reconcile.yaml": WorkspaceConfig,
    "integrations": Integration,
    "segments": Segment,
    "activations": Activation,
}
