"""Replay real history into the raw topics, keeping event time: ``python -m pipeline.replay DATASET``."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from pipeline.connectors.datasets import DATASETS, records_of
from pipeline.connectors.readers import ReplayRecord
from pipeline.connectors.sink import KafkaSink, RecordSink
from pipeline.settings import get_settings
from pipeline.topics import ensure_topics

__all__ = ["replay", "main"]

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
    parser.add_argument("--loop", action="store_true", help="start again at the end (for a live demo)")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    settings = get_settings()
    await ensure_topics(settings)
    async with KafkaSink(settings) as sink:
        while True:
            started = time.monotonic()
            records = _window(records_of(args.dataset, args.data), args.since, args.until)
            sent = await replay(itertools.islice(records, args.limit), sink, speed=args.speed)
            elapsed = time.monotonic() - started
            log.info(
                "replayed %d records of %s in %.1fs (%.0f/s)",
                sent,
                args.dataset,
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
