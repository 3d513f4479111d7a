"""The validated ``config:`` block of a ``type: sandbox`` integration, failure knobs included."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr

from destinations.base import DestinationConfig
from destinations.redaction import Credentials

_Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class SandboxConfig(DestinationConfig):
    """Where the sandbox file is, what it matches on, its batch size, and failure knobs (like
    dlt's dummy destination) for trying journaling and recovery:

    - ``transient_error_rate``: a write call fails with a transient error, nothing written;
    - ``throttle_rate``: a write call is throttled (``Retry-After: 0.01``), nothing written;
    - ``lost_ack_rate``: a write call is applied, then its answer is lost (transient error);
    - ``reject_rate``: each member of a member call is rejected;
    - ``reject_add_keys`` / ``reject_remove_keys``: members with these profile keys are
      rejected by every add and update / every remove;
    - ``retry_keys``: members with these profile keys are answered "retry later";
    - ``exit_after_calls`` + ``exit_when``: the process exits (``os._exit(137)``) at its N-th
      write call, ``before`` applying it or ``after`` applying it and before answering;
    - ``async_jobs`` + ``job_polls``: member calls answer as asynchronous jobs (like Klaviyo's
      bulk import), done after that many polls;
    - ``refuse_credentials``: every call is refused as if the token were invalid;
    - ``delay_per_batch``: seconds slept before every create and member call;
    - ``seed``: the random generator's seed.
    """

    path: str = Field(".reconcile/sandbox.duckdb", description="the sandbox's DuckDB file")
    identifiers: list[Literal["email", "phone"]] = Field(
        default_factory=lambda: ["email", "phone"],  # type: ignore[arg-type]
        min_length=1,
        description="identifier types matched on, in preference order",
    )
    batch_size: int = Field(1000, ge=1, le=100_000, description="members per call")
    delay_per_batch: float = Field(
        0.0, ge=0.0, description="seconds slept before every create and member call"
    )
    transient_error_rate: _Rate = Field(
        0.0, description="share of write calls that fail with a transient error"
    )
    throttle_rate: _Rate = Field(0.0, description="share of write calls that are throttled")
    lost_ack_rate: _Rate = Field(
        0.0, description="share of write calls applied whose answer is then lost"
    )
    reject_rate: _Rate = Field(0.0, description="share of members each member call rejects")
    reject_add_keys: list[str] = Field(
        default_factory=list, description="profile keys every add and update rejects"
    )
    reject_remove_keys: list[str] = Field(
        default_factory=list, description="profile keys every remove rejects"
    )
    retry_keys: list[str] = Field(
        default_factory=list, description="profile keys answered 'retry later'"
    )
    exit_after_calls: int | None = Field(
        None, ge=1, description="the process exits at this write call (crash testing)"
    )
    exit_when: Literal["before", "after"] = Field(
        "before", description="exit before applying that call, or after applying it"
    )
    async_jobs: bool = Field(False, description="member calls answer as asynchronous jobs")
    job_polls: int = Field(1, ge=1, description="polls until an asynchronous job is done")
    refuse_credentials: bool = Field(
        False, description="refuse every call as if the token were invalid"
    )
    seed: int | None = Field(None, description="seed of the failure knobs' random generator")


class SandboxCredentials(Credentials):
    """The sandbox needs no credentials; an optional ``token`` is accepted (and never used,
    never shown) so workspaces can try out how credentials are handled."""

    token: SecretStr | None = None
