"""The engine's front door: the few functions every front end (CLI, CI, tests) calls.
load -> resolve -> plan -> render -> apply -> record."""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler.apply.applier import Applier, ApplyOptions
from reconciler.apply.interrupts import InterruptGuard
from reconciler.apply.outcomes import ApplyResult
from reconciler.enginedb import STAGING, Session, new_staging_path, remove_staging
from reconciler.errors import ConfigError, DestinationError, PlanError
from reconciler.integrations import Connections
from reconciler.plan import planfile
from reconciler.plan.model import Plan
from reconciler.plan.planner import Planner, PlanRequest, plan_as_of
from reconciler.sources import open_source
from reconciler.state import versions
from reconciler.state.backend import StateLocking, open_backend, opened
from reconciler.state.schema import StateBusy
from reconciler.workspace.activation_spec import Goal
from reconciler.workspace.loader import Workspace
from reconciler.workspace.templating import local_date


@dataclass
class StagedPlan:
    """A plan and the staging database holding its member changes."""

    plan: Plan
    staging: Path

    def discard(self) -> None:
        remove_staging(self.staging)


def make_plan(ws: Workspace, request: PlanRequest, as_of: datetime | None = None) -> StagedPlan:
    as_of = plan_as_of(as_of)
    source = open_source(ws)
    source.prepare(local_date(as_of, ws.config.timezone))
    if hasattr(source, "diff_in_source"):  # PostgreSQL: the diff runs next to the data
        source.diff_in_source = True
    staging = new_staging_path(ws)
    conns = Connections(ws, require_credentials=request.refresh)
    try:
        with Session(ws, source, write_state=False, staging_path=staging, lock_down=True) as s:
            plan = Planner(ws, s, conns, as_of, request).build()
    except BaseException:
        remove_staging(staging)
        raise
    finally:
        conns.close()
    return StagedPlan(plan, staging)


@dataclass
class Validation:
    """What ``validate`` found: the workspace (the files that loaded), every error and
    every warning, each sorted by file and line."""

    ws: Workspace
    errors: list[ConfigError]
    warnings: list[ConfigError]


def validate(root: Path, *, check_credentials: bool = True) -> Validation:
    """Every file's schema and cross-references, then segment SQL and consent conditions
    bound against the source's catalogue (skipped while the source settings are wrong)."""
    from reconciler.sources.catalog import check_catalog
    from reconciler.workspace.loader import CONFIG_FILE, collect

    ws, errors = collect(root, check_credentials=check_credentials)
    warnings: list[ConfigError] = []
    source_wrong = any(
        e.location is not None
        and e.location.file == CONFIG_FILE
        and (e.location.field or "source").split(".")[0] == "source"
        for e in errors
    )
    if not source_wrong:
        found = check_catalog(ws)
        errors.extend(found.errors)
        warnings.extend(found.warnings)
        warnings.extend(identifier_key_warnings(ws))
    return Validation(ws, _by_place(errors), _by_place(warnings))


def identifier_key_warnings(ws: Workspace) -> list[ConfigError]:
    """A warning when the profiles' key column is one of their identifier columns: the state
    and saved plans keep each member's key, so they would hold raw e-mails or phones."""
    profiles = ws.config.source.profiles
    kinds = sorted(t for t, col in profiles.identifiers.items() if col == profiles.key)
    if not kinds:
        return []
    return [
        ConfigError(
            f"the profile key {profiles.key!r} is also the {' and '.join(kinds)} identifier "
            "column: the state, run logs and saved plans keep every member's key, so they "
            "would hold these values in clear; key profiles by a customer id (or a hash of it)",
            ws.config_location("source", "profiles", "key"),
        )
    ]


def _by_place(errors: list[ConfigError]) -> list[ConfigError]:
    return sorted(
        errors,
        key=lambda e: (e.location.file, e.location.line or 0) if e.location else ("", 0),
    )


