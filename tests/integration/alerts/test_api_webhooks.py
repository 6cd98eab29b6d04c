"""Webhook endpoints (SSRF guard, secrets shown once, rotation with two active secrets, re-enabling) and
silences (matchers, time windows, expiry) through a real sidecar on PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import orjson
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession
from standardwebhooks import Webhook

from pipeline.settings import Settings
from pipeline.storage.models import WebhookEndpoint
from tests.integration.alerting import AlertApi, rule_body
from tests.integration.sidecar import Sidecar, new_key, running_sidecar
from web.keys import ENGINE
from web.rule_publisher import RULE_PUBLISHER

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AlertApi]:
    async with running_sidecar(settings) as sidecar, aiohttp.ClientSession() as session:
        await asyncio.wait_for(sidecar.app[RULE_PUBLISHER].reconciled.wait(), 60)
        yield AlertApi(session, sidecar.url, await new_key(settings, "pro"))


def _at(moment: datetime) -> str:
    return moment.isoformat()


async def test_private_and_malformed_targets_are_refused_unless_allowed(settings: Settings) -> None:
    refused = [
        ("http://127.0.0.1:8080/hook", "non-public address 127.0.0.1"),
        ("http://localhost/hook", "non-public address"),
        ("http://10.1.2.3/hook", "non-public address 10.1.2.3"),
        ("http://169.254.169.254/latest/meta-data", "non-public address 169.254.169.254"),
        ("http://[::1]:9000/", "non-public address ::1"),
        ("ftp://example.com/hook", "scheme must be https or http, not 'ftp'"),
        ("https://user:pw@example.com/hook", "must not carry credentials"),
        ("https:///nohost", "has no host"),
    ]
    async with running_sidecar(settings) as guarded, aiohttp.ClientSession() as session:
        client = AlertApi(session, guarded.url, await new_key(settings, "pro"))
        for url, reason in refused:
            status, error = await client.call("POST", "/v1/alerts/webhooks", {"url": url})
            assert status == 400, (url, error)
            assert (error["error"]["code"], error["error"]["field"]) == ("invalid_webhook_url", "url"), error
            assert reason in error["error"]["reason"], (url, error)
        status, error = await client.call("POST", "/v1/alerts/webhooks", {"url": "https://x.invalid/hook"})
        assert status == 400 and "does not resolve" in error["error"]["reason"], error
        assert await client.call("GET", "/v1/alerts/webhooks") == (
            200,
            {"endpoints": [], "next_cursor": None},
        )
    allowing = settings.model_copy(update={"webhook_allow_private": True})
    async with running_sidecar(allowing) as permissive, aiohttp.ClientSession() as session:
        client = AlertApi(session, permissive.url, await new_key(settings, "pro"))
        status, created = await client.call(
            "POST", "/v1/alerts/webhooks", {"url": "http://127.0.0.1:8080/hook"}
        )
        assert status == 201, created
        # The scheme and credential checks hold whatever the configuration.
        status, error = await client.call("POST", "/v1/alerts/webhooks", {"url": "ftp://127.0.0.1/hook"})
        assert status == 400, error


async def test_secrets_are_shown_once_and_rotate_with_two_active(settings: Settings) -> None:
    allowing = settings.model_copy(update={"webhook_allow_private": True})
    async with running_sidecar(allowing) as sidecar, aiohttp.ClientSession() as session:
        client = AlertApi(session, sidecar.url, await new_key(settings, "pro"))
        status, created = await client.call(
            "POST", "/v1/alerts/webhooks", {"url": "http://127.0.0.1:9/hook", "description": "ops"}
        )
        assert status == 201, created
        first = created["secret"]
        assert first.startswith("whsec_") and len(base64.b64decode(first.removeprefix("whsec_"))) == 32
        # An independent Standard Webhooks implementation accepts the secret: what it signs, it verifies.
        body = json.dumps({"status": "firing"})
        moment = datetime.fromtimestamp(int(datetime.now(UTC).timestamp()), UTC)
        signed = Webhook(first).sign("msg_1", moment, body)
        headers = {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(int(moment.timestamp())),
            "webhook-signature": signed,
        }
        assert Webhook(first).verify(body, headers) == {"status": "firing"}
        ep = created["id"]
        status, shown = await client.call("GET", f"/v1/alerts/webhooks/{ep}")
        assert status == 200 and [s["prefix"] for s in shown["secrets"]] == [first[:10] + "…"]
        assert "secret" not in shown and first not in orjson.dumps(shown).decode()
        status, listing = await client.call("GET", "/v1/alerts/webhooks")
        assert listing["endpoints"] == [shown] and first not in orjson.dumps(listing).decode()

        before = datetime.now(UTC)
        status, rotated = await client.call("POST", f"/v1/alerts/webhooks/{ep}/rotate")
        assert status == 200, rotated
        second = rotated["secret"]
        assert second != first and second.startswith("whsec_")
        current, previous = rotated["secrets"]
        assert (current["prefix"], current["expires_at"]) == (second[:10] + "…", None)
        assert previous["prefix"] == first[:10] + "…"
        expires = datetime.fromisoformat(previous["expires_at"])
        assert before + timedelta(hours=24) <= expires <= datetime.now(UTC) + timedelta(hours=24)

        # Rotating again keeps two: the newest and the one it replaces; the first stops signing now.
        status, again = await client.call("POST", f"/v1/alerts/webhooks/{ep}/rotate", {"overlap": "1h"})
        assert status == 200, again
        assert [s["prefix"] for s in again["secrets"]] == [again["secret"][:10] + "…", second[:10] + "…"]
        row_secrets = await _stored_secrets(sidecar, ep)
        assert [s["secret"] for s in row_secrets] == [again["secret"], second]

        status, error = await client.call("POST", f"/v1/alerts/webhooks/{ep}/rotate", {"overlap": "8d"})
        assert (status, error["error"]["field"]) == (400, "overlap"), error
        status, last = await client.call("POST", f"/v1/alerts/webhooks/{ep}/rotate", {"overlap": "0s"})
        assert status == 200 and len(last["secrets"]) == 1, last


async def _stored_secrets(sidecar: Sidecar, endpoint_id: str) -> list[dict[str, str]]:
    async with AsyncSession(sidecar.app[ENGINE]) as session:
        row = await session.get(WebhookEndpoint, endpoint_id)
        assert row is not None
        return row.secrets


async def test_disabled_endpoints_are_enabled_again_and_used_ones_cannot_go(settings: Settings) -> None:
    allowing = settings.model_copy(update={"webhook_allow_private": True})
    async with running_sidecar(allowing) as sidecar, aiohttp.ClientSession() as session:
        await asyncio.wait_for(sidecar.app[RULE_PUBLISHER].reconciled.wait(), 60)
        client = AlertApi(session, sidecar.url, await new_key(settings, "pro"))
        status, created = await client.call("POST", "/v1/alerts/webhooks", {"url": "http://127.0.0.1:9/hook"})
        ep = created["id"]
        # What the delivery loop does after a long run of failures.
        failing = datetime.now(UTC) - timedelta(days=6)
        async with AsyncSession(sidecar.app[ENGINE]) as db, db.begin():
            disabled = {
                "failing_since": failing,
                "disabled_at": datetime.now(UTC),
                "disabled_reason": "failing",
            }
            await db.execute(update(WebhookEndpoint).where(WebhookEndpoint.id == ep).values(**disabled))
        status, shown = await client.call("GET", f"/v1/alerts/webhooks/{ep}")
        assert (shown["status"], shown["disabled_reason"]) == ("disabled", "failing")
        status, enabled = await client.call("POST", f"/v1/alerts/webhooks/{ep}/enable")
        assert status == 200, enabled
        assert (enabled["status"], enabled["disabled_at"], enabled["failing_since"]) == (
            "enabled",
            None,
            None,
        )

        status, rule = await client.call(
            "POST", "/v1/alerts/rules", rule_body(channels=[{"type": "webhook", "endpoint": ep}])
        )
        assert status == 201, rule
        status, error = await client.call("DELETE", f"/v1/alerts/webhooks/{ep}")
        assert (status, error["error"]["code"], error["error"]["rules"]) == (
            409,
            "endpoint_in_use",
            [rule["id"]],
        )
        assert (await client.call("DELETE", f"/v1/alerts/rules/{rule['id']}"))[0] == 204
        assert await client.call("DELETE", f"/v1/alerts/webhooks/{ep}") == (204, None)
        assert (await client.call("GET", f"/v1/alerts/webhooks/{ep}"))[0] == 404


async def test_silences_hold_for_their_window_and_expire_on_delete(client: AlertApi) -> None:
    now = datetime.now(UTC)
    matchers = [
        {"name": "chain", "op": "=", "value": "Terra"},
        {"name": "severity", "op": "=~", "value": "critical|warning"},
        {"name": "protocol", "op": "!~", "value": "Test.*"},
        {"name": "alertname", "op": "!=", "value": "noise"},
    ]
    status, active = await client.call(
        "POST",
        "/v1/alerts/silences",
        {"matchers": matchers, "ends_at": _at(now + timedelta(hours=2)), "comment": "x"},
    )
    assert status == 201, active
    assert (active["state"], active["matchers"], active["comment"]) == ("active", matchers, "x")
    assert now - timedelta(seconds=5) <= datetime.fromisoformat(active["starts_at"]) <= datetime.now(UTC)
    later = {"starts_at": _at(now + timedelta(days=1)), "ends_at": _at(now + timedelta(days=2))}
    status, pending = await client.call("POST", "/v1/alerts/silences", {"matchers": matchers[:1], **later})
    assert (status, pending["state"]) == (201, "pending"), pending
    status, listing = await client.call("GET", "/v1/alerts/silences", state="active")
    assert [s["id"] for s in listing["silences"]] == [active["id"]]
    status, listing = await client.call("GET", "/v1/alerts/silences")
    assert [s["id"] for s in listing["silences"]] == [pending["id"], active["id"]]

    status, expired = await client.call("DELETE", f"/v1/alerts/silences/{active['id']}")
    assert (status, expired["state"]) == (200, "expired"), expired
    assert datetime.fromisoformat(expired["ends_at"]) <= datetime.now(UTC)
    status, never = await client.call("DELETE", f"/v1/alerts/silences/{pending['id']}")
    assert never["state"] == "expired" and never["starts_at"] == never["ends_at"], never
    # Expiring again changes nothing.
    assert await client.call("DELETE", f"/v1/alerts/silences/{active['id']}") == (200, expired)
    status, listing = await client.call("GET", "/v1/alerts/silences", state="active")
    assert listing["silences"] == []


async def test_bad_silences_are_refused_naming_what_was_wrong(client: AlertApi) -> None:
    now = datetime.now(UTC)
    ok = {"matchers": [{"name": "chain", "value": "Terra"}], "ends_at": _at(now + timedelta(hours=1))}
    cases = [
        (
            {"matchers": [{"name": "chain", "op": "=~", "value": "Terra("}]},
            "matchers.0.value",
            "not a regular expression in RE2 syntax",
        ),
        (
            {"matchers": [{"name": "chain", "op": "=~", "value": "a" * 300}]},
            "matchers.0.value",
            "at most 256 characters",
        ),
        (  # a backreference needs backtracking: RE2 (linear time) refuses it, naming the matcher's value
            {
                "matchers": [
                    {"name": "chain", "value": "Terra"},
                    {"name": "chain", "op": "!~", "value": r"(a)\1"},
                ]
            },
            "matchers.1.value",
            "backreferences and lookarounds are not supported",
        ),
        ({"matchers": [{"name": "chain", "op": "==", "value": "Terra"}]}, "matchers.0.op", "'='"),
        ({"matchers": [{"name": "9chain", "value": "Terra"}]}, "matchers.0.name", "pattern"),
        ({"matchers": []}, "matchers", "at least 1"),
        ({"ends_at": None}, "ends_at", "valid datetime"),
        ({"ends_at": _at(now - timedelta(minutes=1))}, "ends_at", "is in the past"),
        ({"starts_at": _at(now + timedelta(hours=2))}, "ends_at", "must be after starts_at"),
        ({"ends_at": _at(now + timedelta(days=400))}, "ends_at", "at most 366 days"),
        ({"ends_at": "next week"}, "ends_at", "valid datetime"),
        ({"until": "later"}, "until", "unknown field"),
    ]
    for change, field, says in cases:
        status, error = await client.call("POST", "/v1/alerts/silences", {**ok, **change})
        assert status == 400, (change, error)
        assert (error["error"]["code"], error["error"]["field"]) == ("invalid_request", field), (
            change,
            error,
        )
        assert says in error["error"]["message"], (change, error)
    status, listing = await client.call("GET", "/v1/alerts/silences")
    assert listing["silences"] == []
    # A pattern that backtracks catastrophically in other engines is harmless in RE2: accepted.
    nested = {"matchers": [{"name": "chain", "op": "=~", "value": "(a+)+$"}]}
    status, silence = await client.call("POST", "/v1/alerts/silences", {**ok, **nested})
    assert (status, silence["matchers"][0]["value"]) == (201, "(a+)+$"), silence
    status, error = await client.call("GET", "/v1/alerts/silences", state="muted")
    assert (status, error["error"]["field"]) == (400, "state")
