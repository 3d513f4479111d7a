"""Run notifications against real local receivers: an aiosmtpd SMTP server and an
http.server webhook receiver, both on 127.0.0.1 with ports chosen by the OS. Each test reads
what was actually delivered (the MIME message, the HTTP request) and checks it; failures
are provoked through the receivers (refusing, answering 503, not listening), never by
patching the sender."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from standardwebhooks.webhooks import Webhook

from reconciler.notify import AudienceCounts, RetryPolicy, RunReport, notify_runs
from reconciler.workspace.loader import load
from tests.conftest import RECONCILE_YAML, WS, cli

FAST = RetryPolicy(attempts=3, first_wait=0, timeout=5)
SECRET = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0xMjM0NTY="
PASSWORD = "hunter2-smtp-pass"
SLACK_TOKEN = "T000/B000/XXXXsecrettoken"
ACT = "segments: [seg-a]\ndestination: sandbox\nname: VIP\n"
START = datetime(2024, 6, 1, 6, 0, tzinfo=UTC)


# ---------------------------------------------------------------------- receivers


@dataclass
class Mailbox:
    """What the SMTP server received, and how it answers (``rcpt``: one reply per RCPT
    command, consumed in order; "250" when exhausted)."""

    messages: list = field(default_factory=list)
    rcpt: list[str] = field(default_factory=list)
    rcpt_seen: int = 0
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.rcpt_seen += 1
        reply = self.rcpt.pop(0) if self.rcpt else "250 OK"
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 Message accepted"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        if isinstance(auth_data, LoginPassword):
            user, password = auth_data.login.decode(), auth_data.password.decode()
            self.logins.append((user, password))
            ok = user == "mailer" and password == PASSWORD
            return AuthResult(success=ok, handled=False)  # handled=False: the server answers
        return AuthResult(success=False, handled=False)


class _PortZeroController(Controller):
    """aiosmtpd's Controller on the port the OS picked (it would otherwise poke port 0)."""

    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    ctl = _PortZeroController(
        box,
        hostname="127.0.0.1",
        port=0,
        authenticator=box.authenticate,
        auth_require_tls=False,
    )
    ctl.start()
    try:
        yield box, ctl.port
    finally:
        ctl.stop()


@dataclass
class Receiver:
    port: int
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            rec.requests.append((self.path, dict(self.headers.items()), body))
            status = rec.statuses.pop(0) if rec.statuses else 200
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- workspaces


def notifications(port: int, *, login: bool = False, extra: str = "", security="none") -> str:
    creds = "    username: ${env:SMTP_USER}\n    password: ${env:SMTP_PASSWORD}\n" if login else ""
    return (
        RECONCILE_YAML + "notifications:\n  smtp:\n    host: 127.0.0.1\n"
        f"    port: {port}\n    security: {security}\n    from: reconcile@example.com\n"
        + creds
        + "  webhook_secret: ${env:HOOK_SECRET}\n"
        + extra
    )


ENV = {
    "SMTP_USER": "mailer",
    "SMTP_PASSWORD": PASSWORD,
    "HOOK_SECRET": SECRET,
    "SLACK_URL": "",
}


@pytest.fixture(autouse=True)
def _notification_secrets_set(monkeypatch):
    """`validate` and `plan` refuse a notification secret whose variable is not set: the
    variables the workspaces here name are set (a test unsets them to see that)."""
    for var in ("SMTP_USER", "SMTP_PASSWORD", "HOOK_SECRET"):
        monkeypatch.setenv(var, ENV[var])


def report(activation: str = "vip", **changes) -> RunReport:
    base = RunReport(
        activation=activation,
        file=f"activations/{activation}.yaml",
        trigger="schedule",
        status="Complete",
        started=START,
        finished=START + timedelta(seconds=75),
        audiences=[AudienceCounts("VIP <b>gold</b>", "all", 12, 3, 4)],
    )
    return replace(base, **changes)


def run(ws: WS, reports: list[RunReport], environ=None, policy=FAST):
    return notify_runs(load(ws.root), reports, ENV if environ is None else environ, policy=policy)


def body(msg, kind: str) -> str:
    """The text or HTML part of a received message, with the wire's CRLF line ends as LF."""
    return msg.get_body((kind,)).get_content().replace("\r\n", "\n")


