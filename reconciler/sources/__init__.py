"""Sources of profiles and segment membership."""

from __future__ import annotations

from reconciler.errors import ConfigError
from reconciler.sources.base import Source
from reconciler.workspace.spec import DuckDBSource


def open_source(ws) -> Source:
    spec = ws.config.source
    if isinstance(spec, DuckDBSource):
        from reconciler.sources.duckdb_source import DuckDBFileSource

        return DuckDBFileSource(spec, ws.root, ws.config_location)
    raise ConfigError(f"source type {spec.type!r} is not supported yet")
