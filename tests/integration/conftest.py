"""Integration fixtures: unique topics per test on the real broker, a real faust worker process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from pipeline.settings import Settings
from pipeline.topics import delete_topics_containing, ensure_topics
from tests.integration.support import (  # noqa: F401  (re-exported for test modules)
    Message,
    WorkerProcess,
    free_port,
    read_all,
    read_table,
    read_topic,
    send_records,
    topic_end_offsets,
    wait_processed,
)

# The tags of this session's topics: deleted when the session ends. Left behind, every run added a few
# thousand partitions to the local broker until it ran out of file descriptors and stopped.
_TAGS: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def _delete_this_sessions_topics() -> Iterator[None]:
    yield
    if _TAGS:
        asyncio.run(delete_topics_containing(Settings().kafka_bootstrap, _TAGS))


def unique_settings() -> Settings:
    """Settings whose topics and consumer group belong to one test (or one run within a test) alone."""
    tag = uuid.uuid4().hex[:10]
    _TAGS.append(tag)
    return Settings(
        topic_prefix=f"t{tag}.",
        app_id=f"llamastream-test-{tag}",
        topic_partitions=2,
        worker_web_port=free_port(),
        commit_interval_s=0.5,
        session_timeout_s=10,
    )


@pytest.fixture
def settings() -> Settings:
    return unique_settings()


@pytest.fixture
async def topics(settings: Settings) -> Settings:
    await ensure_topics(settings)
    return settings


@pytest.fixture
def worker(topics: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    process = WorkerProcess(topics, tmp_path / "worker.log")
    yield process
    process.stop()


@pytest.fixture
async def ready_worker(worker: WorkerProcess) -> AsyncIterator[WorkerProcess]:
    worker.start()
    await worker.wait_ready()
    yield worker


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[Settings], Awaitable[WorkerProcess]]]:
    """Start more workers, each on its own (unique) settings; all are stopped at teardown."""
    started: list[WorkerProcess] = []

    async def start(settings: Settings) -> WorkerProcess:
        await ensure_topics(settings)
        process = WorkerProcess(settings, tmp_path / f"worker-{settings.app_id}-{len(started)}.log")
        started.append(process)
        process.start()
        await process.wait_ready()
        return process

    yield start
    for process in started:
        process.stop()
