"""The embedded state's tables, and attaching the state file to an engine session.

The state is a DuckDB file attached to the engine session as catalog ``__reconcile_state``,
so membership diffs run as SQL next to the source. Tables (no raw PII anywhere: keys, hashes
and destination ids only):

- ``activations``  the spec recorded at the last apply, its digest, a serial bumped by every
  apply that changes the activation, status, split seed, creation date, last runs
- ``audiences``    destination resource ids per (activation, group)
- ``members``      per (activation, group, key): ``record`` (what was sent: hashes or
  destination member ids) and ``fp`` (fingerprint of identifiers + mapped attributes; NULL
  when a removal of an earlier record is still owed, so the next plan sends it again)
- ``journal``      an intent (with a fresh batch id) before each destination call, its outcome
  after; an audience creation's intent carries the audience name and its creation key
- ``runs``         every run: start, end, status, counts (accumulated batch by batch, so a
  killed run's counts are what was confirmed), per audience counts, error
- ``jobs``         asynchronous destination jobs submitted and not yet finished, with the
  members they carry (keys, records, fingerprints), so a run that died polls them to the end
  and records them — never submits them again
- ``rejections``   members a destination refused, with its reason (``reconcile log ID
  --rejected``): keys and hashed records only

Readers (``plan``, ``status``, ``log``) register themselves in ``<state>.readers/`` while
they hold the file open, so an ``apply`` that must wait for them can say who they are.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from reconciler.errors import StateError
from reconciler.state import versions
from reconciler.state.attributes import DDL as MEMBER_ATTRIBUTES_DDL

CATALOG = "__reconcile_state"
SCHEMA_VERSION = str(versions.SCHEMA_VERSION)

DDL = [
    "CREATE TABLE IF NOT EXISTS {c}.meta (k VARCHAR PRIMARY KEY, v VARCHAR)",
    """CREATE TABLE IF NOT EXISTS {c}.activations (
        id VARCHAR PRIMARY KEY, spec JSON, spec_digest VARCHAR, serial BIGINT,
        status VARCHAR, destination VARCHAR, frequency VARCHAR, paused BOOLEAN,
        split_seed VARCHAR, date_created DATE, created_at TIMESTAMPTZ,
        updated_at TIMESTAMPTZ, last_run_at TIMESTAMPTZ, last_success_at TIMESTAMPTZ,
        ran BOOLEAN, error VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS {c}.audiences (
        activation_id VARCHAR, grp VARCHAR, name VARCHAR, resource_id VARCHAR,
        sent BOOLEAN, created_at TIMESTAMPTZ, PRIMARY KEY (activation_id, grp))""",
    # ``record`` holds hashes (hex SHA-256 strings): compressing them at every checkpoint
    # cost ~1.5 us CPU per string for a 2x smaller column (benchmarks/results, 2026-11-30);
    # ``key`` too: compressing profile keys (UUIDs, ids: no repeats) cost ~0.8 us CPU per
    # member recorded for an 11% smaller file (2026-11-30, round 6); a state created before
    # keeps its compression (same contents, same queries)
    """CREATE TABLE IF NOT EXISTS {c}.members (
        activation_id VARCHAR, grp VARCHAR, key VARCHAR USING COMPRESSION uncompressed,
        record VARCHAR[] USING COMPRESSION uncompressed, fp UBIGINT)""",
    # the members of each member call in flight (an intent not closed yet): what a run
    # killed before the answer was recorded may have left at the destination
    # (``MemberWrites.recover_calls``); rows live from the intent to the call's outcome
    """CREATE TABLE IF NOT EXISTS {c}.inflight (
        batch_id VARCHAR, key VARCHAR USING COMPRESSION uncompressed,
        record VARCHAR[] USING COMPRESSION uncompressed)""",
    """CREATE TABLE IF NOT EXISTS {c}.journal (
        batch_id VARCHAR, run_id VARCHAR, activation_id VARCHAR, grp VARCHAR, op VARCHAR,
        size INTEGER, status VARCHAR, detail VARCHAR, started_at TIMESTAMPTZ,
        finished_at TIMESTAMPTZ)""",
    """CREATE TABLE IF NOT EXISTS {c}.runs (
        run_id VARCHAR PRIMARY KEY, activation_id VARCHAR, trigger VARCHAR,
        started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, status VARCHAR,
        added BIGINT, removed BIGINT, updated BIGINT, failed BIGINT, audiences JSON,
        error VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS {c}.jobs (
        batch_id VARCHAR PRIMARY KEY, run_id VARCHAR, activation_id VARCHAR, grp VARCHAR,
        op VARCHAR, job VARCHAR, audience_id VARCHAR, keys VARCHAR[], records VARCHAR[][],
        fps UBIGINT[], submitted_at TIMESTAMPTZ)""",
    """CREATE TABLE IF NOT EXISTS {c}.rejections (
        run_id VARCHAR, activation_id VARCHAR, grp VARCHAR, key VARCHAR, op VARCHAR,
        record VARCHAR[], reason VARCHAR, rejected_at TIMESTAMPTZ)""",
    MEMBER_ATTRIBUTES_DDL,  # goal sync_attributes: per-attribute hashes (added later)
]


TABLES = ("meta", "activations", "audiences", "members", "journal", "runs")


def create_schema(
    con: duckdb.DuckDBPyConnection,
    catalog: str = CATALOG,
    steps: tuple[versions.Step, ...] = versions.EMBEDDED_STEPS,
) -> None:
    """Create the tables, or migrate an older state forward, in one transaction: a process
    killed while creating or migrating leaves the state as it was, and the next run does it
    again. A state newer than this release is refused."""
    con.execute("BEGIN TRANSACTION")
    try:
        found = schema_version(con, catalog)
        versions.refuse_newer(found, "the state")
        for stmt in DDL:
            con.execute(stmt.format(c=catalog))
        lineage = versions.new_lineage()
        if found is None:  # a new state: made at the current version, with its lineage
            con.execute(
                f"INSERT INTO {catalog}.meta VALUES ('schema_version', ?), ('lineage', ?)",
                [SCHEMA_VERSION, lineage],
            )
        elif found < versions.SCHEMA_VERSION:
            reached = versions.run_steps(
                con.execute, found, steps, catalog=catalog, lineage=lineage
            )
            con.execute(
                f"UPDATE {catalog}.meta SET v = ? WHERE k = 'schema_version'", [str(reached)]
            )
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def schema_version(con: duckdb.DuckDBPyConnection, catalog: str = CATALOG) -> int | None:
    """The state's schema version, or None for a state with no tables yet."""
    has_meta = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND table_name = 'meta'",
        [catalog],
    ).fetchall()[0][0]
    if not has_meta:
        return None
    row = con.execute(f"SELECT v FROM {catalog}.meta WHERE k = 'schema_version'").fetchone()
    return versions.parse_version(row[0] if row else None, "the state")


def _complete(con: duckdb.DuckDBPyConnection) -> bool:
    found = {
        r[0]
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [CATALOG]
        ).fetchall()
    }
    return set(TABLES) <= found


