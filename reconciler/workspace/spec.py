"""Pydantic models of the workspace files. Unknown fields are errors everywhere.

``reconcile.yaml`` -> :class:`WorkspaceConfig`; ``integrations/*.yaml`` -> :class:`Integration`;
``segments/*.yaml`` -> :class:`Segment`; ``activations/*.yaml`` -> :class:`Activation`.
Cross-file rules (unknown segment, unknown integration, ...) live in ``workspace.py``.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    field_serializer,
    field_validator,
    model_validator,
)

from destinations.identity import TYPES
from reconciler.workspace import schema_rules as rules

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
#: the identifier types a profiles table may declare (``destinations.identity`` defines them)
IDENTIFIER_TYPES = tuple(TYPES)
ENV_REF_RE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
#: a plain mailbox (no display name, no whitespace, a dotted domain); enough to catch typos
EMAIL_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,}"
)

EMAIL_PATTERN = f"^(?:{EMAIL_RE.pattern})$"


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

    table: str = Field("profiles", description="the table (or view) holding one row per profile")
    key: str = Field("customer_id", description="the column holding each profile's stable key")
    identifiers: dict[str, str] = Field(
        default_factory=lambda: {"email": "email", "phone": "phone"},
        description="identifier type (email, phone) -> column",
        json_schema_extra={"propertyNames": {"enum": list(IDENTIFIER_TYPES)}},
    )
    attributes: list[str] = Field(default_factory=list, description="attribute columns")
    default_phone_country: str = Field(
        "US",
        min_length=2,
        max_length=2,
        description="ISO country code phone numbers without a +country prefix are read in",
    )

    @field_validator("identifiers")
    @classmethod
    def _known_identifier_types(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(IDENTIFIER_TYPES))
        if unknown:
            raise ValueError(
                f"unknown identifier type(s) {unknown}; known: {list(IDENTIFIER_TYPES)}"
            )
        return value


class _SourceSettings(Strict):
    """What every source declares: the profiles-table contract, what untrusted SQL may read,
    its time limit, and the engine session's resources."""

    profiles: ProfilesTable = Field(
        default_factory=ProfilesTable,
        description="the profiles table: key, identifiers, attributes",
    )
    tables: list[str] = Field(
        default_factory=list,
        description="other tables or views of the source that segment SQL, consent conditions "
        "and freshness_sql may read ('name' or 'schema.name'); the profiles table is always "
        "readable, nothing else is (see docs/segment-sql.md)",
        json_schema_extra={"items": {"type": "string", "pattern": rules.TABLE_NAME_PATTERN}},
    )
    freshness_sql: str | None = Field(
        None,
        description="a SELECT returning the time the source was last refreshed (daily "
        "activations are due again after it)",
    )
    query_timeout: float = Field(
        120,
        gt=0,
        description="seconds any query running untrusted SQL (segments, consent, "
        "freshness_sql) may take before it is stopped",
    )
    threads: int | None = Field(
        None, ge=1, description="DuckDB threads of the engine session (default: all cores)"
    )
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


class DuckDBSource(_SourceSettings):
    """An embedded DuckDB file holding the profiles table (the demo database by default)."""

    type: Literal["duckdb"] = Field("duckdb", description="an embedded DuckDB database file")
    path: str = Field(
        ".reconcile/demo.duckdb", description="the DuckDB file, relative to the workspace"
    )
    demo: bool = Field(
        False, description="generate the deterministic demo customer database on first use"
    )
    demo_profiles: int = Field(50_000, ge=100, description="how many demo profiles to generate")
    writable: bool = Field(
        False,
        description="allow reconcile to write into the source: `append_to_profiles` keeps "
        "the table included_in_audience (profile_key, activation_id, activation_name, grp, "
        "since) in this database, and segment SQL may read it",
    )


