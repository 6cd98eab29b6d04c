"""Agent: raw.chain logs -> validated -> decoded Swap/Mint/Burn/Collect/Transfer events on chain.events."""

from __future__ import annotations

import faust
import orjson

from pipeline.app import app, topic
from pipeline.chain_decode import decode_log, json_ready_args
from pipeline.dlq import accept, reject
from pipeline.metrics import EMITTED, RECORDS
from pipeline.records import RawLog

__all__ = ["decode_chain"]


@app.agent(topic("raw.chain"))
async def decode_chain(stream: faust.StreamT[bytes]) -> None:
    events = topic("chain.events")
    async for event in stream.events():
        # Counted accepted only once its data fits the event's ABI too.
        log = await accept(event, RawLog, "chain", count=False)
        if log is None:
            continue
        try:
            decoded = decode_log(log)
        except ValueError as error:
            # The log is well-formed JSON but its data does not fit the event's ABI.
            await reject(event, "chain", str(error))
            continue
        RECORDS.labels("chain", "accepted").inc()
        if decoded is None:
            RECORDS.labels("chain", "unknown_event").inc()
            continue
        decoded["args"] = json_ready_args(decoded)
        key = f"{decoded['chain']}|{decoded['address']}"
        await events.send(key=key.encode(), value=orjson.dumps(decoded))
        EMITTED.labels("chain.events").inc()
