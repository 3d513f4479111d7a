"""The ``webhook`` destination: audience changes POSTed as signed JSON events.

Each destination call is one event (:mod:`destinations.webhook.payload`), signed the
Standard Webhooks way (:mod:`destinations.webhook.client`) with the call's batch id as
``webhook-id``, so a receiver that de-duplicates on it applies every batch once even when a
lost answer makes the engine send it again. An audience is a name and an id minted here
(from the creation's idempotency key, so a creation resent after a crash gets the same id and
the same ``webhook-id``); the receiver learns of it through an ``audience.created`` event,
and this integration's :class:`~destinations.webhook.registry.AudienceRegistry` remembers it.

Capabilities: remove, update (``audience.members_changed``), attributes, create; no rename
(the id is the receiver's handle) and no refresh: a receiver is not asked what it holds, so
drift cannot be seen from here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

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
from destinations.http import make_client
from destinations.identity import HASHED, RAW
from destinations.redaction import Credentials
from destinations.webhook import payload
from destinations.webhook.client import WebhookClient
from destinations.webhook.config import WebhookConfig, WebhookCredentials
from destinations.webhook.registry import AudienceRegistry, Entry
from reconciler import errors

__all__ = ["WebhookDestination"]


def audience_id(creation_key: str) -> str:
    """The id of the audience a creation with this key makes (the same on every retry)."""
    return "aud_" + hashlib.sha256(creation_key.encode()).hexdigest()[:24]


class WebhookDestination:
    """A :class:`~destinations.base.Destination` that tells a receiver what changed."""

    type_name: ClassVar[str] = "webhook"
    config_model: ClassVar[type[DestinationConfig]] = WebhookConfig
    credentials_model: ClassVar[type[Credentials]] = WebhookCredentials
    capabilities = Capabilities(
        remove=True, update=True, rename=False, attributes=True, create=True, refresh=False
    )
    #: a creation is found only in this process's registry, written once the receiver
    #: answered: after a lost answer, looking again later finds nothing more (the retry
    #: sends ``audience.created`` again with the same ``webhook-id``)
    creation_settles = False

    @staticmethod
    def config_problems(
        config: DestinationConfig, endpoint: str | None
    ) -> list[tuple[str, tuple[str, ...]]]:
        """What ``validate`` reports beyond the config model: a receiver to send to."""
        if endpoint or getattr(config, "url", None):
            return []
        return [
            (
                "the webhook needs a receiver: set config.url (or the integration's endpoint)",
                ("config",),
            )
        ]

    def __init__(
        self,
        config: DestinationConfig,
        credentials: Credentials,
        context: DestinationContext,
        client: httpx.Client | None = None,
    ) -> None:
        """No I/O: the HTTP client connects on the first event, the registry is read when
        asked."""
        self.config = config = WebhookConfig.model_validate(config.model_dump())
        self.credentials = credentials
        self.context = context
        url = context.endpoint or config.url
        if url is None:
            raise errors.ConfigError(self.config_problems(config, None)[0][0])
        accepted = tuple(config.identifiers)
        context.check_phone_country(accepted)
        self.identity = Identity(RAW if config.pii == "raw" else HASHED, accepted)
        self.limits = Limits(members_per_call=config.batch_size)
        #: the receiver gets each member's key: a member who leaves is told by key, even
        #: when its identifiers are all another member's too
        self.members_by_key = config.send_keys
        self.retry_policy = config.retry_policy()
        name = context.integration or "webhook"
        path = Path(config.registry_path or f".reconcile/webhook-{name}.json").expanduser()
        self.registry = AudienceRegistry(path if path.is_absolute() else context.root / path)
        http = client or make_client(url, timeout=config.timeout(), max_connections=1)
        self.client = WebhookClient(http, url, self._secret)

    def _secret(self) -> str:
        secret = getattr(self.credentials, "secret", None)
        if secret is None:
            raise errors.ConfigError(
                "the webhook's signing secret is not set: add `secret: ${env:VAR}` under the "
                "integration's credentials"
            )
        return secret.get_secret_value()

    # -- audiences (from the registry) ---------------------------------------------------------
    @staticmethod
    def _ref(entry: Entry | None) -> AudienceRef | None:
        return None if entry is None else AudienceRef(entry.id, entry.name)

    def list_audiences(self) -> list[AudienceRef]:
        return [AudienceRef(e.id, e.name) for e in self.registry.entries()]

    def find_audience(self, id_or_name: str) -> AudienceRef | None:
        """The audience with this id, else the newest one this integration created with
        exactly this name."""
        return self._ref(self.registry.by_id(id_or_name) or self.registry.newest_named(id_or_name))

    def read_audience(self, audience: AudienceRef) -> AudienceRef | None:
        return self._ref(self.registry.by_id(audience.id))

    def find_created_audience(self, name: str, *, idempotency_key: str) -> AudienceRef | None:
        return self._ref(self.registry.by_key(idempotency_key))

    def create_audience(self, name: str, *, idempotency_key: str) -> AudienceRef:
        """Tell the receiver (``audience.created``, ``webhook-id`` = the key), then remember
        it. A key seen before returns the audience it made."""
        known = self.registry.by_key(idempotency_key)
        if known is not None:
            return AudienceRef(known.id, known.name)
        ref = AudienceRef(audience_id(idempotency_key), name)
        self._post(
            payload.created_event(ref, idempotency_key, pii=self.config.pii), idempotency_key
        )
        entry = self.registry.add(ref.id, name, idempotency_key)
        return AudienceRef(entry.id, entry.name)

    def rename_audience(self, audience: AudienceRef, name: str) -> AudienceRef:
        raise errors.TerminalError(
            "a webhook audience cannot be renamed (its id is the receiver's handle); "
            "keep the activation's name, or create a new activation"
        )

    # -- members -------------------------------------------------------------------------------
    def add(self, audience: AudienceRef, batch: MemberBatch, call: CallContext) -> Outcome:
        return self._members(payload.ENTERED, audience, batch, call)

    def update(self, audience: AudienceRef, batch: MemberBatch, call: CallContext) -> Outcome:
        return self._members(payload.CHANGED, audience, batch, call)

    def remove(self, audience: AudienceRef, batch: RemovalBatch, call: CallContext) -> Outcome:
        # identifiers a member no longer has (its e-mail changed): without the key, so a
        # receiver holding members by key keeps the member (members_changed replaced them)
        keyed = self.config.send_keys and not batch.stale
        event = payload.removal_event(
            audience, batch, call.batch_id, pii=self.config.pii, send_keys=keyed
        )
        return self._post(event, call.batch_id, batch.keys if keyed else ())

    def poll(self, job: str) -> JobStatus:
        raise errors.TerminalError("the webhook destination submits no asynchronous jobs")

    def close(self) -> None:
        self.client.close()

    # -- internals -----------------------------------------------------------------------------
    def _members(
        self, kind: str, audience: AudienceRef, batch: MemberBatch, call: CallContext
    ) -> Outcome:
        event = payload.members_event(
            kind,
            audience,
            batch,
            call.batch_id,
            pii=self.config.pii,
            send_keys=self.config.send_keys,
        )
        return self._post(event, call.batch_id, batch.keys if self.config.send_keys else ())

    def _post(self, event: dict, msg_id: str, keys: Sequence[str] = ()) -> Outcome:
        """Deliver; a 2xx answer may name members it will not take (see :func:`_refused`)."""
        response = self.client.deliver(msg_id, payload.dumps(event))
        rejected, retry = _refused(response, keys)
        detail = f"{event['type']}: receiver answered {response.status_code}"
        if rejected or retry:
            detail += f", refused {len(rejected)}, asked to retry {len(retry)}"
        return Outcome(rejected=rejected, retry=retry, detail=detail)


def _refused(response: httpx.Response, keys: Sequence[str]) -> tuple[dict, dict]:
    """``{"rejected": {key: reason}, "retry": {key: reason}}`` in a 2xx JSON answer: members
    refused for good / to be sent again by the next run. Keys not in the batch are ignored;
    any other body means every member was taken."""
    if not keys or "json" not in response.headers.get("content-type", ""):
        return {}, {}
    try:
        body = response.json()
    except ValueError:
        return {}, {}
    if not isinstance(body, dict):
        return {}, {}
    sent = set(keys)
    out: list[dict[str, str]] = []
    for name in ("rejected", "retry"):
        given = body.get(name)
        given = given if isinstance(given, dict) else {}
        out.append({str(k): str(v)[:200] for k, v in given.items() if k in sent})
    out[1] = {k: v for k, v in out[1].items() if k not in out[0]}
    return out[0], out[1]
