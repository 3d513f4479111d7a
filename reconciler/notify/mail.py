"""E-mail delivery with smtplib: one multipart (text + HTML) message per activation to all
of its addresses, over STARTTLS, implicit TLS or (to a loopback host only) plain SMTP.

Connection problems, timeouts and 4xx answers are transient (retried by the policy); 5xx
answers, refused credentials and a server without STARTTLS are terminal. Recipients the
server refuses are reported one by one; a temporarily refused recipient is retried alone.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage as MimeMessage
from email.utils import formatdate, make_msgid

from reconciler.notify.messages import EmailMessage
from reconciler.notify.retry import DeliveryFailed, RetryPolicy
from reconciler.workspace.notify_spec import SmtpSettings


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never printed, even by accident
        return "Credentials(***)"


@dataclass(frozen=True)
class RecipientOutcome:
    address: str
    delivered: bool
    attempts: int
    error: str | None = None


def build_message(smtp: SmtpSettings, to: list[str], message: EmailMessage) -> MimeMessage:
    mime = MimeMessage()
    mime["From"] = smtp.from_address
    mime["To"] = ", ".join(to)
    mime["Subject"] = message.subject
    mime["Date"] = formatdate(localtime=True)
    mime["Message-ID"] = make_msgid(domain=smtp.from_address.rpartition("@")[2])
    mime.set_content(message.text)
    mime.add_alternative(message.html, subtype="html")
    return mime


def send(
    smtp: SmtpSettings,
    credentials: Credentials | None,
    to: list[str],
    message: EmailMessage,
    policy: RetryPolicy,
) -> list[RecipientOutcome]:
    """Send ``message`` to ``to``; one outcome per address. Never raises for a delivery
    problem: failures are outcomes."""
    mime = build_message(smtp, to, message)
    pending = list(dict.fromkeys(to))
    done: dict[str, RecipientOutcome] = {}
    tried = dict.fromkeys(pending, 0)  # per address: one refused for good is tried once

    def attempt() -> None:
        for address in pending:
            tried[address] += 1
        refused = _deliver(smtp, credentials, mime, pending, policy.timeout)
        transient: list[str] = []
        for address in list(pending):
            if address not in refused:
                done[address] = RecipientOutcome(address, True, 0)
                continue
            code, text = refused[address]
            if 400 <= code < 500:
                transient.append(address)
            else:
                done[address] = RecipientOutcome(
                    address, False, 0, f"the mail server refused the address: {code} {text}"
                )
        pending[:] = transient
        if transient:
            code, text = refused[transient[0]]
            raise DeliveryFailed(
                f"the mail server deferred the address: {code} {text}", transient=True
            )

    _, _, failure = policy.call(attempt)
    outcomes = []
    for address in dict.fromkeys(to):
        got = done.get(address)
        if got is not None and address not in pending:
            outcomes.append(RecipientOutcome(address, got.delivered, tried[address], got.error))
        else:
            error = str(failure) if failure else "not delivered"
            outcomes.append(RecipientOutcome(address, False, tried[address], error))
    return outcomes


def _deliver(
    smtp: SmtpSettings,
    credentials: Credentials | None,
    mime: MimeMessage,
    to: list[str],
    timeout: float,
) -> dict[str, tuple[int, str]]:
    """One attempt: connect, secure, log in, send. Returns the refused recipients."""
    host, port = smtp.host, smtp.effective_port
    where = f"{host}:{port}"
    try:
        context = ssl.create_default_context()
        if smtp.security == "tls":
            server: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
        else:
            server = smtplib.SMTP(host, port, timeout=timeout)
        with server:
            if smtp.security == "starttls":
                server.ehlo()
                if not server.has_extn("starttls"):
                    raise DeliveryFailed(
                        f"the mail server {where} does not offer STARTTLS; nothing was sent "
                        "unencrypted (use `security: tls` if it speaks TLS on connect)",
                        transient=False,
                    )
                server.starttls(context=context)
                server.ehlo()
            if credentials is not None:
                server.login(credentials.username, credentials.password)
            refused = server.send_message(mime, from_addr=smtp.from_address, to_addrs=to)
            return {a: (code, _text(msg)) for a, (code, msg) in refused.items()}
    except DeliveryFailed:
        raise
    except smtplib.SMTPRecipientsRefused as exc:
        return {a: (code, _text(msg)) for a, (code, msg) in exc.recipients.items()}
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryFailed(
            f"the mail server {where} refused the login ({exc.smtp_code}); check the "
            "username and password variables",
            transient=False,
        ) from None
    except smtplib.SMTPResponseException as exc:
        raise DeliveryFailed(
            f"the mail server {where} answered {exc.smtp_code} {_text(exc.smtp_error)}",
            transient=400 <= exc.smtp_code < 500,
        ) from None
    except smtplib.SMTPNotSupportedError as exc:
        raise DeliveryFailed(
            f"the mail server {where} does not support what is needed: {exc}", transient=False
        ) from None
    except smtplib.SMTPServerDisconnected:
        raise DeliveryFailed(
            f"the mail server {where} closed the connection", transient=True
        ) from None
    except ssl.SSLError as exc:
        raise DeliveryFailed(
            f"TLS with the mail server {where} failed: {exc.reason or exc}", transient=False
        ) from None
    except (OSError, smtplib.SMTPException) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DeliveryFailed(
            f"cannot reach the mail server {where}: {why or type(exc).__name__}",
            transient=True,
        ) from None


def _text(value: bytes | str) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return " ".join(text.split())[:300]
