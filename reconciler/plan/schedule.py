"""The schedule: when a daily activation is due, and the source's last refresh.

A daily activation is due when it has no successful run since the later of local midnight
(workspace timezone) and the source's last refresh (``source.freshness_sql``, one timestamp),
so a warehouse that refreshes at 06:00 triggers a second run that day. Failed, Refused,
Pending and Disabled ones are due; a one-time activation is due until it ran.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import duckdb

from reconciler.errors import SegmentError
from reconciler.sources.engine_errors import safe_engine_error
from reconciler.sources.guard import SqlPolicy, SqlRejected, check_segment_sql
from reconciler.sources.limits import DEFAULT_QUERY_TIMEOUT, time_limit
from reconciler.state.store import RecordedActivation
from reconciler.workspace.templating import TemplateFailed, local_date, render_sql


def is_due(
    rec: RecordedActivation | None,
    frequency: str,
    as_of: datetime,
    timezone: str,
    last_refresh: datetime | None = None,
) -> bool:
    if rec is None:
        return True
    if frequency == "once" and rec.ran and rec.status in ("Failed", "Refused"):
        # a re-run (`reconcile run`) that failed or was refused: the schedule sends a
        # finished one-time activation only exclusions, and would record Complete over the
        # failure while the re-run's changes were never made; it waits for `run` again
        return False
    if rec.status in ("Failed", "Refused", "Pending", "Disabled", "New", "Running"):
        return True
    if frequency == "once":
        return not rec.ran
    tz = ZoneInfo(timezone)
    midnight = datetime.combine(local_date(as_of, timezone), time.min, tzinfo=tz)
    since = max(midnight, last_refresh) if last_refresh else midnight
    return rec.last_success_at is None or rec.last_success_at < since


def last_refresh(
    con: duckdb.DuckDBPyConnection,
    sql: str | None,
    *,
    as_of: datetime,
    timezone: str,
    dialect: str,
    where: str,
    policy: SqlPolicy | None = None,
    timeout: float = DEFAULT_QUERY_TIMEOUT,
    fetch: Callable[[str, str, str], list[tuple]] | None = None,
) -> datetime | None:
    """The source's last refresh from ``freshness_sql`` (untrusted: checked by the guard
    against ``policy`` — pass :func:`reconciler.sources.sql_policy` — and run under the
    time limit ``timeout``). A source that runs SQL itself (PostgreSQL) passes its
    ``fetch(sql, where, what)``."""
    if not sql:
        return None
    try:
        query = check_segment_sql(render_sql(sql, as_of, timezone), dialect, policy=policy)
    except (TemplateFailed, SqlRejected) as exc:
        raise SegmentError(f"{where}: freshness_sql: {exc}") from exc
    try:
        if fetch is not None:
            rows = fetch(query, where, "freshness_sql")
        else:
            with time_limit(con, timeout, where, "freshness_sql"):
                rows = con.execute(query).fetchall()
    except SegmentError:
        raise
    except duckdb.Error as exc:
        detail, _ = safe_engine_error(exc, query)
        raise SegmentError(f"{where}: freshness_sql failed: {detail}") from exc
    if len(rows) != 1 or len(rows[0]) != 1:
        raise SegmentError(f"{where}: freshness_sql must return one row with one timestamp")
    value = rows[0][0]
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, time.min, tzinfo=UTC)
    raise SegmentError(
        f"{where}: freshness_sql must return a timestamp, it returned {type(value).__name__}"
    )
