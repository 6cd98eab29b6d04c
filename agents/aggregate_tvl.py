"""Agent: raw.tvl -> validated -> TVL history -> tvl.updates with 1h/1d/7d changes in event time."""

from __future__ import annotations

import faust
import orjson

from pipeline.app import app, settings, topic
from pipeline.dlq import accept
from pipeline.metrics import EMITTED, RECORDS
from pipeline.observe import Skipped, Watermarks, observe
from pipeline.records import RawTvl
from pipeline.tvl import TVL_SERIES, tvl_key, tvl_update
from tables.tvl import tvl_state

__all__ = ["aggregate_tvl"]

watermarks = Watermarks()


# concurrency stays 1: with more, faust can commit offsets past unprocessed records (faust #606).
@app.agent(topic("raw.tvl"))
async def aggregate_tvl(stream: faust.StreamT[bytes]) -> None:
    updates = topic("tvl.updates")
    async for event in stream.events():
        record = await accept(event, RawTvl, "tvl")
        if record is None:
            continue
        key = tvl_key(record)
        ts = record.ts.timestamp()
        observation = observe(tvl_state, TVL_SERIES, key, ts, record.tvl_usd, event.message.offset)
        if isinstance(observation, Skipped):
            RECORDS.labels("tvl", observation.value).inc()
            continue
        stale = watermarks.is_stale(record.source, event.message.partition, ts, settings.tvl_stale_after_s)
        update = tvl_update(record, observation, stale)
        await updates.send(key=key.encode(), value=orjson.dumps(update))
        EMITTED.labels("tvl.updates").inc()
