"""Asynchronous destination jobs (submitted, polled, finished) in the state: journaled when
submitted and polled after a crash, never submitted twice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import duckdb

from reconciler.state.journal_writes import utc_now
from reconciler.state.member_writes import MemberWrites


class JobWrites(MemberWrites):
    # ------------------------------------------------------------------ asynchronous jobs
    def submit_job(
        self,
        batch_id: str,
        *,
        run_id: str,
        activation_id: str,
        grp: str,
        op: str,
        job: str,
        audience_id: str,
        keys: Sequence[str],
        records: Sequence[Sequence[str]],
        fps: Sequence[int | None],
    ) -> None:
        """A destination accepted a batch as an asynchronous job: keep the job and its members
        and mark the intent submitted, in one transaction."""
        with self.transaction():
            self.con.execute(
                f"INSERT INTO {self.c}.jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    batch_id,
                    run_id,
                    activation_id,
                    grp,
                    op,
                    job,
                    audience_id,
                    list(keys),
                    [list(r) for r in records],
                    list(fps),
                    utc_now(),
                ],
            )
            self.con.execute(
                f"""UPDATE {self.c}.journal SET status = 'submitted', detail = ?
                    WHERE batch_id = ? AND status = 'intent'""",
                [f"job {job}", batch_id],
            )
            self._landed([batch_id])  # the job keeps its members from now on

    def pending_jobs(self) -> list[dict[str, Any]]:
        """Jobs submitted and not yet recorded (a run that died while they ran)."""
        try:
            rows = self.con.execute(
                f"""SELECT j.batch_id, j.run_id, j.activation_id, j.grp, j.op, j.job,
                       j.audience_id, j.keys, j.records, j.fps, a.destination
                    FROM {self.c}.jobs j LEFT JOIN {self.c}.activations a
                    ON a.id = j.activation_id ORDER BY j.submitted_at"""
            ).fetchall()
        except duckdb.CatalogException:  # a state from before jobs existed (read-only)
            return []
        cols = [
            "batch_id",
            "run_id",
            "activation_id",
            "grp",
            "op",
            "job",
            "audience_id",
            "keys",
            "records",
            "fps",
            "destination",
        ]
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def finish_job(
        self,
        job: Mapping[str, Any],
        *,
        rejected: Mapping[str, str],
        retry: Sequence[str],
        detail: str | None,
    ) -> dict[str, int]:
        """Record a finished job's members like a synchronous batch of its op (``add`` or
        ``remove``) and drop the job, in one transaction. Returns the counts."""
        keys, records, fps = job["keys"], job["records"], job["fps"]
        skip = set(retry) | set(rejected)
        ok = [i for i, k in enumerate(keys) if k not in skip]
        with self.transaction():
            if job["op"] == "remove":
                self._delete_members(job["activation_id"], job["grp"], [keys[i] for i in ok])
                counts = {"removed": len(ok), "failed": len(rejected) + len(retry)}
            else:
                rows = [(keys[i], tuple(records[i] or ()), fps[i]) for i in ok]
                rows += [(k, (), fps[keys.index(k)]) for k in rejected]
                self._insert_members(job["activation_id"], job["grp"], rows)
                counts = {"added": len(ok), "failed": len(rejected)}
            self.con.execute(f"DELETE FROM {self.c}.jobs WHERE batch_id = ?", [job["batch_id"]])
            self._journal_outcome_any(job["batch_id"], detail)
            if job["run_id"]:
                self._add_run_counts(job["run_id"], counts)
            if rejected:
                op = "remove" if job["op"] == "remove" else "add"
                self._add_rejections(
                    job["run_id"],
                    job["activation_id"],
                    job["grp"],
                    [(k, op, r) for k, r in rejected.items()],
                )
        return counts
