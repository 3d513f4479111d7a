"""Build destination adapters for a workspace's integrations, lazily, with credentials
resolved from the environment (never logged, never rendered, never stored)."""

from __future__ import annotations

import os

from destinations import registry
from destinations.base import Destination, DestinationContext
from reconciler.endpoints import check_endpoints
from reconciler.errors import ConfigError
from reconciler.workspace.loader import Workspace
from reconciler.workspace.spec_base import ENV_REF_RE


class Connections:
    """``require_credentials=False`` (plan) builds adapters even when a credential's variable
    is unset — construction does no I/O; a call that needs the credential then fails."""

    def __init__(self, ws: Workspace, *, require_credentials: bool = True):
        self.ws = ws
        self.require_credentials = require_credentials
        self._open: dict[str, Destination] = {}

    def get(self, integration: str) -> Destination:
        if integration not in self._open:
            self._open[integration] = self._build(integration)
        return self._open[integration]

    def type_of(self, integration: str) -> str:
        return self.ws.integrations[integration].type

    def _build(self, name: str) -> Destination:
        integ = self.ws.integrations[name]
        factory = registry.load(integ.type)
        field = "endpoint" if integ.endpoint else "config"
        check_endpoints(
            name, integ.endpoint, integ.config, self.ws.location("integrations", name, field)
        )
        config = factory.config_model.model_validate(integ.config)
        credentials = {}
        for key, ref in integ.credentials.items():
            match = ENV_REF_RE.fullmatch(ref)
            assert match is not None  # validated by the spec
            var = match.group(1)
            value = os.environ.get(var)
            if not value and not self.require_credentials:
                continue
            if not value:
                raise ConfigError(
                    f"integration {name!r} needs credential {key!r} from environment "
                    f"variable {var}, which is not set",
                    self.ws.location("integrations", name, "credentials", key),
                )
            credentials[key] = value
        context = DestinationContext(
            root=self.ws.root,
            default_phone_country=self.ws.config.source.profiles.default_phone_country,
            endpoint=integ.endpoint,
            integration=name,
        )
        model = factory.credentials_model
        if self.require_credentials or set(credentials) == set(integ.credentials):
            try:
                creds = model.from_mapping(credentials, integration=name)
            except ConfigError as exc:
                raise ConfigError(
                    exc.message, self.ws.location("integrations", name, "credentials")
                ) from None
        else:  # a plan that contacts no destination builds the adapter without them
            creds = model.model_construct()
        try:
            return factory(config, creds, context, None)
        except ConfigError as exc:
            if exc.location is not None:
                raise
            raise ConfigError(exc.message, self.ws.location("integrations", name)) from None

    def close(self) -> None:
        for dest in self._open.values():
            dest.close()
        self._open.clear()