def everything(results, box: Mailbox | None = None, rec: Receiver | None = None) -> str:
    """All text a run of notify_runs produced or delivered, to look for secrets in."""
    out = [repr(results), *map(str, results)]
    for _, _, msg in box.messages if box else ():
        out.append(msg.as_string())
    for _, headers, body in rec.requests if rec else ():
        out += [repr(headers), body.decode()]
    return "\n".join(out)


# ---------------------------------------------------------------------- e-mail


def test_email_is_one_multipart_message_with_counts(workspace, smtp):
    box, port = smtp
    act = ACT + "notify: [ops@example.com, data@example.com]\n"
    ws = workspace({"vip": act}, reconcile_yaml=notifications(port, login=True))
    results = run(ws, [report()])
    assert [(r.channel, r.recipient, r.delivered, r.attempts) for r in results] == [
        ("email", "ops@example.com", True, 1),
        ("email", "data@example.com", True, 1),
    ]
    assert box.logins == [("mailer", PASSWORD)]
    ((sender, rcpts, msg),) = box.messages
    assert sender == "reconcile@example.com"
    assert rcpts == ["ops@example.com", "data@example.com"]
    assert msg["Subject"] == "[reconcile] vip: Complete"
    assert msg["To"] == "ops@example.com, data@example.com"
    assert msg.get_content_type() == "multipart/alternative"
    text = body(msg, "plain")
    html = body(msg, "html")
    assert "Activation vip (activations/vip.yaml) ran: Complete." in text
    assert "- VIP <b>gold</b>: +12 / -3 / ~4" in text
    assert "Trigger:  schedule" in text and "(1m 15s)" in text
    assert "VIP &lt;b&gt;gold&lt;/b&gt;" in html and "<b>gold</b>" not in html
    assert PASSWORD not in everything(results, box)


def test_failed_run_carries_its_error_without_secrets(workspace, smtp):
    box, port = smtp
    ws = workspace(
        {"vip": ACT + "notify: [ops@example.com]\n"},
        reconcile_yaml=notifications(port, login=True),
    )
    failed = report(status="Failed", error=f"sandbox refused the call (auth {PASSWORD})")
    (result,) = run(ws, [failed])
    assert result.delivered
    ((_, _, msg),) = box.messages
    text = body(msg, "plain")
    assert "Error:\nsandbox refused the call (auth ***)" in text
    assert PASSWORD not in everything([result], box)


@pytest.mark.parametrize(
    ("on", "sent"),
    [
        (None, {"Complete", "Failed", "Disabled", "Refused"}),
        ("[failed, disabled]", {"Failed", "Disabled"}),
        ("[complete]", {"Complete"}),
        ("[mass_removal]", {"Refused"}),
    ],
)
def test_on_selects_which_runs_notify(workspace, smtp, on, sent):
    box, port = smtp
    spec = "notify:\n  email: [ops@example.com]\n" + (f"  on: {on}\n" if on else "")
    ws = workspace({"vip": ACT + spec}, reconcile_yaml=notifications(port))
    reports = [
        report(status="Complete"),
        report(status="Failed", error="boom"),
        report(status="Disabled", error="credentials refused"),
        report(status="Refused", mass_removal=True, error="refused by the mass-removal guard"),
    ]
    results = run(ws, reports)
    assert all(r.delivered for r in results) and len(results) == len(sent)
    subjects = {m["Subject"].split(": ", 1)[1].split(" ")[0] for _, _, m in box.messages}
    assert subjects == sent


def test_activations_without_notify_and_unknown_ones_are_skipped(workspace, smtp):
    box, port = smtp
    ws = workspace({"vip": ACT}, reconcile_yaml=notifications(port))
    assert run(ws, [report(), report("deleted-one")]) == []
    assert box.messages == []


def test_refused_and_deferred_recipients_are_reported_one_by_one(workspace, smtp):
    box, port = smtp
    ws = workspace(
        {"vip": ACT + "notify: [a@example.com, b@example.com, c@example.com]\n"},
        reconcile_yaml=notifications(port),
    )
    # a: accepted; b: permanently refused; c: deferred once, then accepted on the retry
    box.rcpt = ["250 OK", "550 5.1.1 no such user", "451 4.3.0 try later", "250 OK"]
    results = run(ws, [report()])
    got = {r.recipient: (r.delivered, r.error) for r in results}
    assert got["a@example.com"] == (True, None)
    assert got["c@example.com"] == (True, None)
    assert got["b@example.com"][0] is False
    assert "refused the address: 550 5.1.1 no such user" in got["b@example.com"][1]
    assert [rcpts for _, rcpts, _ in box.messages] == [["a@example.com"], ["c@example.com"]]
    # each address's own attempts: the refused one was tried once, not "after 2 attempts"
    tries = {r.recipient: r.attempts for r in results}
    assert tries == {"a@example.com": 1, "b@example.com": 1, "c@example.com": 2}
    assert "attempts" not in str(next(r for r in results if r.recipient == "b@example.com"))


