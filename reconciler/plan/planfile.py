"""Saved plans (``plan --out FILE``): a zip holding ``plan.json`` (the Plan value),
``changes.parquet`` (the staged member changes: activation, group, op, key — no identifiers,
no secrets) and ``manifest.json`` (formats and the SHA-256 of the other two, checked on load).

The Parquet file is written and read by DuckDB and streamed into the zip from disk, so a
10M-member plan never sits in Python memory.

Plan files are CI artifacts, so a plan file is untrusted input: nothing in it is ever used as
a path (the Parquet file is extracted to a temporary file of our own), members are size-checked
before they are read, its strings get the rules of the workspace's own names and its counts
must be the member changes it carries (:mod:`reconciler.plan.planfile_checks`), and every way a
file can be corrupt, truncated, foreign or edited is one :class:`PlanError` naming the file.
``--out`` replaces nothing but a plan file (:func:`check_out`). See ``docs/plan-files.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
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
from reconciler.plan.planfile_checks import check_counts, check_plan, check_text

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
OPS = ("add", "remove", "update", "purge", "forget")
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
    """Write ``plan`` and its member changes to ``out`` (a new path or a plan file, which is
    replaced: :func:`check_out`), by way of a new file of our own beside it."""
    check_out(out)
    parquet = _temp_file(tmp_dir)
    try:
        _write_changes(staging_db, parquet, [a.id for a in plan.activations])
        plan_bytes = json.dumps(plan.to_json(), indent=2).encode()
        manifest = {
            "plan_file_format": PLAN_FILE_FORMAT,
            "format_version": plan.format_version,
            "plan_id": plan.plan_id,
            "plan_sha256": hashlib.sha256(plan_bytes).hexdigest(),
            "changes_sha256": _sha256(parquet),
        }
        # a name no one else has (O_EXCL: never an existing file, nor a link's target)
        partial = out.with_name(f".{out.name[:100]}.{secrets.token_hex(6)}.partial")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(partial, flags, 0o666)
        except OSError as exc:
            raise _cannot_write(out, exc) from exc
        try:
            with (
                os.fdopen(fd, "wb") as f,
                zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf,
            ):
                zf.writestr(MANIFEST, json.dumps(manifest, indent=2))
                zf.writestr(PLAN_JSON, plan_bytes)
                zf.write(parquet, CHANGES, compress_type=zipfile.ZIP_STORED)
            check_out(out)  # still nothing but a plan file there
            partial.replace(out)
        except BaseException as exc:
            partial.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise _cannot_write(out, exc) from exc
            raise
    finally:
        parquet.unlink(missing_ok=True)


def check_out(out: Path) -> None:
    """Refuse to replace anything at ``out`` but a plan file: ``plan --out reconcile.yaml``
    must not overwrite the workspace's configuration, nor ``--out /dev/full`` a device."""
    try:
        mode = out.lstat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing there (a missing folder is reported when the plan is written)
    except OSError as exc:
        raise _cannot_write(out, exc) from exc
    keep = "not replacing it; pass --out a new path, or an older plan file to overwrite"
    if not stat.S_ISREG(mode):
        raise PlanError(f"{out} is not a regular file ({_kind(mode)}): {keep}")
    if not is_plan_file(out):
        raise PlanError(f"{out} exists and is not a plan file: {keep}")


def is_plan_file(path: Path) -> bool:
    """Whether ``path`` looks like a plan file as `show` recognises one (of any format
    version): a zip of exactly its three members, whose manifest names a plan file format."""
    try:
        with zipfile.ZipFile(path) as zf:
            if sorted(zf.namelist()) != sorted(MAX_MEMBER_BYTES):
                return False
            if zf.getinfo(MANIFEST).file_size > MAX_MEMBER_BYTES[MANIFEST]:
                return False
            manifest = json.loads(_read_bounded(zf, MANIFEST))
    except (OSError, RecursionError, *_ZIP_ERRORS):  # ValueError covers bad JSON
        return False
    return isinstance(manifest, dict) and "plan_file_format" in manifest


def _cannot_write(out: Path, exc: OSError) -> PlanError:
    return PlanError(f"cannot write the plan to {out}: {exc.strerror or exc}")


def _kind(mode: int) -> str:
    kinds = [
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((what for test, what in kinds if test(mode)), "an unknown kind of file")


def _write_changes(staging_db: Path, parquet: Path, ids: list[str]) -> None:
    """The staged changes of the plan's activations (``plan --due`` stages those of the
    activations it then leaves out, too)."""
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
            f"COPY (SELECT * FROM {source} WHERE list_contains(?, activation_id) "
            f"ORDER BY activation_id, grp, op, key) "
            f"TO '{_q(parquet)}' (FORMAT parquet, COMPRESSION zstd)",
            [ids],
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
        # deflate never makes data much larger: a member whose compressed data is longer
        # than what it declares holds more than it says (a bomb behind a small size)
        if info.compress_size > info.file_size + info.file_size // 100 + 1024:
            raise _corrupt(path, f"its {info.filename} holds more data than its zip entry says")
    if zf.getinfo(CHANGES).compress_type != zipfile.ZIP_STORED:
        # stored as is, it can never expand beyond the plan file's own size (no zip bomb)
        raise _not_a_plan(path, "its changes.parquet is compressed inside the zip")
    manifest = _json(path, MANIFEST, _read_bounded(zf, MANIFEST))
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
    plan_bytes = _read_bounded(zf, PLAN_JSON)
    if hashlib.sha256(plan_bytes).hexdigest() != manifest["plan_sha256"]:
        raise _corrupt(path, "plan.json does not match the checksum in the manifest (edited?)")
    return manifest, plan_bytes


def _read_bounded(zf: zipfile.ZipFile, name: str) -> bytes:
    """A member's bytes, decompressed 1 MiB at a time (``ZipFile.read`` inflates all the
    compressed data at once, however little of it the entry declares) and never more than
    its size-checked entry declares."""
    info = zf.getinfo(name)
    out, left = bytearray(), info.file_size
    with zf.open(info) as src:
        while left > 0 and (block := src.read(min(1 << 20, left))):
            out += block
            left -= len(block)
    return bytes(out)


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
    for why in (check_text(doc), check_plan(plan)):
        if why:
            raise _corrupt(path, why)
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
        # a row repeated would be counted twice by `show` and sent once by `apply`
        (repeated,) = con.execute(
            "SELECT count(*) FROM (SELECT 1 FROM incoming GROUP BY activation_id, grp, op, key "
            "HAVING count(*) > 1)"
        ).fetchall()[0]
        if repeated:
            raise _corrupt(path, f"changes.parquet repeats {repeated:,} member change(s)")
        counted = con.execute(
            "SELECT activation_id, grp, op, count(*) FROM incoming GROUP BY ALL"
        ).fetchall()
        if why := check_counts(plan, counted):
            raise _corrupt(path, why)
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
