"""Replay real history into the raw topics, keeping event time: ``python -m pipeline.replay DATASET``."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.connectors.datasets import DATASETS, records_of
from pipeline.connectors.readers import ReplayRecord
from pipeline.connectors.sink import KafkaSink, RecordSink
from pipeline.settings import Settings, get_settings
from pipeline.topics import ensure_topics, topic_name

__all__ = ["replay", "main", "continuation_shift", "shifted"]

log = logging.getLogger("pipeline.replay")


async def replay(records: Iterable[ReplayRecord], sink: RecordSink, *, speed: float = 0.0) -> int:
    """Send records in order; ``speed`` is history seconds per wall second (0: as fast as possible)."""
    sent = 0
    first_ts: float | None = None
    wall_start = time.monotonic()
    for record in records:
        if speed > 0:
            if first_ts is None:
                first_ts = record.ts
            due = wall_start + (record.ts - first_ts) / speed
            delay = due - time.monotonic()
            if delay > 0:
                await sink.flush()  # what is due now should not wait in the batch
                await asyncio.sleep(delay)
        await sink.send(record.topic, record.key, record.value)
        sent += 1
    await sink.flush()
    return sent


DAY = 86400.0


def continuation_shift(first_ts: float, last_ts: float, newest_seen: float | None) -> float:
    """Whole days to add to a pass's event times so that it follows what the topics already hold.

    A looped demo that sent the same event times again would only produce late records, which the
    agents store but do not publish; whole days keep daily data on its 00:00 UTC grid.
    """
    if newest_seen is None or newest_seen < first_ts:
        return 0.0
    span_days = max(1, math.ceil((last_ts - first_ts) / DAY))
    passes = math.floor((newest_seen - first_ts) / (span_days * DAY)) + 1
    return passes * span_days * DAY


def shifted(records: Iterable[ReplayRecord], shift: float) -> Iterator[ReplayRecord]:
    for record in records:
        if shift:
            record = ReplayRecord(
                record.ts + shift, record.topic, record.key, {**record.value, "ts": record.ts + shift}
            )
        yield record


async def newest_event_time(settings: Settings, logical_topics: set[str]) -> float | None:
    """The largest ``ts`` among the last record of every partition of the given raw topics."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = []
        for logical in logical_topics:
            name = topic_name(settings, logical)
            consumer._client.add_topic(name)
            await consumer._client.force_metadata_update()
            partitions += [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
        ends = await consumer.end_offsets(partitions)
        last = [tp for tp in partitions if ends[tp] > 0]
        if not last:
            return None
        consumer.assign(last)
        for tp in last:
            consumer.seek(tp, ends[tp] - 1)
        newest: float | None = None
        batch = await consumer.getmany(timeout_ms=5000)
        for messages in batch.values():
            for message in messages:
                try:
                    ts = float(orjson.loads(message.value or b"{}")["ts"])
                except (KeyError, TypeError, ValueError, orjson.JSONDecodeError):
                    continue  # a malformed record: the DLQ's business, not the replay's
                newest = ts if newest is None else max(newest, ts)
        return newest
    finally:
        await consumer.stop()


def _date(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()


def _window(
    records: Iterable[ReplayRecord], since: float | None, until: float | None
) -> Iterator[ReplayRecord]:
    for record in records:
        if until is not None and record.ts >= until:
            return
        if since is None or record.ts >= since:
            yield record


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    listing = "\n".join(f"  {d.name:16} {d.doc}" for d in DATASETS.values())
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.replay",
        description="Replay a dataset of ../shared/data into the raw topics.",
        epilog=f"datasets:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="history seconds per wall second, e.g. 86400 = a day per second (default: max)",
    )
    parser.add_argument("--limit", type=int, default=None, help="stop after this many records")
    parser.add_argument("--data", type=Path, default=None, help="the shared data folder")
    parser.add_argument("--since", type=_date, default=None, help="first event day replayed (YYYY-MM-DD)")
    parser.add_argument("--until", type=_date, default=None, help="first event day not replayed (YYYY-MM-DD)")
    parser.add_argument(
        "--loop",
        action="store_true",
        help="replay again and again (a live demo); each pass follows the event times the raw topics"
        " already hold, shifted by whole days, so that its records are not late",
    )
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    settings = get_settings()
    await ensure_topics(settings)
    async with KafkaSink(settings) as sink:
        while True:
            records = list(
                itertools.islice(
                    _window(records_of(args.dataset, args.data), args.since, args.until), args.limit
                )
            )
            if not records:
                log.warning("nothing to replay in %s for that window", args.dataset)
                return
            shift = 0.0
            if args.loop:
                newest = await newest_event_time(settings, {r.topic for r in records})
                shift = continuation_shift(records[0].ts, records[-1].ts, newest)
            started = time.monotonic()
            sent = await replay(shifted(records, shift), sink, speed=args.speed)
            elapsed = time.monotonic() - started
            log.info(
                "replayed %d records of %s (event time shifted by %.0f days) in %.1fs (%.0f/s)",
                sent,
                args.dataset,
                shift / DAY,
                elapsed,
                sent / max(elapsed, 1e-9),
            )
            if not args.loop:
                return


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_run(_parse_args(argv)))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
