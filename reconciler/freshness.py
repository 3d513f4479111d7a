"""The source's last refresh, for "due": ``source.freshness_sql`` returns one timestamp.

A daily activation is due when it has no successful run since the later of local midnight
and this time, so a warehouse that refreshes at 06:00 triggers a second run that day."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

import duckdb

from reconciler.errors import SegmentError
from reconciler.sources.base import SqlRejected, check_segment_sql
from reconciler.templating import TemplateFailed, render_sql


def last_refresh(
    con: duckdb.DuckDBPyConnection,
    sql: str | None,
    *,
    as_of: datetime,
    timezone: str,
    dialect: str,
    where: str,
) -> datetime | None:
    if not sql:
        return None
    try:
        query = check_segment_sql(render_sql(sql, as_of, timezone), dialect)
        rows = con.execute(query).fetchall()
    except (TemplateFailed, SqlRejected) as exc:
        raise SegmentError(f"{where}: freshness_sql: {exc}") from exc
    except duckdb.Error as exc:
        raise SegmentError(f"{where}: freshness_sql failed: {exc}") from exc
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
