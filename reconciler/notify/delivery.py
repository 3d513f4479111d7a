"""Tell each activation's recipients about its run: ``notify_runs`` renders one message per
activation and delivers it by e-mail and to webhooks.

Notifying happens after the run is recorded and must never undo or fail it: every problem
(a template that does not render, an unset variable, a mail server that is down, a webhook
answering 500) is retried where that may help and then returned as a failed
:class:`DeliveryResult`, never raised. Results and their error texts hold no secrets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import httpx

from reconciler.notify import mail, webhook
from reconciler.notify.messages import TemplateProblem, Templates
from reconciler.notify.report import RunReport, scrub_text, template_context
from reconciler.notify.retry import RetryPolicy
from reconciler.workspace.notify_spec import NotificationSettings, webhook_url_problem
from reconciler.workspace.spec_base import ENV_REF_RE

if TYPE_CHECKING:
    from reconciler.workspace.loader import Workspace


@dataclass(frozen=True)
class DeliveryResult:
    """One recipient of one activation's notification: an e-mail address, or a webhook
    (shown as ``scheme://host/…`` or as its ``${env:VAR}`` reference)."""

    activation: str
    channel: Literal["email", "webhook"]
    recipient: str
    delivered: bool
    attempts: int = 0
    error: str | None = None

    def __str__(self) -> str:
        head = f"{self.activation}: {self.channel} to {self.recipient}"
        if self.delivered:
            return f"{head}: delivered"
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        return f"{head}: not delivered{tries}: {self.error}"


def notify_runs(
    ws: Workspace,
    reports: list[RunReport],
    environ: Mapping[str, str],
    *,
    policy: RetryPolicy | None = None,
    http: httpx.Client | None = None,
) -> list[DeliveryResult]:
    """Notify about each run in ``reports`` whose activation asks for it (``notify``) and
    whose outcome is in its ``notify.on``. ``environ`` resolves ``${env:VAR}`` references.
    Returns one result per recipient; never raises for a delivery problem."""
    notifier = _Notifier(ws, environ, policy or RetryPolicy(), http)
    try:
        out: list[DeliveryResult] = []
        for report in reports:
            out.extend(notifier.notify(report))
        return out
    finally:
        notifier.close()


class _Notifier:
    def __init__(
        self,
        ws: Workspace,
        environ: Mapping[str, str],
        policy: RetryPolicy,
        http: httpx.Client | None,
    ):
        self.ws, self.environ, self.policy = ws, environ, policy
        self.settings = ws.config.notifications or NotificationSettings()
        self.templates = Templates(ws.root, self.settings.templates)
        self._http, self._own_http = http, http is None
        # every secret value this call may touch, removed from any text it returns
        refs = [self.settings.webhook_secret]
        if self.settings.smtp is not None:
            refs += [self.settings.smtp.username, self.settings.smtp.password]
        refs += [u for a in ws.activations.values() for u in a.notify.webhook]
        self.secrets = tuple(v for r in refs if r for v in [self._env(r)[0]] if v)

    def close(self) -> None:
        if self._own_http and self._http is not None:
            self._http.close()

    def notify(self, report: RunReport) -> list[DeliveryResult]:
        act = self.ws.activations.get(report.activation)
        if act is None or not act.notify.configured:
            return []
        if not report.events & set(act.notify.on):
            return []
        context = template_context(report, self.secrets)
        out = []
        if act.notify.email:
            out += self._email(report.activation, act.notify.email, context)
        for url in act.notify.webhook:
            out.append(self._webhook(report.activation, url, context))
        return out

    # ------------------------------------------------------------------ channels
    def _email(self, activation: str, to: list[str], context: dict) -> list[DeliveryResult]:
        def failed(error: str, attempts: int = 0) -> list[DeliveryResult]:
            return [
                DeliveryResult(activation, "email", a, False, attempts, self._clean(error))
                for a in to
            ]

        smtp = self.settings.smtp
        if smtp is None:  # validate refuses this; a report is still better than a crash
            return failed("no mail server: add notifications.smtp to reconcile.yaml")
        credentials = None
        if smtp.username is not None and smtp.password is not None:
            (user, user_var), (password, password_var) = (
                self._env(smtp.username),
                self._env(smtp.password),
            )
            unset = [
                v or "?" for v, value in ((user_var, user), (password_var, password)) if not value
            ]
            if unset or user is None or password is None:
                return failed(f"environment variable {' and '.join(unset)} is not set")
            credentials = mail.Credentials(user, password)
        try:
            message = self.templates.email(context)
            outcomes = mail.send(smtp, credentials, to, message, self.policy)
        except TemplateProblem as exc:
            return failed(f"template {exc}")
        except Exception as exc:  # a bug here must not fail the recorded run
            return failed(f"unexpected error while sending e-mail: {type(exc).__name__}: {exc}")
        return [
            DeliveryResult(
                activation, "email", o.address, o.delivered, o.attempts, self._clean(o.error)
            )
            for o in outcomes
        ]

    def _webhook(self, activation: str, configured: str, context: dict) -> DeliveryResult:
        url, var = self._env(configured)
        shown = configured if var else webhook.redacted(configured)

        def result(delivered: bool, attempts: int = 0, error: str | None = None):
            return DeliveryResult(
                activation, "webhook", shown, delivered, attempts, self._clean(error)
            )

        if not url:
            return result(False, error=f"environment variable {var} is not set")
        problem = webhook_url_problem(url)
        if problem:
            return result(False, error=f"{problem} (in {var})")
        try:
            body = self.templates.webhook(context)
            sign = None
            if self.settings.webhook_secret is not None:
                secret, secret_var = self._env(self.settings.webhook_secret)
                if not secret:
                    return result(False, error=f"environment variable {secret_var} is not set")
                sign = webhook.signer(secret)
            attempts, failure = webhook.post(self.http, url, body, sign, self.policy)
        except TemplateProblem as exc:
            return result(False, error=f"template {exc}")
        except ValueError as exc:
            return result(False, error=str(exc))
        except Exception as exc:  # a bug here must not fail the recorded run
            return result(False, error=f"unexpected error: {type(exc).__name__}: {exc}")
        if failure is not None:
            return result(False, attempts, str(failure))
        return result(True, attempts)

    # ------------------------------------------------------------------ helpers
    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(follow_redirects=False)
        return self._http

    def _env(self, value: str) -> tuple[str | None, str | None]:
        """(resolved value, variable name) of an ``${env:VAR}`` reference; a plain value
        resolves to itself."""
        match = ENV_REF_RE.fullmatch(value)
        if match is None:
            return value, None
        return self.environ.get(match.group(1)) or None, match.group(1)

    def _clean(self, text: str | None) -> str | None:
        return None if text is None else scrub_text(text, self.secrets)