def test_a_server_that_keeps_deferring_is_retried_then_reported(workspace, smtp):
    box, port = smtp
    ws = workspace({"vip": ACT + "notify: [a@example.com]\n"}, reconcile_yaml=notifications(port))
    box.rcpt = ["451 4.3.0 mailbox busy"] * 10
    (result,) = run(ws, [report()])
    assert not result.delivered and result.attempts == 3 and box.rcpt_seen == 3
    assert "deferred the address: 451 4.3.0 mailbox busy" in result.error
    assert "after 3 attempts" in str(result)
    assert box.messages == []


def test_a_permanent_refusal_is_not_retried(workspace, smtp):
    box, port = smtp
    ws = workspace({"vip": ACT + "notify: [a@example.com]\n"}, reconcile_yaml=notifications(port))
    box.rcpt = ["554 5.7.1 relay denied"] * 10
    (result,) = run(ws, [report()])
    assert not result.delivered and result.attempts == 1 and box.rcpt_seen == 1


def test_a_mail_server_that_is_down_is_reported_never_raised(workspace):
    port = closed_port()
    ws = workspace({"vip": ACT + "notify: [a@example.com]\n"}, reconcile_yaml=notifications(port))
    (result,) = run(ws, [report()])
    assert not result.delivered and result.attempts == 3
    assert f"cannot reach the mail server 127.0.0.1:{port}" in result.error
    assert "Traceback" not in str(result)


def test_wrong_password_is_terminal_and_not_echoed(workspace, smtp):
    box, port = smtp
    ws = workspace(
        {"vip": ACT + "notify: [a@example.com]\n"},
        reconcile_yaml=notifications(port, login=True),
    )
    env = {**ENV, "SMTP_PASSWORD": "not-the-password"}
    (result,) = run(ws, [report()], env)
    assert not result.delivered and result.attempts == 1
    assert "refused the login" in result.error and "not-the-password" not in str(result)
    assert box.messages == []


def test_unset_credentials_are_reported_by_variable_name(workspace, smtp):
    box, port = smtp
    ws = workspace(
        {"vip": ACT + "notify: [a@example.com]\n"},
        reconcile_yaml=notifications(port, login=True),
    )
    (result,) = run(ws, [report()], {"SMTP_USER": "mailer"})
    assert not result.delivered and result.attempts == 0
    assert result.error == "environment variable SMTP_PASSWORD is not set"
    assert box.messages == []


def test_starttls_never_falls_back_to_plain_text(workspace, smtp):
    # the test server offers no STARTTLS: nothing may be sent unencrypted
    box, port = smtp
    reconcile = notifications(port, security="starttls")
    ws = workspace({"vip": ACT + "notify: [a@example.com]\n"}, reconcile_yaml=reconcile)
    (result,) = run(ws, [report()])
    assert not result.delivered and result.attempts == 1
    assert "does not offer STARTTLS" in result.error
    assert box.messages == []


# ---------------------------------------------------------------------- webhooks


def test_webhook_is_signed_slack_compatible_json(workspace, receiver):
    ws = workspace(
        {"vip": ACT + f"notify:\n  webhook: ['{receiver.url()}']\n"},
        reconcile_yaml=notifications(closed_port()),
    )
    results = run(ws, [report(), report(status="Failed", error="boom")])
    assert [(r.channel, r.delivered, r.attempts) for r in results] == [("webhook", True, 1)] * 2
    assert results[0].recipient == f"http://127.0.0.1:{receiver.port}/…"
    ids = set()
    for path, headers, body in receiver.requests:
        assert path == "/hook"
        headers = {k.lower(): v for k, v in headers.items()}
        assert headers["content-type"] == "application/json"
        payload = Webhook(SECRET).verify(body, headers)  # raises unless the signature holds
        ids.add(headers["webhook-id"])
        assert set(payload) == {"text", "blocks"}
        assert all(b["type"] == "section" for b in payload["blocks"])
    assert len(ids) == 2 and all(i.startswith("msg_") for i in ids)
    first = json.loads(receiver.requests[0][2])
    assert first["text"] == "Activation vip: Complete (schedule, 1m 15s)"
    # Slack's escaping (& < >): a name can neither ping a channel nor disguise a link
    assert "VIP &lt;b&gt;gold&lt;/b&gt;: +12 / -3 / ~4" in json.dumps(first, ensure_ascii=False)
    second = json.loads(receiver.requests[1][2])
    assert second["blocks"][-1]["text"]["text"] == "Error: boom"


