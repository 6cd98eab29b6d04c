"""The Kafka leg alone, for bench/sidecar_bench.py: how late a plain consumer sees the stamped updates.

    python -m bench.kafka_probe --bootstrap HOST:PORT --topic T --out probe.bin

A consumer (every partition, from the end, nothing committed) reads the topic the publisher writes and
appends (send time, latency ms) of each stamped update to ``--out`` as float64 pairs, four times a second.
Measured in the same windows as the WebSocket clients, it splits their latency into what the producer and
the broker add (this figure) and what the sidecar adds on top (its aiokafka consumer, hub, queues, socket
writes): a stall of the broker or of the whole machine shows here too; one of the sidecar alone does not.
It is librdkafka (confluent-kafka), which fetches in a native thread: a fraction of the CPU an aiokafka
consumer costs at 1,000 messages/s, taken from the same two cores as the sidecar's.
"""

from __future__ import annotations

import argparse
import signal
import time
import uuid
from array import array

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

STAMP = b'"source":"bench:'


def probe(args: argparse.Namespace) -> None:
    group = f"bench-probe-{uuid.uuid4().hex[:8]}"  # required by librdkafka; nothing is committed to it
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": group, "enable.auto.commit": False})
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    partitions = consumer.list_topics(args.topic, timeout=30).topics[args.topic].partitions
    consumer.assign([TopicPartition(args.topic, p, OFFSET_END) for p in sorted(partitions)])
    pairs = array("d")
    written = 0
    next_flush = time.monotonic() + 0.25
    print("READY", flush=True)
    with open(args.out, "ab") as out:
        while not stopping:
            # poll, not consume(n): consume waits until n messages are there or the timeout passes.
            message = consumer.poll(0.1)
            now = time.time()
            value = message.value() if message is not None and message.error() is None else None
            at = value.find(STAMP) if value else -1
            if at >= 0:
                at += len(STAMP)
                stamp = float(value[at : value.index(b'"', at)])  # type: ignore[index]
                pairs.append(stamp)
                pairs.append((now - stamp) * 1000.0)
            if time.monotonic() >= next_flush:
                out.write(pairs[written:].tobytes())
                out.flush()
                written, next_flush = len(pairs), time.monotonic() + 0.25
    consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.kafka_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out", required=True)
    probe(parser.parse_args())


if __name__ == "__main__":
    main()
