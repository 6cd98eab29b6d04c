"""Contender (b): a plain aiokafka consume -> decode -> aggregate -> produce loop, the practical ceiling.

Same per-record work as the agents (bench.common.Aggregator: pipeline.validation, pipeline.observe,
pipeline.prices / pipeline.tvl, orjson) with a plain dict as each aggregation's state: no tables, no changelogs, no
per-event tasks. At-least-once like the worker: a batch's sends are flushed (acked) before its offsets
are committed. Runs until SIGTERM, or until it has read ``--input-count`` records.

    python -m bench.plain_loop --group G --in-prices T --in-tvl T --out-prices T --out-tvl T
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.common import Aggregator, contender_parser
from pipeline.settings import get_settings
from pipeline.validation import Rejected


async def run(args: argparse.Namespace) -> None:
    settings = get_settings()
    aggregator = Aggregator(settings)
    stores = {
        args.in_prices: (aggregator.price, args.out_prices, {}),
        args.in_tvl: (aggregator.tvl, args.out_tvl, {}),
    }
    consumer = AIOKafkaConsumer(
        args.in_prices,
        args.in_tvl,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    # The worker's producer settings (pipeline/app.py): acks=all, 5 ms linger, 256 KiB batches.
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await producer.start()
    await consumer.start()
    read = sent = late = rejected = 0
    ready = False
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=args.batch)
            if not ready and consumer.assignment():
                ready = True
                print(f"READY {time.time():.3f}", flush=True)
            if not batch:
                continue
            for tp, messages in batch.items():
                process, out, state = stores[tp.topic]
                partition = tp.partition
                for message in messages:
                    result = process(message.value, partition, message.offset, state)
                    if result is None:
                        late += 1
                    elif isinstance(result, Rejected):
                        rejected += 1  # the input holds none; the agents would dead-letter it
                    else:
                        key, value = result
                        await producer.send(out, value, key=key.encode())
                        sent += 1
                read += len(messages)
            await producer.flush()
            await consumer.commit()
            if args.input_count and read >= args.input_count:
                break
    finally:
        print(f"DONE read={read} sent={sent} late={late} rejected={rejected}", flush=True)
        await consumer.stop()
        await producer.stop()


def main() -> None:
    parser = contender_parser("python -m bench.plain_loop")
    parser.add_argument("--batch", type=int, default=5000, help="max records per getmany")
    parser.add_argument("--input-count", type=int, default=0, help="exit after reading this many (0: run)")
    asyncio.run(run(parser.parse_args()))
    sys.exit(0)


if __name__ == "__main__":
    main()