def save_plan(ws: Workspace, staged: StagedPlan, out: Path) -> None:
    planfile.save(staged.plan, staged.staging, out, _tmp(ws))


def load_plan(ws: Workspace, path: Path) -> StagedPlan:
    staging = new_staging_path(ws)
    try:
        plan = planfile.load(path, staging, _tmp(ws))
    except BaseException:
        remove_staging(staging)
        raise
    return StagedPlan(plan, staging)


#: how far in the future a saved plan's ``as_of`` may be (clocks of two machines differ)
CLOCK_SKEW = timedelta(minutes=10)


def verify_saved_plan(ws: Workspace, saved: StagedPlan, path: Path, announce=None):
    """The saved plan checked against the same plan made now, as of its ``as_of``
    (:mod:`reconciler.plan.saved_check`): the staged plan to apply instead of it, the
    activations refused (why) and the saved member changes left out (how many).

    The file's ``as_of`` is untrusted too: one in the future is refused, and when it falls on
    another day than today (in the workspace's zone: dates in templates and segment SQL are
    days), the member changes must also hold in a plan made as of now, so a back-dated file
    cannot send a member who is not in the segment today."""
    from reconciler.plan.saved_check import verify

    now = plan_as_of()
    if saved.plan.as_of > now + CLOCK_SKEW:
        raise PlanError(
            f"{path}: the saved plan is dated {saved.plan.as_of.isoformat()}, in the "
            "future (edited?); make the plan again"
        )
    with read_state(ws, members=False) as state:
        recorded = set(state.activations())
    known = set(ws.activations) | recorded
    request = PlanRequest(
        targets=tuple(a.id for a in saved.plan.activations if a.id in known),
        include_inactive=saved.plan.include_inactive,
        announce=announce,
    )
    today: StagedPlan | None = None
    if not request.targets:
        fresh = StagedPlan(saved.plan.model_copy(update={"activations": []}), new_staging_path(ws))
    else:
        fresh = make_plan(ws, request, as_of=saved.plan.as_of)
        tz = ws.config.timezone
        if local_date(saved.plan.as_of, tz) != local_date(now, tz):
            try:
                today = make_plan(ws, request, as_of=now)
            except BaseException:
                fresh.discard()
                raise
    try:
        checked = verify(
            saved.plan,
            saved.staging,
            fresh.plan,
            fresh.staging,
            today.staging if today is not None else None,
        )
    except BaseException:
        fresh.discard()
        raise
    finally:
        if today is not None:
            today.discard()
    saved.discard()
    return StagedPlan(checked.plan, fresh.staging), checked.refused, checked.dropped


def any_interrupted(ws: Workspace, plan: Plan) -> bool:
    """Whether an activation of the plan has an interrupted last run (Pending): the apply
    then runs even with nothing to send, and records that run as finished."""
    from reconciler.apply.outcomes import interrupted

    with read_state(ws, members=False) as state:
        return any(interrupted(state, a.id) for a in plan.activations)


def recover_calls(ws: Workspace) -> list[str]:
    """Before an apply plans, under the state lock: the members of calls a run that died left
    without a recorded answer are recorded as possibly sent (:meth:`~reconciler.state.
    member_writes.MemberWrites.close_interrupted_batches`), and the asynchronous jobs it left
    submitted are polled to their end and recorded, so the plan re-sends those still wanted
    and removes those who left since. Each activation concerned gets a new serial (a plan
    saved before is stale). Returns those activations; nothing is written when there is
    nothing to recover."""
    with read_state(ws) as state:
        if not state.in_flight() and not state.jobs_submitted():
            return []
    with opened(open_backend(ws), write=True) as attached:
        store = attached.store()
        recovered = {aid for aid, _, _ in store.close_interrupted_batches()}
        recovered |= _finish_jobs(ws, store)
        for aid in sorted(recovered):
            store.bump_serial(aid)
    return sorted(recovered)


