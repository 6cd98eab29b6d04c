"""Alert emails over SMTP (aiosmtplib): plain text and HTML, each alert with its labels and evidence."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.utils import format_datetime
from html import escape
from typing import Any

import aiosmtplib

from pipeline.alerting.attempt import EXCERPT_CHARS, AttemptResult, Outgoing
from pipeline.settings import Settings

__all__ = ["render_email", "EmailSender"]

EVIDENCE_ROWS = 48  # the most recent points of each alert's evidence window shown in a message


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.6g}" if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def _subject(payload: Mapping[str, Any]) -> str:
    alerts: Sequence[Mapping[str, Any]] = payload.get("alerts", [])
    firing = sum(1 for a in alerts if a.get("state") == "firing")
    name = payload.get("rule_name") or payload.get("rule_id", "alert")
    if payload.get("status") == "firing":
        return f"[FIRING:{firing}] {name}"
    return f"[RESOLVED] {name}"


def _labels_text(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _alert_text(alert: Mapping[str, Any]) -> list[str]:
    lines = [
        f"- {alert.get('state', '').upper()}  {_labels_text(alert.get('labels', {}))}",
        f"  condition: {alert.get('condition', '')}",
        f"  value: {_number(alert.get('value'))}  threshold: {_number(alert.get('threshold'))}",
        f"  started: {alert.get('starts_at') or 'n/a'}  ended: {alert.get('ends_at') or '-'}",
    ]
    lines += [f"  {k}: {v}" for k, v in sorted(alert.get("annotations", {}).items())]
    evidence = list(alert.get("evidence") or [])[-EVIDENCE_ROWS:]
    if evidence:
        lines.append("  evidence (as_of, value):")
        lines += [f"    {as_of}  {_number(value)}" for as_of, value in evidence]
    return lines


def _alert_html(alert: Mapping[str, Any]) -> str:
    labels = "".join(
        f"<code>{escape(k)}={escape(str(v))}</code> " for k, v in sorted(alert.get("labels", {}).items())
    )
    notes = "".join(
        f"<p><b>{escape(k)}</b>: {escape(str(v))}</p>"
        for k, v in sorted(alert.get("annotations", {}).items())
    )
    rows = "".join(
        f"<tr><td>{escape(str(as_of))}</td><td align='right'>{escape(_number(value))}</td></tr>"
        for as_of, value in list(alert.get("evidence") or [])[-EVIDENCE_ROWS:]
    )
    head = "<table border='1' cellpadding='3' cellspacing='0'><tr><th>as_of</th><th>value</th></tr>"
    table = f"{head}{rows}</table>" if rows else ""
    return (
        f"<h3>{escape(str(alert.get('state', '')).upper())} {labels}</h3>"
        f"<p>{escape(str(alert.get('condition', '')))}: value <b>{escape(_number(alert.get('value')))}</b>, "
        f"threshold {escape(_number(alert.get('threshold')))}; started {escape(str(alert.get('starts_at')))}"
        f", ended {escape(str(alert.get('ends_at') or '-'))}</p>{notes}{table}"
    )


def render_email(outgoing: Outgoing, sender: str) -> EmailMessage:
    """The message for one notification; its Message-ID derives from the notification id, so a
    receiver can drop a retry it already has."""
    payload = outgoing.payload
    alerts: list[Mapping[str, Any]] = list(payload.get("alerts", []))
    message = EmailMessage()
    message["Subject"] = _subject(payload)
    message["From"] = sender
    message["To"] = outgoing.target
    message["Date"] = format_datetime(outgoing.created_at)
    message["Message-ID"] = f"<{outgoing.id}@alerts.llamastream>"
    message["X-Llamastream-Notification-Id"] = outgoing.id
    more = payload.get("truncated", 0)
    text = [f"{_subject(payload)} (rule {payload.get('rule_id')}, group {payload.get('group_key')})", ""]
    for alert in alerts:
        text += [*_alert_text(alert), ""]
    if more:
        text.append(f"... and {more} more alerts")
    message.set_content("\n".join(text))
    html = "".join(_alert_html(alert) for alert in alerts)
    tail = f"<p>... and {more} more alerts</p>" if more else ""
    message.add_alternative(
        f"<html><body><h2>{escape(_subject(payload))}</h2>{html}{tail}</body></html>", subtype="html"
    )
    return message


class EmailSender:
    """One SMTP session per message (alerts are rare; a pooled session would go stale between them)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def send(self, outgoing: Outgoing) -> AttemptResult:
        settings = self.settings
        target = f"smtp://{settings.smtp_host}:{settings.smtp_port} to {outgoing.target}"
        message = render_email(outgoing, settings.smtp_sender)
        headers = {"Message-ID": str(message["Message-ID"]), "Subject": str(message["Subject"])}
        started = time.perf_counter()
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        try:
            response, _ = await aiosmtplib.send(
                message,
                hostname=settings.smtp_host,
                port=settings.smtp_port,
                username=settings.smtp_username or None,
                password=password if settings.smtp_username else None,
                start_tls=settings.smtp_starttls,
                timeout=settings.webhook_timeout_s,
            )
        except aiosmtplib.SMTPResponseException as err:
            latency = (time.perf_counter() - started) * 1000
            # 5xx is a permanent refusal (unknown mailbox, policy): retrying the same message cannot help.
            return AttemptResult(
                ok=False,
                target=target,
                status_code=err.code,
                latency_ms=latency,
                error=f"SMTP {err.code}: {err.message}"[:EXCERPT_CHARS],
                request_headers=headers,
                permanent=err.code >= 500,
            )
        except aiosmtplib.SMTPRecipientsRefused as err:
            latency = (time.perf_counter() - started) * 1000
            codes = [refused.code for refused in err.recipients]
            return AttemptResult(
                ok=False,
                target=target,
                status_code=codes[0] if codes else None,
                latency_ms=latency,
                error=f"recipient refused: {err}"[:EXCERPT_CHARS],
                request_headers=headers,
                permanent=bool(codes) and all(code >= 500 for code in codes),
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
            latency = (time.perf_counter() - started) * 1000
            error = f"{type(err).__name__}: {err}"[:EXCERPT_CHARS]
            return AttemptResult(
                ok=False, target=target, latency_ms=latency, error=error, request_headers=headers
            )
        latency = (time.perf_counter() - started) * 1000
        return AttemptResult(
            ok=True,
            target=target,
            latency_ms=latency,
            response_excerpt=str(response)[:EXCERPT_CHARS],
            request_headers=headers,
        )

    async def close(self) -> None:
        return None
