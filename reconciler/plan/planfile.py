"""Saved plans (``plan --out FILE``): a zip holding ``plan.json`` (the Plan value),
``changes.parquet`` (the staged member changes: activation, group, op, key — no identifiers,
no secrets) and ``manifest.json`` (format and the Parquet file's SHA-256, checked on load).

The Parquet file is written and read by DuckDB and streamed into the zip from disk, so a
10M-member plan never sits in Python memory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import duckdb

from reconciler.errors import PlanError
from reconciler.plan.model import FORMAT_VERSION, Plan

PLAN_FILE_FORMAT = 1


def save(plan: Plan, staging_db: Path, out: Path, tmp_dir: Path) -> None:
    parquet = tmp_dir / f"{plan.plan_id}.parquet"
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{_q(staging_db)}' AS stg (READ_ONLY)")
        has = con.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_catalog = 'stg' AND table_name = 'changes'"
        ).fetchone()[0]
        source = (
            "stg.changes"
            if has
            else (
                "(SELECT NULL::VARCHAR activation_id, NULL::VARCHAR grp, NULL::VARCHAR op, "
                "NULL::VARCHAR key WHERE FALSE)"
            )
        )
        con.execute(
            f"COPY (SELECT * FROM {source} ORDER BY activation_id, grp, op, key) "
            f"TO '{_q(parquet)}' (FORMAT parquet, COMPRESSION zstd)"
        )
    finally:
        con.close()
    manifest = {
        "plan_file_format": PLAN_FILE_FORMAT,
        "format_version": plan.format_version,
        "plan_id": plan.plan_id,
        "changes_sha256": _sha256(parquet),
    }
    partial = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, indent=2))
        zf.writestr("plan.json", json.dumps(plan.to_json(), indent=2))
        zf.write(parquet, "changes.parquet", compress_type=zipfile.ZIP_STORED)
    partial.replace(out)
    parquet.unlink()


def load(path: Path, staging_db: Path, tmp_dir: Path) -> Plan:
    """Read a saved plan and load its member changes into a new staging database."""
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError as exc:
        raise PlanError(f"no plan file {path}") from exc
    except zipfile.BadZipFile as exc:
        raise PlanError(f"{path} is not a plan file written by `reconcile plan --out`") from exc
    with zf:
        try:
            manifest = json.loads(zf.read("manifest.json"))
            plan_doc = json.loads(zf.read("plan.json"))
        except (KeyError, ValueError) as exc:
            raise PlanError(f"{path} is not a complete plan file: {exc}") from exc
        if (
            manifest.get("plan_file_format") != PLAN_FILE_FORMAT
            or plan_doc.get("format_version") != FORMAT_VERSION
        ):
            raise PlanError(
                f"{path} was written by another version of reconcile (plan format "
                f"{plan_doc.get('format_version')}); make the plan again"
            )
        parquet = tmp_dir / f"{manifest['plan_id']}.parquet"
        with zf.open("changes.parquet") as src, parquet.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    try:
        if _sha256(parquet) != manifest.get("changes_sha256"):
            raise PlanError(f"{path} is corrupt: its member changes do not match the manifest")
        plan = Plan.model_validate(plan_doc)
        con = duckdb.connect()
        try:
            con.execute(f"ATTACH '{_q(staging_db)}' AS stg")
            con.execute(f"CREATE TABLE stg.changes AS SELECT * FROM read_parquet('{_q(parquet)}')")
        finally:
            con.close()
        return plan
    finally:
        parquet.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _q(path: Path) -> str:
    return str(path).replace("'", "''")
