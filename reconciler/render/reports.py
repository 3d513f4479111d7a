"""Rows for `status`, `log` (runs and rejected members) and `segments`: plain dicts any front
end can render."""

from __future__ import annotations

from typing import Any

from reconciler.plan.held import identifier_shaped
from reconciler.plan.planner import plan_as_of
from reconciler.state.store import StateReader
from reconciler.workspace.loader import Workspace


def activation_rows(ws: Workspace, state: StateReader) -> list[dict[str, Any]]:
    recorded = state.activations()
    last = state.last_runs()
    ids = sorted(set(ws.activations) | set(recorded))
    rows = []
    for aid in ids:
        act = ws.activations.get(aid)
        rec = recorded.get(aid)
        frequency: str
        if act is not None:
            resolved = act.resolved(ws.config.defaults)
            frequency, paused, destination = (
                resolved.frequency,
                resolved.paused,
                resolved.destination,
            )
        else:
            assert rec is not None  # ids are those of the workspace or of the state
            frequency, paused, destination = rec.frequency, rec.paused, rec.destination
        status = rec.status if rec else "New"
        if status == "Running":  # a run that was killed: waiting for the next apply
            status = "Pending"
        run = last.get(aid)
        rows.append(
            {
                "id": aid,
                "tab": "Active" if frequency == "daily" and not paused else "Inactive",
                "status": status,
                "frequency": frequency,
                "paused": paused,
                "destination": destination,
                "in_workspace": act is not None,
                "last_run": run.started_at.isoformat(timespec="seconds") if run else None,
                "added": run.added if run else 0,
                "removed": run.removed if run else 0,
                "updated": run.updated if run else 0,
                "error": rec.error if rec else None,
            }
        )
    return rows


def log_rows(state: StateReader, activation_id: str, limit: int) -> list[dict[str, Any]]:
    return [
        {
            "run_id": r.run_id,
            "started_at": r.started_at.isoformat(timespec="seconds"),
            "finished_at": r.finished_at.isoformat(timespec="seconds") if r.finished_at else None,
            "trigger": r.trigger,
            "status": "Pending" if r.status == "Running" else r.status,
            "added": r.added,
            "removed": r.removed,
            "updated": r.updated,
            "failed": r.failed,
            "audiences": r.audiences,
            "error": r.error,
        }
        for r in state.runs(activation_id, limit)
    ]


def rejection_rows(state: StateReader, activation_id: str, limit: int) -> list[dict[str, Any]]:
    """The members a destination rejected, newest first: run, audience group, profile key,
    operation, the hashed record kept for the member (never a raw identifier) and the
    destination's reason. A state written before rejections were kept has none."""
    rows = state.rejections(activation_id, limit)
    return [
        {
            "run_id": r[0],
            "group": r[1],
            "key": r[2],
            "op": r[3],
            "record": list(r[4] or []),
            "reason": r[5],
            "rejected_at": r[6].isoformat(timespec="seconds") if r[6] else None,
        }
        for r in rows
    ]


def segment_rows(
    ws: Workspace, name: str | None, limit: int, show_pii: bool
) -> list[dict[str, Any]]:
    """Sizes and a preview of each segment (``limit`` keys; none for 0). Without
    ``show_pii`` the preview shows only values that are profile keys — of the key column's
    type, present in the profiles table and not shaped like an e-mail address or phone
    number; otherwise ``note`` says why it is hidden (segment SQL is untrusted: it could
    return e-mail addresses as "keys")."""
    from reconciler.enginedb import Session, new_staging_path, remove_staging
    from reconciler.errors import ConfigError
    from reconciler.plan.membership import _ident
    from reconciler.plan.segments import SegmentRunner
    from reconciler.sources import open_source
    from reconciler.workspace.templating import local_date

    if name is not None and name not in ws.segments:
        raise ConfigError(
            f"unknown segment {name!r}; known: {', '.join(sorted(ws.segments)) or 'none'}"
        )
    names = [name] if name else sorted(ws.segments)
    as_of = plan_as_of()
    source = open_source(ws)
    source.prepare(local_date(as_of, ws.config.timezone))
    staging = new_staging_path(ws)
    p = ws.config.source.profiles
    email = p.identifiers.get("email")
    key = f"CAST(p.{_ident(p.key)} AS VARCHAR)"
    rows = []
    try:
        with Session(ws, source, write_state=False, staging_path=staging, lock_down=True) as s:
            runner = SegmentRunner(ws, s.con, as_of, source.dialect, source)
            key_type = str(
                s.con.execute(f"DESCRIBE SELECT {_ident(p.key)} FROM {_ident(p.table)}").fetchall()[
                    0
                ][1]
            )
            for n in names:
                res = runner.run(n)
                note = None
                if limit == 0:  # sizes only: no preview asked for
                    preview = []
                elif show_pii and email:
                    preview = [
                        f"{k}  {e or ''}"
                        for k, e in s.con.execute(
                            f"SELECT t.k, p.{_ident(email)} FROM {res.table} t LEFT JOIN "
                            f"{_ident(p.table)} p ON {key} = t.k ORDER BY t.k LIMIT ?",
                            [limit],
                        ).fetchall()
                    ]
                elif res.column_type != key_type and not (
                    # PostgreSQL's segment keys arrive as text, whatever the key's type
                    source.dialect == "postgres" and res.column_type == "VARCHAR"
                ):
                    preview = []
                    note = (
                        f"preview hidden: the segment returns a {res.column_type} column, not "
                        f"the {key_type} of the profiles key {p.key!r}; --show-pii shows it"
                    )
                else:
                    preview = [
                        r[0]
                        for r in s.con.execute(
                            f"SELECT t.k FROM {res.table} t SEMI JOIN {_ident(p.table)} p "
                            f"ON {key} = t.k ORDER BY t.k LIMIT ?",
                            [limit],
                        ).fetchall()
                    ]
                    if any(identifier_shaped(k, key_type) for k in preview):
                        preview = []
                        note = (
                            "preview hidden: the keys look like e-mail addresses or phone "
                            "numbers; --show-pii shows them"
                        )
                    elif res.size and not preview:
                        note = "preview hidden: the values returned are not profile keys"
                rows.append(
                    {
                        "name": n,
                        "size": res.size,
                        "preview": preview,
                        "note": note,
                        "file": ws.file_of("segments", n),
                    }
                )
    finally:
        remove_staging(staging)
    return rows
