"""An activation's desired members and held keys computed inside a PostgreSQL source
(:mod:`reconciler.sources.pg_pushdown`), in place of
:func:`reconciler.plan.membership.stage_desired`; the engine then stages the changes of the
moving keys with the same SQL as always."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg.conninfo import conninfo_to_dict

from reconciler.plan import membership
from reconciler.plan.segments import SegmentResult
from reconciler.plan.terms import identifier_columns
from reconciler.sources.pg_pushdown import Pushdown
from reconciler.sources.pg_twins import (
    bucket_digest_pg,
    fingerprint_digest_pg,
    group_label_pg,
    matchable_pg,
    signed,
    text_equal,
)
from reconciler.state.store import StateReader
from reconciler.workspace.activation_spec import Goal, ResolvedActivation, SplitMode
from reconciler.workspace.spec import ProfilesTable


@dataclass(frozen=True)
class Staged:
    counts: dict[str, int]
    duplicates: str | None  # the engine's table of held keys
    sample: list[str]  # a few held keys, for the message
    recorded: str  # the engine's relation of the moving keys' recorded rows
    suppressed: str | None  # the engine's table of the moving keys that are suppressed
    shipped: int = 0  # rows copied into the engine for it
    in_state: bool = False  # the recorded members were read in PostgreSQL itself


TABLES = {
    "desired": membership.DESIRED,
    **{t: f"{membership.TEMP}_pd_{t}" for t in ("recorded", "suppressed", "duplicates", "moving")},
}


def can_stage(
    pushdown: Pushdown | None,
    act: ResolvedActivation,
    profiles: ProfilesTable,
    identifier_types: Sequence[str],
    attribute_columns: Sequence[str],
) -> bool:
    """Whether this activation's diff runs in PostgreSQL: a pushdown session, not
    ``sync_attributes`` (its per-attribute hashes live in the engine), and every column of
    its fingerprint written alike by both databases."""
    if pushdown is None or act.goal is Goal.SYNC_ATTRIBUTES:
        return False
    columns = [c for _, c in identifier_columns(profiles, identifier_types)]
    return all(text_equal(pushdown.columns[c]) for c in (*columns, *attribute_columns))


def stage(
    pushdown: Pushdown,
    state: StateReader,
    *,
    act: ResolvedActivation,
    baseline: str,
    seed: str,
    segments: Sequence[SegmentResult],
    suppression: Sequence[SegmentResult],
    consent: str,
    identifier_types: Sequence[str],
    attribute_columns: Sequence[str],
    gone: Sequence[str],
    frozen: bool,
    where: str,
) -> Staged:
    profiles = pushdown.source.profiles
    id_cols = identifier_columns(profiles, identifier_types)
    in_pg = recorded_in_source(pushdown, state, baseline)
    before = pushdown.shipped_rows
    membership.drop_desired(pushdown.con)  # the engine's own may be a view
    counts, sample, n_held = pushdown.stage(
        segments=[s.remote for s in segments if s.remote is not None],
        suppression=[s.remote for s in suppression if s.remote is not None],
        key_count=segments[0].size if len(segments) == 1 and not segments[0].repeated else None,
        consent=consent,
        bucket_digest=None if act.split is SplitMode.NONE else bucket_digest_pg(seed, "u.k"),
        group_label=lambda bucket: group_label_pg(act.split.value, act.control_percent, bucket),
        fingerprint_digest=fingerprint_digest_pg(
            id_cols, attribute_columns, profiles.default_phone_country
        ),
        matchable=matchable_pg(id_cols),
        recorded=in_pg,
        recorded_local=None if in_pg else state.members_sql(baseline),
        gone=gone,
        mode="frozen" if frozen else act.action.value,
        tables=TABLES,
        where=where,
    )
    return Staged(
        counts=counts,
        duplicates=TABLES["duplicates"] if n_held else None,
        sample=sample,
        recorded=TABLES["recorded"],
        suppressed=TABLES["suppressed"] if suppression else None,
        shipped=pushdown.shipped_rows - before,
        in_state=in_pg is not None,
    )


def recorded_in_source(pushdown: Pushdown, state: StateReader, activation_id: str) -> str | None:
    """The recorded members as a relation PostgreSQL can read in the source's own
    connection — when the state lives in the same database and the source's role may read
    it — else None (the engine sends keys, groups and fingerprints there)."""
    db = getattr(state, "db", None)
    if db is None or not same_database(pushdown.source.dsn, db.dsn):
        return None
    table = f'"{db.schema}".members'
    try:
        row = pushdown.cursor().execute(  # no error (it would end the transaction)
            "SELECT coalesce(has_table_privilege(to_regclass(%s), 'SELECT'), false)", [table]
        )
        allowed = row.fetchone()
    except psycopg.Error:
        return None
    if not allowed or not allowed[0]:
        return None
    lit = "'" + activation_id.replace("'", "''") + "'"
    return f"(SELECT key, grp, {signed('fp')} AS fp FROM {table} WHERE activation_id = {lit})"


def same_database(a: str, b: str) -> bool:
    """Whether two DSNs name the same database on the same server."""
    try:
        x, y = conninfo_to_dict(a), conninfo_to_dict(b)
    except psycopg.ProgrammingError:
        return False

    def where(d: dict) -> tuple[str, str, str]:
        host = str(d.get("host") or d.get("hostaddr") or "")
        if host in ("localhost", "127.0.0.1", "::1"):
            host = "loopback"
        return host, str(d.get("port") or "5432"), str(d.get("dbname") or d.get("user") or "")

    return where(x) == where(y)
