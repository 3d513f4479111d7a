"""Run notifications by e-mail (SMTP) and webhook (Standard Webhooks, Slack-compatible).

    notify_runs(ws, reports, environ) -> list[DeliveryResult]

``RunReport`` says what happened in one recorded run; ``DeliveryResult`` whether one
recipient was told. Delivery problems are returned, never raised.
"""

from reconciler.notify.delivery import DeliveryResult, notify_runs
from reconciler.notify.report import AudienceCounts, RunReport
from reconciler.notify.retry import RetryPolicy

__all__ = ["AudienceCounts", "DeliveryResult", "RetryPolicy", "RunReport", "notify_runs"]