def test_webhook_names_and_errors_cannot_ping_or_disguise_links(workspace, receiver):
    ws = workspace(
        {"vip": ACT + f"notify:\n  webhook: ['{receiver.url()}']\n"},
        reconcile_yaml=notifications(closed_port()),
    )
    hostile = "VIP <!channel> <http://evil.example|click me> & *bold*"
    audience = AudienceCounts(hostile, "all", 1, 0, 0)
    run(ws, [report(status="Failed", error="<!here> bad", audiences=[audience])])
    text = json.dumps(json.loads(receiver.requests[0][2]), ensure_ascii=False)
    assert "<!channel>" not in text and "<http://evil" not in text and "<!here>" not in text
    assert "VIP &lt;!channel&gt; &lt;http://evil.example|click me&gt; &amp; *bold*" in text
    assert "Error: &lt;!here&gt; bad" in text
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "b3RoZXIta2V5LW5vdC10aGUtcmlnaHQtb25lLTEyMzQ=").verify(
            receiver.requests[0][2], receiver.requests[0][1]
        )


def test_webhook_retries_server_errors_with_the_same_id(workspace, receiver):
    ws = workspace(
        {"vip": ACT + f"notify:\n  webhook: ['{receiver.url()}']\n"},
        reconcile_yaml=notifications(closed_port()),
    )
    receiver.statuses = [503, 500]
    (result,) = run(ws, [report()])
    assert result.delivered and result.attempts == 3
    ids = {dict(h)["webhook-id"] for _, h, _ in receiver.requests}
    assert len(receiver.requests) == 3 and len(ids) == 1


def test_webhook_client_errors_are_terminal_and_down_receivers_reported(workspace, receiver):
    down = f"http://127.0.0.1:{closed_port()}/hook"
    ws = workspace(
        {"vip": ACT + f"notify:\n  webhook: ['{receiver.url()}', '{down}']\n"},
        reconcile_yaml=notifications(closed_port()),
    )
    receiver.statuses = [404]
    gone, unreachable = run(ws, [report()])
    assert (gone.delivered, gone.attempts) == (False, 1)
    assert gone.error == f"the webhook http://127.0.0.1:{receiver.port}/… answered HTTP 404"
    assert (unreachable.delivered, unreachable.attempts) == (False, 3)
    assert "cannot reach the webhook" in unreachable.error and "/hook" not in unreachable.error


def test_webhook_url_from_the_environment_stays_secret(workspace, receiver):
    ws = workspace(
        {"vip": ACT + "notify:\n  webhook: ['${env:SLACK_URL}']\n"},
        reconcile_yaml=notifications(closed_port()),
    )
    url = receiver.url(f"/services/{SLACK_TOKEN}")
    (result,) = run(ws, [report(error=f"saw {url}")], {**ENV, "SLACK_URL": url})
    assert result.delivered and result.recipient == "${env:SLACK_URL}"
    assert receiver.requests[0][0] == f"/services/{SLACK_TOKEN}"
    (unset,) = run(ws, [report()], {**ENV, "SLACK_URL": ""})
    assert not unset.delivered and unset.error == "environment variable SLACK_URL is not set"
    plain = "http://example.com/hook"
    (insecure,) = run(ws, [report()], {**ENV, "SLACK_URL": plain})
    assert not insecure.delivered and "must use https://" in insecure.error
    text = everything([result, unset, insecure])
    assert SLACK_TOKEN not in text and SECRET not in text


