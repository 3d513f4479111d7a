"""The ``meta_custom_audiences`` destination: Meta (Facebook) Custom Audiences from a
customer file, over the Graph API.

- Audiences live in one ad account (``act_<id>/customaudiences``); each one this adapter
  creates carries ``reconcile:<creation key>`` in its description, so a creation whose
  answer was lost is found again (name *and* key) instead of made twice.
- Members are added with ``POST /{id}/users`` and removed with ``DELETE /{id}/users``
  (at most 10,000 rows a call), in Meta's single- or multi-key schema
  (:mod:`destinations.meta.payload`). Meta has no per-member answer: entries it finds
  invalid are only counted and sampled, so members whose values appear in the samples
  are rejected and the rest accepted.
- No attributes and no in-place update: a changed identifier is sent by the engine as
  remove-old + add-new. Audiences can be renamed.
- Errors and throttling: :mod:`destinations.meta.client`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

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
from destinations.identity import META
from destinations.meta import payload
from destinations.meta.client import GraphClient, no_such_object
from destinations.meta.config import MetaConfig, MetaCredentials
from destinations.redaction import Credentials
from reconciler.errors import (
    AudienceGone,
    ConfigError,
    DestinationError,
    TerminalError,
    TransientError,
)

__all__ = ["CREATION_KEY_PREFIX", "MetaCustomAudiences"]

#: an audience's description is this followed by the engine's creation key
CREATION_KEY_PREFIX = "reconcile:"
PAGE_SIZE = 200
_R = TypeVar("_R")


class MetaCustomAudiences:
    """A :class:`~destinations.base.Destination` for Meta Custom Audiences."""

    type_name: ClassVar[str] = "meta_custom_audiences"
    config_model: ClassVar[type[DestinationConfig]] = MetaConfig
    credentials_model: ClassVar[type[Credentials]] = MetaCredentials
    capabilities = Capabilities(remove=True, update=False, rename=True, attributes=False)

    def __init__(
        self,
        config: DestinationConfig,
        credentials: Credentials,
        context: DestinationContext,
        client: httpx.Client | None = None,
    ) -> None:
        """No I/O. ``client`` is for tests (pointed at a fake Graph server)."""
        self.config = config = MetaConfig.model_validate(config.model_dump())
        if not isinstance(credentials, MetaCredentials):
            raise ConfigError("the Meta destination needs MetaCredentials (access_token)")
        self.context = context
        self.identity = Identity(META, tuple(config.identifiers))
        self.fields = tuple(e.field for e in self.identity.encodings)
        self.limits = Limits(
            members_per_call=config.batch_size,
            requests_per_minute=config.requests_per_minute,
            concurrency=config.concurrency,
        )
        self.retry_policy = config.retry_policy(
            throttle_backoff_start=config.throttle_backoff_seconds
        )
        self.graph = GraphClient(config, credentials, context.endpoint, client)

    # -- audiences ---------------------------------------------------------------------------
    def _listed(self, fields: str) -> list[dict[str, Any]]:
        path = f"{self.config.account}/customaudiences"
        return list(self.graph.pages(path, {"fields": fields, "limit": PAGE_SIZE}))

    def list_audiences(self) -> list[AudienceRef]:
        return [_ref(a) for a in self._listed("id,name,approximate_count_lower_bound")]

    def find_audience(self, id_or_name: str) -> AudienceRef | None:
        """By id (when it is one of this ad account's audiences), else the newest audience
        with exactly this name."""
        if id_or_name.isdigit():
            found = self._get(id_or_name, "id,name,account_id,approximate_count_lower_bound")
            if found is not None and str(found.get("account_id")) == self.config.ad_account_id:
                return _ref(found)
        named = [a for a in self._listed("id,name") if a.get("name") == id_or_name]
        if not named:
            return None
        return _ref(max(named, key=lambda a: int(a["id"]) if str(a["id"]).isdigit() else 0))

    def read_audience(self, audience: AudienceRef) -> AudienceRef | None:
        found = self._get(audience.id, "id,name,approximate_count_lower_bound")
        return None if found is None else _ref(found)

    def create_audience(self, name: str, *, idempotency_key: str) -> AudienceRef:
        """A new empty audience, or the one an earlier call with this key created (Meta has
        no idempotency keys: the key in the description stands in for one)."""
        earlier = self.find_created_audience(name, idempotency_key=idempotency_key)
        if earlier is not None:
            return earlier
        answer = self.graph.call(
            "POST",
            f"{self.config.account}/customaudiences",
            body={
                "name": name,
                "subtype": "CUSTOM",
                "description": CREATION_KEY_PREFIX + idempotency_key,
                "customer_file_source": self.config.customer_file_source,
            },
        )
        if not answer.get("id"):
            raise TerminalError("Meta created the audience but answered no id")
        return AudienceRef(str(answer["id"]), name, 0)

    def find_created_audience(self, name: str, *, idempotency_key: str) -> AudienceRef | None:
        """The audience with this name whose description carries this creation key."""
        mark = CREATION_KEY_PREFIX + idempotency_key
        for a in self._listed("id,name,description"):
            if a.get("name") == name and a.get("description") == mark:
                return _ref(a)
        return None

    def rename_audience(self, audience: AudienceRef, name: str) -> AudienceRef:
        self._on_audience(lambda: self.graph.call("POST", audience.id, body={"name": name}))
        return AudienceRef(audience.id, name, audience.size)

    # -- members -----------------------------------------------------------------------------
    def add(self, audience: AudienceRef, batch: MemberBatch, call: CallContext) -> Outcome:
        return self._users("POST", audience, payload.addition(self.fields, batch), call)

    def update(self, audience: AudienceRef, batch: MemberBatch, call: CallContext) -> Outcome:
        raise TerminalError(
            "Meta audiences have no attributes to update (the engine removes the old "
            "identifiers and adds the new ones)"
        )

    def remove(self, audience: AudienceRef, batch: RemovalBatch, call: CallContext) -> Outcome:
        """One request, or more when members recorded with several values of one field need
        more rows than a request takes: the first request is the call's batch of the engine's
        session; each further one is a session of its own, derived from the call's key."""
        sent = payload.removals(batch, self.config.batch_size)
        outcome = self._users("DELETE", audience, sent[0], call)
        for i, more in enumerate(sent[1:], start=1):
            extra = CallContext(f"{call.batch_id}:{i}", call.session_id)
            try:
                outcome = _merged(outcome, self._users("DELETE", audience, more, extra))
            except DestinationError as exc:  # the requests before it went through
                exc.partial = True
                raise
        return outcome

    def poll(self, job: str) -> JobStatus:
        raise TerminalError("Meta Custom Audiences submits no asynchronous jobs")

    def close(self) -> None:
        self.graph.close()

    # -- internals ---------------------------------------------------------------------------
    def _users(
        self, method: str, audience: AudienceRef, sent: payload.Payload, call: CallContext
    ) -> Outcome:
        if not sent.keys:
            return Outcome(rejected=dict(sent.unsendable), detail="nothing Meta could match")
        content = sent.request_body(payload.session(call))
        path = f"{audience.id}/users"
        answer = self._on_audience(lambda: self.graph.call(method, path, content=content))
        return payload.outcome(answer, sent, "received" if method == "POST" else "removed")

    def _on_audience(self, fn: Callable[[], _R]) -> _R:
        """A call on one audience: Meta's "no such object" there means it was deleted."""
        try:
            return fn()
        except TerminalError as exc:
            if no_such_object(exc):
                raise AudienceGone(
                    f"the audience no longer exists at Meta ({exc}); the next plan creates it again"
                ) from None
            raise

    def _get(self, audience_id: str, fields: str) -> dict[str, Any] | None:
        """One audience's fields, or None when Meta says it is deleted or does not exist."""
        try:
            return self.graph.call("GET", audience_id, params={"fields": fields})
        except AudienceGone:
            return None
        except TerminalError as exc:
            if no_such_object(exc):
                return None
            raise


def _merged(a: Outcome, b: Outcome) -> Outcome:
    """The outcome of one call sent as two requests."""
    detail = "; ".join(d for d in (a.detail, b.detail) if d) or None
    return Outcome(
        rejected=a.rejected | b.rejected,
        detail=detail,
        unidentified=a.unidentified + b.unidentified,
    )


def _ref(item: dict[str, Any]) -> AudienceRef:
    if not item.get("id"):  # not an audience as Meta describes one
        raise TransientError(f"Meta answered an audience without an id: {str(item)[:200]}")
    size = item.get("approximate_count_lower_bound")  # -1 while Meta has no estimate
    known = isinstance(size, int) and size >= 0
    return AudienceRef(str(item["id"]), str(item.get("name") or ""), size if known else None)
