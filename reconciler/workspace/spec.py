"""Pydantic models of the workspace files. Unknown fields are errors everywhere.

``reconcile.yaml`` -> :class:`WorkspaceConfig`; ``integrations/*.yaml`` -> :class:`Integration`;
``segments/*.yaml`` -> :class:`Segment`; ``activations/*.yaml`` ->
:class:`~reconciler.workspace.activation_spec.Activation` (its own module, as are the
notification models in ``notify_spec`` and the shared basics in ``spec_base``).
Cross-file rules (unknown segment, unknown integration, ...) live in ``loader.py``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    Tag,
    field_validator,
)

from reconciler.workspace import schema_rules as rules
from reconciler.workspace.notify_spec import NotificationSettings
from reconciler.workspace.spec_base import (
    ENV_REF_RE,
    IDENTIFIER_TYPES,
    FieldError,
    Strict,
    env_reference,
    listed_once,
)

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

    @field_validator("default_phone_country")
    @classmethod
    def _known_phone_country(cls, value: str) -> str:
        """A country the phone rules know (checked here, so `validate` names this line; the
        phone column may be left out, but a country no phone can be read in is a mistake)."""
        from destinations.identity.phones import country_rules

        country_rules(value)  # ValueError naming the known countries
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
        le=86_400,  # a day; beyond what a thread can wait, the watchdog died: no limit at all
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
            first, last = name.split(".")[0].lower(), name.split(".")[-1].lower()
            if (
                first in _CATALOG_SCHEMAS
                or first.startswith("pg_")
                or last.startswith(("duckdb_", "pragma_", "sqlite_", "pg_"))
            ):
                raise FieldError(
                    f"{name!r} is a table of the database's own catalog (users, roles, "
                    "settings, other tables); segment SQL may read only your data's tables",
                    i,
                )
            if first.startswith("__reconcile"):  # the engine's own (state, staging): never
                raise FieldError(
                    f"{name!r} is one of reconcile's own tables (its state and staging), which "
                    "segment SQL never reads",
                    i,
                )
        return value

    @field_validator("memory_limit", "max_temp_directory_size")
    @classmethod
    def _a_size(cls, value: str | None) -> str | None:
        if value is not None and not _SIZE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a size; write a number and a unit, e.g. 1GB, 512MB, 2GiB "
                "(or a share of the machine's memory, e.g. 50%)"
            )
        return value


#: schemas of the engines' own catalogs (PostgreSQL's pg_catalog, pg_toast, ...; the SQL
#: standard's information_schema; DuckDB's system catalog)
_CATALOG_SCHEMAS = {"information_schema", "system", "temp"}
_SIZE = re.compile(r"\s*[0-9]+(\.[0-9]+)?\s*(%|[KMGT]i?B|[KMGT]|B|bytes)\s*", re.IGNORECASE)


class DuckDBSource(_SourceSettings):
    """An embedded DuckDB file holding the profiles table (the demo database by default)."""

    type: Literal["duckdb"] = Field("duckdb", description="an embedded DuckDB database file")
    path: str = Field(
        ".reconcile/demo.duckdb", description="the DuckDB file, relative to the workspace"
    )
    demo: bool = Field(
        False, description="generate the deterministic demo customer database on first use"
    )
    demo_profiles: int = Field(
        50_000, ge=100, le=10_000_000, description="how many demo profiles to generate"
    )
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
    demo_profiles: int = Field(
        50_000, ge=100, le=10_000_000, description="how many demo profiles to generate"
    )
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
        if not _local_dsn(value):
            # libpq would answer that host with the job's PGPASSWORD or ~/.pgpass: a pull
            # request changing a literal host would collect it
            raise ValueError(
                "a literal DSN may only name this machine (localhost, 127.0.0.1, a socket "
                "folder); write `dsn: ${env:VAR}` and keep the server's address in the "
                "variable, which a workspace file cannot change"
            )
        return value


def _local_dsn(dsn: str) -> bool:
    """Whether every host a libpq DSN names is this machine (none: the default socket)."""
    import ipaddress

    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - refused as not local; libpq says why on connect
        return False
    hosts = [
        h.strip()
        for key in ("host", "hostaddr")
        for h in str(params.get(key) or "").split(",")
        if h.strip()
    ]
    for host in hosts:
        if host.startswith("/") or host.lower() == "localhost":
            continue
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass
        return False
    return True


class LocalState(Strict):
    """The embedded state: a DuckDB file in the workspace (``local`` is its older name)."""

    backend: Literal["embedded", "local"] = Field(
        "embedded", description="an embedded DuckDB file (`local` is its older name)"
    )
    path: str = Field(
        ".reconcile/state.duckdb",
        description="the state file, relative to the workspace",
        json_schema_extra={"pattern": r"^(?!~)(?!.*\$\{)(.*[^/\\])?$"},
    )
    allow_ephemeral: bool = Field(
        False,
        description="let `apply` use this state file under CI (CI=true), where it does not "
        "outlive the runner unless the workflow keeps it (env "
        "RECONCILE_ALLOW_EPHEMERAL_STATE=true does the same)",
    )

    @field_validator("path")
    @classmethod
    def _a_plain_path(cls, value: str) -> str:
        # neither is expanded: a folder named "~" (or "${env:X}") appeared in the workspace
        if value.startswith("~") or "${" in value:
            raise ValueError(
                f"{value!r}: `~` and `${{env:...}}` are not expanded in a path; write it "
                "relative to the workspace, or absolute"
            )
        if value.strip() and value.endswith(("/", "\\")):  # empty: said by the file checks
            raise ValueError(f"{value!r} names no file; write the state file's path")
        return value


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
        return env_reference(value, "`dsn`")


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
    action: Literal["maintain", "append"] = Field(
        "maintain",
        description="maintain (add and remove) or append (only add); `action: remove` is "
        "set on an activation itself (it needs that activation's `list: {existing: ...}`)",
    )


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
        default_factory=list,
        description="segments excluded from every activation",
        json_schema_extra={"uniqueItems": True},
    )
    notifications: NotificationSettings | None = Field(
        None, description="how run notifications are delivered (mail server, webhook secret)"
    )

    @field_validator("suppression")
    @classmethod
    def _unique_suppression(cls, value: list[str]) -> list[str]:
        return listed_once(value, "segment(s)")

    @field_validator("timezone", mode="before")
    @classmethod
    def _a_zone_name(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            # YAML 1.1 reads an unquoted +10:00 as 600 (base 60)
            raise ValueError(
                f"a number ({value}) is not a time zone; write an IANA name such as "
                "Australia/Sydney (an offset like +10:00 would not follow daylight saving)"
            )
        return value

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
    def env_references_only(cls, value: dict[str, str]) -> dict[str, str]:
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