def test_unsigned_without_a_secret_and_a_bad_secret_is_reported(workspace, receiver):
    yaml = notifications(closed_port()).replace("  webhook_secret: ${env:HOOK_SECRET}\n", "")
    ws = workspace(
        {"vip": ACT + f"notify:\n  webhook: ['{receiver.url()}']\n"}, reconcile_yaml=yaml
    )
    (result,) = run(ws, [report()])
    headers = {k.lower() for k in receiver.requests[0][1]}
    assert result.delivered and {"webhook-id", "webhook-timestamp"} <= headers
    assert "webhook-signature" not in headers
    signed = workspace(
        {"vip": ACT + f"notify:\n  webhook: ['{receiver.url()}']\n"},
        reconcile_yaml=notifications(closed_port()),
    )
    (bad,) = run(signed, [report()], {**ENV, "HOOK_SECRET": "whsec_%%%not-base64"})
    assert not bad.delivered and "not a Standard Webhooks secret" in bad.error
    assert "%%%not-base64" not in str(bad) and len(receiver.requests) == 1


# ---------------------------------------------------------------------- templates


def test_workspace_templates_override_the_defaults(workspace, smtp, receiver):
    box, port = smtp
    extra = "  templates: notify-templates\n"
    act = ACT + f"notify:\n  email: [ops@example.com]\n  webhook: ['{receiver.url()}']\n"
    ws = workspace({"vip": act}, reconcile_yaml=notifications(port, extra=extra))
    ws.write("notify-templates/subject.txt.j2", "{{ activation }} added {{ totals.added }}\n")
    ws.write(
        "notify-templates/email.html.j2",
        "{% for a in audiences %}<i>{{ a.name }}</i>{% endfor %}",
    )
    ws.write(
        "notify-templates/webhook.json.j2",
        '{"event": {{ status | tojson }}, "added": {{ totals.added }}}',
    )
    results = run(ws, [report()])
    assert all(r.delivered for r in results), results
    ((_, _, msg),) = box.messages
    assert msg["Subject"] == "vip added 12"
    assert body(msg, "html") == "<i>VIP &lt;b&gt;gold&lt;/b&gt;</i>\n"
    # the text body was not overridden: the default is used
    assert "Activation vip (activations/vip.yaml)" in body(msg, "plain")
    assert json.loads(receiver.requests[0][2]) == {"event": "Complete", "added": 12}


def test_a_template_that_fails_is_reported_naming_its_file(workspace, smtp, receiver):
    box, port = smtp
    extra = "  templates: notify-templates\n"
    act = ACT + f"notify:\n  email: [ops@example.com]\n  webhook: ['{receiver.url()}']\n"
    ws = workspace({"vip": act}, reconcile_yaml=notifications(port, extra=extra))
    ws.write("notify-templates/email.txt.j2", "fine\n")
    loaded = load(ws.root)  # validate would refuse the broken templates written next
    ws.write("notify-templates/email.txt.j2", "fine\n{{ 1 / 0 }}\n")
    ws.write("notify-templates/webhook.json.j2", "{'not': json}")
    mailed, hooked = notify_runs(loaded, [report()], ENV, policy=FAST)
    assert not mailed.delivered
    assert mailed.error.startswith("template notify-templates/email.txt.j2:2: template error")
    assert not hooked.delivered
    assert "notify-templates/webhook.json.j2: does not render valid JSON" in hooked.error
    assert box.messages == [] and receiver.requests == []


# ---------------------------------------------------------------------- validate


def fails_validate(ws: WS) -> list[str]:
    res = cli(ws, "validate")
    assert res.exit_code == 1, res.output + res.stderr
    assert res.stderr.startswith("Error: ") and "Traceback" not in res.stderr
    return [line.strip() for line in res.stderr.strip().splitlines()[1:]]


def test_validate_accepts_both_notify_forms(workspace, monkeypatch):
    for var in ("SMTP_USER", "SMTP_PASSWORD", "SLACK_URL"):
        monkeypatch.setenv(var, "https://hooks.example.com/set" if var == "SLACK_URL" else "x")
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    ws = workspace(
        {
            "short": ACT + "notify: [ops@example.com]\n",
            "long": ACT + "notify:\n  email: [ops@example.com]\n  webhook: "
            "['https://hooks.example.com/x', '${env:SLACK_URL}', 'http://localhost:9/x']\n"
            "  on: [failed, mass_removal]\n",
        },
        reconcile_yaml=notifications(2525, login=True),
    )
    res = cli(ws, "validate")
    assert res.exit_code == 0, res.stderr


