"""Standard Webhooks signing, checked against the specification's published example and against the
independent ``standardwebhooks`` implementation."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from pipeline.alerting.attempt import Outgoing
from pipeline.alerting.webhook_sender import active_secrets, secret_key, sign, signature_header, webhook_body


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def test_the_specifications_example_signature() -> None:
    # The example of the Standard Webhooks specification (and of the svix libraries' tests).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_both_rotation_secrets_sign_and_each_verifies_independently() -> None:
    old, new = new_secret(), new_secret()
    body = b'{"type":"alert.firing","data":{"id":"msg_1"}}'
    timestamp = int(datetime.now(UTC).timestamp())
    header = signature_header([new, old], "msg_1", timestamp, body)
    assert len(header.split(" ")) == 2
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(timestamp), "webhook-signature": header}
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers) == {"type": "alert.firing", "data": {"id": "msg_1"}}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):  # the id is signed: it cannot be swapped
        Webhook(old).verify(body, {**headers, "webhook-id": "msg_2"})


def test_expired_secrets_stop_signing() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    entries = [
        {"secret": "whsec_bmV3", "expires_at": None},
        {"secret": "whsec_b2xk", "expires_at": (now + timedelta(hours=1)).isoformat()},
        {"secret": "whsec_b2xkZXI=", "expires_at": (now - timedelta(seconds=1)).isoformat()},
    ]
    assert active_secrets(entries, now) == ["whsec_bmV3", "whsec_b2xk"]


def test_secret_forms() -> None:
    assert secret_key("whsec_aGVsbG8=") == secret_key("aGVsbG8=") == secret_key("whsec_aGVsbG8") == b"hello"
    with pytest.raises(ValueError, match="base64"):
        secret_key("whsec_not base64!")


def test_body_is_the_envelope_around_the_notice() -> None:
    created = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    outgoing = Outgoing("msg_1", "o", "webhook", "ep", {"id": "msg_1", "status": "resolved"}, created, 1)
    assert webhook_body(outgoing) == (
        b'{"type":"alert.resolved","timestamp":"2026-01-01T12:00:00Z","data":{"id":"msg_1","status":"resolved"}}'
    )
