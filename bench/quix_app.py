"""Contender (c): the same aggregation written with Quix Streams (3.x), the nearest Python peer.

One StreamingDataFrame per raw topic. A stateful ``apply`` runs the agents' per-record work
(bench.common.Aggregator) with Quix's RocksDB state, changelogged to Kafka like faust's tables, as the
aggregation's state: Quix scopes state to the message key, and each raw key maps to exactly one
series, so the series' bucket/index/latest entries live in that key's state under the same names the
faust table uses. Rejected and late records are dropped (the input holds none); updates go to the
output topic keyed like the agents' (coin, or ``kind|protocol|chain``), as the same orjson bytes.

    python -m bench.quix_app --group G --state-dir D --in-prices T --in-tvl T --out-prices T --out-tvl T
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, MutableMapping
from typing import Any

from quixstreams import Application, State, message_context
from quixstreams.models.serializers import Serializer

from bench.common import Aggregator, contender_parser
from pipeline.settings import get_settings
from pipeline.validation import Rejected

_MISSING = object()


class StateStore(MutableMapping[str, Any]):
    """A Quix ``State`` (one message key's state) seen as the mapping pipeline.series expects."""

    __slots__ = ("state",)

    def __init__(self, state: State) -> None:
        self.state = state

    def __getitem__(self, key: str) -> Any:
        value = self.state.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        value = self.state.get(key)
        return default if value is None else value

    def __setitem__(self, key: str, value: Any) -> None:
        self.state.set(key, value)

    def __delitem__(self, key: str) -> None:
        if not self.state.exists(key):
            raise KeyError(key)
        self.state.delete(key)

    def pop(self, key: str, default: Any = _MISSING) -> Any:  # type: ignore[override]
        value = self.state.get(key)
        if value is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        self.state.delete(key)
        return value

    def __iter__(self) -> Iterator[str]:  # not needed by pipeline.series
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


class UpdateSerializer(Serializer):
    """The value of a ``(key, update bytes)`` pair: the bytes the agents would send."""

    def __call__(self, value: tuple[str, bytes], ctx: Any) -> bytes:
        return value[1]


def build(args: argparse.Namespace) -> Application:
    settings = get_settings()
    aggregator = Aggregator(settings)
    app = Application(
        broker_address=settings.kafka_bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=settings.commit_interval_s,  # the worker's commit interval
        state_dir=args.state_dir,
        loglevel="WARNING",
        use_changelog_topics=True,  # durable state, as faust's changelog-backed tables
        producer_extra_config={"linger.ms": 5, "acks": "all"},
    )

    def wire(in_topic: str, out_topic: str, process: Any) -> None:
        source = app.topic(in_topic, key_deserializer="bytes", value_deserializer="bytes")
        sink = app.topic(out_topic, key_serializer="str", value_serializer=UpdateSerializer())

        def aggregate(value: bytes, state: State) -> tuple[str, bytes] | None:
            context = message_context()
            result = process(value, context.partition, context.offset, StateStore(state))
            if result is None or isinstance(result, Rejected):
                return None
            return result  # type: ignore[no-any-return]

        sdf = app.dataframe(source)
        sdf = sdf.apply(aggregate, stateful=True)
        sdf = sdf.filter(lambda update: update is not None)
        sdf.to_topic(sink, key=lambda update: update[0])

    wire(args.in_prices, args.out_prices, aggregator.price)
    wire(args.in_tvl, args.out_tvl, aggregator.tvl)
    return app


def main() -> None:
    parser = contender_parser("python -m bench.quix_app")
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    app = build(args)
    print("STARTING", flush=True)
    app.run()  # until SIGTERM / SIGINT


if __name__ == "__main__":
    main()