def test_validate_and_plan_name_unset_notification_variables(workspace, monkeypatch):
    """A notification that could not be delivered is found before the run, not in its log."""
    for var in ("SMTP_USER", "SMTP_PASSWORD", "HOOK_SECRET", "SLACK_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SMTP_USER", "mailer")
    ws = workspace(
        {"act": ACT + "notify:\n  webhook: ['https://hooks.example.com/x', '${env:SLACK_URL}']\n"},
        reconcile_yaml=notifications(2525, login=True),
    )
    lines = fails_validate(ws)
    assert len(lines) == 3, lines
    assert any(
        line.startswith("activations/act.yaml:5: notify.webhook.1: ") and "SLACK_URL" in line
        for line in lines
    ), lines
    assert any("notifications.smtp.password" in line and "SMTP_PASSWORD" in line for line in lines)
    assert any("notifications.webhook_secret" in line and "HOOK_SECRET" in line for line in lines)
    planned = cli(ws, "plan")
    assert planned.exit_code == 1 and "SLACK_URL, which is not set" in planned.stderr


def test_validate_checks_the_url_a_notification_variable_holds(workspace, monkeypatch):
    """`${env:SLACK_URL}` holding plain http to a remote host is refused by `validate`, as the
    same URL written in the file is — not found only at delivery, in the run's log."""
    monkeypatch.setenv("SLACK_URL", "http://example.com/T0/B0/XYZ")
    ws = workspace(
        {"act": ACT + "notify:\n  webhook: ['${env:SLACK_URL}']\n"},
        reconcile_yaml=notifications(2525, login=True),
    )
    (line,) = fails_validate(ws)
    assert line.startswith("activations/act.yaml:5: notify.webhook.0: "), line
    assert "https" in line and "SLACK_URL" in line and "XYZ" not in line, line
    for held in ("https://hooks.example.com/T0/B0/XYZ\n", " https://hooks.example.com/T0"):
        monkeypatch.setenv("SLACK_URL", held)  # a secret pasted with a newline or a space
        (line,) = fails_validate(ws)
        assert "line breaks" in line and "XYZ" not in line, line
    monkeypatch.setenv("SLACK_URL", "https://hooks.example.com/T0/B0/XYZ")
    assert cli(ws, "validate").exit_code == 0


@pytest.mark.parametrize(
    ("activation", "reconcile", "expected"),
    [
        pytest.param(
            ACT + "notify: [ops@example.com]\n",
            RECONCILE_YAML,
            "activations/act.yaml:4: notify: e-mail notifications need a mail server",
            id="email-without-smtp-short",
        ),
        pytest.param(
            ACT + "notify:\n  webhook: ['https://h.example.com/x']\n  email: [ops@example.com]\n",
            RECONCILE_YAML,
            "activations/act.yaml:6: notify.email: e-mail notifications need a mail server",
            id="email-without-smtp",
        ),
        pytest.param(
            ACT + "notify: [ops@example.com, 'not an address']\n",
            notifications(25),
            "activations/act.yaml:4: notify.1: 'not an address' is not an e-mail address",
            id="bad-address-short",
        ),
        pytest.param(
            ACT + "notify:\n  email:\n    - ops@example.com\n    - ops@example\n",
            notifications(25),
            "activations/act.yaml:7: notify.email.1: 'ops@example' is not an e-mail address",
            id="bad-address",
        ),
        pytest.param(
            ACT + "notify:\n  webhook: ['http://hooks.example.com/x']\n",
            notifications(25),
            "activations/act.yaml:5: notify.webhook.0: a webhook must use https://",
            id="plain-http-webhook",
        ),
        pytest.param(
            ACT + "notify:\n  on: [completed]\n",
            notifications(25),
            "activations/act.yaml:5: notify.on.0: Input should be 'complete'",
            id="unknown-event",
        ),
        pytest.param(
            ACT,
            notifications(25, login=True).replace("${env:SMTP_PASSWORD}", "hunter2"),
            "reconcile.yaml:22: notifications.smtp.password: `password` must be an "
            "${env:VAR} reference",
            id="literal-password",
        ),
        pytest.param(
            ACT,
            notifications(25).replace("127.0.0.1", "smtp.example.com"),
            "reconcile.yaml:19: notifications.smtp.security: `security: none` sends mail "
            "unencrypted",
            id="plain-smtp-to-remote-host",
        ),
        pytest.param(
            ACT,
            notifications(25, extra="  slack: yes\n"),
            "reconcile.yaml:22: notifications.slack: unknown field",
            id="unknown-notifications-field",
        ),
        pytest.param(
            ACT,
            notifications(25, extra="  templates: nowhere\n"),
            "reconcile.yaml:22: notifications.templates: templates folder 'nowhere' does not exist",
            id="missing-template-folder",
        ),
        pytest.param(
            ACT,
            notifications(25, extra="  templates: ../elsewhere\n"),
            "reconcile.yaml:22: notifications.templates: must be a folder inside the workspace",
            id="template-folder-outside",
        ),
    ],
)
def test_validate_refuses_bad_notification_config(workspace, activation, reconcile, expected):
    ws = workspace({"act": activation}, reconcile_yaml=reconcile)
    lines = fails_validate(ws)
    assert any(line.startswith(expected) for line in lines), lines
    assert len(lines) == 1, lines
    assert "hunter2" not in "\n".join(lines)


