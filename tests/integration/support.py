"""Helpers of the integration tests: read topics and changelogs, produce records, run a real worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr

from pipeline.connectors.readers import ReplayRecord
from pipeline.connectors.sink import KafkaSink
from pipeline.replay import replay
from pipeline.settings import Settings
from pipeline.topics import topic_name

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Message:
    key: str
    value: bytes
    headers: dict[str, bytes]
    partition: int
    offset: int

    def json(self) -> dict:  # type: ignore[type-arg]
        return orjson.loads(self.value)  # type: ignore[no-any-return]


async def _partitions(consumer: AIOKafkaConsumer, name: str) -> list[TopicPartition]:
    """All partitions of a topic (a consumer with no subscription knows no topics until asked)."""
    consumer._client.add_topic(name)
    await consumer._client.force_metadata_update()
    partitions = [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or [])]
    assert partitions, f"topic {name} not found on the broker"
    return partitions


async def read_topic(
    settings: Settings,
    logical: str,
    *,
    until: Callable[[list[Message]], bool],
    timeout: float = 60.0,
) -> list[Message]:
    """Read a topic from the beginning (all partitions, no group) until ``until(messages)`` holds."""
    name = topic_name(settings, logical)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    messages: list[Message] = []
    try:
        partitions = await _partitions(consumer, name)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout
        while not until(messages):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{name}: condition not met after {timeout}s with {len(messages)} messages"
                )
            batch = await consumer.getmany(timeout_ms=int(min(remaining, 1.0) * 1000), max_records=10_000)
            for tp_messages in batch.values():
                messages.extend(
                    Message(
                        key=(m.key or b"").decode(),
                        value=m.value or b"",
                        headers={k: v for k, v in m.headers},
                        partition=m.partition,
                        offset=m.offset,
                    )
                    for m in tp_messages
                )
        return messages
    finally:
        await consumer.stop()


async def read_all(settings: Settings, logical: str, timeout: float = 60.0) -> list[Message]:
    """Everything a topic holds now (up to its end offsets at the time of the call)."""
    total = await topic_end_offsets(settings, logical)
    return await read_topic(settings, logical, until=lambda ms: len(ms) >= total, timeout=timeout)


async def topic_end_offsets(settings: Settings, logical: str) -> int:
    """How many records a topic holds in all, summed over partitions."""
    name = topic_name(settings, logical)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        partitions = await _partitions(consumer, name)
        ends = await consumer.end_offsets(partitions)
        return sum(ends.values())
    finally:
        await consumer.stop()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment under which a child process's ``Settings()`` equals ``settings``.

    A None setting is left out (and any inherited value removed), so the child gets the field's default
    (None) rather than the text "None"; secrets are passed as their value, not their masked form.
    """
    env = dict(os.environ)
    for field, value in settings.model_dump().items():
        name = f"LLAMA_{field.upper()}"
        if value is None:
            env.pop(name, None)
        elif isinstance(value, SecretStr):
            env[name] = value.get_secret_value()
        elif isinstance(value, bool):
            env[name] = str(value).lower()
        else:
            env[name] = str(value)
    return env


class WorkerProcess:
    """A real ``faust -A pipeline.app worker`` in its own process group, so SIGKILL takes all of it."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    def start(self) -> None:
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self._spawn(log)

    def _spawn(self, log: typing.BinaryIO) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "pipeline.app", "worker", "-l", "info", "--without-web"]
            if not self.settings.worker_web_enabled
            else [
                sys.executable,
                "-m",
                "faust",
                "-A",
                "pipeline.app",
                "worker",
                "-l",
                "info",
                "--web-port",
                str(self.settings.worker_web_port),
                "--web-host",
                "127.0.0.1",
            ],
            cwd=ROOT,
            env=settings_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, f"worker exited; see {self.log_path}"
            if b"[^Worker]: Ready" in self.log_path.read_bytes()[self._log_start :]:
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout}s; see {self.log_path}")

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


async def send_records(settings: Settings, records: Iterable[ReplayRecord]) -> int:
    """Produce records to their raw topics at full speed, through the same path the replay CLI uses."""
    async with KafkaSink(settings) as sink:
        return await replay(records, sink)


async def read_table(settings: Settings, table: str, timeout: float = 60.0) -> dict[str, object]:
    """A table's contents as its changelog says: the last value per key, deletions applied."""
    contents, _ = await _read_changelog(settings, table, timeout)
    return contents


async def wait_processed(settings: Settings, table: str, logical: str, timeout: float = 300.0) -> None:
    """Wait until the worker's state holds the last record of every partition of a raw topic.

    The latest entry of a series (``l|...``) records the source offset it was read at, and the
    changelog partition is the source partition; committed offsets are not used because faust
    sometimes stops advancing them after a restart (docs/architecture.md).
    """
    name = topic_name(settings, logical)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        ends = {
            tp.partition: end
            for tp, end in (await consumer.end_offsets(await _partitions(consumer, name))).items()
        }
    finally:
        await consumer.stop()
    deadline = time.monotonic() + timeout
    while True:
        _, newest = await _read_changelog(settings, table, timeout)
        if all(end == 0 or newest.get(p, -1) >= end - 1 for p, end in ends.items()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: processed up to {newest}, ends {ends}, after {timeout}s")
        await asyncio.sleep(1.0)


async def _read_changelog(
    settings: Settings, table: str, timeout: float
) -> tuple[dict[str, object], dict[int, int]]:
    """(contents, newest source offset recorded in a latest entry per partition)."""
    name = f"{settings.app_id}-{table}-changelog"
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await _partitions(consumer, name)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        contents: dict[str, object] = {}
        newest: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            assert time.monotonic() < deadline, f"{name}: not read to its end in {timeout}s"
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for tp_messages in batch.values():
                for m in tp_messages:
                    key = orjson.loads(m.key)
                    if m.value is None:
                        contents.pop(key, None)
                        continue
                    value = contents[key] = orjson.loads(m.value)
                    if key.startswith("l|"):
                        newest[m.partition] = max(newest.get(m.partition, -1), value["offset"])
        return contents, newest
    finally:
        await consumer.stop()