def _finish_jobs(ws: Workspace, store) -> set[str]:
    """Poll the asynchronous jobs a run that died left submitted to their end and record
    their members (never submitted again), before the plan, so it diffs what they did.
    Ctrl-C stops the polling; a job stays submitted until its end is recorded."""
    from reconciler.apply.calls import finish_job

    jobs = [j for j in store.pending_jobs() if j["destination"] in ws.integrations]
    if not jobs:
        return set()
    conns = Connections(ws)
    try:
        for job in jobs:
            dest = conns.get(job["destination"])
            finish_job(store, dest, job, _NOT_STOPPED, dest.retry_policy.call)
    finally:
        conns.close()
    return {j["activation_id"] for j in jobs}


class _NotStopped:
    stop_requested = False  # Ctrl-C before the apply's own guard raises KeyboardInterrupt


_NOT_STOPPED: Any = _NotStopped()


def state_lock(ws: Workspace) -> StateLocking:
    return open_backend(ws).lock()


def check_plan_state(ws: Workspace, plan: Plan, path: Path) -> None:
    """Refuse a saved plan made against another state (its lineage differs)."""
    with read_state(ws, members=False) as state:
        versions.check_plan_lineage(plan.state_lineage, state.lineage(), str(path))


def execute(
    ws: Workspace,
    staged: StagedPlan,
    options: ApplyOptions,
    guard: InterruptGuard,
    lock_timeout: float = 0.0,
    echo=None,
) -> ApplyResult:
    """Apply a plan; the caller holds the state lock. ``echo`` tells the user about waits."""
    # everything imported and loaded so far lives until exit: keep the collector off it, so
    # a long apply's garbage collections stay short
    gc.freeze()
    # each batch makes and drops tens of thousands of short-lived objects (its columns) and
    # almost no cycles: collect the young generation per ~50,000 allocations, not per 700
    gc.set_threshold(50_000, 20, 100)
    conns = Connections(ws)
    try:
        with _apply_session(ws, staged, lock_timeout, echo) as session:
            return Applier(ws, staged.plan, session, conns, options, guard, echo).run()
    finally:
        conns.close()


#: how long an apply waits for readers (`plan`, `status`, `log`) to close the state file
READER_WAIT = 600.0


@contextmanager
def _apply_session(ws: Workspace, staged: StagedPlan, lock_timeout: float, echo=None):
    """The apply's session. The embedded backend keeps the current state as the backup and
    the apply writes a copy of its own (:func:`~reconciler.state.snapshot.begin_write`), so
    readers never hold the file it writes; a reader that opened that copy in the instant
    before the apply did leaves it as soon as it sees the apply, so the wait is short."""
    deadline = time.monotonic() + max(lock_timeout, READER_WAIT)
    told = None
    while True:
        try:
            session = Session(
                ws,
                _apply_source(ws, staged.plan),
                write_state=True,
                staging_path=staged.staging,
                lock_down=False,
            )
            break
        except StateBusy as exc:
            if time.monotonic() >= deadline:
                raise
            if echo is not None and exc.who != told:
                echo(f"Waiting for {exc.who or 'another process'} to close the state...")
                told = exc.who
            time.sleep(0.2)
    try:
        yield session
    finally:
        session.close()


def _apply_source(ws: Workspace, plan: Plan):
    """The apply's source. A PostgreSQL source copies only the profiles of the plan's member
    changes when every activation sends audience members (an export's full file and the
    per-attribute hashes of ``sync_attributes`` read every member's profile)."""
    source = open_source(ws, write=True)
    if hasattr(source, "only_keys_of") and all(
        a.goal not in (Goal.EXPORT_DATA.value, Goal.SYNC_ATTRIBUTES.value) for a in plan.activations
    ):
        source.only_keys_of = f"(SELECT key AS k FROM {STAGING}.changes)"
    return source


