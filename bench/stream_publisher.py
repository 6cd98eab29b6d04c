"""The update stream of bench/sidecar_bench.py: ``tvl.updates`` at a steady rate, stamped with send times.

    python -m bench.stream_publisher --bootstrap HOST:PORT --topic T --rows hot.json --rate 1000 \\
        --log stamps.bin

Update ``n`` is the row of hot key ``n % len(rows)`` (round robin, so each key gets ``rate / len(rows)``
updates a second) with a new TVL, ``as_of`` = now and ``source`` = ``"bench:<send time>"``: the sidecar
passes a row through to clients as it read it from Kafka, so a client computes the event-to-client latency
as its receive time minus that stamp (one clock: everything runs on this machine). The update messages do
not carry the Kafka timestamp, hence the stamp in a field of the row.

The producer is librdkafka (confluent-kafka), not aiokafka as in the worker: this process is not under
test, and on two shared cores its CPU is taken from the sidecar that is (aiokafka cost ~0.2 cores at
1,000/s, librdkafka a fraction of that). ``linger.ms`` 1 (batches of what is due within a millisecond),
Kafka's own partitioner (murmur2, as the worker's), acks from the leader.

Every send time is appended (float64, in send order) to ``--log``, flushed four times a second: the bench
counts from it how many updates of each key were sent in a measurement window, the delivered/expected
ratio's denominator. Sends are scheduled by the clock (due = elapsed x rate), not paced by the broker.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from array import array
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaError, Producer

from pipeline.records import iso


def publish(args: argparse.Namespace) -> dict[str, Any]:
    rows = [(key.encode(), row) for key, row in json.loads(Path(args.rows).read_text())]
    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 1, "acks": 1,
                         "partitioner": "murmur2_random"})  # fmt: skip
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    failed = 0

    def delivered(error: KafkaError | None, _message: object) -> None:
        nonlocal failed
        failed += error is not None

    stamps = array("d")
    written = sent = 0
    started = time.perf_counter()
    next_flush = started + 0.25
    print("READY", flush=True)
    with open(args.log, "ab") as out:
        while not stopping:
            due = int((time.perf_counter() - started) * args.rate)
            while sent < due:
                key, row = rows[sent % len(rows)]
                stamp = time.time()
                # A small move of the TVL (it is an update), event time now, the send time in `source`.
                value = dict(row, tvl_usd=row["tvl_usd"] * (1 + ((sent * 7919) % 200 - 100) / 1e5),
                             as_of=iso(stamp), source=f"bench:{stamp:.6f}")  # fmt: skip
                producer.produce(args.topic, orjson.dumps(value), key, on_delivery=delivered)
                stamps.append(stamp)
                sent += 1
            producer.poll(0)
            now = time.perf_counter()
            if now >= next_flush:
                out.write(stamps[written:].tobytes())
                out.flush()
                written, next_flush = len(stamps), now + 0.25
            time.sleep(0.001)
        producer.flush(10)
        out.write(stamps[written:].tobytes())
    elapsed = time.perf_counter() - started
    return {"sent": sent, "failed": failed, "seconds": round(elapsed, 1), "rate": round(sent / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stream_publisher", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--rows", required=True, help="JSON [[key, row], ...] of the keys to update")
    parser.add_argument("--rate", type=float, default=1000.0, help="updates per second")
    parser.add_argument("--log", required=True, help="where send times are appended (float64 each)")
    print(json.dumps(publish(parser.parse_args())), flush=True)


if __name__ == "__main__":
    main()
