"""The alert rules API on a real sidecar, PostgreSQL and Kafka: CRUD, publishing to alerts.rules, errors
that name what was wrong, tier quotas, anonymous callers, and keeping the topic equal to PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from pipeline.alerting.rules import RuleSpec
from pipeline.settings import Settings
from pipeline.storage import alert_rules
from pipeline.storage.models import AlertRule
from pipeline.topics import topic_name
from tests.integration.alerting import AlertApi, rule_body, rules_on_topic
from tests.integration.sidecar import Sidecar, new_key, running_sidecar
from tests.integration.support import read_all
from web import alert_routes
from web.keys import ENGINE
from web.rule_publisher import RULE_PUBLISHER

pytestmark = pytest.mark.integration

MakeApi = Callable[..., Awaitable[AlertApi]]


async def reconciled(sidecar: Sidecar) -> None:
    await asyncio.wait_for(sidecar.app[RULE_PUBLISHER].reconciled.wait(), 60)


@pytest.fixture
async def sidecar(settings: Settings) -> AsyncIterator[Sidecar]:
    async with running_sidecar(settings) as sidecar:
        await reconciled(sidecar)
        yield sidecar


@pytest.fixture
async def api(settings: Settings, sidecar: Sidecar) -> AsyncIterator[MakeApi]:
    """``await api(tier, owner)``: a client with a new real key (owner default: one per test and tier)."""
    async with aiohttp.ClientSession() as session:

        async def make(tier: str = "free", owner: str | None = None, key: bool = True) -> AlertApi:
            secret = await new_key(settings, tier, owner=owner) if key else None
            return AlertApi(session, sidecar.url, secret)

        yield make


async def test_rule_round_trip_publishes_every_change(settings: Settings, api: MakeApi) -> None:
    client = await api("pro")
    status, created = await client.call("POST", "/v1/alerts/rules", rule_body())
    assert status == 201, created
    rule_id = created["id"]
    assert created["version"] == 1 and created["enabled"] is True and created["condition"]["window"] == "1d"
    assert created["owner"] == f"{settings.app_id}-pro"
    assert (await rules_on_topic(settings))[rule_id] == created

    assert await client.call("GET", f"/v1/alerts/rules/{rule_id}") == (200, created)
    status, listing = await client.call("GET", "/v1/alerts/rules")
    assert (status, listing) == (200, {"rules": [created], "next_cursor": None})

    replaced_body = rule_body(
        name="Terra TVL crash", condition={"kind": "threshold", "op": "<", "value": 1e9}
    )
    status, replaced = await client.call("PUT", f"/v1/alerts/rules/{rule_id}", replaced_body)
    assert status == 200, replaced
    assert (replaced["version"], replaced["name"], replaced["created_at"]) == (
        2,
        "Terra TVL crash",
        created["created_at"],
    )
    assert (await rules_on_topic(settings))[rule_id] == replaced

    status, disabled = await client.call("PATCH", f"/v1/alerts/rules/{rule_id}", {"enabled": False})
    assert (status, disabled["enabled"], disabled["version"]) == (200, False, 3)
    assert (await rules_on_topic(settings))[rule_id] == disabled
    # Asking for the state it is in changes nothing and publishes nothing.
    messages = len(await read_all(settings, "alerts.rules"))
    assert await client.call("PATCH", f"/v1/alerts/rules/{rule_id}", {"enabled": False}) == (200, disabled)
    assert len(await read_all(settings, "alerts.rules")) == messages

    assert await client.call("DELETE", f"/v1/alerts/rules/{rule_id}") == (204, None)
    assert (await rules_on_topic(settings))[rule_id] is None  # the tombstone
    status, gone = await client.call("GET", f"/v1/alerts/rules/{rule_id}")
    assert (status, gone["error"]["code"]) == (404, "rule_not_found")
    assert (await client.call("DELETE", f"/v1/alerts/rules/{rule_id}"))[0] == 404
    assert await client.call("GET", "/v1/alerts/rules") == (200, {"rules": [], "next_cursor": None})


async def test_listing_pages_through_every_rule_once(api: MakeApi) -> None:
    client = await api("pro")
    ids = []
    for i in range(5):
        status, created = await client.call("POST", "/v1/alerts/rules", rule_body(name=f"rule {i}"))
        assert status == 201, created
        ids.append(created["id"])
    seen: list[str] = []
    params: dict[str, str] = {"limit": "2"}
    while True:
        status, page = await client.call("GET", "/v1/alerts/rules", **params)
        assert status == 200, page
        seen += [rule["id"] for rule in page["rules"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == list(reversed(ids))  # newest first, each once
    status, error = await client.call("GET", "/v1/alerts/rules", cursor="not-a-cursor")
    assert (status, error["error"]["field"]) == (400, "cursor")
    status, error = await client.call("GET", "/v1/alerts/rules", limit="0")
    assert (status, error["error"]["field"]) == (400, "limit")


INVALID_RULES: list[tuple[dict[str, object], str, str, str]] = [
    # (change to a valid rule, error code, field named, words of the message)
    ({"scope": 'chain == "Terra" and'}, "invalid_filter", "scope", "position 20"),
    ({"scope": 'chian == "Terra"'}, "invalid_filter", "scope", 'did you mean "chain"'),
    ({"metric": "chain"}, "invalid_request", "metric", "'chain' is not a numeric field of channel 'tvl'"),
    ({"metric": "apy"}, "invalid_request", "metric", "choose one of change_1d_pct"),
    ({"for": "5 minutes"}, "invalid_request", "for", "'5 minutes' is not a duration"),
    (
        {"condition": {"kind": "change", "window": "1x", "op": "<", "value": -20}},
        "invalid_request",
        "condition.window",
        "'1x' is not a duration",
    ),
    ({"keep_firing_for": "400d"}, "invalid_request", "keep_firing_for", "outside 0s..90d"),
    ({"condition": {"kind": "median"}}, "invalid_request", "condition", "'median'"),
    ({"channel": "chain"}, "invalid_request", "channel", "'tvl', 'prices' or 'yields'"),
    ({"colour": "red"}, "invalid_request", "colour", "unknown field"),
    (
        {"channels": [{"type": "websocket"}, {"type": "webhook", "endpoint": "ep_0123456789abcdef"}]},
        "unknown_endpoint",
        "channels.1.endpoint",
        "'ep_0123456789abcdef' is not one of your webhook endpoints",
    ),
    (
        {"channels": [{"type": "email", "to": "not an address"}]},
        "invalid_request",
        "channels.0.to",
        "pattern",
    ),
]


async def test_invalid_rules_are_refused_naming_what_was_wrong(api: MakeApi) -> None:
    client = await api("pro")
    for change, code, field, says in INVALID_RULES:
        status, error = await client.call("POST", "/v1/alerts/rules", rule_body(**change))
        assert status == 400, (change, error)
        assert (error["error"]["code"], error["error"]["field"]) == (code, field), (change, error)
        assert says in error["error"]["message"], (change, error)
        status, error = await client.call("PUT", "/v1/alerts/rules/rule_0000", rule_body(**change))
        assert (status, error["error"]["field"]) == (400, field), (change, error)
    status, error = await client.call("POST", "/v1/alerts/rules", b"{not json")
    assert (status, error["error"]["code"]) == (400, "invalid_request")
    assert "not valid JSON" in error["error"]["message"]
    # Nothing was stored, and nothing was charged to the quota.
    assert await client.call("GET", "/v1/alerts/rules") == (200, {"rules": [], "next_cursor": None})


async def test_free_tier_sixth_rule_of_the_month_is_refused(settings: Settings, api: MakeApi) -> None:
    owner = f"{settings.app_id}-quota"
    client = await api("free", owner)
    ids = []
    for i in range(5):
        status, created = await client.call("POST", "/v1/alerts/rules", rule_body(name=f"rule {i}"))
        assert status == 201, created
        ids.append(created["id"])
    # Deleting does not give a rule back: deleted rules count.
    for rule_id in ids[:3]:
        assert (await client.call("DELETE", f"/v1/alerts/rules/{rule_id}"))[0] == 204
    other_key = await api("free", owner)  # the quota is the owner's, whichever of its keys asks
    for caller in (client, other_key):
        status, error = await caller.call("POST", "/v1/alerts/rules", rule_body(name="sixth"))
        assert status == 429, error
        now = datetime.now(UTC)
        reset = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
        assert error["error"] | {"message": ""} == {
            "code": "quota_exceeded", "message": "", "limit": 5, "used": 5,
            "resets_at": reset.isoformat(), "tier": "free",
        }  # fmt: skip
        assert "5 alert rules created per calendar month" in error["error"]["message"]
    # Another owner has its own quota.
    status, _ = await (await api("free")).call("POST", "/v1/alerts/rules", rule_body())
    assert status == 201


async def test_concurrent_creations_cannot_exceed_the_quota(settings: Settings, api: MakeApi) -> None:
    client = await api("free", f"{settings.app_id}-race")
    for i in range(3):
        assert (await client.call("POST", "/v1/alerts/rules", rule_body(name=f"rule {i}")))[0] == 201
    answers = await asyncio.gather(
        *(client.call("POST", "/v1/alerts/rules", rule_body(name=f"racer {i}")) for i in range(6))
    )
    assert sorted(status for status, _ in answers) == [201, 201, 429, 429, 429, 429]
    status, listing = await client.call("GET", "/v1/alerts/rules")
    assert len(listing["rules"]) == 5


async def test_anonymous_and_bad_keys_get_401_everywhere(api: MakeApi) -> None:
    anonymous = await api(key=False)
    assert alert_routes.ROUTES
    for op in alert_routes.ROUTES:
        path = re.sub(r"\{[a-z_]+\}", "x_1", op.path)
        status, error = await anonymous.call(
            op.method, path, {} if op.method in ("POST", "PUT", "PATCH") else None
        )
        assert (status, error["error"]["code"]) == (401, "key_required"), (op.method, path, error)
    bad = AlertApi(anonymous.session, anonymous.base_url, "lls_000000000000_" + "x" * 43)
    status, error = await bad.call("GET", "/v1/alerts/rules")
    assert (status, error["error"]["code"]) == (401, "invalid_key")


async def test_startup_makes_the_topic_equal_to_postgres(
    settings: Settings, sidecar: Sidecar, api: MakeApi
) -> None:
    client = await api("pro")
    status, kept = await client.call("POST", "/v1/alerts/rules", rule_body(name="kept"))
    assert status == 201
    owner = kept["owner"]

    async def nothing(row: AlertRule) -> None:
        """A change whose publish was lost (the sidecar died between commit and ack, say)."""

    unpublished = await alert_rules.create_rule(
        sidecar.app[ENGINE], owner=owner, app_id=settings.app_id,
        spec=RuleSpec.model_validate(rule_body(name="lost")),
        monthly_limit=1000, publish=nothing,
    )  # fmt: skip
    # And a rule on the topic that PostgreSQL does not have (a create rolled back after its publish landed).
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        phantom = {**kept, "id": "rule_phantom0000000", "name": "phantom"}
        await producer.send_and_wait(
            topic_name(settings, "alerts.rules"), orjson.dumps(phantom), key=phantom["id"].encode()
        )
    finally:
        await producer.stop()
    before = await read_all(settings, "alerts.rules")
    assert unpublished.id not in {m.key for m in before}

    async with running_sidecar(settings) as restarted:
        await reconciled(restarted)
        after = await read_all(settings, "alerts.rules")
    latest = await rules_on_topic(settings)
    assert latest[unpublished.id] == alert_rules.rule_of(unpublished).model_dump(mode="json", by_alias=True)
    assert latest["rule_phantom0000000"] is None
    assert latest[kept["id"]] == kept
    # Only the differences were written: the lost rule and the phantom's tombstone.
    seen = {(m.partition, m.offset) for m in before}
    written = sorted(m.key for m in after if (m.partition, m.offset) not in seen)
    assert written == sorted([unpublished.id, "rule_phantom0000000"])


async def test_a_failed_publish_answers_503_and_changes_nothing(
    settings: Settings, sidecar: Sidecar, api: MakeApi
) -> None:
    client = await api("pro")
    status, rule = await client.call("POST", "/v1/alerts/rules", rule_body())
    assert status == 201
    publisher = sidecar.app[RULE_PUBLISHER]
    real_topic, publisher.topic, publisher.timeout_s = publisher.topic, f"{settings.topic_prefix}missing", 2.0
    try:
        # The broker does not know the topic (and does not create topics): Kafka never acknowledges.
        status, error = await client.call("PUT", f"/v1/alerts/rules/{rule['id']}", rule_body(name="changed"))
        assert (status, error["error"]["code"]) == (503, "publish_failed"), error
        status, error = await client.call("POST", "/v1/alerts/rules", rule_body(name="new"))
        assert (status, error["error"]["code"]) == (503, "publish_failed"), error
        assert await client.call("GET", "/v1/alerts/rules") == (200, {"rules": [rule], "next_cursor": None})
    finally:
        publisher.topic = real_topic
    # Once Kafka takes messages again the repairs write PostgreSQL's state: the rule as it was, and a
    # tombstone for the rolled-back creation whose message may have landed.
    deadline = asyncio.get_running_loop().time() + 60
    while publisher.pending_repairs and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    assert not publisher.pending_repairs
    latest = await rules_on_topic(settings)
    assert latest[rule["id"]] == rule
    assert [key for key, value in latest.items() if value is not None] == [rule["id"]]
