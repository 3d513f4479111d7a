"""The ``webhook`` destination: audience changes as signed Standard Webhooks events (see
:mod:`destinations.webhook.adapter` and ``docs/destinations.md``)."""

from destinations.webhook.adapter import WebhookDestination
from destinations.webhook.config import WebhookConfig, WebhookCredentials

__all__ = ["WebhookConfig", "WebhookCredentials", "WebhookDestination"]
