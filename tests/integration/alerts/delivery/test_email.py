"""Email delivery through a real worker to a real SMTP server on loopback (aiosmtpd): plain text and HTML
with the evidence, and a permanent refusal given up at once."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.settings import Settings
from tests.integration.alerting import (
    attempts_of,
    delivery_settings,
    eventually,
    insert_rule,
    notifications_of,
    produce_transitions,
    transition,
)
from tests.integration.support import WorkerProcess, free_port

pytestmark = pytest.mark.integration

SMTP_PORT = free_port()


class Inbox:
    """An SMTP server's handler: keeps what it accepts; mailboxes named nobody@ do not exist."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=SMTP_PORT)
    controller.start()
    yield inbox
    controller.stop()


@pytest.fixture
def settings() -> Settings:
    return delivery_settings(
        smtp_host="127.0.0.1", smtp_port=SMTP_PORT, smtp_sender="alerts@llamastream.test"
    )


async def _settled(engine: AsyncEngine, owner: str) -> list[Any] | None:
    found = await notifications_of(engine, owner)
    done = len(found) == 2 and all(n["status"] in ("delivered", "abandoned") for n in found)
    return found if done else None


async def test_email_arrives_with_text_and_html_and_a_refused_address_is_given_up(
    engine: AsyncEngine, settings: Settings, inbox: Inbox, ready_worker: WorkerProcess
) -> None:
    owner = f"owner-{settings.app_id}"
    rule = await insert_rule(
        engine,
        owner,
        app_id=settings.app_id,
        channels=[{"type": "email", "to": "ops@example.com"}, {"type": "email", "to": "nobody@example.com"}],
        group_wait="0s",
    )
    await produce_transitions(settings, [transition(rule, owner, "chain||Terra", "firing")])
    found = await eventually(lambda: _settled(engine, owner), what="both emails settled")
    status = {n["target"]: n for n in found}

    good = status["ops@example.com"]
    assert good["status"] == "delivered"
    [(recipients, message)] = inbox.messages
    assert recipients == ["ops@example.com"]
    assert message["To"] == "ops@example.com" and message["From"] == "alerts@llamastream.test"
    assert message["Subject"] == "[FIRING:1] Terra TVL drop"
    # The Message-ID is the notification id: a retry is recognisably the same message.
    assert message["Message-ID"] == f"<{good['id']}@alerts.llamastream>"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    plain, markup = text.get_content(), html.get_content()
    for part in (plain, markup):
        assert "chain=Terra" in part and "-41.5" in part and "-20" in part
        assert "2022-05-10T00:00:00+00:00" in part and "18,000,000,000" in part  # the evidence
        assert "change over 1d &lt; -20%" in part or "change over 1d < -20%" in part
    assert "<table" in markup and "<table" not in plain

    # 550 is permanent: one attempt, logged with the server's answer, then given up.
    refused = status["nobody@example.com"]
    assert refused["status"] == "abandoned" and refused["attempts"] == 1
    log = {a["notification_id"]: a for a in await attempts_of(engine, owner)}
    assert log[refused["id"]]["status_code"] == 550
    assert "no such mailbox" in log[refused["id"]]["error"]
    assert log[good["id"]]["status_code"] is None and log[good["id"]]["error"] is None
    assert log[good["id"]]["target"] == f"smtp://127.0.0.1:{SMTP_PORT} to ops@example.com"
