"""The one exception hierarchy of the reconciler.

    ReconcileError                 every error a user can see; the CLI prints it and exits 1
    ├── ConfigError                the workspace is wrong; carries file, line and field
    │   └── ValidationFailed       several ConfigErrors found at once (``validate`` reports all)
    ├── SegmentError               a segment's SQL is not allowed, fails, or returns bad keys
    ├── SourceError                the source cannot be reached or read
    ├── StateError                 the recorded state cannot be read or written
    │   └── StateLocked            another process holds the state lock
    ├── PlanError                  a saved plan is unreadable or stale
    └── DestinationError           a destination refused or failed a call
        ├── TransientError         worth retrying (timeouts, 5xx, concurrent modification)
        │   └── ThrottledError     rate limited; ``retry_after`` seconds when the vendor says
        └── TerminalError          retrying will not help
            ├── CredentialsRefused the integration's credentials were refused -> ``Disabled``
            └── AudienceGone       the audience was deleted at the destination (drift)

Messages say what happened and what to do; they never contain secrets.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

__all__ = [
    "AudienceGone",
    "ConfigError",
    "CredentialsRefused",
    "DestinationError",
    "Location",
    "PlanError",
    "ReconcileError",
    "SegmentError",
    "SourceError",
    "StateError",
    "StateLocked",
    "TerminalError",
    "ThrottledError",
    "TransientError",
    "UNPRINTABLE",
    "ValidationFailed",
    "is_engine_error",
    "printable",
    "query_interrupted",
    "stops_the_run",
]


class ReconcileError(Exception):
    """Root of every error the reconciler reports to a user."""


#: what a name may not hold where it is printed: control characters (Unicode categories Cc,
#: Zl and Zp) and the text-direction overrides (they could move the cursor, clear the screen
#: or forge rows); also what ``render_name`` refuses in an audience name
UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(value: object) -> str:
    """``value`` as text with each :data:`UNPRINTABLE` character escaped as Python writes it
    (``\\x1b``, ``\\n``, ``\\u202e``): a file name, a destination's list name, an error."""
    return UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], str(value))


def printable_lines(text: str) -> str:
    """:func:`printable` per line: a message of several lines keeps its line breaks."""
    return "\n".join(printable(line) for line in text.split("\n"))


@dataclass(frozen=True)
class Location:
    """Where in the workspace a problem is: file, 1-based line, dotted field path."""

    file: str
    line: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        # a file name may hold a newline or an escape: printed escaped, it stays one line
        file, field = printable(self.file), printable(self.field) if self.field else None
        where = file if self.line is None else f"{file}:{self.line}"
        return f"{where}: {field}" if field else where


class ConfigError(ReconcileError):
    def __init__(self, message: str, location: Location | None = None):
        self.message = message
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)


class ValidationFailed(ConfigError):
    def __init__(self, errors: list[ConfigError]):
        # every problem at once, sorted by file and line (schema and references together)
        self.errors = sorted(
            errors,
            key=lambda e: (
                e.location.file if e.location else "",
                (e.location.line or 0) if e.location else 0,
            ),
        )
        errors = self.errors
        lines = "\n".join(f"  {e}" for e in errors)
        noun = "problem" if len(errors) == 1 else "problems"
        super().__init__(f"the workspace has {len(errors)} {noun}:\n{lines}")


class SegmentError(ReconcileError):
    """``token``: the name in the segment's SQL a database server's error points at (the
    server runs SQL regenerated from the checked tree, so its own position is of no use)."""

    token: str | None = None


class SourceError(ReconcileError):
    """``location``: the setting at fault (e.g. ``source.profiles.table``), when one is."""

    def __init__(self, message: str, location: Location | None = None):
        super().__init__(message)
        self.location = location


class StateError(ReconcileError):
    pass


class StateLocked(StateError):
    def __init__(self, holder: str):
        self.holder = holder
        # `apply` and `run` can wait for the lock; the `state` commands cannot
        advice = (
            "wait for it to finish and run the command again (`apply` and `run` wait for it "
            "with --lock-timeout SECONDS)"
        )
        if "state unlock" not in holder:  # a stale holder's description says it already
            advice += ", or if that process is gone run `reconcile state unlock`"
        super().__init__(f"the state is locked by {holder}; {advice}")


class PlanError(ReconcileError):
    pass


class MassRemovalRefused(ReconcileError):
    """Found while applying: members whose identifiers are no longer usable would lose their
    strings at the destination, which with the planned removals trips the mass-removal
    guard the plan could not see (it estimates who is matchable)."""


class DestinationError(ReconcileError):
    """A destination call failed. ``transient`` drives retries. ``partial``: the call was
    sent as several requests and an earlier one went through, so a terminal error does not
    mean that none of its members were taken. ``unanswered``: the request was sent and no
    answer came (a read timeout, a dropped connection): the destination may have applied
    it, or may still be applying it."""

    transient = False
    partial = False
    unanswered = False
    #: set by the engine: every attempt of the call was refused with nothing taken (throttles,
    #: a terminal error): none of its members is at the destination
    #: (``reconciler.apply.calls.refusal_marked``)
    refused_outright = False


class TransientError(DestinationError):
    transient = True


class ThrottledError(TransientError):
    def __init__(self, message: str, retry_after: float | None = None):
        self.retry_after = retry_after
        super().__init__(message)


class TerminalError(DestinationError):
    pass


class CredentialsRefused(TerminalError):
    pass


class AudienceGone(TerminalError):
    """The audience no longer exists at the destination (deleted outside this tool): the
    next plan shows it being created again and its members sent again."""


def query_interrupted(exc: BaseException) -> bool:
    """DuckDB's answer to Ctrl-C in the middle of a query (a ``RuntimeError``, not a
    ``KeyboardInterrupt``)."""
    return isinstance(exc, RuntimeError) and str(exc).startswith("Query interrupted")


def is_engine_error(exc: BaseException) -> bool:
    """Whether ``exc`` is DuckDB's, without importing DuckDB (a command that failed before
    using it did not load it)."""
    duckdb = sys.modules.get("duckdb")
    return duckdb is not None and isinstance(exc, duckdb.Error)


def stops_the_run(exc: BaseException) -> bool:
    """An error no activation can be failed alone for: an interrupt, the memory cap, or the
    database engine failing (the next statements would fail too)."""
    return isinstance(exc, MemoryError) or query_interrupted(exc) or is_engine_error(exc)