def test_validate_checks_template_overrides(workspace):
    ws = workspace({"act": ACT}, reconcile_yaml=notifications(25, extra="  templates: tpl\n"))
    ws.write("tpl/email.txt.j2", "ok {{ activation }}\n{{ no_such_name }}\n")
    ws.write("tpl/webhook.json.j2", "{% if %}")
    ws.write("tpl/emial.html.j2", "typo in the name")
    lines = fails_validate(ws)
    assert len(lines) == 3, lines
    # sorted by file and line
    assert lines[0].startswith("tpl/email.txt.j2:2: template error: 'no_such_name' is undefined")
    assert lines[1].startswith("tpl/emial.html.j2: unknown template file 'emial.html.j2'")
    assert lines[2].startswith("tpl/webhook.json.j2:1: template error")


def test_activations_without_notify_record_the_same_spec_as_before():
    # recorded specs (and their digests) of existing activations must not change
    from reconciler.workspace.activation_spec import Activation

    plain = Activation.model_validate({"segments": ["s"], "destination": "d"})
    assert plain.model_dump(mode="json", by_alias=True)["notify"] == []
    short = Activation.model_validate({"segments": ["s"], "destination": "d", "notify": ["a@x.io"]})
    assert short.model_dump(mode="json")["notify"] == {
        "email": ["a@x.io"],
        "webhook": [],
        "on": ["complete", "failed", "disabled", "mass_removal"],
    }


def test_schema_describes_both_notify_forms():
    import jsonschema

    from reconciler.workspace.schema import json_schema

    schema = json_schema("activation")
    for notify in (["a@x.io"], {"email": ["a@x.io"], "on": ["failed"]}):
        jsonschema.validate({"segments": ["s"], "destination": "d", "notify": notify}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {"segments": ["s"], "destination": "d", "notify": {"on": ["completed"]}}, schema
        )


# ---------------------------------------------------------------------- through apply
def test_apply_notifies_after_each_recorded_run(workspace, smtp, receiver, monkeypatch):
    from tests.conftest import profile

    box, port = smtp
    act = ACT + f"notify:\n  email: [ops@example.com]\n  webhook: [{receiver.url()}]\n"
    ws = workspace(
        {"vip": act, "quiet": ACT.replace("VIP", "Quiet")},
        reconcile_yaml=notifications(port),
        profiles=[profile(i, a=True) for i in range(4)],
    )
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    ((_, rcpts, msg),) = box.messages  # one message: `quiet` asks for none
    assert rcpts == ["ops@example.com"] and msg["Subject"] == "[reconcile] vip: Complete"
    assert "- VIP: +4 / -0 / ~0" in body(msg, "plain")
    ((_, headers, payload),) = receiver.requests
    assert "webhook-signature" in {k.lower() for k in headers}
    assert b"vip" in payload
    # nothing changed and not due: nothing recorded, nobody told
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert len(box.messages) == 1


def test_a_notification_that_fails_is_logged_and_never_fails_the_run(workspace):
    from tests.conftest import profile

    act = ACT + "notify: [ops@example.com]\n"
    ws = workspace(
        {"vip": act},
        reconcile_yaml=notifications(closed_port()).replace(
            "  webhook_secret: ${env:HOOK_SECRET}\n", ""
        ),
        profiles=[profile(i, a=True) for i in range(3)],
    )
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert "vip: Complete" in res.output
    assert "Warning: vip: email to ops@example.com: not delivered" in res.stderr
    (run_log,) = cli(ws, "log", "vip", "--format", "json").json()["runs"]
    assert run_log["status"] == "Complete" and run_log["added"] == 3
    assert "notification not delivered" in run_log["error"]
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0


