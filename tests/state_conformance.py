"""The conformance suite every state backend passes (tests/test_state_backends.py runs it).

A backend is described by a small JSON-able *spec* (``{"kind": "embedded", ...}``), so a
child process can open the same state: lock contention, a holder that dies and a write
killed half-way are tested with real processes.

Subclasses provide the ``spec`` fixture and say what their lock does when its holder dies:
``STALE_LOCKS`` (PostgreSQL: the row stays, reported stale, broken by id) or not (embedded:
the kernel releases the file lock with the process).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import PlanError, StateError, StateLocked
from reconciler.state import versions
from reconciler.state.backend import EmbeddedBackend, StateBackend, opened

REPO = Path(__file__).resolve().parent.parent
BIG_FP = 2**64 - 1  # fingerprints are unsigned 64-bit


def make_backend(spec: dict[str, Any]) -> StateBackend:
    if spec["kind"] == "embedded":
        return EmbeddedBackend(Path(spec["path"]))
    from reconciler.state.postgres.backend import PostgresBackend

    return PostgresBackend(
        spec["dsn"], spec["schema"], tmp=Path(spec["tmp"]), heartbeat=spec.get("heartbeat", 10)
    )


# ---------------------------------------------------------------------- child processes
CHILD = """
import json, os, signal, sys, time
from pathlib import Path
from datetime import date
sys.path.insert(0, {repo!r})
from tests.state_conformance import make_backend
from reconciler.state.backend import opened
spec, action, flag = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
backend = make_backend(spec)
if action in ("hold", "hold-and-die", "hold-and-write"):
    lock = backend.lock()
    lock.acquire("apply")
    flag.write_text(lock.info().id)
    if action == "hold-and-die":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "hold-and-write":
        while not flag.with_suffix(".go").exists():
            time.sleep(0.05)
        try:
            with opened(backend, write=True) as st:
                st.store().start_run("r-late", "a", "apply")
            print("wrote")
        except Exception as exc:
            print("refused:", exc)
        sys.exit(0)
    while not flag.with_suffix(".done").exists():
        time.sleep(0.05)
    lock.release()
elif action == "die-mid-write":
    with opened(backend, write=True) as st:
        store = st.store()
        with store.transaction():
            store.start_run("r-killed", "a", "apply")
            store.confirm_batch("b-killed", "a", "all", run_id="r-killed",
                insert=[(f"k{{i}}", ("h",), i) for i in range(5000)],
                counts={{"added": 5000}})
            flag.write_text("in the middle")
            os.kill(os.getpid(), signal.SIGKILL)