def attach_state(con: duckdb.DuckDBPyConnection, path: Path, *, write: bool) -> None:
    """Attach the state as catalog ``__reconcile_state``: read-write (created if missing),
    read-only, or — read-only with no state yet — an empty in-memory one, so nothing is
    written. Failures say whether another process holds the file or it is unreadable."""
    try:
        if write:
            path.parent.mkdir(parents=True, exist_ok=True)
            con.execute(f"ATTACH '{_q(path)}' AS {CATALOG}")
            create_schema(con)
        elif path.exists():
            con.execute(f"ATTACH '{_q(path)}' AS {CATALOG} (READ_ONLY)")
            versions.refuse_newer(schema_version(con), f"the state {path}")
            if not _complete(con):
                # created by an older release that was killed half-way: nothing was recorded
                # (no apply gets past creating the tables); read it as empty, the next apply
                # completes it
                con.execute(f"DETACH {CATALOG}")
                con.execute(f"ATTACH ':memory:' AS {CATALOG}")
                _empty_schema(con)
        else:
            con.execute(f"ATTACH ':memory:' AS {CATALOG}")
            _empty_schema(con)
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():  # not held by another process: unreadable
            raise StateError(
                f"cannot open the state {path}: {' '.join(str(exc).split())}; it is not "
                "a readable state database, restore it from a backup"
            ) from exc
        raise StateBusy(path, exc) from exc
    except duckdb.Error as exc:
        raise StateError(f"cannot open the state {path}: {exc}") from exc


def _empty_schema(con: duckdb.DuckDBPyConnection) -> None:
    """An empty in-memory state for readers: no lineage (no state was made yet)."""
    create_schema(con)
    con.execute(f"DELETE FROM {CATALOG}.meta WHERE k = 'lineage'")


class StateBusy(StateError):
    """Another process has the state file open (a reader, or the apply holding the lock)."""

    def __init__(self, path: Path, exc: BaseException):
        from reconciler.state.lock import StateLock

        self.path = path
        holder = StateLock(path.with_suffix(".lock")).holder(exclude_self=True)
        readers = active_readers(path)
        who = holder or (", ".join(readers) if readers else None)
        self.who = who
        super().__init__(
            f"cannot open the state {path}: it is in use"
            + (f" by {who}" if who else " by another process")
            + ". Wait for it to finish and try again."
        )


# ---------------------------------------------------------------------- reader registry
def _readers_dir(path: Path) -> Path:
    return path.with_name(path.name + ".readers")


@contextlib.contextmanager
def registered_reader(path: Path, command: str | None = None):
    """Announce, while the block runs, that this process reads the state file."""
    folder = _readers_dir(path)
    entry = folder / f"{os.getpid()}-{id(folder):x}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        entry.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "command": command or _command(),
                    "since": datetime.now(UTC).isoformat(timespec="seconds"),
                }
            )
        )
    except OSError:  # a read-only workspace: readers just are not announced
        entry = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if entry is not None:
            with contextlib.suppress(OSError):
                entry.unlink()


def active_readers(path: Path) -> list[str]:
    """Descriptions of the live processes that announced they read the state file."""
    out: list[str] = []
    folder = _readers_dir(path)
    if not folder.is_dir():
        return out
    for entry in sorted(folder.glob("*.json")):
        try:
            info = json.loads(entry.read_text())
            pid = int(info["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid == os.getpid():
            continue
        if not pid_alive(pid):
            with contextlib.suppress(OSError):
                entry.unlink()
            continue
        out.append(f"`{info.get('command', 'reconcile')}` (pid {pid}, since {info.get('since')})")
    return out


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_COMMANDS = {"plan", "apply", "run", "status", "log", "show", "state", "segments", "lists"}


def _command() -> str:
    found = next((a for a in sys.argv[1:] if a in _COMMANDS), None)
    return f"reconcile {found}" if found else "reconcile"


def _q(path: Path | str) -> str:
    return str(path).replace("'", "''")
