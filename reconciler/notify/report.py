"""What a notification is about: one recorded run of one activation, as the apply stage
reports it, and the template context built from it (counts and status only: no members,
no identifiers, no secrets)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from reconciler.workspace.notify_spec import NotifyEvent

#: error text longer than this is cut in messages (a stack of vendor responses helps no one)
MAX_ERROR = 2_000

_EVENT_OF_STATUS = {
    "complete": NotifyEvent.COMPLETE,
    "failed": NotifyEvent.FAILED,
    "disabled": NotifyEvent.DISABLED,
}


@dataclass(frozen=True)
class AudienceCounts:
    """One destination audience of a run: its name, split group and member counts."""

    name: str
    group: str = "all"
    added: int = 0
    removed: int = 0
    updated: int = 0


@dataclass(frozen=True)
class RunReport:
    """One recorded run. ``status`` is the run's status (Complete, Failed, Disabled, ...);
    ``trigger`` what started it (apply, run, schedule); ``mass_removal`` that the
    mass-removal guard flagged it."""

    activation: str
    file: str
    trigger: str
    status: str
    started: datetime
    finished: datetime
    audiences: tuple[AudienceCounts, ...] = field(default_factory=tuple)
    error: str | None = None
    mass_removal: bool = False

    def __post_init__(self) -> None:
        # accept a list of AudienceCounts or of (name, group, added, removed, updated)
        # tuples; keep a tuple of AudienceCounts: the report is a value
        audiences = tuple(
            a if isinstance(a, AudienceCounts) else AudienceCounts(*a) for a in self.audiences
        )
        object.__setattr__(self, "audiences", audiences)

    @property
    def events(self) -> frozenset[NotifyEvent]:
        """The ``notify.on`` values this run matches."""
        out = set()
        if self.status.lower() in _EVENT_OF_STATUS:
            out.add(_EVENT_OF_STATUS[self.status.lower()])
        if self.mass_removal:
            out.add(NotifyEvent.MASS_REMOVAL)
        return frozenset(out)

    @property
    def duration_seconds(self) -> float:
        return max(0.0, (self.finished - self.started).total_seconds())


#: the names a template can use (listed in errors and in docs/notifications.md)
CONTEXT_NAMES = (
    "activation, file, status, trigger, events, audiences (name, group, added, removed, "
    "updated), totals (added, removed, updated), started, finished, duration, "
    "duration_seconds, error, mass_removal"
)


def template_context(report: RunReport, scrub: tuple[str, ...] = ()) -> dict:
    """The values templates see. ``scrub`` are secret strings removed from the error text."""
    audiences = [
        {
            "name": a.name,
            "group": a.group,
            "added": a.added,
            "removed": a.removed,
            "updated": a.updated,
        }
        for a in report.audiences
    ]
    error = None
    if report.error:
        error = scrub_text(report.error, scrub)
        if len(error) > MAX_ERROR:
            error = error[:MAX_ERROR] + " ..."
    return {
        "activation": report.activation,
        "file": report.file,
        "status": report.status,
        "trigger": report.trigger,
        "events": sorted(e.value for e in report.events),
        "audiences": audiences,
        "totals": {k: sum(a[k] for a in audiences) for k in ("added", "removed", "updated")},
        "started": report.started.isoformat(timespec="seconds"),
        "finished": report.finished.isoformat(timespec="seconds"),
        "duration": format_duration(report.duration_seconds),
        "duration_seconds": round(report.duration_seconds, 3),
        "error": error,
        "mass_removal": report.mass_removal,
    }


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s"


def scrub_text(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret value replaced by ``***``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def sample_report() -> RunReport:
    """A made-up run, to check templates at ``validate`` time."""
    now = datetime(2024, 6, 1, 6, 0, 0).astimezone()
    return RunReport(
        activation="example",
        file="activations/example.yaml",
        trigger="schedule",
        status="Failed",
        started=now,
        finished=now,
        audiences=(AudienceCounts("Example audience", "all", 3, 2, 1),),
        error="example error",
        mass_removal=True,
    )