"""


def child(spec: dict[str, Any], action: str, flag: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD.format(repo=str(REPO)), json.dumps(spec), action, str(flag)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(flag: Path, proc: subprocess.Popen, timeout: float = 60) -> str:
    """Wait until the child wrote ``flag`` (or died)."""
    deadline = time.monotonic() + timeout
    while not flag.exists():
        if proc.poll() is not None and not flag.exists():
            out, err = proc.communicate()
            raise AssertionError(f"the child stopped early: {out}{err}")
        assert time.monotonic() < deadline, "the child never got there"
        time.sleep(0.05)
    return flag.read_text()


# ---------------------------------------------------------------------- a sample state
def write_sample(backend: StateBackend) -> None:
    with opened(backend, write=True) as st:
        store = st.store()
        store.ensure_activation(
            "a", destination="sandbox", frequency="daily", date_created=date(2026, 1, 2)
        )
        store.record_spec(
            "a",
            {"name": "A", "nested": [1, "x"]},
            "d1",
            frequency="daily",
            paused=False,
            destination="sandbox",
        )
        store.bump_serial("a")
        store.record_audience("a", "all", "Audience A", "res-1", True)
        store.start_run("r1", "a", "apply")
        store.journal_intent("b1", "r1", "a", "all", "add", 3)
        store.confirm_batch(
            "b1",
            "a",
            "all",
            run_id="r1",
            insert=[
                ("k1", ("h1", 'with "quote", comma'), 1),
                ("k2", (), BIG_FP),
                ("k3", ("h3",), None),
            ],
            counts={"added": 2, "failed": 1},
            rejections=[("k2", "add", "no usable identifier")],
        )
        store.journal_intent("b2", "r1", "a", "all", "add", 2)
        store.submit_job(
            "b2",
            run_id="r1",
            activation_id="a",
            grp="all",
            op="add",
            job="job-9",
            audience_id="res-1",
            keys=["k4", "k5"],
            records=[["x", "y"], []],
            fps=[5, None],
        )
        store.journal_intent("c1", "r1", "a", "all", "create", 1, "Audience A")
        store.finish_run("r1", "Complete", audiences=[{"group": "all", "added": 2}], error=None)
        store.set_status("a", "Complete", success=True, ran=True)


def snapshot(backend: StateBackend) -> dict[str, Any]:
    """Everything a reader sees, as plain values."""
    with opened(backend, write=False) as st:
        r = st.reader()
        con = st.reader().con
        members = con.execute(
            f"SELECT key, grp, fp, record FROM {r.members_sql('a')} ORDER BY key"
        ).fetchall()
        return {
            "lineage": r.lineage(),
            "activations": r.activations(),
            "audiences": r.audiences("a"),
            "counts": r.member_counts("a"),
            "members": members,
            "runs": r.runs("a"),
            "pending_create": r.pending_create("a", "all"),
        }


class StateBackendConformance:
    """Subclass with a ``spec`` fixture (a fresh, empty state per test)."""

    STALE_LOCKS = False  # True: a dead holder's lock stays until `state unlock ID`

    @pytest.fixture
    def backend(self, spec) -> StateBackend:
        return make_backend(spec)

    # ------------------------------------------------------------------ round trip
    def test_round_trip(self, backend):
        write_sample(backend)
        snap = snapshot(backend)
        rec = snap["activations"]["a"]
        assert rec.spec == {"name": "A", "nested": [1, "x"]} and rec.serial == 1
        assert rec.status == "Complete" and rec.ran and rec.date_created == date(2026, 1, 2)
        assert rec.last_success_at is not None
        assert snap["audiences"]["all"].resource_id == "res-1"
        assert snap["counts"] == {"all": 3}
        assert snap["members"] == [
            ("k1", "all", 1, ["h1", 'with "quote", comma']),
            ("k2", "all", BIG_FP, []),
            ("k3", "all", None, ["h3"]),
        ]
        (run,) = snap["runs"]
        assert (run.status, run.added, run.failed) == ("Complete", 2, 1)
        assert run.audiences == [{"group": "all", "added": 2}]
        assert snap["pending_create"][1] == "Audience A"
        assert snap["lineage"] and len(snap["lineage"]) == 32
        with opened(backend, write=True) as st:  # the writer sees the same, jobs included
            (job,) = st.store().pending_jobs()
            assert (job["keys"], job["records"], job["fps"]) == (
                ["k4", "k5"],
                [["x", "y"], []],
                [5, None],
            )
            assert st.reader().lineage() == snap["lineage"]
        assert snapshot(backend) == snap  # opening to write changed nothing

    def test_a_window_of_whole_batches(self, backend):
        """Calls the destination took whole are journaled ahead and recorded together, a
        call's members possibly over two transactions: the same members, closed intents
        (with each call's detail) and run counts as one call at a time; a call whose members
        are not all recorded, or none, stays open."""
        import pyarrow as pa

        def rows(keys: list[str]) -> Any:
            return pa.table(
                {
                    "key": keys,
                    "rec": [[f"email_sha256:{k}"] for k in keys],
                    "fp": pa.array([BIG_FP - int(k[1:]) for k in keys], pa.uint64()),
                }
            )

        with opened(backend, write=True) as st:
            store = st.store()
            store.ensure_activation(
                "a", destination="sandbox", frequency="daily", date_created=date(2026, 1, 2)
            )
            store.start_run("r1", "a", "apply")
            w2 = rows(["k3", "k4"])
            with store.transaction():
                batches = [("w1", 2), ("w2", 2), ("w3", 1), ("w4", 1)]
                store.journal_intents(batches, "r1", "a", "all", "add")
                sent = [rows(["k1", "k2"]), w2, rows(["k5"]), rows(["k6"])]
                store.journal_inflight([(b, r) for (b, _), r in zip(batches, sent, strict=True)])
            with store.transaction():  # w1 whole, w2's first member
                parts = [rows(["k1", "k2"]), w2.slice(0, 1)]
                store.record_sent_batches(parts, [("w1", "took 2")], "a", "all", run_id="r1")
            with store.transaction():  # w2's second member, w3 whole
                parts = [w2.slice(1, 1), rows(["k5"])]
                completed = [("w2", None), ("w3", "took 1")]
                store.record_sent_batches(parts, completed, "a", "all", run_id="r1")
            assert st.reader().in_flight("a") == 1
            # w4: journaled, never answered: its member is recorded as possibly sent
            assert store.close_interrupted_batches() == [("a", "all", ["k6"])]
            store.finish_run("r1", "Complete", audiences=[], error=None)
        snap = snapshot(backend)
        assert snap["members"] == [
            (k, "all", BIG_FP - int(k[1:]), [f"email_sha256:{k}"])
            for k in ("k1", "k2", "k3", "k4", "k5")
        ] + [("k6", "all", None, ["email_sha256:k6"])]
        (run,) = snap["runs"]
        assert run.added == 5
        with opened(backend, write=False) as st:
            r = st.reader()
            journal = r.con.execute(
                f"SELECT batch_id, op, size, status, detail, finished_at IS NOT NULL "
                f"FROM {r.c}.journal ORDER BY batch_id"
            ).fetchall()
        assert journal == [
            ("w1", "add", 2, "done", "took 2", True),
            ("w2", "add", 2, "done", None, True),
            ("w3", "add", 1, "done", "took 1", True),
            ("w4", "add", 1, "interrupted", journal[3][4], True),
        ]

    def test_calls_left_in_flight_are_recorded_as_possibly_sent(self, backend):
        """A run killed between its calls and their answers: the next apply records an
        addition's members with the strings sent, adds an update's new strings to the
        member's record, keeps a removal's members — all with no fingerprint, so the plan
        sends them again or removes them. A call refused outright took nothing."""
        import pyarrow as pa

        def rows(recs: dict[str, list[str]]) -> Any:
            return pa.table({"key": list(recs), "rec": list(recs.values())})

        write_sample(backend)  # a: k1, k2 (rejected: no record), k3 (no fingerprint)
        before = {m[0]: m for m in snapshot(backend)["members"]}
        with opened(backend, write=True) as st:
            store = st.store()
            store.start_run("r2", "a", "apply")
            for batch_id, op in [("b-add", "add"), ("b-upd", "update"), ("b-rm", "remove")]:
                store.journal_intent(batch_id, "r2", "a", "all", op, 1)
            store.journal_intent("b-refused", "r2", "a", "all", "add", 1)
            store.journal_inflight([("b-add", rows({"k7": ["e:7"], "k1": ["e:1"]}))])
            store.journal_inflight([("b-upd", rows({"k1": ["h1", "w"]}))])
            store.journal_inflight_keys("b-rm", ["k2"])
            store.journal_inflight([("b-refused", rows({"k8": ["e:8"]}))])
            store.journal_refused("b-refused")
            assert st.reader().in_flight() == 4  # the refused call's member is not
            recovered = store.close_interrupted_batches()
        # k1 was recorded already: the addition does not record it again
        assert recovered == [("a", "all", ["k1", "k2", "k7"])]
        snap = snapshot(backend)
        members = {m[0]: m for m in snap["members"]}
        assert members["k7"] == ("k7", "all", None, ["e:7"])
        assert members["k1"] == ("k1", "all", None, ["h1", 'with "quote", comma', "w"])
        assert members["k2"] == ("k2", "all", None, before["k2"][3])
        assert members["k3"] == before["k3"]
        assert "k8" not in members
        with opened(backend, write=False) as st:
            r = st.reader()
            assert r.in_flight() == 0
            statuses = dict(r.con.execute(f"SELECT batch_id, status FROM {r.c}.journal").fetchall())
            left = r.con.execute(f"SELECT count(*) FROM {r.c}.inflight").fetchall()[0][0]
        assert {b: statuses[b] for b in ("b-add", "b-upd", "b-rm", "b-refused")} == dict.fromkeys(
            ("b-add", "b-upd", "b-rm", "b-refused"), "interrupted"
        )
        assert left == 0

    def test_empty_state_reads_without_being_made(self, backend):
        snap = snapshot(backend)
        assert snap["activations"] == {} and snap["lineage"] is None

    def test_serials_and_removals(self, backend):
        write_sample(backend)
        with opened(backend, write=True) as st:
            store = st.store()
            store.bump_serial("a")
            store.confirm_batch("", "a", "all", delete=["k1", "k3"])
            store.finish_job(
                store.pending_jobs()[0], rejected={"k5": "bad"}, retry=[], detail="done"
            )
        snap = snapshot(backend)
        assert snap["activations"]["a"].serial == 2
        assert [m[0] for m in snap["members"]] == ["k2", "k4", "k5"]
        with opened(backend, write=True) as st:
            assert st.store().pending_jobs() == []
            st.store().move_activation("a", "b")
        with opened(backend, write=False) as st:
            assert set(st.reader().activations()) == {"b"}
            assert st.reader().member_counts("b") == {"all": 3}

    def test_lineage_refuses_a_plan_of_another_state(self, backend):
        write_sample(backend)
        lineage = snapshot(backend)["lineage"]
        versions.check_plan_lineage(lineage, lineage, "plan.zip")
        versions.check_plan_lineage(None, lineage, "plan.zip")  # planned before any state
        with pytest.raises(PlanError, match="another state"):
            versions.check_plan_lineage(versions.new_lineage(), lineage, "plan.zip")

    # ------------------------------------------------------------------ locks
    def test_lock_contention_between_two_processes(self, backend, spec, tmp_path):
        flag = tmp_path / "held"
        proc = child(spec, "hold", flag)
        try:
            lock_id = wait_for(flag, proc)
            lock = backend.lock()
            with pytest.raises(StateLocked) as exc:
                lock.acquire("apply", timeout=0)
            assert lock_id in str(exc.value) and "reconcile apply" in str(exc.value)
            assert lock.holder() is not None and lock.info().id == lock_id
            assert not lock.info().stale
        finally:
            flag.with_suffix(".done").write_text("")
            proc.communicate(timeout=60)
        assert proc.returncode == 0
        lock = backend.lock()
        lock.acquire("apply", timeout=5)
        lock.release()
        assert lock.info() is None

    def test_lock_of_a_dead_holder(self, backend, spec, tmp_path):
        flag = tmp_path / "held"
        proc = child(spec, "hold-and-die", flag)
        lock_id = wait_for(flag, proc)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        lock = backend.lock()
        if not self.STALE_LOCKS:
            lock.acquire("apply")  # the kernel released it with the process
            lock.release()
            return
        deadline = time.monotonic() + 60
        while not (info := lock.info()).stale:  # three heartbeats late
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert info.id == lock_id
        # its process ran on this machine and is gone: once stale, the lock is taken over
        # (a stale lock of another machine is only reported: see test_state_postgres_cli)
        lock.acquire("apply")
        try:
            assert lock.info().id == lock.lock_id != lock_id
        finally:
            lock.release()

    def test_force_unlock_breaks_only_the_named_lock(self, backend, spec, tmp_path):
        flag = tmp_path / "held"
        proc = child(spec, "hold-and-write", flag)
        try:
            lock_id = wait_for(flag, proc)
            lock = backend.lock()
            assert not lock.force_unlock("0123456789ab")  # another id: nothing broken
            assert lock.info().id == lock_id
            # a live holder's lock is never broken (on PostgreSQL: a fresh heartbeat, or a
            # process of this machine that runs): a second apply would run beside it
            with pytest.raises(StateError, match="live process"):
                lock.force_unlock(lock_id)
            assert lock.info().id == lock_id
        finally:
            flag.with_suffix(".go").write_text("")
            out, err = proc.communicate(timeout=60)
        assert "wrote" in out, out + err  # the holder went on and recorded its write

    # ------------------------------------------------------------------ crashes
    def test_crash_mid_write_leaves_the_state_as_before(self, backend, spec, tmp_path):
        write_sample(backend)
        before = snapshot(backend)
        flag = tmp_path / "writing"
        proc = child(spec, "die-mid-write", flag)
        wait_for(flag, proc)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert snapshot(backend) == before

    def test_failed_transaction_rolls_back(self, backend):
        write_sample(backend)
        before = snapshot(backend)
        with opened(backend, write=True) as st:
            store = st.store()
            with pytest.raises(RuntimeError), store.transaction():
                store.confirm_batch("", "a", "all", delete=["k1"], insert=[("k9", ("z",), 9)])
                store.start_run("r2", "a", "apply")
                raise RuntimeError("boom")
        assert snapshot(backend) == before

    # ------------------------------------------------------------------ versions
    def test_a_newer_state_is_refused(self, backend):
        write_sample(backend)
        self.set_version(backend, versions.SCHEMA_VERSION + 1)
        for write in (False, True):
            newer = f"version {versions.SCHEMA_VERSION + 1}"
            with pytest.raises(StateError, match=newer), opened(backend, write=write):
                pass

    def test_interrupted_migration_finishes_on_rerun(self, backend, monkeypatch):
        write_sample(backend)
        self.set_version(backend, 1, drop_lineage=True)
        self.migrate(backend, fail=True)
        assert self.version(backend) == (1, None)  # the failed step left version 1
        self.migrate(backend, fail=False)
        version, lineage = self.version(backend)
        assert version == versions.SCHEMA_VERSION and lineage and len(lineage) == 32
        assert snapshot(backend)["counts"] == {"all": 3}

    # backends implement these three
    def set_version(self, backend, version: int, drop_lineage: bool = False) -> None:
        raise NotImplementedError

    def version(self, backend) -> tuple[int, str | None]:
        raise NotImplementedError

    def migrate(self, backend, fail: bool) -> None:
        raise NotImplementedError


def failing_steps(steps: tuple[versions.Step, ...]) -> tuple[versions.Step, ...]:
    """The real steps, the last one failing after its own statements ran (a migration that
    dies half-way)."""
    last = steps[-1]
    broken = versions.Step(last.version, last.what, [*last.statements, "SELECT no_such_column"])
    return (*steps[:-1], broken)
