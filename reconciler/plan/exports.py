"""The export part of a plan (``goal: export_data``): where the files go, how many rows the
delta file gets, and whether ``export.full`` makes this apply write a full file too."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import cast

from destinations.base import Destination, FileExport, Identity
from reconciler.errors import ConfigError
from reconciler.plan.model import AudienceChange, Change, ExportChange
from reconciler.state import exports
from reconciler.state.store import StateReader
from reconciler.workspace.activation_spec import ExportSpec, ResolvedActivation
from reconciler.workspace.templating import local_date

#: days between full files under ``export.full: weekly``
WEEK = 7


def export_path(activation_id: str, act: ResolvedActivation) -> str:
    """The folder below the destination's location this activation writes to."""
    spec = act.export or ExportSpec()
    return (spec.path or activation_id).strip("/")


def export_columns(
    key: str, identity: Identity, identifiers: Iterable[str], attributes: Iterable[str]
) -> list[str]:
    """The columns of an export's delta file: ``change``, the profile key, one per encoding
    of an identifier the source has (``identifiers``), one per mapped attribute. Refuses two
    that differ only in case: DuckDB's names are case-insensitive, so the second became
    ``Change_1`` and took the first one's values (an attribute ``Change`` held the change)."""
    have = set(identifiers)
    names = ["change", key, *(e.field for e in identity.encodings if e.identifier in have)]
    taken = {n.lower(): n for n in names}
    for field in attributes:
        other = taken.get(field.lower())
        if other is not None:
            same = "named" if other == field else f"{other!r}, differing only in case, as"
            raise ConfigError(
                f"the export would have two columns {same} {field!r}; rename the destination "
                "field in the integration's attribute mapping"
            )
        taken[field.lower()] = field
    return [*names, *attributes]


def plan_export(
    reader: StateReader,
    dest: Destination,
    activation_id: str,
    baseline: str,
    act: ResolvedActivation,
    audiences: list[AudienceChange],
    *,
    as_of: datetime,
    timezone: str,
) -> ExportChange:
    spec = act.export or ExportSpec()
    aud = next((a for a in audiences if a.group == "all"), None)
    pending = exports.pending(reader, baseline)
    if spec.full == "daily":
        full = True
    elif spec.full == "weekly":
        last = exports.last_full_at(reader, baseline)
        full = (
            last is None or (local_date(as_of, timezone) - local_date(last, timezone)).days >= WEEK
        )
    else:
        full = False
    files = cast(FileExport, dest)
    location = files.export_location(export_path(activation_id, act))
    new_series = _new_series(exports.last_series(reader, baseline), location, files.export_format())
    return ExportChange(
        location=location,
        delta_rows=(aud.add + aud.remove + aud.update) if aud else 0,
        full=full or bool(pending and pending.full) or new_series is not None,
        full_rows=aud.size_after if aud else 0,
        full_policy=spec.full,
        resume=pending.stamp if pending else None,
        new_series=new_series,
        stale_files=_stale(pending, location, files.export_format()),
    )


def _stale(pending: exports.PendingExport | None, location: str, fmt: str) -> str | None:
    """Where the run that died may have published files this apply's files do not replace
    (same names, another folder or format): say so, they are not part of the series."""
    if pending is None or not pending.location:
        return None
    if (pending.location, pending.format) == (location, fmt):
        return None
    return f"{pending.location}*-{pending.stamp}-* ({pending.format})"


def _new_series(last: tuple[str, str] | None, location: str, fmt: str) -> str | None:
    """Why the files now start a new series (the last export went elsewhere, or in another
    format), or None. Whoever reads the new place holds none of the earlier files: it gets a
    full file of the audience with its first delta, whatever ``export.full`` says."""
    if last is None:
        return None
    before, before_format = last
    if before != location:
        return f"the export moved from {before}"
    if before_format != fmt:
        return f"the export's format changed from {before_format} to {fmt}"
    return None


def export_changes(
    export: ExportChange,
    change: Change,
    due: bool,
    paused: bool,
    notes: list[str],
    warnings: list[str],
) -> tuple[Change, bool]:
    """What the files of an export make of the activation's ``change`` and ``due``, with the
    notes and warnings the plan shows: a new series is written at once (like an edit), an
    interrupted export is written again, and a due export writes its delta even when empty."""
    if export.new_series and not paused:
        change = Change.UPDATE if change is Change.NOOP else change
        due = True
        notes.append(f"{export.new_series}: a full file is written with the delta")
    if export.resume:
        change = Change.UPDATE if change is Change.NOOP else change
        notes.append(f"an interrupted export ({export.resume}) is written again")
        if export.stale_files:
            warnings.append(
                "the interrupted export was written elsewhere or in another format: files it "
                f"may have published ({export.stale_files}) are not replaced and belong to no "
                "recorded export; delete them"
            )
    elif change is Change.NOOP and due:  # its delta file is written even if empty
        change = Change.UPDATE
        notes.append("the export is due: its delta file is written (0 rows)")
    return change, due
