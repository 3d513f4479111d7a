"""The local ``sandbox`` destination: audiences in a DuckDB file you can open and inspect.

The embedded default of the example workspace and the test double of last resort: it
speaks protocol v2 like every adapter (columns in, per-member outcomes out) and has failure
knobs (:class:`~destinations.sandbox.config.SandboxConfig`). What it stores is described in
:mod:`destinations.sandbox.store`.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import duckdb

if TYPE_CHECKING:
    import httpx

from destinations.base import (
    AudienceRef,
    CallContext,
    Capabilities,
    DestinationConfig,
    DestinationContext,
    Identity,
    JobStatus,
    Limits,
    MemberBatch,
    Outcome,
    RemovalBatch,
)
from destinations.identity import SANDBOX
from destinations.redaction import Credentials
from destinations.retry import RetryPolicy
from destinations.sandbox import store
from destinations.sandbox.config import SandboxConfig, SandboxCredentials
from reconciler import errors

__all__ = ["SandboxDestination"]


class SandboxDestination:
    """A :class:`~destinations.base.Destination` kept in a local DuckDB file."""

    type_name: ClassVar[str] = "sandbox"
    config_model: ClassVar[type[DestinationConfig]] = SandboxConfig
    credentials_model: ClassVar[type[Credentials]] = SandboxCredentials
    capabilities = Capabilities(update=True, rename=True, attributes=True)
    #: a local file answers at once: retry fast (tests use the transient knobs)
    retry_policy = RetryPolicy(backoff_start=0.005, backoff_max=0.05, throttle_backoff_start=0.005)

    def __init__(
        self,
        config: DestinationConfig,
        credentials: Credentials,
        context: DestinationContext,
        client: httpx.Client | None = None,
    ) -> None:
        """No I/O: the file is opened by the first call that needs it."""
        self.config = config = SandboxConfig.model_validate(config.model_dump())
        self.context = context
        accepted = tuple(dict.fromkeys(config.identifiers))
        context.check_phone_country(accepted)
        self.identity = Identity(SANDBOX, accepted)
        self.limits = Limits(members_per_call=config.batch_size)
        path = Path(config.path).expanduser()
        self.path = path if path.is_absolute() else Path(context.root) / path
        self._rng = random.Random(config.seed)
        self._con: duckdb.DuckDBPyConnection | None = None
        #: one call at a time on the file's connection (the engine polls a job while another
        #: call is in flight; a remote service would take both)
        self._lock = threading.RLock()
        self._writes = 0  # write calls made, for exit_after_calls
        #: how ``delay_per_batch`` waits (tests inject a recorder instead of sleeping)
        self.sleep: Callable[[float], None] = time.sleep

    # -- reads (a plan: they find nothing and create nothing when there is no file) ----------
    def list_audiences(self) -> list[AudienceRef]:
        return [] if self._absent() else self._read(store.audiences)

    def find_audience(self, id_or_name: str) -> AudienceRef | None:
        """The audience with this id, else the newest one with exactly this name."""

        def find(con: duckdb.DuckDBPyConnection) -> list[AudienceRef]:
            by_id = store.audiences(con, "a.id = $v", v=id_or_name)
            return by_id or store.audiences(con, "a.name = $v", newest=True, v=id_or_name)

        if self._absent():
            return None
        found = self._read(find)
        return found[0] if found else None

    def read_audience(self, audience: AudienceRef) -> AudienceRef | None:
        if self._absent():
            return None
        # existence and name only (a primary-key lookup): sizing means scanning the log
        return self._read(lambda con: store.audience(con, audience.id))

    def find_created_audience(self, name: str, *, idempotency_key: str) -> AudienceRef | None:
        """The audience a create call with this key made (its ``creation_key``), or None."""
        if self._absent():
            return None
        found = store.transaction(
            self._connection(),
            lambda con: store.audiences(con, "a.creation_key = $v", v=idempotency_key),
        )
        return found[0] if found else None

    # -- writes ------------------------------------------------------------------------------
    def create_audience(self, name: str, *, idempotency_key: str) -> AudienceRef:
        """A new empty audience; a key seen before returns the audience it created then."""

        def create(con: duckdb.DuckDBPyConnection) -> AudienceRef:
            seen = store.replayed(con, idempotency_key)
            if seen is not None:
                if seen[0] != "create" or seen[1] is None:
                    raise errors.TerminalError(
                        f"idempotency key {idempotency_key!r} was used for {seen[0]}"
                    )
                return self._require(con, seen[1])
            return store.create(con, name, idempotency_key)

        return self._write("create", create, delay=True)

    def rename_audience(self, audience: AudienceRef, name: str) -> AudienceRef:
        def rename(con: duckdb.DuckDBPyConnection) -> AudienceRef:
            self._require(con, audience.id)
            con.execute("UPDATE audiences SET name = ? WHERE id = ?", [name, audience.id])
            return store.audiences(con, "a.id = $v", v=audience.id)[0]

        return self._write("rename", rename)

    def add(self, audience: AudienceRef, batch: MemberBatch, call: CallContext) -> Outcome:
        """Store each member's record strings (one row each) with its attributes."""
        return self._upsert("add", audience, batch, call)

    def update(self, audience: AudienceRef, batch: MemberBatch, call: CallContext) -> Outcome:
        """Same as :meth:`add`: the newest row of a match key holds its attributes."""
        return self._upsert("update", audience, batch, call)

    def remove(self, audience: AudienceRef, batch: RemovalBatch, call: CallContext) -> Outcome:
        """Remove exactly the recorded strings (absent ones are fine)."""
        rejected = self._rejections(batch.keys, self.config.reject_remove_keys)
        retry = self._retries(batch.keys, rejected)
        pairs = zip(batch.keys, batch.records, strict=True)
        match_keys = sorted(
            {r for k, rec in pairs if k not in rejected and k not in retry for r in rec}
        )

        def remove(con: duckdb.DuckDBPyConnection) -> Outcome:
            self._require(con, audience.id)
            if store.replayed(con, call.batch_id) is not None:
                return Outcome(rejected, retry, detail="replayed batch: already applied")
            gone = store.remove(con, audience.id, match_keys)
            store.log_request(con, call.batch_id, "remove", audience.id)
            return self._as_job(con, Outcome(rejected, retry, detail=f"removed {gone} rows"))

        return self._write("remove", remove, delay=True)

    def poll(self, job: str) -> JobStatus:
        """An asynchronous job (``async_jobs``): done after ``job_polls`` polls."""

        def poll(con: duckdb.DuckDBPyConnection) -> JobStatus:
            row = con.execute("SELECT polls_left, outcome FROM jobs WHERE id = ?", [job]).fetchone()
            if row is None:
                raise errors.TerminalError(f"the sandbox has no job {job!r}")
            left = max(row[0] - 1, 0)
            con.execute("UPDATE jobs SET polls_left = ? WHERE id = ?", [left, job])
            if left:
                return JobStatus(done=False)
            data = json.loads(row[1])
            return JobStatus(True, Outcome(data["rejected"], data["retry"], detail=data["detail"]))

        return self._write("poll", poll)

    def _as_job(self, con: duckdb.DuckDBPyConnection, outcome: Outcome) -> Outcome:
        """With ``async_jobs``, a member call's answer is a job to poll."""
        if not self.config.async_jobs:
            return outcome
        job = "job_" + secrets.token_hex(6)
        data = {"rejected": outcome.rejected, "retry": outcome.retry, "detail": outcome.detail}
        con.execute(
            "INSERT INTO jobs VALUES (?, ?, ?)", [job, self.config.job_polls, json.dumps(data)]
        )
        return Outcome(job=job, detail=f"submitted as job {job}")

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    # -- internals ---------------------------------------------------------------------------
    def _upsert(
        self, op: str, audience: AudienceRef, batch: MemberBatch, call: CallContext
    ) -> Outcome:
        rejected = self._rejections(batch.keys, self.config.reject_add_keys)
        retry = self._retries(batch.keys, rejected)
        table = store.as_table(batch)

        def upsert(con: duckdb.DuckDBPyConnection) -> Outcome:
            self._require(con, audience.id)
            if store.replayed(con, call.batch_id) is not None:
                return Outcome(rejected, retry, detail="replayed batch: already applied")
            skip = [*rejected, *retry]
            rows = store.upsert(con, audience.id, table, list(batch.attributes), skip)
            store.log_request(con, call.batch_id, op, audience.id)
            kept = len(batch) - len(skip)
            detail = f"{kept} members ({rows} rows) stored, {len(rejected)} rejected"
            return self._as_job(con, Outcome(rejected, retry, detail=detail))

        return self._write(op, upsert, delay=True)

    def _rejections(self, keys: Sequence[str], listed: list[str]) -> dict[str, str]:
        """Members refused for good: those the knob lists, the others at ``reject_rate``."""
        if not listed and not self.config.reject_rate:
            return {}  # nothing to refuse: the keys are not even read
        named = set(listed)
        out = {
            k: "rejected by the sandbox (listed in the integration's config)"
            for k in keys
            if k in named
        }
        rate = self.config.reject_rate
        if rate:
            out |= {
                k: "rejected by the sandbox (reject_rate)"
                for k in keys
                if k not in out and self._rng.random() < rate
            }
        return out

    def _retries(self, keys: Sequence[str], rejected: dict[str, str]) -> dict[str, str]:
        if not self.config.retry_keys:
            return {}
        named = set(self.config.retry_keys)
        return {
            k: "the sandbox asks to retry later (retry_keys)"
            for k in keys
            if k in named and k not in rejected
        }

    def _absent(self) -> bool:
        """No sandbox file yet: reads find nothing and create nothing (a plan writes no file)."""
        self._check_credentials()
        return self._con is None and not self.path.exists()

    def _check_credentials(self) -> None:
        if self.config.refuse_credentials:
            raise errors.CredentialsRefused(
                "the sandbox refused the credentials (refuse_credentials: true); "
                "set it to false in the integration's config"
            )

    def _connection(self) -> duckdb.DuckDBPyConnection:
        self._check_credentials()
        if self._con is None:
            try:
                self._con = store.connect(self.path)
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise
                raise errors.TransientError(
                    f"the sandbox file {self.path} is in use by another process (an apply "
                    "running?); try again when it has finished"
                ) from None
        return self._con

    def _require(self, con: duckdb.DuckDBPyConnection, audience_id: str) -> AudienceRef:
        found = store.audience(con, audience_id)
        if found is None:
            raise errors.AudienceGone(
                f"the sandbox has no audience with id {audience_id!r} (deleted outside "
                "reconcile?); the next plan creates it again"
            )
        return found

    def _read(self, fn: store.Call):
        with self._lock:
            return store.transaction(self._connection(), fn)

    def _write(self, op: str, fn: store.Call, *, delay: bool = False):
        """Run ``fn`` in one transaction, after the knobs had their say."""
        with self._lock:
            return self._write_locked(op, fn, delay=delay)

    def _write_locked(self, op: str, fn: store.Call, *, delay: bool):
        con = self._connection()
        self._writes += 1
        exiting = self._writes == self.config.exit_after_calls
        if exiting and self.config.exit_when == "before":
            os._exit(137)
        if delay and self.config.delay_per_batch:
            self.sleep(self.config.delay_per_batch)
        transient, throttled, lost = (self._rng.random() for _ in range(3))
        if transient < self.config.transient_error_rate:
            raise errors.TransientError(
                f"sandbox {op}: simulated transient error (nothing written)"
            )
        if throttled < self.config.throttle_rate:
            raise errors.ThrottledError(f"sandbox {op}: simulated rate limit", retry_after=0.01)
        result = store.transaction(con, fn)
        if exiting:  # exit_when: after — applied, never answered
            os._exit(137)
        if lost < self.config.lost_ack_rate:
            err = errors.TransientError(
                f"sandbox {op}: simulated lost answer (the call was applied)"
            )
            err.unanswered = True
            raise err
        return result