class PostgresSource(_SourceSettings):
    """Profiles in PostgreSQL: segment SQL, consent conditions and freshness_sql run there in
    a read-only transaction (docs/sources.md)."""

    type: Literal["postgres"] = Field(description="a PostgreSQL database")
    dsn: str = Field(
        description="an ${env:VAR} reference to a libpq connection string or URI, e.g. "
        "postgresql://reader@db.internal/crm (a password only ever in the variable)"
    )
    schema_: str = Field(
        "public",
        alias="schema",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="the schema holding the profiles table (and the tables it may read)",
    )
    demo: bool = Field(
        False,
        description="fill the profiles table with the deterministic demo data when it is missing",
    )
    demo_profiles: int = Field(50_000, ge=100, description="how many demo profiles to generate")
    diff: Literal["postgres", "engine"] = Field(
        "postgres",
        description="where the membership diff runs: `postgres` (next to the data: the "
        "recorded members are read there, or sent there as keys and fingerprints, and only "
        "the changes travel) or `engine` (every profile's mapped columns are copied into "
        "the engine first)",
    )

    @field_validator("dsn")
    @classmethod
    def _dsn_reference(cls, value: str) -> str:
        if ENV_REF_RE.fullmatch(value):
            return value
        if re.search(r"password\s*=|://[^/@]*:[^/@]*@", value, re.IGNORECASE):
            raise ValueError(
                "the DSN carries a password: set it in an environment variable and write "
                "`dsn: ${env:VAR}`, never a literal secret"
            )
        return value


class LocalState(Strict):
    """The embedded state: a DuckDB file in the workspace (``local`` is its older name)."""

    backend: Literal["embedded", "local"] = Field(
        "embedded", description="an embedded DuckDB file (`local` is its older name)"
    )
    path: str = Field(
        ".reconcile/state.duckdb", description="the state file, relative to the workspace"
    )
    allow_ephemeral: bool = Field(
        False,
        description="let `apply` use this state file under CI (CI=true), where it does not "
        "outlive the runner unless the workflow keeps it (env "
        "RECONCILE_ALLOW_EPHEMERAL_STATE=true does the same)",
    )


class PostgresState(Strict):
    """The state in a PostgreSQL schema, shared by everyone who applies (docs/state.md)."""

    backend: Literal["postgres"] = Field(description="the state in a PostgreSQL schema")
    dsn: str = Field(description="an ${env:VAR} reference holding a libpq connection string")
    schema_name: str = Field(
        "reconcile",
        alias="schema",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="the PostgreSQL schema holding the state's tables (created if missing)",
    )
    lock_heartbeat: float = Field(
        10.0,
        gt=0,
        le=600,
        description="seconds between the lock holder's heartbeats; a lock whose heartbeat "
        "is 3 intervals old is reported stale",
    )

    @field_validator("dsn", mode="before")
    @classmethod
    def _dsn_reference(cls, value: Any) -> Any:
        return _env_reference(value, "`dsn`")


def _state_backend(value: Any) -> str:
    backend = value.get("backend") if isinstance(value, dict) else getattr(value, "backend", None)
    return "postgres" if backend == "postgres" else "embedded"


StateSettings = Annotated[
    Annotated[LocalState, Tag("embedded")] | Annotated[PostgresState, Tag("postgres")],
    Discriminator(_state_backend),
]


