"""What the state remembers of file exports (``goal: export_data``).

An export is journaled like a destination call: an intent (op ``export``) before its files
are written, whose detail holds the file stamp and whether a full file is due; then, in one
transaction, the members it exported (keys and fingerprints, as for every destination), the
intent closed with the files written, and the run's counts. An intent left open by a run that
died is *resumed* by the next export of that activation: it writes the same file names again
(replacing what the dead run may have published), so a crash never yields a second delta."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.state.store import StateReader
from reconciler.state.writer import StateStore

OP = "export"


@dataclass(frozen=True)
class PendingExport:
    batch_id: str
    stamp: str
    full: bool
    location: str = ""  # where and how the run that died was writing ("": not recorded)
    format: str = ""


def pending(reader: StateReader, activation_id: str) -> PendingExport | None:
    """The export a run that died left unrecorded, if any (the newest)."""
    row = reader.con.execute(
        f"""SELECT batch_id, detail FROM {reader.c}.journal WHERE status = 'intent'
            AND op = '{OP}' AND activation_id = ? ORDER BY started_at DESC LIMIT 1""",
        [activation_id],
    ).fetchone()
    if row is None:
        return None
    detail = _detail(row[1])
    return PendingExport(
        row[0],
        str(detail.get("stamp", "")),
        bool(detail.get("full")),
        str(detail.get("location") or ""),
        str(detail.get("format") or ""),
    )


def recorded_count(reader: StateReader, activation_id: str) -> int:
    """How many exports of this activation were recorded (numbers its files)."""
    return reader.con.execute(
        f"""SELECT count(*) FROM {reader.c}.journal WHERE status = 'done' AND op = '{OP}'
            AND activation_id = ?""",
        [activation_id],
    ).fetchall()[0][0]


def last_full_at(reader: StateReader, activation_id: str) -> datetime | None:
    """When the last full file of this activation was recorded."""
    rows = reader.con.execute(
        f"""SELECT finished_at, detail FROM {reader.c}.journal WHERE status = 'done'
            AND op = '{OP}' AND activation_id = ? ORDER BY finished_at DESC""",
        [activation_id],
    ).fetchall()
    for finished, detail in rows:
        if _detail(detail).get("full"):
            return finished
    return None


def last_series(reader: StateReader, activation_id: str) -> tuple[str, str] | None:
    """Where the newest recorded export of this activation went and in which format
    (``location``, ``format``); None: no export recorded where, or none at all (exports
    recorded before the state kept it count as none: nothing to compare with)."""
    row = reader.con.execute(
        f"""SELECT detail FROM {reader.c}.journal WHERE status = 'done' AND op = '{OP}'
            AND activation_id = ? ORDER BY finished_at DESC LIMIT 1""",
        [activation_id],
    ).fetchone()
    detail = _detail(row[0]) if row else {}
    location, fmt = detail.get("location"), detail.get("format")
    if not isinstance(location, str) or not isinstance(fmt, str):
        return None
    return location, fmt


def begin(
    store: StateStore,
    batch_id: str,
    run_id: str,
    activation_id: str,
    grp: str,
    *,
    stamp: str,
    full: bool,
    rows: int,
    location: str = "",
    fmt: str = "",
) -> None:
    detail = {"stamp": stamp, "full": full, "location": location, "format": fmt}
    store.journal_intent(batch_id, run_id, activation_id, grp, OP, rows, json.dumps(detail))


def _detail(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
