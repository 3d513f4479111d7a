"""Apply for ``goal: export_data``: the staged member changes of one audience written as
files by a destination that takes bulk exports (:class:`~destinations.base.FileExport`).

1. The export table (staging): each staged change (``add`` / ``remove`` / ``update``) with
   the profile's identifiers encoded by the destination's rules, its mapped attributes, its
   record and fingerprint — one ``CREATE TABLE ... AS SELECT``.
2. An intent is journaled (``reconciler.state.exports``) with the file stamp; a stamp left by
   a run that died is reused, so the rerun writes the same file names once more.
3. The destination writes the delta file (``change`` = entered / left / changed) and, when
   the plan says a full file is due, the full audience, each with DuckDB ``COPY`` from these
   queries: no row passes through Python.
4. One transaction records the exported members, closes the intent and counts the run.

A crash before step 4 leaves the state as it was: the next plan shows the same changes and
the next apply writes the same files again (under the same names) and records them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from destinations.base import Destination, ExportedFile, ExportRequest, FileExport
from destinations.identity.sql import records_sql, value_sql
from reconciler.apply.batches import CHANGES
from reconciler.apply.calls import new_batch_id
from reconciler.apply.encode import admitted_sql
from reconciler.enginedb import STAGING
from reconciler.plan.exports import export_columns
from reconciler.plan.membership import _ident, _lit
from reconciler.plan.model import ExportChange
from reconciler.state import exports
from reconciler.state.writer import StateStore
from reconciler.workspace.spec import ProfilesTable

EXPORT = f"{STAGING}.export"
CHANGE_NAMES = {"add": "entered", "remove": "left", "update": "changed"}


def stamp_of(as_of: datetime, seq: int) -> str:
    """A file stamp: the plan's ``as_of`` in UTC and the export's number for its activation,
    ``20261129T065500Z-00003`` (two applies within one second still name different files;
    a gap in the numbers tells a reader a file is missing)."""
    return f"{as_of.astimezone(UTC):%Y%m%dT%H%M%SZ}-{seq:05d}"


@dataclass
class ExportResult:
    added: int = 0
    removed: int = 0
    updated: int = 0
    files: list[ExportedFile] = field(default_factory=list)
    drift: int = 0  # planned entries or changes not written: gone, or no longer admitted

    def as_dict(self) -> dict[str, Any]:
        return {
            "add": self.added,
            "remove": self.removed,
            "update": self.updated,
            "drift": self.drift,
            "files": [f.url for f in self.files],
        }


class ExportRunner:
    def __init__(
        self,
        state: StateStore,
        dest: Destination,
        profiles: ProfilesTable,
        *,
        run_id: str,
        activation_id: str,
        fingerprint: str,
        attribute_map: dict[str, str],
        call: Callable[[Callable[[], ExportedFile]], ExportedFile],
        consent: str = "TRUE",
        suppressed: str | None = None,
    ):
        self.state, self.profiles, self.call = state, profiles, call
        #: checked again when the rows are written (as for member sends, a saved plan may
        #: be applied after a profile withdrew its consent or was suppressed)
        self.consent, self.suppressed = consent, suppressed
        self.dest = cast(FileExport, dest)
        self.identity = dest.identity
        self.run_id, self.aid = run_id, activation_id
        self.fingerprint, self.attribute_map = fingerprint, attribute_map
        self.con = state.con

    def run(self, grp: str, plan: ExportChange, path: str, as_of: datetime) -> ExportResult:
        values, attrs = self._columns()
        self._build(grp, values, attrs)
        counts = dict(
            self.con.execute(
                f"SELECT op, count(*) FROM {EXPORT} WHERE present OR op = 'remove' GROUP BY op"
            ).fetchall()
        )
        (dropped,) = self.con.execute(
            f"SELECT count(*) FROM {EXPORT} WHERE NOT present AND op IN ('add', 'update')"
        ).fetchall()[0]
        resumed = exports.pending(self.state, self.aid)
        if resumed is not None:
            batch_id, stamp, full = resumed.batch_id, resumed.stamp, resumed.full or plan.full
        else:
            seq = exports.recorded_count(self.state, self.aid) + 1
            batch_id, stamp, full = new_batch_id(), stamp_of(as_of, seq), plan.full
            exports.begin(
                self.state,
                batch_id,
                self.run_id,
                self.aid,
                grp,
                stamp=stamp,
                full=full,
                rows=sum(counts.values()),
                location=plan.location,
                fmt=self.dest.export_format(),
            )
        key = _ident(self.profiles.key)
        names = (self.profiles.key, *(n for n, _ in values), *(n for n, _ in attrs))
        out = ExportResult(counts.get("add", 0), counts.get("remove", 0), counts.get("update", 0))
        out.drift = int(dropped)
        request = ExportRequest(self.aid, path, "delta", stamp, as_of, ("change", *names))
        delta = f"""SELECT CASE op WHEN 'add' THEN 'entered' WHEN 'remove' THEN 'left'
                        ELSE 'changed' END AS change, {self._out(key, values, attrs)}
                    FROM {EXPORT} WHERE present OR op = 'remove' ORDER BY change, key"""
        delta = self._leavers_as_recorded(delta, grp, values, attrs)
        out.files.append(self.call(lambda: self.dest.write_export(self.con, delta, request)))
        if full:
            full_request = ExportRequest(self.aid, path, "full", stamp, as_of, names)
            query = self._full_query(grp, key, values, attrs)
            out.files.append(
                self.call(lambda: self.dest.write_export(self.con, query, full_request))
            )
        detail = {
            "stamp": stamp,
            "full": full,
            # where and how this series of files goes: the next plan starts a new one (with
            # a full file) when either changes (reconciler.plan.exports)
            "location": plan.location,
            "format": self.dest.export_format(),
            "files": [f.url for f in out.files],
            "rows": [f.rows for f in out.files],
            "sha256": [f.sha256 for f in out.files],
        }
        self.state.record_export(
            EXPORT,
            batch_id,
            self.aid,
            grp,
            run_id=self.run_id,
            detail=json.dumps(detail, sort_keys=True),
            counts={"added": out.added, "removed": out.removed, "updated": out.updated},
        )
        return out

    # ------------------------------------------------------------------ SQL
    def _columns(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(column name, SQL over ``p``) of the identifier values and mapped attributes."""
        columns = {t: f"p.{_ident(c)}" for t, c in self.profiles.identifiers.items()}
        country = self.profiles.default_phone_country
        values = [
            (e.field, value_sql(e, columns[e.identifier], country))
            for e in self.identity.encodings
            if e.identifier in columns
        ]
        attrs = [(f, f"p.{_ident(col)}") for f, col in self.attribute_map.items()]
        export_columns(self.profiles.key, self.identity, columns, self.attribute_map)
        return values, attrs

    def _build(self, grp: str, values: list, attrs: list) -> None:
        """The export table: every staged change, with what is written and recorded."""
        key = f"CAST(p.{_ident(self.profiles.key)} AS VARCHAR)"
        columns = {t: f"p.{_ident(c)}" for t, c in self.profiles.identifiers.items()}
        rec = records_sql(
            self.identity.accepted,
            self.identity.rules,
            columns,
            self.profiles.default_phone_country,
        )
        cols = [f"{sql} AS v{i}" for i, (_, sql) in enumerate(values)]
        cols += [f"{sql} AS a{i}" for i, (_, sql) in enumerate(attrs)]
        extra = ", " + ", ".join(cols) if cols else ""
        self.con.execute(
            f"""CREATE OR REPLACE TABLE {EXPORT} AS
            WITH c AS (SELECT key, op FROM {CHANGES} WHERE activation_id = $aid AND grp = $grp
                       AND op IN ('add', 'remove', 'update')),
                 p AS (SELECT p.* FROM {_ident(self.profiles.table)} p SEMI JOIN c
                       ON c.key = {key} QUALIFY count(*) OVER (PARTITION BY {key}) = 1)
            SELECT c.key, c.op, {key} IS NOT NULL{self._admitted()} AS present, {rec} AS rec,
                   {self.fingerprint} AS fp{extra}
            FROM c LEFT JOIN p ON {key} = c.key""",
            {"aid": self.aid, "grp": grp},
        )

    def _leavers_as_recorded(self, delta: str, grp: str, values: list, attrs: list) -> str:
        """The delta with each ``left`` row holding only what was exported for the profile
        before: its key and the hashes recorded for it; no raw value and no attribute. A
        profile may leave because it withdrew its consent or was suppressed: its current
        values are not written again (with ``pii: raw``, not at all)."""
        members = f"{self.state.c}.members"
        cols = ["d.change", f"d.{_ident(self.profiles.key)}"]
        for name, _ in values:
            recorded = self._recorded_value(name)
            cols.append(f"CASE WHEN d.change = 'left' THEN {recorded} ELSE d.{_ident(name)} END")
        cols += [f"CASE WHEN d.change = 'left' THEN NULL ELSE d.{_ident(n)} END" for n, _ in attrs]
        names = [self.profiles.key, *(n for n, _ in values), *(n for n, _ in attrs)]
        shown = ["d.change AS change"] + [
            f"{c} AS {_ident(n)}" for c, n in zip(cols[1:], names, strict=True)
        ]
        return f"""SELECT {", ".join(shown)} FROM ({delta}) d
            LEFT JOIN {members} m ON m.activation_id = {_lit(self.aid)} AND m.grp = {_lit(grp)}
             AND m.key = d.{_ident(self.profiles.key)} AND d.change = 'left'
            ORDER BY 1, 2"""

    def _admitted(self) -> str:
        """`` AND ...``: an entering or changed profile is written only if it still passes
        the consent condition and is not in a suppression segment (as for member sends)."""
        admitted = admitted_sql(self.consent, self.suppressed)
        return f" AND {admitted}" if admitted else ""

    @staticmethod
    def _out(key: str, values: list, attrs: list) -> str:
        cols = [f"key AS {key}"]
        cols += [f"v{i} AS {_ident(name)}" for i, (name, _) in enumerate(values)]
        cols += [f"a{i} AS {_ident(name)}" for i, (name, _) in enumerate(attrs)]
        return ", ".join(cols)

    def _full_query(self, grp: str, key: str, values: list, attrs: list) -> str:
        """The audience after this export, as exported: the entering and changed members as
        the delta writes them; the others with their current values where those are what
        was exported (their fingerprint is the one recorded); else — the activation is
        paused, a saved plan left out a change (its profile withdrew its consent), or the
        key is on several profile rows — with only their key and the hashes recorded for
        them, like a leaver: never values that were not exported."""
        pkey = f"CAST(p.{_ident(self.profiles.key)} AS VARCHAR)"
        members = f"{self.state.c}.members"
        current = [f"{pkey} AS {key}"]
        current += [f"{sql} AS {_ident(name)}" for name, sql in values]
        current += [f"{sql} AS {_ident(name)}" for name, sql in attrs]
        recorded = [f"m.key AS {key}"]
        recorded += [f"{self._recorded_value(name)} AS {_ident(name)}" for name, _ in values]
        recorded += [f"NULL AS {_ident(name)}" for name, _ in attrs]
        return f"""WITH m AS (
                SELECT m.key, m.record, m.fp FROM {members} m ANTI JOIN {EXPORT} e
                    ON e.key = m.key
                WHERE m.activation_id = {_lit(self.aid)} AND m.grp = {_lit(grp)}),
            p AS (SELECT p.* FROM {_ident(self.profiles.table)} p SEMI JOIN m ON m.key = {pkey}
                  QUALIFY count(*) OVER (PARTITION BY {pkey}) = 1),
            same AS (SELECT {", ".join(current)} FROM m JOIN p ON {pkey} = m.key
                     WHERE m.fp = {self.fingerprint})
            SELECT * FROM same
            UNION ALL
            SELECT {", ".join(recorded)} FROM m ANTI JOIN same ON same.{key} = m.key
            UNION ALL
            SELECT {self._out(key, values, attrs)} FROM {EXPORT}
            WHERE present AND op IN ('add', 'update')
            ORDER BY 1"""

    def _recorded_value(self, name: str) -> str:
        """What the state recorded for field ``name`` of a member ``m``: the hash, for a
        hashed field ('<prefix>:<hash>' in ``m.record``); nothing for a raw one."""
        from destinations.identity.rules import Hash

        hashed = {e.field: e.prefix for e in self.identity.encodings if e.hash is Hash.SHA256}
        if name not in hashed:
            return "NULL"
        head = _lit(hashed[name] + ":")
        return (
            f"substr(list_filter(m.record, lambda r: starts_with(r, {head}))[1], "
            f"{len(hashed[name]) + 2})"
        )