class Defaults(Strict):
    """Settings every activation gets unless it sets its own."""

    max_removal_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="the mass-removal guard: apply stops when a run would remove more than "
        "this share of an audience (unless --allow-mass-removal)",
    )
    max_rejected_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="share of the members sent that a destination may reject before the run "
        "counts as Failed (below it: Complete with a warning)",
    )
    frequency: Literal["daily", "once"] = Field(
        "daily", description="daily (auto-update) or once (a one-time send)"
    )
    action: Literal["maintain", "append", "remove"] = Field(
        "maintain", description="maintain (add and remove), append (only add) or remove"
    )


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

    host: str = Field(min_length=1, description="the mail server's host name")
    port: int | None = Field(
        None, ge=1, le=65535, description="default: 587 (starttls), 465 (tls), 25 (none)"
    )
    security: Literal["starttls", "tls", "none"] = Field(
        "starttls", description="starttls, tls, or none (only to a loopback host)"
    )
    username: str | None = Field(
        None,
        description="an ${env:VAR} reference",
        json_schema_extra={"pattern": rules.ENV_REF_PATTERN},
    )
    password: str | None = Field(
        None,
        description="an ${env:VAR} reference",
        json_schema_extra={"pattern": rules.ENV_REF_PATTERN},
    )
    from_address: str = Field(
        alias="from",
        description="the sender address",
        json_schema_extra={"pattern": EMAIL_PATTERN},
    )
    model_config = ConfigDict(json_schema_extra=rules.SMTP)

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

    smtp: SmtpSettings | None = Field(None, description="the mail server e-mail is sent through")
    webhook_secret: str | None = Field(
        None,
        description="${env:VAR} holding a Standard Webhooks secret (whsec_...)",
        json_schema_extra={"pattern": rules.ENV_REF_PATTERN},
    )
    templates: str | None = Field(
        None,
        description="workspace folder with overrides of the notification templates",
        json_schema_extra={"pattern": rules.RELATIVE_PATH_PATTERN},
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
    """``reconcile.yaml``: the source of profiles, the state, defaults, suppression and
    notifications of the workspace."""

    version: Literal[1] = Field(1, description="the format version of the workspace files")
    timezone: str = Field(
        "UTC",
        description="IANA time zone of `today`, `days_ago()` and the daily schedule",
        json_schema_extra=rules.known_timezones,
    )
    source: DuckDBSource | PostgresSource = Field(
        default_factory=DuckDBSource,
        discriminator="type",
        description="where profiles and segment membership come from",
    )
    state: StateSettings = Field(
        default_factory=LocalState,
        description="where the recorded state is kept: an embedded DuckDB file (default) or a "
        "PostgreSQL schema (`backend: postgres`)",
    )
    defaults: Defaults = Field(default_factory=Defaults, description="defaults of every activation")
    suppression: list[str] = Field(
        default_factory=list, description="segments excluded from every activation"
    )
    notifications: NotificationSettings | None = Field(
        None, description="how run notifications are delivered (mail server, webhook secret)"
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r} (use an IANA name)") from exc
        if value not in rules.timezones():  # an alias of the database, e.g. posix/...
            raise ValueError(f"unknown timezone {value!r} (use an IANA name)")
        return value


# --------------------------------------------------------------------------- integrations


class Integration(Strict):
    """A destination connection set up by an admin ("Manage > Integrations")."""

    type: str = Field(description="the destination type (an installed adapter)")
    description: str | None = Field(None, description="free text for people")
    consent: str | None = Field(
        None, description="SQL condition over the profiles table a member must satisfy"
    )
    attributes: dict[str, str] = Field(
        default_factory=dict, description="destination field -> profile attribute column"
    )
    credentials: dict[str, str] = Field(
        default_factory=dict,
        description="values are ${env:VAR} references",
        json_schema_extra=rules.env_ref_values,
    )
    endpoint: str | None = Field(
        None,
        description="replaces the vendor's base URL (a proxy or a test server); https, plain "
        "http only to a loopback host",
        json_schema_extra={"pattern": rules.URL_PATTERN},
    )
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
    """A segment: SQL over the source's profiles returning the profile keys of its members."""

    description: str | None = Field(None, description="free text for people")
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

    model_config = ConfigDict(json_schema_extra=rules.LIST_TARGET)

    create: bool | None = Field(None, description="true: create a new audience named `name`")
    existing: str | dict[Literal["A", "B"], str] | None = Field(
        None,
        description="an audience that exists at the destination, by id or name "
        "({A: .., B: ..} with `split: ab`)",
    )

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

    email: list[str] = Field(
        default_factory=list,
        description="e-mail addresses",
        json_schema_extra={"items": {"type": "string", "pattern": EMAIL_PATTERN}},
    )
    webhook: list[str] = Field(
        default_factory=list,
        description="https URLs (http only to loopback), or ${env:VAR} holding one",
        json_schema_extra={
            "items": {"type": "string", "pattern": f"{rules.ENV_REF_PATTERN}|{rules.URL_PATTERN}"}
        },
    )
    on: list[NotifyEvent] = Field(
        default_factory=lambda: list(NotifyEvent),
        description="default: every run",
        json_schema_extra={"minItems": 1},
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


#: an e-mail address, for the schema of ``notify: [a@x.com, ...]``
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
        None, description="audience name template; default '<date created> <segment names>'"
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
        default_factory=list, description="destination fields (from the integration mapping)"
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
