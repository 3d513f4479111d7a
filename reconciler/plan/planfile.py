"""Saved plans (``plan --out FILE``): a zip holding ``plan.json`` (the Plan value),
``changes.parquet`` (the staged member changes: activation, group, op, key — no identifiers,
no secrets) and ``manifest.json`` (formats and the SHA-256 of the other two, checked on load).

The Parquet file is written and read by DuckDB and streamed into the zip from disk, so a
10M-member plan never sits in Python memory.

Plan files are CI artifacts, so a plan file is untrusted input: nothing in it is ever used as
a path (the Parquet file is extracted to a temporary file of our own), members are size-checked
before they are read, and every way a file can be corrupt, truncated, foreign or edited is one
:class:`PlanError` naming the file. See ``docs/plan-files.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import duckdb
from pydantic import ValidationError

from reconciler.errors import PlanError
from reconciler.plan.model import FORMAT_VERSION, Plan

PLAN_FILE_FORMAT = 2
MANIFEST, PLAN_JSON, CHANGES = "manifest.json", "plan.json", "changes.parquet"
#: the largest member sizes read (bytes, uncompressed); anything bigger is refused unread
MAX_MEMBER_BYTES = {MANIFEST: 64 << 10, PLAN_JSON: 64 << 20, CHANGES: 16 << 30}
CHANGE_COLUMNS = [
    ("activation_id", "VARCHAR"),
    ("grp", "VARCHAR"),
    ("op", "VARCHAR"),
    ("key", "VARCHAR"),
]
OPS = ("add", "remove", "update", "forget")
#: what reading a damaged zip can raise, besides BadZipFile
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    zlib.error,
    struct.error,
)


def save(plan: Plan, staging_db: Path, out: Path, tmp_dir: Path) -> None:
    parquet = _temp_file(tmp_dir)
    try:
        _write_changes(staging_db, parquet)
        plan_bytes = json.dumps(plan.to_json(), indent=2).encode()
        manifest = {
            "plan_file_format": PLAN_FILE_FORMAT,
            "format_version": plan.format_version,
            "plan_id": plan.plan_id,
            "plan_sha256": hashlib.sha256(plan_bytes).hexdigest(),
            "changes_sha256": _sha256(parquet),
        }
        partial = out.with_name(out.name + ".partial")
        try:
            with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(MANIFEST, json.dumps(manifest, indent=2))
                zf.writestr(PLAN_JSON, plan_bytes)
                zf.write(parquet, CHANGES, compress_type=zipfile.ZIP_STORED)
            partial.replace(out)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise PlanError(f"cannot write the plan to {out}: {exc.strerror or exc}") from exc
    finally:
        parquet.unlink(missing_ok=True)


def _write_changes(staging_db: Path, parquet: Path) -> None:
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{_q(staging_db)}' AS stg (READ_ONLY)")
        has = con.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_catalog = 'stg' AND table_name = 'changes'"
        ).fetchall()[0][0]
        columns = ", ".join(f"NULL::{t} {c}" for c, t in CHANGE_COLUMNS)
        source = "stg.changes" if has else f"(SELECT {columns} WHERE FALSE)"
        con.execute(
            f"COPY (SELECT * FROM {source} ORDER BY activation_id, grp, op, key) "
            f"TO '{_q(parquet)}' (FORMAT parquet, COMPRESSION zstd)"
        )
    finally:
        con.close()


def load(path: Path, staging_db: Path, tmp_dir: Path) -> Plan:
    """Read a saved plan and load its member changes into a new staging database."""
    if not path.exists():
        raise PlanError(f"no plan file {path}")
    if not path.is_file():
        raise PlanError(f"{path} is not a file; pass the plan file written by `plan --out`")
    parquet = _temp_file(tmp_dir)
    try:
        try:
            with zipfile.ZipFile(path) as zf:
                manifest, plan_bytes = _read_json_members(path, zf)
                _extract_changes(path, zf, manifest, parquet)
        except OSError as exc:
            raise PlanError(f"cannot read plan file {path}: {exc.strerror or exc}") from exc
        except _ZIP_ERRORS as exc:
            raise _not_a_plan(path, f"it is not a readable zip ({_reason(exc)})") from exc
        plan = _plan(path, manifest, plan_bytes)
        _load_changes(path, plan, parquet, staging_db)
        return plan
    finally:
        parquet.unlink(missing_ok=True)


def _read_json_members(path: Path, zf: zipfile.ZipFile) -> tuple[dict[str, Any], bytes]:
    names = [i.filename for i in zf.infolist()]
    if sorted(names) != sorted(MAX_MEMBER_BYTES):
        raise _not_a_plan(path, f"it holds {', '.join(sorted(names)) or 'nothing'}")
    for info in zf.infolist():
        if info.file_size > MAX_MEMBER_BYTES[info.filename]:
            raise PlanError(
                f"{path} is not a usable plan file: its {info.filename} is larger than "
                f"{MAX_MEMBER_BYTES[info.filename]:,} bytes"
            )
    if zf.getinfo(CHANGES).compress_type != zipfile.ZIP_STORED:
        # stored as is, it can never expand beyond the plan file's own size (no zip bomb)
        raise _not_a_plan(path, "its changes.parquet is compressed inside the zip")
    manifest = _json(path, MANIFEST, zf.read(MANIFEST))
    if not isinstance(manifest, dict):
        raise _corrupt(path, "its manifest is not a JSON object")
    formats = (manifest.get("plan_file_format"), manifest.get("format_version"))
    if formats != (PLAN_FILE_FORMAT, FORMAT_VERSION):
        raise PlanError(
            f"{path} was written by another version of reconcile (plan file format "
            f"{_shown(formats[0])}, plan format {_shown(formats[1])}; this version reads "
            f"{PLAN_FILE_FORMAT} and {FORMAT_VERSION}); make the plan again"
        )
    for field in ("plan_sha256", "changes_sha256", "plan_id"):
        if not isinstance(manifest.get(field), str):
            raise _corrupt(path, f"its manifest has no {field}")
    plan_bytes = zf.read(PLAN_JSON)
    if hashlib.sha256(plan_bytes).hexdigest() != manifest["plan_sha256"]:
        raise _corrupt(path, "plan.json does not match the checksum in the manifest (edited?)")
    return manifest, plan_bytes


def _extract_changes(path: Path, zf: zipfile.ZipFile, manifest: dict, parquet: Path) -> None:
    """Copy the Parquet member to our own temp file, hashing as it goes; never more bytes
    than its (already size-checked) header says."""
    info = zf.getinfo(CHANGES)
    h, left = hashlib.sha256(), info.file_size
    with zf.open(info) as src, parquet.open("wb") as dst:
        while block := src.read(min(1 << 20, left + 1)):
            left -= len(block)
            if left < 0:
                raise _corrupt(path, "changes.parquet is longer than its zip entry says")
            h.update(block)
            dst.write(block)
    if h.hexdigest() != manifest["changes_sha256"]:
        raise _corrupt(path, "its member changes do not match the manifest")


def _plan(path: Path, manifest: dict, plan_bytes: bytes) -> Plan:
    doc = _json(path, PLAN_JSON, plan_bytes)
    if not isinstance(doc, dict):
        raise _corrupt(path, "plan.json is not a JSON object")
    if doc.get("format_version") != FORMAT_VERSION:
        raise PlanError(
            f"{path} was written by another version of reconcile (plan format "
            f"{_shown(doc.get('format_version'))}); make the plan again"
        )
    try:
        plan = Plan.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "the top level"
        raise _corrupt(path, f"plan.json is not a valid plan ({where}: {first['msg']})") from exc
    if plan.plan_id != manifest["plan_id"]:
        raise _corrupt(path, "plan.json and the manifest name different plans")
    return plan


def _load_changes(path: Path, plan: Plan, parquet: Path, staging_db: Path) -> None:
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{_q(staging_db)}' AS stg")
        try:
            con.execute(f"CREATE TEMP VIEW incoming AS SELECT * FROM read_parquet('{_q(parquet)}')")
            columns = [(r[0], r[1]) for r in con.execute("DESCRIBE incoming").fetchall()]
        except duckdb.Error as exc:
            raise _corrupt(path, "changes.parquet is not a readable Parquet file") from exc
        if columns != CHANGE_COLUMNS:
            shown = ", ".join(f"{c} {t}" for c, t in columns)
            raise _corrupt(path, f"changes.parquet has the columns ({shown})")
        ids = [a.id for a in plan.activations]
        bad = con.execute(
            "SELECT count(*) FROM incoming WHERE key IS NULL OR grp IS NULL "
            "OR op IS NULL OR NOT list_contains(?, op) "
            "OR activation_id IS NULL OR NOT list_contains(?, activation_id)",
            [list(OPS), ids],
        ).fetchall()[0][0]
        if bad:
            raise _corrupt(path, f"changes.parquet has {bad:,} rows that match no planned change")
        con.execute("CREATE TABLE stg.changes AS SELECT * FROM incoming")
    except duckdb.Error as exc:
        raise _corrupt(path, "changes.parquet could not be read") from exc
    finally:
        con.close()


def _json(path: Path, member: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _corrupt(path, f"its {member} is not valid JSON") from exc


def _not_a_plan(path: Path, why: str) -> PlanError:
    return PlanError(f"{path} is not a plan file written by `reconcile plan --out`: {why}")


def _corrupt(path: Path, why: str) -> PlanError:
    return PlanError(f"{path} is corrupt: {why}; make the plan again")


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:120] or type(exc).__name__


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, int | str | None) and len(repr(value)) < 40 else "?"


def _temp_file(tmp_dir: Path) -> Path:
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="plan-", suffix=".parquet", dir=tmp_dir)
    os.close(fd)
    return Path(name)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _q(path: Path) -> str:
    return str(path).replace("'", "''")
