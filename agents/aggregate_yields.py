"""Agent: raw.yields -> validated -> APY and TVL history per pool -> yields.updates with 1d/7d changes."""

from __future__ import annotations

import faust
import orjson

from pipeline.app import app, settings, topic
from pipeline.dlq import accept
from pipeline.metrics import EMITTED, RECORDS
from pipeline.observe import Observation, Skipped, Watermarks, observe
from pipeline.records import RawYield
from pipeline.series import difference
from pipeline.yields import YIELD_SERIES, apy_series, tvl_series, yield_update
from tables.yields import yield_state

__all__ = ["aggregate_yields"]

watermarks = Watermarks()


# concurrency stays 1: with more, faust can commit offsets past unprocessed records (faust #606).
@app.agent(topic("raw.yields"))
async def aggregate_yields(stream: faust.StreamT[bytes]) -> None:
    updates = topic("yields.updates")
    async for event in stream.events():
        record = await accept(event, RawYield, "yields")
        if record is None:
            continue
        ts = record.ts.timestamp()
        offset = event.message.offset
        tvl = observe(yield_state, YIELD_SERIES, tvl_series(record.pool), ts, record.tvl_usd, offset)
        if isinstance(tvl, Skipped):
            RECORDS.labels("yields", tvl.value).inc()
            continue
        apy = None
        if record.apy is not None:
            observed = observe(
                yield_state, YIELD_SERIES, apy_series(record.pool), ts, record.apy, offset, difference
            )
            apy = observed if isinstance(observed, Observation) else None
        stale = watermarks.is_stale(record.source, event.message.partition, ts, settings.yield_stale_after_s)
        update = yield_update(record, apy, tvl, stale)
        await updates.send(key=record.pool.encode(), value=orjson.dumps(update))
        EMITTED.labels("yields.updates").inc()