@contextmanager
def read_state(ws: Workspace, *, members: bool = False):
    """A read-only view of the state (status, log, state show). ``members``: also copy the
    member rows (PostgreSQL; member counts never need them)."""
    with opened(open_backend(ws), write=False, members=members) as attached:
        yield attached.reader()


@contextmanager
def write_state(ws: Workspace, operation: str, check: Any = None):
    """The writing StateStore under the state lock (``state rm|mv``, ``import``). The state is
    read whole first (a damaged block refuses the command before the write makes the state
    its backup), then ``check`` (a function of a StateReader) runs on it as it is, read-only:
    a command it refuses writes nothing — not even the backup every write starts with,
    which it would have replaced. The lock is held from the check to the write: what it
    checked holds."""
    backend = open_backend(ws)
    with backend.lock() as lock:
        lock.acquire(operation)
        with opened(backend, write=False) as attached:
            reader = attached.reader()
            reader.read_every_block()  # before the write replaces the backup with it
            if check is not None:
                check(reader)
        with opened(backend, write=True) as attached:
            yield attached.store()


def restore_state(ws: Workspace) -> tuple[Path | None, int]:
    """``reconcile state restore``: the backup becomes the state again, under the state lock,
    and every member it records loses its fingerprint. The backup does not know what the
    last apply did: the members it removed are still recorded as present, so without this a
    member that came back later was never sent again. Now the next plan sends each member
    still wanted once more (a no-op where the destination has it) and removes again those
    that left. Returns the file the replaced state was kept as, and the members marked."""
    from reconciler.state.backend import EmbeddedBackend
    from reconciler.state.snapshot import restore_backup

    backend = open_backend(ws)
    if not isinstance(backend, EmbeddedBackend):
        raise ConfigError(
            "`state restore` restores the embedded state file's backup; a PostgreSQL state is "
            "restored from the database's own backups (then run `reconcile plan`)"
        )
    with backend.lock() as lock:
        lock.acquire("state restore")
        aside = restore_backup(backend.path)
        with opened(backend, write=True) as attached:
            store = attached.store()
            with store.transaction():
                row = store.con.execute(
                    f"UPDATE {store.c}.members SET fp = NULL WHERE fp IS NOT NULL"
                ).fetchone()
    return aside, int(row[0]) if row else 0


def recheck_state_loss(ws: Workspace, plan: Plan, refused=frozenset()) -> Plan:
    """A saved plan about to be applied: when the state is empty (no run recorded), ask each
    destination again whether the audiences to create already exist by name
    (:func:`reconciler.plan.state_loss.recheck`); ``refused`` activations (shown as the file
    has them, never applied: their destination may not even be in this workspace) are not
    asked about."""
    from reconciler.plan import state_loss, twins
    from reconciler.workspace.templating import local_date

    if not any(au.create for a in plan.activations for au in a.audiences):
        return plan
    with read_state(ws) as state:
        if state.last_runs():
            return plan
    conns = Connections(ws)
    # a new audience is named on the plan's day: where the name shows that date, the same name
    # on another date is the audience made before (:mod:`reconciler.plan.twins`)
    day = local_date(plan.as_of, ws.config.timezone).isoformat()

    def find(destination: str, name: str) -> tuple[str, str] | None:
        try:
            dest = conns.get(destination)
            found = dest.find_audience(name)
            if found is not None and found.name == name:
                return found.id, found.name
            pattern = twins.dated_pattern(lambda other: name.replace(day, other.isoformat()))
            dated = twins.earlier_twins(dest.list_audiences(), pattern, name) if pattern else []
        except DestinationError:  # cannot tell; the apply itself reports the destination
            return None
        return (dated[0].id, dated[0].name) if dated else None

    try:
        return state_loss.recheck(plan, find, skip=refused)
    finally:
        conns.close()


def _tmp(ws: Workspace) -> Path:
    p = ws.path(".reconcile/tmp")
    p.mkdir(parents=True, exist_ok=True)
    return p
