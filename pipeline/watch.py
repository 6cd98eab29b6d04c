"""Print a topic's messages as they arrive: ``python -m pipeline.watch tvl.updates --key Terra``."""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.settings import get_settings
from pipeline.topics import topic_name, topic_specs

__all__ = ["main"]


async def watch(logical: str, key_contains: str | None, from_beginning: bool, limit: int | None) -> None:
    settings = get_settings()
    name = topic_name(settings, logical)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer._client.add_topic(name)
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or [])]
        if not partitions:
            sys.exit(f"topic {name} does not exist yet: start the worker (make up) first")
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        shown = 0
        async for message in consumer:
            key = (message.key or b"").decode(errors="replace")
            if key_contains and key_contains not in key:
                continue
            headers = "".join(f" {k}={v.decode(errors='replace')}" for k, v in message.headers)
            value = (message.value or b"").decode(errors="replace")
            print(f"{message.partition}:{message.offset} {key} {value}{headers}", flush=True)
            shown += 1
            if limit is not None and shown >= limit:
                return
    finally:
        await consumer.stop()


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m pipeline.watch", description=__doc__)
    parser.add_argument("topic", choices=sorted(topic_specs(settings)))
    parser.add_argument("--key", default=None, help="only keys containing this text")
    parser.add_argument("--from-beginning", action="store_true")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        asyncio.run(watch(args.topic, args.key, args.from_beginning, args.limit))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