def test_a_template_linked_outside_the_workspace_is_refused(workspace, smtp, monkeypatch):
    """`templates:` names a folder inside the workspace; a link in it to the process's
    environment (or ~/.aws/credentials) must not be read, let alone mailed."""
    import os

    box, port = smtp
    monkeypatch.setenv("SECRET_TOK", "SuperSecret123")
    act = ACT + "notify:\n  email: [ops@example.com]\n"
    ws = workspace({"vip": act}, reconcile_yaml=notifications(port, extra="  templates: tpl\n"))
    ws.write("tpl/email.txt.j2", "fine\n")
    loaded = load(ws.root)  # validate refuses the link made next (checked below)
    (ws.root / "tpl" / "email.txt.j2").unlink()
    os.symlink("/proc/self/environ", ws.root / "tpl" / "email.txt.j2")
    res = cli(ws, "validate")
    assert res.exit_code == 1 and "tpl/email.txt.j2" in res.stderr
    assert "outside the workspace" in res.stderr and "SuperSecret123" not in res.stderr
    (mailed,) = notify_runs(loaded, [report()], ENV, policy=FAST)
    assert not mailed.delivered and "outside the workspace" in mailed.error
    assert box.messages == []


def test_a_workspace_file_linked_outside_it_is_refused(workspace, tmp_path):
    import os

    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("sql: SELECT customer_id FROM profiles -- private text\n")
    ws = workspace({"act": ACT})
    os.symlink(outside, ws.root / "segments" / "leak.yaml")
    res = cli(ws, "validate")
    assert res.exit_code == 1
    assert "segments/leak.yaml: file is a link to somewhere outside the workspace" in res.stderr
    assert "private text" not in res.stderr + res.output


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("whsec_c2hvcnQ=", "must hold at least 16 random bytes"),
        ("whsec_bad!!secretvalue", "must be 'whsec_' followed by base64"),
        ("c2VjcmV0LXNlY3JldC1zZWNyZXQ=", "must start with 'whsec_'"),
    ],
)
def test_a_malformed_signing_secret_is_found_by_validate(
    workspace, receiver, monkeypatch, secret: str, problem: str
):
    """Found before the run (as the destination's own secret is), not after it as a
    notification that could not be delivered; the secret is never repeated."""
    ws = workspace(
        {"vip": ACT + f"notify:\n  webhook: ['{receiver.url()}']\n"},
        reconcile_yaml=notifications(closed_port()),
    )
    monkeypatch.setenv("HOOK_SECRET", secret)
    res = cli(ws, "validate")
    assert res.exit_code == 1
    assert "notifications.webhook_secret: the signing secret in environment variable " in res.stderr
    assert f"HOOK_SECRET {problem}" in res.stderr and secret not in res.stderr + res.output


def test_a_notification_retry_after_given_as_a_date_is_honoured():
    """RFC 9110 allows an HTTP date: it was ignored (1 s backoff instead of the wait asked)."""
    from email.utils import format_datetime

    import httpx

    from reconciler.notify.webhook import _retry_after

    when = datetime.now(UTC) + timedelta(seconds=8)
    response = httpx.Response(503, headers={"retry-after": format_datetime(when, usegmt=True)})
    assert 6.0 <= _retry_after(response) <= 8.0
    assert _retry_after(httpx.Response(503, headers={"retry-after": "3"})) == 3.0
    assert _retry_after(httpx.Response(503)) is None


def test_a_templates_folder_linked_outside_or_a_template_that_is_no_file_is_refused(
    workspace, smtp, tmp_path
):
    """A linked folder made validate list another directory's file names (into CI logs);
    a pipe or a device under a template's name passed validate (a send would block on the
    pipe or fall back to the default silently)."""
    import os

    _, port = smtp
    act = ACT + "notify:\n  email: [ops@example.com]\n"
    ws = workspace({"vip": act}, reconcile_yaml=notifications(port, extra="  templates: tpl\n"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "private-name.txt").write_text("x")
    os.symlink(elsewhere, ws.root / "tpl")
    res = cli(ws, "validate")
    assert res.exit_code == 1 and "is a link to somewhere outside the workspace" in res.stderr
    assert "private-name" not in res.stderr
    (ws.root / "tpl").unlink()
    (ws.root / "tpl").mkdir()
    os.mkfifo(ws.root / "tpl" / "email.txt.j2")
    res = cli(ws, "validate")
    assert res.exit_code == 1 and "tpl/email.txt.j2" in res.stderr, res.stderr
    assert "not a regular file" in res.stderr
