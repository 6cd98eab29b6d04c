"""Agent: raw.prices -> validated -> price history -> price.updates with 5m/1h/24h changes and 1m candle."""

from __future__ import annotations

import faust
import orjson

from pipeline.app import app, settings, topic
from pipeline.dlq import accept
from pipeline.metrics import EMITTED, RECORDS
from pipeline.observe import Skipped, Watermarks, observe
from pipeline.prices import PRICE_SERIES, price_update
from pipeline.records import RawPrice
from tables.prices import price_state

__all__ = ["aggregate_prices"]

watermarks = Watermarks()


# concurrency stays 1: with more, faust can commit offsets past unprocessed records (faust #606).
@app.agent(topic("raw.prices"))
async def aggregate_prices(stream: faust.StreamT[bytes]) -> None:
    updates = topic("price.updates")
    async for event in stream.events():
        record = await accept(event, RawPrice, "prices")
        if record is None:
            continue
        ts = record.ts.timestamp()
        observation = observe(price_state, PRICE_SERIES, record.coin, ts, record.price, event.message.offset)
        if isinstance(observation, Skipped):
            RECORDS.labels("prices", observation.value).inc()
            continue
        stale = watermarks.is_stale(record.source, event.message.partition, ts, settings.price_stale_after_s)
        update = price_update(record, observation, stale)
        await updates.send(key=record.coin.encode(), value=orjson.dumps(update))
        EMITTED.labels("price.updates").inc()
