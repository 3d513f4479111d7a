"""The ``files`` destination: audiences exported as CSV or Parquet files (``goal:
export_data``) to a local folder or an fsspec URL.

It implements :class:`~destinations.base.FileExport`: the engine builds each file's rows as a
DuckDB query (a delta — entered / left / changed — or the full audience) and this adapter
writes it with ``COPY`` to a temporary file, publishes it under its final name all at once
(:mod:`destinations.files.storage`), then writes its manifest beside it: rows, SHA-256,
``as_of``, activation. Member calls of the send protocol are not used: an export has no
audience at the destination to add to or remove from.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, cast

import duckdb
import httpx

from destinations.base import (
    AudienceRef,
    CallContext,
    Capabilities,
    DestinationConfig,
    DestinationContext,
    ExportedFile,
    ExportRequest,
    Identity,
    JobStatus,
    Limits,
    MemberBatch,
    Outcome,
    RemovalBatch,
)
from destinations.files.config import FilesConfig, FilesCredentials, url_scheme
from destinations.files.storage import DEADLINE_SECONDS, FsspecStore, Store, open_store
from destinations.identity import HASHED, RAW
from destinations.redaction import Credentials
from destinations.retry import RetryPolicy
from reconciler import errors

__all__ = ["FilesDestination"]

MANIFEST_SUFFIX = ".manifest.json"


#: botocore settings of an S3 store unless ``storage_options.config_kwargs`` sets them: one
#: attempt per request, bounded; the destination's retry policy retries within its budget.
#: Left to botocore (up to 5 attempts) inside s3fs (5 more each), a store that accepts
#: connections and never answers held one export past 15 minutes
S3_CLIENT_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 10,
    "read_timeout": 60,
    "retries": {"total_max_attempts": 1, "mode": "standard"},
}


def _deadline(options: dict[str, Any]) -> float:
    """The longest one request may take (beyond a second per MB): an S3 store's connect
    timeout and twice its read timeout, else :data:`DEADLINE_SECONDS`."""
    timeouts = options.get("config_kwargs") or {}
    try:
        return float(timeouts["connect_timeout"]) + 2 * float(timeouts["read_timeout"])
    except (KeyError, TypeError, ValueError):
        return DEADLINE_SECONDS


class FilesDestination:
    """A :class:`~destinations.base.Destination` with ``capabilities.export``."""

    type_name: ClassVar[str] = "files"
    config_model: ClassVar[type[DestinationConfig]] = FilesConfig
    credentials_model: ClassVar[type[Credentials]] = FilesCredentials
    capabilities = Capabilities(
        remove=True,
        update=True,
        rename=True,
        attributes=True,
        create=True,
        refresh=False,
        export=True,
    )
    limits = Limits(members_per_call=100_000)
    retry_policy = RetryPolicy(
        budget_minutes=2.0, max_failures=4, backoff_start=0.2, backoff_max=2.0
    )

    def __init__(
        self,
        config: DestinationConfig,
        credentials: Credentials,
        context: DestinationContext,
        client: httpx.Client | None = None,
    ) -> None:
        """No I/O: the store is opened on the first export."""
        self.config = config = FilesConfig.model_validate(config.model_dump())
        self.credentials = credentials
        self.context = context
        accepted = tuple(config.identifiers)
        context.check_phone_country(accepted)
        self.identity = Identity(RAW if config.pii == "raw" else HASHED, accepted)
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            options = self._options()
            self._store = open_store(
                self.config.location, self.context.root, options, _deadline(options)
            )
            if url_scheme(self.config.location) in ("s3", "s3a"):
                # and once by s3fs (its own loop makes 5 by default): the retry policy above
                # retries within its budget
                cast(FsspecStore, self._store).fs.retries = 1
        return self._store

    def _options(self) -> dict:
        """fsspec options: the configured ones, the integration's ``endpoint`` (an S3-compatible
        server) and the credentials, for S3 URLs."""
        options = dict(self.config.storage_options)
        if url_scheme(self.config.location) in ("s3", "s3a"):
            # each request bounded and attempted once by botocore (see S3_CLIENT_DEFAULTS)
            config_kwargs = dict(options.get("config_kwargs") or {})
            for name, value in S3_CLIENT_DEFAULTS.items():  # copies: botocore edits them
                config_kwargs.setdefault(name, copy.deepcopy(value))
            options["config_kwargs"] = config_kwargs
            if self.context.endpoint:
                kwargs = dict(options.get("client_kwargs") or {})
                kwargs["endpoint_url"] = self.context.endpoint
                options["client_kwargs"] = kwargs
            for ours, theirs in (
                ("access_key_id", "key"),
                ("secret_access_key", "secret"),
                ("token", "token"),
            ):
                secret = getattr(self.credentials, ours, None)
                if secret is not None:
                    options[theirs] = secret.get_secret_value()
        return options

    # -- export ----------------------------------------------------------------------------------
    def export_location(self, path: str) -> str:
        location = self.config.location.rstrip("/")
        return f"{location}/{path.strip('/')}/"

    def export_format(self) -> str:
        return self.config.format

    def write_export(
        self, con: duckdb.DuckDBPyConnection, query: str, request: ExportRequest
    ) -> ExportedFile:
        ext = "csv" if self.config.format == "csv" else "parquet"
        rel = (
            f"{request.path.rstrip('/')}/{request.activation}-{request.stamp}-{request.kind}.{ext}"
        )
        store = self.store
        scratch = store.scratch(rel)
        options = "FORMAT csv, HEADER true" if ext == "csv" else "FORMAT parquet"
        if ext == "csv" and self.config.escape_formulas:
            # the profile key (after `change` in a delta) is what downstream joins on: as is
            key = request.columns[1] if request.kind == "delta" else request.columns[0]
            query = _formulas_escaped(con, query, keep=(key,))
        if ext == "parquet":
            query = _exact_wide_integers(con, query)
        try:
            rows = con.execute(f"COPY ({query}) TO '{_q(str(scratch))}' ({options})").fetchall()
            checksum = _sha256(scratch)
            self._knob("copied")
            store.publish(scratch, rel)
        except BaseException as exc:
            scratch.unlink(missing_ok=True)
            if isinstance(exc, duckdb.Error):
                raise errors.TerminalError(f"writing {store.url(rel)} failed: {exc}") from exc
            raise
        self._knob("published")
        count = int(rows[0][0])
        manifest = {
            "activation": request.activation,
            "kind": request.kind,
            "file": rel.rsplit("/", 1)[-1],
            "format": ext,
            "rows": count,
            "sha256": checksum,
            "as_of": request.as_of.astimezone(UTC).isoformat(),
            "written_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "columns": list(request.columns),
            "pii": self.config.pii,
        }
        store.put_text(rel + MANIFEST_SUFFIX, json.dumps(manifest, indent=2) + "\n")
        return ExportedFile(store.url(rel), count, checksum, store.url(rel + MANIFEST_SUFFIX))

    def _knob(self, point: str) -> None:
        """The ``exit_at`` failure knob: the process dies at this point of an export."""
        if self.config.exit_at == point:
            os._exit(137)

    # -- audiences: an export's folder ----------------------------------------------------------
    def list_audiences(self) -> list[AudienceRef]:
        return [AudienceRef(f, f) for f in self.store.folders()]

    def find_audience(self, id_or_name: str) -> AudienceRef | None:
        return None  # exports go to their own folder; there is no audience to take over

    def read_audience(self, audience: AudienceRef) -> AudienceRef | None:
        return audience

    def find_created_audience(self, name: str, *, idempotency_key: str) -> AudienceRef | None:
        return None

    def create_audience(self, name: str, *, idempotency_key: str) -> AudienceRef:
        return AudienceRef(name, name)

    def rename_audience(self, audience: AudienceRef, name: str) -> AudienceRef:
        return AudienceRef(audience.id, name)  # a label in the state only

    # -- member calls: not used by exports --------------------------------------------------------
    def add(self, audience: AudienceRef, batch: MemberBatch, call: CallContext) -> Outcome:
        raise errors.TerminalError("the files destination takes exports (goal: export_data)")

    update = add

    def remove(self, audience: AudienceRef, batch: RemovalBatch, call: CallContext) -> Outcome:
        raise errors.TerminalError("the files destination takes exports (goal: export_data)")

    def poll(self, job: str) -> JobStatus:
        raise errors.TerminalError("the files destination submits no asynchronous jobs")

    def close(self) -> None:
        self._store = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _q(text: str) -> str:
    return text.replace("'", "''")


def _per_column(
    con: duckdb.DuckDBPyConnection, query: str, cell: Callable[[str, str, str], str | None]
) -> str:
    """``query`` with each column rewritten by ``cell(quoted name, name, TYPE)`` (None: as
    it is); ``query`` itself when no column is."""
    cells, changed = [], False
    for name, kind, *_ in con.execute(f"DESCRIBE ({query})").fetchall():
        col = '"' + str(name).replace('"', '""') + '"'
        expr = cell(col, str(name), str(kind).upper())
        changed = changed or expr is not None
        cells.append(f"{expr} AS {col}" if expr is not None else col)
    return f"SELECT {', '.join(cells)} FROM ({query}) __export" if changed else query


def _exact_wide_integers(con: duckdb.DuckDBPyConnection, query: str) -> str:
    """``query`` with its 128-bit integer columns (``HUGEINT``, ``UHUGEINT``) as text: Parquet
    has no such type and DuckDB writes them as DOUBLE, rounding 9007199254740993 to
    9007199254740992; as text every digit stays (as the CSV writes them)."""
    wide = {"HUGEINT", "UHUGEINT"}
    return _per_column(
        con, query, lambda col, _, kind: f"CAST({col} AS VARCHAR)" if kind in wide else None
    )


def _formulas_escaped(
    con: duckdb.DuckDBPyConnection, query: str, keep: tuple[str, ...] = ()
) -> str:
    """``query`` with each text cell that a spreadsheet would run as a formula (starting with
    ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) prefixed with ``'``; the columns
    ``keep``, those that are not text (numbers, dates) and text that is a plain number (an
    exact PostgreSQL ``numeric`` arrives as text: ``-5`` computes nothing) as they are."""

    def escaped(col: str, name: str, kind: str) -> str | None:
        # an ENUM or a BLOB is written as its text too (a DuckDB tier ENUM carried a live
        # `=HYPERLINK(...)` into the file)
        if not (kind == "VARCHAR" or kind == "BLOB" or kind.startswith("ENUM(")) or name in keep:
            return None
        if kind != "VARCHAR":
            col = f"CAST({col} AS VARCHAR)"
        risky = (
            r"regexp_matches("
            + col
            + r", '^[=+\-@\t\r]') AND NOT regexp_matches("
            + col
            + r", '^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$')"
        )
        return f"CASE WHEN {risky} THEN '''' || {col} ELSE {col} END"

    return _per_column(con, query, escaped)
