"""The engine's front door: the few functions every front end (CLI, CI, tests) calls.
load -> resolve -> plan -> render -> apply -> record."""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from reconciler.apply.applier import Applier, ApplyOptions, ApplyResult
from reconciler.apply.interrupts import InterruptGuard
from reconciler.enginedb import Session, new_staging_path, remove_staging
from reconciler.errors import DestinationError
from reconciler.integrations import Connections
from reconciler.plan import planfile
from reconciler.plan.model import Plan
from reconciler.plan.planner import Planner, PlanRequest, plan_as_of
from reconciler.sources import open_source
from reconciler.state.lock import StateLock
from reconciler.state.schema import StateBusy, attach_state, registered_reader
from reconciler.state.snapshot import attach_reader, begin_write
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


def state_lock(ws: Workspace) -> StateLock:
    return StateLock(ws.path(ws.config.state.path).with_suffix(".lock"))


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
    conns = Connections(ws)
    try:
        with _apply_session(ws, staged.staging, lock_timeout, echo) as session:
            return Applier(ws, staged.plan, session, conns, options, guard, echo).run()
    finally:
        conns.close()


#: how long an apply waits for readers (`plan`, `status`, `log`) to close the state file
READER_WAIT = 600.0


@contextmanager
def _apply_session(ws: Workspace, staging: Path, lock_timeout: float, echo=None):
    """The apply's session. The current state is kept as the backup and the apply writes a
    copy of its own (:func:`~reconciler.state.snapshot.begin_write`), so readers never hold
    the file it writes; a reader that opened that copy in the instant before the apply did
    leaves it as soon as it sees the apply (it reads the backup), so the wait is short."""
    begin_write(ws.path(ws.config.state.path))
    deadline = time.monotonic() + max(lock_timeout, READER_WAIT)
    told = None
    while True:
        try:
            session = Session(
                ws, open_source(ws), write_state=True, staging_path=staging, lock_down=False
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


@contextmanager
def read_state(ws: Workspace):
    """A read-only connection to the state (status, log, state show); while an apply
    writes, to the state as of its start (``reader.notice`` says so)."""
    from reconciler.state.store import StateReader

    path = ws.path(ws.config.state.path)
    with registered_reader(path):
        con = duckdb.connect(":memory:")
        try:
            reader = StateReader(con)
            reader.notice = attach_reader(con, path)
            yield reader
        finally:
            con.close()


@contextmanager
def write_state(ws: Workspace, operation: str):
    """The writing StateStore under the state lock (``state rm|mv``)."""
    from reconciler.state.writer import StateStore

    with state_lock(ws) as lock:
        lock.acquire(operation)
        path = ws.path(ws.config.state.path)
        begin_write(path)
        con = duckdb.connect(":memory:")
        try:
            attach_state(con, path, write=True)
            yield StateStore(con)
        finally:
            con.close()


def recheck_state_loss(ws: Workspace, plan: Plan) -> Plan:
    """A saved plan about to be applied: when the state is empty (no run recorded), ask each
    destination again whether the audiences to create already exist by name
    (:func:`reconciler.plan.state_loss.recheck`)."""
    from reconciler.plan import state_loss

    if not any(au.create for a in plan.activations for au in a.audiences):
        return plan
    with read_state(ws) as state:
        if state.last_runs():
            return plan
    conns = Connections(ws)

    def find(destination: str, name: str) -> str | None:
        try:
            found = conns.get(destination).find_audience(name)
        except DestinationError:  # cannot tell; the apply itself reports the destination
            return None
        return found.id if found is not None and found.name == name else None

    try:
        return state_loss.recheck(plan, find)
    finally:
        conns.close()


def _tmp(ws: Workspace) -> Path:
    p = ws.path(".reconcile/tmp")
    p.mkdir(parents=True, exist_ok=True)
    return p
