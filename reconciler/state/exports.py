"""What the state remembers of file exports (``goal: export_data``).

An export is journaled like a destination call: an intent (op ``export``) before its files
are written, whose detail holds the file stamp and whether a full file is due; then, in one
transaction, the members it exported (keys and fingerprints, as for every destination), the
intent closed with the files written, and the run's counts. An intent left open by a run that
died is *resumed* by the next export of that activation: it writes the same file names again
(replacing what the dead run may have published), so a crash never yields a second delta."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.state.store import StateReader
from reconciler.state.writer import StateStore

OP = "export"


@dataclass(frozen=True)
class PendingExport:
    batch_id: str
    stamp: str
    full: bool


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
    return PendingExport(row[0], str(detail.get("stamp", "")), bool(detail.get("full")))


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
) -> None:
    store.journal_intent(
        batch_id, run_id, activation_id, grp, OP, rows, json.dumps({"stamp": stamp, "full": full})
    )


def record(
    store: StateStore,
    table: str,
    batch_id: str,
    activation_id: str,
    grp: str,
    *,
    run_id: str,
    detail: Mapping[str, Any],
    counts: Mapping[str, int],
) -> None:
    """Record an export whose files are published, from the engine's export ``table``
    (``key, op, present, rec, fp``): leavers and changed members' old rows go, entering and
    changed members (still in the source) are recorded; the intent closes with ``detail``."""
    c = store.c
    with store.transaction():
        store.con.execute(
            f"""DELETE FROM {c}.members WHERE activation_id = $aid AND grp = $grp AND key IN
                (SELECT key FROM {table} WHERE op = 'remove' OR (present AND op = 'update'))""",
            {"aid": activation_id, "grp": grp},
        )
        store.con.execute(
            f"""INSERT INTO {c}.members SELECT $aid, $grp, key, rec, fp FROM {table}
                WHERE present AND op IN ('add', 'update')""",
            {"aid": activation_id, "grp": grp},
        )
        store.con.execute(
            f"""UPDATE {c}.journal SET status = 'done', detail = ?, finished_at = ?
                WHERE batch_id = ? AND status = 'intent'""",
            [json.dumps(dict(detail), sort_keys=True), datetime.now(UTC), batch_id],
        )
        if run_id and any(counts.values()):
            store._add_run_counts(run_id, counts)


def _detail(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
