"""Sources of profiles and segment membership, and the containment of untrusted SQL:
:mod:`~reconciler.sources.guard` (what it may read and call), :mod:`~.limits` (time) and
:mod:`~.engine_errors` (error messages without data)."""

from __future__ import annotations

from reconciler.errors import ConfigError
from reconciler.sources.base import Source
from reconciler.sources.guard import SqlPolicy
from reconciler.workspace.spec import DuckDBSource, PostgresSource


def open_source(ws, *, write: bool = False) -> Source:
    """The workspace's source; ``write`` (apply) attaches a ``writable: true`` source
    read-write, for the write-back of ``append_to_profiles``."""
    spec = ws.config.source
    if isinstance(spec, DuckDBSource):
        from reconciler.sources.duckdb_source import DuckDBFileSource

        return DuckDBFileSource(spec, ws.root, ws.config_location, write=write)
    if isinstance(spec, PostgresSource):
        from reconciler.sources.postgres_source import PostgresProfilesSource

        consents = {
            name: (integ.consent, str(ws.location("integrations", name, "consent")))
            for name, integ in ws.integrations.items()
            if integ.consent
        }
        mapped = {c for integ in ws.integrations.values() for c in integ.attributes.values()}
        return PostgresProfilesSource(
            spec, ws.root, ws.config_location, consents, mapped, timezone=ws.config.timezone
        )
    raise ConfigError(f"source type {spec.type!r} is not supported yet")


def sql_policy(source_spec) -> SqlPolicy:
    """What untrusted SQL may read in this workspace: the profiles table and the tables
    listed under ``source.tables``, in the source's catalog; with ``source.writable`` also
    the write-back table ``included_in_audience``."""
    from reconciler.sources.duckdb_source import SOURCE_CATALOG
    from reconciler.workspace.goal_rules import WRITEBACK_TABLE

    if isinstance(source_spec, PostgresSource):  # the SQL runs in the source's schema
        return SqlPolicy(
            profiles_table=source_spec.profiles.table,
            tables=tuple(source_spec.tables),
            catalog="",
            schema=source_spec.schema_,
        )
    tables = tuple(getattr(source_spec, "tables", ()) or ())
    if getattr(source_spec, "writable", False) and WRITEBACK_TABLE not in tables:
        tables += (WRITEBACK_TABLE,)
    return SqlPolicy(
        profiles_table=source_spec.profiles.table,
        tables=tables,
        catalog=SOURCE_CATALOG,
    )
