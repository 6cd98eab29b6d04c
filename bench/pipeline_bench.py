"""Throughput and latency of the pipeline against a plain aiokafka loop and Quix Streams, in one run.

    python -m bench.pipeline_bench             # 1,000,000 records (what ``make bench`` runs)
    python -m bench.pipeline_bench --quick     # 100,000 records, shorter latency run: a smoke test
    python -m bench.pipeline_bench --skip quix --skip floor

One input, produced once: real price and TVL history from /work/shared/data (bench.common), repeated
as distinct copies until there are ``--records`` of them, in the raw topics of a fresh topic prefix.
Every contender then reads those same raw topics from the beginning in its own fresh process and
writes its own derived topics:

  faust   the pipeline itself: ``faust -A pipeline.app worker`` (agents/aggregate_*.py)
  plain   bench/plain_loop.py: aiokafka getmany -> same aggregation code on dicts -> send; the ceiling
  quix    bench/quix_app.py: the same aggregation in Quix Streams with its RocksDB state
  floor   bench/faust_floor.py: a faust agent that only counts events: faust's own per-event ceiling

Throughput is (outputs between the first and the last poll) / (time between them), polling the
derived topics' end offsets every 0.2 s until they hold one update per input record. Latency is
measured afterwards on fresh topics and fresh processes, producing at half of faust's rate. Figures
go to bench/results/pipeline.json (see bench/README.md); speed is never asserted, only recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from bench.common import BASE_DATASETS, Aggregator, InputRecord, input_records, settings_env
from pipeline.records import RawPrice, RawTvl, iso
from pipeline.settings import Settings
from pipeline.topics import delete_topics_containing, ensure_topics, topic_name, topic_specs
from pipeline.tvl import tvl_key
from pipeline.validation import Rejected, parse_record

# The code this process runs: a snapshot of the project's code taken when the run starts (see
# ``snapshot``), or the project itself with --no-snapshot. HOME is the project: results and work dirs.
ROOT = Path(__file__).resolve().parents[1]
HOME = Path(os.environ.get("BENCH_HOME", ROOT))
BENCH = HOME / "bench"
RESULTS = BENCH / "results"
SNAPSHOT_PACKAGES = ("pipeline", "agents", "tables", "bench")
PYTHON = sys.executable
CONTENDERS = ("faust", "plain", "quix", "floor")
POLL_S = 0.2


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- machine and process accounting


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
        "packages": _versions("faust-streaming", "aiokafka", "quixstreams", "confluent-kafka", "pydantic", "orjson"),
    }


def _versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


# ---------------------------------------------------------------- Kafka helpers


async def create_topics(bootstrap: str, names: list[str], like: dict[str, str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        new = [NewTopic(n, num_partitions=partitions, replication_factor=1, topic_configs=like) for n in names]
        try:
            await admin.create_topics(new)
        except TopicAlreadyExistsError:
            pass
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, marker: str) -> list[str]:
    """Delete every topic whose name contains ``marker`` (our run's tag): ours, faust's and Quix's."""
    return await delete_topics_containing(bootstrap, [marker])


async def changelog_records(bootstrap: str, marker: str) -> dict[str, int]:
    """Records in the changelog topics whose name contains ``marker`` (an app id or consumer group)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = sorted(n for n in await admin.list_topics() if marker in n and "changelog" in n)
    finally:
        await admin.close()
    counts = {}
    for name in names:
        watcher = EndOffsets(bootstrap, [name])
        await watcher.start()
        try:
            counts[name] = await watcher.total()
        finally:
            await watcher.stop()
    return {name: count for name, count in counts.items() if count}


class EndOffsets:
    """Sum of the end offsets of some topics, asked of the broker without consuming anything."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.topics = topics
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.partitions: list[TopicPartition] = []

    async def start(self) -> None:
        await self.consumer.start()
        for name in self.topics:
            self.consumer._client.add_topic(name)
        await self.consumer._client.force_metadata_update()
        for name in self.topics:
            parts = self.consumer.partitions_for_topic(name)
            assert parts, f"topic {name} not found on the broker"
            self.partitions += [TopicPartition(name, p) for p in sorted(parts)]

    async def total(self) -> int:
        return sum((await self.consumer.end_offsets(self.partitions)).values())

    async def stop(self) -> None:
        await self.consumer.stop()


async def read_messages(
    bootstrap: str, topics: list[str], *, tail: int | None = None
) -> list[Any]:
    """Every message of some topics up to their current ends (or the last ``tail`` per partition)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        for name in topics:
            consumer._client.add_topic(name)
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(n, p) for n in topics for p in sorted(consumer.partitions_for_topic(n) or [])]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, 0 if tail is None else max(0, ends[tp] - tail))
        messages: list[Any] = []
        deadline = time.monotonic() + 300
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topics} to their ends")
            batch = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            for records in batch.values():
                messages.extend(m for m in records if m.offset < ends[TopicPartition(m.topic, m.partition)])
        return messages
    finally:
        await consumer.stop()


# ---------------------------------------------------------------- the input


async def produce_input(settings: Settings, count: int) -> dict[str, Any]:
    """Produce the input once, as fast as the producer goes (linger, big batches, no per-record await)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=50, max_batch_size=512 * 1024,
        enable_idempotence=True,  # no duplicates: the reference run counts offsets from 0
    )
    await producer.start()
    names = {logical: topic_name(settings, logical) for logical in ("raw.prices", "raw.tvl")}
    per_topic: Counter[str] = Counter()
    keys: set[bytes] = set()
    started = time.perf_counter()
    try:
        for record in input_records(count, settings.topic_partitions):
            await producer.send(names[record.topic], record.value, key=record.key, partition=record.partition)
            per_topic[record.topic] += 1
            keys.add(record.key)
        await producer.flush()
    finally:
        await producer.stop()
    elapsed = time.perf_counter() - started
    return {
        "records": sum(per_topic.values()),
        "price_records": per_topic["raw.prices"],
        "tvl_records": per_topic["raw.tvl"],
        "distinct_keys": len(keys),
        "datasets": list(BASE_DATASETS),
        "produce_s": round(elapsed, 2),
        "produce_events_per_s": round(sum(per_topic.values()) / elapsed),
    }


@dataclass
class Reference:
    """The aggregation run in this process on dicts, over the same records in the same partition order."""

    outputs: Counter[str] = field(default_factory=Counter)
    late: int = 0
    rejected: int = 0
    seconds: float = 0.0  # wall
    cpu_seconds: float = 0.0  # this process's CPU: what the aggregation costs, whatever the neighbours do
    records: int = 0
    finals: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (output topic kind, key) -> last value

    @property
    def expected(self) -> int:
        return sum(self.outputs.values())


def reference_run(settings: Settings, count: int) -> Reference:
    aggregator = Aggregator(settings)
    stores = {"raw.prices": (aggregator.price, "prices", {}), "raw.tvl": (aggregator.tvl, "tvl", {})}
    ref = Reference()
    chunk: list[InputRecord] = []
    offsets: Counter[tuple[str, int]] = Counter()  # fresh topics: a partition's offsets count from 0

    def run(chunk: list[InputRecord]) -> None:
        located = []
        for record in chunk:
            where = (record.topic, record.partition)
            located.append((record, offsets[where]))
            offsets[where] += 1
        started, cpu_started = time.perf_counter(), time.process_time()
        for record, offset in located:
            process, kind, state = stores[record.topic]
            result = process(record.value, record.partition, offset, state)
            if result is None:
                ref.late += 1
            elif isinstance(result, Rejected):
                ref.rejected += 1
            else:
                ref.outputs[kind] += 1
                ref.finals[(kind, result[0])] = result[1]
        ref.seconds += time.perf_counter() - started
        ref.cpu_seconds += time.process_time() - cpu_started
        ref.records += len(chunk)

    for record in input_records(count, settings.topic_partitions):
        chunk.append(record)
        if len(chunk) == 20_000:
            run(chunk)
            chunk = []
    run(chunk)
    return ref


async def verify_tail(bootstrap: str, topics: dict[str, str], ref: Reference, tail: int = 500) -> dict[str, Any]:
    """The last value of each key found in the last ``tail`` records of every partition must equal the
    reference's final value for that key (a key's updates all go to one partition, so the last one
    there is its final state)."""
    checked = mismatched = 0
    example = None
    for kind, name in topics.items():
        last: dict[str, bytes] = {}
        for message in await read_messages(bootstrap, [name], tail=tail):
            last[message.key.decode()] = message.value
        for key, value in last.items():
            checked += 1
            expected = ref.finals.get((kind, key))
            if expected != value:
                mismatched += 1
                example = example or {"topic": name, "key": key, "got": value[:300].decode(errors="replace"),
                                      "expected": (expected or b"<no such key>")[:300].decode(errors="replace")}
    return {"keys_checked": checked, "mismatched": mismatched, "example": example}


# ---------------------------------------------------------------- processes


class Processes:
    """Every process this run starts, each in its own process group; ``stop_all`` ends exactly those."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, cmd: list[str], *, env: dict[str, str], cwd: Path, log_path: Path) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        for proc in self.procs:
            self.stop(proc, timeout=15)


class Profiler:
    """py-spy sampling one process for a while. Blocking mode (it pauses the process for each sample,
    tens of microseconds at 100 Hz): ``--nonblocking`` tore ~40% of the stacks of a busy worker."""

    def __init__(self, pid: int, seconds: float, out: Path) -> None:
        self.out = out
        self.seconds = seconds
        self.started = time.time()
        self.proc = subprocess.Popen(
            ["py-spy", "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "100", "-f", "raw",
             "--full-filenames", "--nolineno", "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def finish(self) -> float:
        """Stop early if still sampling (py-spy writes what it has on SIGINT); the seconds sampled."""
        now = time.time()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return min(now, self.started + self.seconds) - self.started


# ---------------------------------------------------------------- throughput of one contender


@dataclass
class Contender:
    name: str
    cmd: list[str]
    env: dict[str, str]
    outputs: list[str]  # derived topics it writes (empty for the floor)
    ready_marker: bytes | None = None
    progress_file: Path | None = None  # the floor reports its own count
    changelog_marker: str | None = None  # its state's changelog topics contain this


async def run_contender(
    c: Contender, *, expected: int, workdir: Path, procs: Processes, profile_s: float, stall_s: float,
    bootstrap: str,
) -> dict[str, Any]:
    log_path = workdir / f"{c.name}.log"
    watcher = EndOffsets(bootstrap, c.outputs) if c.outputs else None
    if watcher:
        await watcher.start()

    async def progress() -> int:
        if watcher:
            return await watcher.total()
        try:
            return int(json.loads(c.progress_file.read_text())["count"])  # type: ignore[union-attr]
        except (OSError, ValueError, KeyError):
            return 0

    spawned = time.time()
    proc = procs.spawn(c.cmd, env=c.env, cwd=workdir, log_path=log_path)
    log(f"{c.name}: started pid {proc.pid}")
    samples: list[tuple[float, int]] = []
    first: tuple[float, int] | None = None
    ready_at = None
    profiler: Profiler | None = None
    cpu_first = sys_first = None
    cpu_first_t = 0.0
    failure = None
    last_count, last_change = 0, spawned
    try:
        while True:
            count = await progress()
            now = time.time()
            samples.append((now, count))
            if count != last_count:
                last_count, last_change = count, now
            if ready_at is None and c.ready_marker and c.ready_marker in log_path.read_bytes():
                ready_at = now
            if first is None and count > 0:
                first = (now, count)
                cpu_first, sys_first, cpu_first_t = process_cpu_s(proc.pid), system_cpu(), now
                log(f"{c.name}: first output after {now - spawned:.1f}s")
            if profile_s and profiler is None and first is not None and now - first[0] >= 3.0:
                profiler = Profiler(proc.pid, profile_s, workdir / f"{c.name}_profile.txt")
            if count >= expected:
                break
            if proc.poll() is not None:
                failure = f"exited with {proc.returncode} after {count} of {expected} outputs; see its log"
                break
            if now - last_change > stall_s:
                failure = f"no progress for {stall_s:.0f}s at {count} of {expected} outputs"
                break
            if len(samples) % 50 == 0:
                log(f"{c.name}: {count:,} / {expected:,}")
            await asyncio.sleep(POLL_S)
        last = samples[-1]
        cpu_last, sys_last = process_cpu_s(proc.pid), system_cpu()
        profiled_s = profiler.finish() if profiler else 0.0
        if watcher and failure is None:
            await asyncio.sleep(3.0)  # any output past the expected count would be a duplicate
            settled = await watcher.total()
        else:
            settled = last[1]
    finally:
        Processes.stop(proc)
        if profiler and profiler.proc.poll() is None:
            profiler.finish()
        if watcher:
            await watcher.stop()

    result: dict[str, Any] = {"expected_outputs": expected, "outputs": settled, "failure": failure}
    poll_first = first  # the first poll that saw progress: where the CPU accounting starts
    if c.progress_file is not None and c.progress_file.exists():
        # The floor timed its own first and last event.
        floor = json.loads(c.progress_file.read_text())
        if floor.get("first") and floor.get("last") and floor["count"] > 1:
            span = floor["last"] - floor["first"]
            result["events_per_s"] = round((floor["count"] - 1) / span) if span > 0 else None
            result["seconds"] = round(span, 2)
            first = (floor["first"], 1)
            if floor.get("tasks_at_last") is not None and floor.get("tasks_at_first") is not None:
                result["asyncio_tasks_per_event"] = round(
                    (floor["tasks_at_last"] - floor["tasks_at_first"]) / (floor["count"] - 1), 2
                )
    elif first is not None and last[0] > first[0] and last[1] > first[1]:
        result["events_per_s"] = round((last[1] - first[1]) / (last[0] - first[0]))
        result["seconds"] = round(last[0] - first[0], 2)
    if first is not None:
        result["startup_s"] = round(first[0] - spawned, 2)  # process start to first output
    if ready_at is not None:
        result["ready_s"] = round(ready_at - spawned, 2)
    if cpu_first is not None and cpu_last is not None and last[0] > cpu_first_t:
        span = last[0] - cpu_first_t
        result["process_cpu_cores"] = round((cpu_last - cpu_first) / span, 2)
        # The machine is shared: events per CPU-second of the contender's own process is what it would
        # do with a core to itself, and moves less with the neighbours' load than events/s does.
        if result.get("events_per_s") and cpu_last > cpu_first:
            result["events_per_cpu_s"] = round((last[1] - poll_first[1]) / (cpu_last - cpu_first))  # type: ignore[index]
        busy = (sys_last[0] - sys_first[0]) / max(1, sys_last[1] - sys_first[1])  # type: ignore[index]
        result["machine_cpu_busy_pct"] = round(100 * busy, 1)
        # CPU the rest of the machine used meanwhile: the broker, this script, other people's processes.
        result["others_cpu_cores"] = round(busy * (os.cpu_count() or 1) - result["process_cpu_cores"], 2)
    if profiler:
        result["profiled_s"] = round(profiled_s, 1)
    if c.changelog_marker and result.get("outputs"):
        changelogs = await changelog_records(bootstrap, c.changelog_marker)
        result["changelog_records"] = sum(changelogs.values())
        result["changelog_records_per_event"] = round(sum(changelogs.values()) / max(1, expected), 2)
    result.update(log_summary(log_path))
    # Outputs per second over time (1 s resolution), to see warm-up and stalls.
    result["timeline"] = _timeline(samples, spawned)
    if failure:
        log(f"{c.name}: FAILED: {failure}")
    else:
        log(f"{c.name}: {result.get('events_per_s')} events/s")
    return result


def log_summary(log_path: Path) -> dict[str, Any]:
    """Warnings in a contender's log, by kind, and how long faust's commits and buffer flushes took."""
    warnings: Counter[str] = Counter()
    durations: dict[str, list[float]] = defaultdict(list)
    for line in log_path.read_text(errors="replace").splitlines():
        if "WARNING" in line or "ERROR" in line:
            warnings[re.sub(r"\d+(\.\d+)?", "N", line.split("]", 3)[-1].strip())[:120]] += 1
        if match := re.search(r"Timer commit is overlapping \(interval=[\d.]+ runtime=([\d.]+)\)", line):
            durations["commit_overlapping_runtime_s"].append(float(match.group(1)))
        elif match := re.search(r"producer flush took ([\d.]+)", line):
            durations["producer_buffer_flush_s"].append(float(match.group(1)))
    summary: dict[str, Any] = {}
    if warnings:
        summary["log_warnings"] = dict(warnings.most_common(8))
    for name, values in durations.items():
        values.sort()
        summary[name] = {"count": len(values), "median": round(values[len(values) // 2], 2), "max": round(values[-1], 2)}
    return summary


def shorten_profile(source: Path, target: Path) -> None:
    """The raw profile with paths made short (site-packages/, the stdlib and the code root dropped)."""
    text = source.read_text()
    text = re.sub(r"/[^ ;()]*/lib/python3\.\d+/(site-packages/)?", "", text)
    target.write_text(text.replace(str(ROOT) + "/", ""))


def _timeline(samples: list[tuple[float, int]], origin: float) -> list[list[float]]:
    out: list[list[float]] = []
    next_t = origin
    for t, count in samples:
        if t >= next_t:
            out.append([round(t - origin, 1), count])
            next_t = t + 1.0
    return out


# ---------------------------------------------------------------- latency at a steady rate


def _match_key(topic: str, raw: bytes) -> tuple[str, str, str] | None:
    """(kind, output key, as_of) of the update a raw record becomes, worked out as the agents do."""
    if topic == "raw.prices":
        price = parse_record(raw, RawPrice, 1 << 20)
        return None if isinstance(price, Rejected) else ("prices", price.coin, iso(price.ts.timestamp()))
    tvl = parse_record(raw, RawTvl, 1 << 20)
    return None if isinstance(tvl, Rejected) else ("tvl", tvl_key(tvl), iso(tvl.ts.timestamp()))


def _percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"samples": 0}
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]

    return {
        "samples": len(ordered),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": ordered[-1],
        "mean_ms": round(statistics.fmean(ordered), 2),
    }


async def latency_run(
    kind: str, *, tag: str, base: Settings, rate: float, seconds: float, workdir: Path, procs: Processes
) -> dict[str, Any]:
    """A fresh process on fresh topics; produce at ``rate`` for ``seconds`` with Kafka timestamps set
    to the produce time; latency = the update's Kafka timestamp (when the contender produced it) minus
    that of the raw record it came from."""
    settings = base.model_copy(update={"topic_prefix": f"bench{tag}-lat-{kind}.", "app_id": f"bench{tag}-lat-{kind}"})
    await ensure_topics(settings)
    outputs = {"prices": topic_name(settings, "price.updates"), "tvl": topic_name(settings, "tvl.updates")}
    log_path = workdir / f"latency-{kind}.log"
    if kind == "faust":
        cmd = [PYTHON, "-m", "faust", "-A", "pipeline.app", "worker", "-l", "info", "--without-web"]
        marker = b"[^Worker]: Ready"
    else:
        cmd = [PYTHON, "-m", "bench.plain_loop", "--group", settings.app_id,
               "--in-prices", topic_name(settings, "raw.prices"), "--in-tvl", topic_name(settings, "raw.tvl"),
               "--out-prices", outputs["prices"], "--out-tvl", outputs["tvl"]]
        marker = b"READY"
    total = int(rate * seconds)
    records = list(input_records(total, settings.topic_partitions))
    keys = [_match_key(r.topic, r.value) for r in records]
    proc = procs.spawn(cmd, env=settings_env(settings, PYTHONPATH=str(ROOT)), cwd=workdir, log_path=log_path)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=0)
    await producer.start()
    produced: dict[tuple[str, str, str], int] = {}
    try:
        deadline = time.monotonic() + 120
        while marker not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"latency {kind}: not ready; see {log_path}")
            await asyncio.sleep(0.2)
        await asyncio.sleep(3.0)  # partitions assigned, fetchers running
        names = {"raw.prices": topic_name(settings, "raw.prices"), "raw.tvl": topic_name(settings, "raw.tvl")}
        log(f"latency {kind}: producing {total:,} records at {rate:,.0f}/s")
        started = time.perf_counter()
        wall_started = time.time()
        sent = 0
        while sent < total:
            due = min(total, int((time.perf_counter() - started) * rate) + 1)
            while sent < due:
                record = records[sent]
                stamp = int(time.time() * 1000)
                await producer.send(names[record.topic], record.value, key=record.key,
                                    partition=record.partition, timestamp_ms=stamp)
                if keys[sent] is not None:
                    produced[keys[sent]] = stamp  # type: ignore[index]
                sent += 1
            await asyncio.sleep(0.002)
        await producer.flush()
        achieved = sent / (time.perf_counter() - started)
        watcher = EndOffsets(settings.kafka_bootstrap, list(outputs.values()))
        await watcher.start()
        try:
            deadline = time.monotonic() + 120
            while (count := await watcher.total()) < len(produced) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
        finally:
            await watcher.stop()
    finally:
        await producer.stop()
        Processes.stop(proc)
    latencies: list[float] = []
    after_warmup: list[float] = []
    warm_ms = (wall_started + 5.0) * 1000
    unmatched = 0
    by_kind: dict[str, list[float]] = defaultdict(list)
    by_second: dict[int, list[float]] = defaultdict(list)
    for kind_name, name in outputs.items():
        for message in await read_messages(settings.kafka_bootstrap, [name]):
            as_of = orjson.loads(message.value)["as_of"]
            stamp = produced.get((kind_name, message.key.decode(), as_of))
            if stamp is None:
                unmatched += 1
                continue
            latency = float(message.timestamp - stamp)
            latencies.append(latency)
            by_kind[kind_name].append(latency)
            by_second[int(stamp / 1000 - wall_started)].append(latency)
            if stamp >= warm_ms:
                after_warmup.append(latency)
    result = {
        "rate_target_events_per_s": round(rate),
        "rate_achieved_events_per_s": round(achieved),
        "seconds": seconds,
        "produced": sent,
        "outputs": count,
        "unmatched_outputs": unmatched,
        "latency_ms": _percentiles(latencies),
        "latency_ms_after_5s": _percentiles(after_warmup),
        "latency_ms_prices": _percentiles(by_kind["prices"]),
        "latency_ms_tvl": _percentiles(by_kind["tvl"]),
        # [second of production, samples, p50 ms, max ms]: a queue that grows, or periodic stalls
        "timeline": [
            [second, len(values), sorted(values)[len(values) // 2], max(values)]
            for second, values in sorted(by_second.items())
        ],
    }
    log(f"latency {kind}: {result['latency_ms']}")
    return result


# ---------------------------------------------------------------- profile summary


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
_STDLIB = re.compile(r"/lib/python3\.\d+/(?!site-packages)(?P<mod>[^/]+)")


def _library(path: str) -> str:
    if "/site-packages/" in path:
        return path.split("/site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if path.startswith(str(ROOT) + "/"):
        return "ours: " + path[len(str(ROOT)) + 1 :].split("/", 1)[0]
    match = _STDLIB.search(path)
    if match:
        mod = match.group("mod").removesuffix(".py")
        return "asyncio" if mod == "asyncio" else f"stdlib {mod}"
    return path or "?"


def _short(func: str, path: str) -> str:
    if "/site-packages/" in path:
        path = path.split("/site-packages/", 1)[1]
    elif path.startswith(str(ROOT) + "/"):
        path = path[len(str(ROOT)) + 1 :]
    else:
        match = _STDLIB.search(path)
        path = path[match.start() + len("/lib/python3.11/") :] if match else path
    return f"{func} ({path})"


# Inclusive time of the parts of a worker's per-event path (a sample counts once per part it is in).
_PARTS: dict[str, Callable[[str, str], bool]] = {
    "agent body: our code per event (validation, series, update, sends it awaits)":
        lambda f, p: f in ("aggregate_prices", "aggregate_tvl"),
    "  validation: parse_record (pydantic)": lambda f, p: f == "parse_record",
    "  series: observe (pipeline.observe/series)": lambda f, p: f == "observe" and p.endswith("pipeline/observe.py"),
    "  update building: price_update/tvl_update": lambda f, p: f in ("price_update", "tvl_update"),
    "  table writes: Table.on_key_set/on_key_del (queue a changelog record)":
        lambda f, p: f in ("on_key_set", "on_key_del") and "faust/tables" in p,
    "  derived-topic send: Topic.send": lambda f, p: f == "send" and p.endswith("faust/topics.py"),
    "  prometheus counters": lambda f, p: "prometheus_client" in p,
    "alert evaluator body: evaluate_alerts": lambda f, p: f == "evaluate_alerts",
    "  rules: Engine.process (index, conditions, state machine)":
        lambda f, p: f == "process" and p.endswith("alerting/engine.py"),
    "  state writes: apply_writes": lambda f, p: f == "apply_writes",
    "  transitions: TransitionPublisher.publish": lambda f, p: f == "publish" and p.endswith("alerting/publisher.py"),
    "changelog drain: ProducerBuffer._handle_pending (one record per await)":
        lambda f, p: f == "_handle_pending" and p.endswith("faust/transport/producer.py"),
    "changelog backpressure: ProducerBuffer.wait_until_ebb (stream paused)":
        lambda f, p: f in ("wait_until_ebb", "flush_atmost") and p.endswith("faust/transport/producer.py"),
    "consumer: per-message wait_first (tasks per event)": lambda f, p: f == "wait_first",
    "stream iteration: Stream.__aiter__/_c_aiter": lambda f, p: f in ("__aiter__", "_c_aiter") and "faust/streams" in p,
    "aiokafka producer (send, batching, sender)": lambda f, p: "aiokafka/producer" in p,
    "aiokafka consumer (fetch, decode)": lambda f, p: "aiokafka/consumer" in p,
    "quix: state get/set (RocksDB, serialisation)": lambda f, p: "quixstreams/state" in p,
    "quix: producer (confluent-kafka)": lambda f, p: "quixstreams/internal_producer" in p or "quixstreams/kafka/producer" in p,
    "quix: consumer poll": lambda f, p: "quixstreams/internal_consumer" in p or "quixstreams/kafka/consumer" in p,
    "bench aggregation (bench.common.Aggregator)": lambda f, p: p.endswith("bench/common.py"),
    "asyncio event loop (any frame)": lambda f, p: "/asyncio/" in p,
}


def summarise_profile(path: Path, top: int = 15) -> dict[str, Any]:
    if not path.exists():
        return {"error": f"no profile at {path}"}
    stacks: list[tuple[list[tuple[str, str]], int]] = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for frame in stack.split(";"):
            match = _FRAME.match(frame)
            frames.append((match.group("func"), match.group("file")) if match else (frame, ""))
        stacks.append((frames, int(count)))
    total = sum(count for _, count in stacks)
    if not total:
        return {"error": "empty profile"}
    # A stack read whole starts at the interpreter's entry (or a thread's); a torn one does not.
    whole = sum(c for frames, c in stacks if frames[0][0] in ("_run_module_as_main", "<module>")
                or frames[0][1].endswith("threading.py"))
    self_fn: Counter[str] = Counter()
    self_lib: Counter[str] = Counter()
    incl_lib: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    for frames, count in stacks:
        func, file = frames[-1]
        names = [(f.rsplit(".", 1)[-1], p) for f, p in frames]  # py-spy prints Class.method
        self_fn[_short(func, file)] += count
        self_lib[_library(file)] += count
        for lib in {_library(p) for _, p in frames}:
            incl_lib[lib] += count
        for part, test in _PARTS.items():
            if any(test(f, p) for f, p in names):
                parts[part] += count

    def pct(counter: Counter[str], n: int | None = None) -> list[list[Any]]:
        return [[name, round(100 * c / total, 1)] for name, c in counter.most_common(n)]

    return {
        "samples": total,
        "whole_stacks_pct": round(100 * whole / total, 1),
        "file": str(path.relative_to(HOME)) if path.is_relative_to(HOME) else str(path),
        "self_pct_top_functions": pct(self_fn, top),
        "self_pct_by_library": pct(self_lib, 12),
        "inclusive_pct_by_library": pct(incl_lib, 12),
        "inclusive_pct_by_part": [[name, round(100 * parts[name] / total, 1)] for name in _PARTS if parts[name]],
    }


# ---------------------------------------------------------------- the run


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def print_table(results: dict[str, Any]) -> None:
    print()
    print(f"{'contender':<8} {'events/s':>10} {'ev/cpu-s':>10} {'startup s':>10} {'cpu cores':>10} "
          f"{'others':>7} {'outputs':>10}  note")
    for name, r in results["contenders"].items():
        print(f"{name:<8} {r.get('events_per_s') or '-':>10} {r.get('events_per_cpu_s') or '-':>10} "
              f"{r.get('startup_s', '-'):>10} {r.get('process_cpu_cores', '-'):>10} {r.get('others_cpu_cores', '-'):>7} "
              f"{r.get('outputs', '-'):>10}  {r.get('failure') or ''}")
    agg = results.get("aggregation_only", {})
    print(f"aggregation only, in process: {agg.get('us_per_event')} us/event = {agg.get('events_per_s')} events/s")
    print("ratios:", results["ratios"])
    print("ratios per CPU-second:", results.get("ratios_per_cpu_s"))
    for name, r in results.get("latency", {}).items():
        if isinstance(r, dict) and "latency_ms" in r:
            lat = r["latency_ms"]
            print(f"latency {name} at {r['rate_achieved_events_per_s']}/s: p50 {lat.get('p50_ms')} ms, "
                  f"p99 {lat.get('p99_ms')} ms, max {lat.get('max_ms')} ms ({lat.get('samples')} samples)")
    for name, t in results["targets"].items():
        print(f"target {name}: {t['value']} vs {t['target']} -> {'PASS' if t['pass'] else 'FAIL'}")


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    tag = args.tag or datetime.now().strftime("%m%d%H%M%S")
    settings = Settings(
        kafka_bootstrap=args.bootstrap, topic_prefix=f"bench{tag}.", app_id=f"bench{tag}-faust",
        topic_partitions=args.partitions, worker_web_enabled=False,
    )
    workdir = BENCH / ".work" / tag
    workdir.mkdir(parents=True, exist_ok=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    procs = Processes()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.pipeline_bench", *sys.argv[1:]]),
        "machine": machine_info(),
        "topic_partitions": args.partitions,
        "code": {
            "snapshot": os.environ.get("BENCH_SNAPSHOT") == "1",
            "sha256": os.environ.get("BENCH_CODE_SHA256"),
            "newest_file": os.environ.get("BENCH_CODE_NEWEST"),
        },
    }
    prefix = settings.topic_prefix
    if not args.no_profile and shutil.which("py-spy") is None:
        log("py-spy is not on PATH: no profiles this run (pip install py-spy)")
        args.no_profile = True
    try:
        await ensure_topics(settings)
        derived_config = topic_specs(settings)["price.updates"].kafka_configs()
        await create_topics(
            args.bootstrap,
            [f"{prefix}{c}.{t}" for c in ("b", "c") for t in ("price.updates", "tvl.updates")],
            derived_config,
            args.partitions,
        )
        log(f"producing {args.records:,} records into {prefix}raw.prices / {prefix}raw.tvl")
        results["input"] = await produce_input(settings, args.records)
        log(f"input: {results['input']}")

        log("reference run (the aggregation alone, in this process, on dicts)")
        ref = reference_run(settings, args.records)
        results["expected_outputs"] = {"total": ref.expected, **ref.outputs, "late": ref.late, "rejected": ref.rejected}
        us = ref.cpu_seconds / max(1, ref.records) * 1e6
        results["aggregation_only"] = {
            "note": "parse_record + observe + price_update/tvl_update + orjson on dicts, no Kafka, one core",
            "us_per_event": round(us, 2),  # CPU time
            "events_per_s": round(1e6 / us),
            "wall_us_per_event": round(ref.seconds / max(1, ref.records) * 1e6, 2),
        }
        log(f"reference: {results['expected_outputs']}, {us:.1f} us/event of CPU")
        if ref.expected != ref.records:
            log(f"NOTE: {ref.records - ref.expected} input records produce no update (late or rejected)")

        env_extra = {"PYTHONPATH": str(ROOT)}
        raw_prices, raw_tvl = topic_name(settings, "raw.prices"), topic_name(settings, "raw.tvl")
        contenders = {
            "faust": Contender(
                "faust",
                [PYTHON, "-m", "faust", "-A", "pipeline.app", "worker", "-l", "info", "--without-web"],
                settings_env(settings, **env_extra),
                [topic_name(settings, "price.updates"), topic_name(settings, "tvl.updates")],
                ready_marker=b"[^Worker]: Ready",
                changelog_marker=f"{settings.app_id}-",
            ),
            "plain": Contender(
                "plain",
                [PYTHON, "-m", "bench.plain_loop", "--group", f"bench{tag}-plain", "--in-prices", raw_prices,
                 "--in-tvl", raw_tvl, "--out-prices", f"{prefix}b.price.updates", "--out-tvl", f"{prefix}b.tvl.updates"],
                settings_env(settings, **env_extra),
                [f"{prefix}b.price.updates", f"{prefix}b.tvl.updates"],
                ready_marker=b"READY",
            ),
            "quix": Contender(
                "quix",
                [PYTHON, "-m", "bench.quix_app", "--group", f"bench{tag}-quix", "--state-dir", str(workdir / "quix-state"),
                 "--in-prices", raw_prices, "--in-tvl", raw_tvl,
                 "--out-prices", f"{prefix}c.price.updates", "--out-tvl", f"{prefix}c.tvl.updates"],
                settings_env(settings, **env_extra),
                [f"{prefix}c.price.updates", f"{prefix}c.tvl.updates"],
                changelog_marker=f"bench{tag}-quix",
            ),
            "floor": Contender(
                "floor",
                [PYTHON, "-m", "faust", "-A", "bench.faust_floor", "worker", "-l", "info", "--without-web"],
                settings_env(
                    settings, **env_extra, BENCH_BOOTSTRAP=args.bootstrap, BENCH_TOPIC_PREFIX=prefix,
                    BENCH_APP_ID=f"bench{tag}-floor", BENCH_EXPECT=str(ref.records),
                    BENCH_PARTITIONS=str(args.partitions), BENCH_RESULT=str(workdir / "floor.json"),
                ),
                [],
                ready_marker=b"[^Worker]: Ready",
                progress_file=workdir / "floor.json",
            ),
        }
        results["contenders"] = {}
        results["profile"] = {}
        for name in CONTENDERS:
            if name in args.skip:
                continue
            c = contenders[name]
            expected = ref.records if name == "floor" else ref.expected
            results["contenders"][name] = r = await run_contender(
                c, expected=expected, workdir=workdir, procs=procs, bootstrap=args.bootstrap,
                profile_s=0 if args.no_profile else args.profile_seconds, stall_s=args.stall_seconds,
            )
            if c.outputs and r["failure"] is None:
                r["check_final_values"] = await verify_tail(
                    args.bootstrap, {"prices": c.outputs[0], "tvl": c.outputs[1]}, ref
                )
                if r["outputs"] != expected or r["check_final_values"]["mismatched"]:
                    log(f"{name}: OUTPUT CHECK: {r['outputs']} outputs for {expected} expected; "
                        f"{r['check_final_values']}")
            raw_profile = workdir / f"{name}_profile.txt"
            if raw_profile.exists():
                kept = args.output.parent / f"{name}_profile.txt"  # next to the figures
                results["profile"][name] = summarise_profile(raw_profile)
                results["profile"][name]["file"] = str(kept.relative_to(HOME) if kept.is_relative_to(HOME) else kept)
                shorten_profile(raw_profile, kept)

        speeds = {name: r.get("events_per_s") for name, r in results["contenders"].items()}
        results["ratios"] = {
            "faust_over_plain": _ratio(speeds.get("faust"), speeds.get("plain")),
            "faust_over_quix": _ratio(speeds.get("faust"), speeds.get("quix")),
            "faust_over_floor": _ratio(speeds.get("faust"), speeds.get("floor")),
            "quix_over_plain": _ratio(speeds.get("quix"), speeds.get("plain")),
            "floor_over_plain": _ratio(speeds.get("floor"), speeds.get("plain")),
        }
        per_cpu = {name: r.get("events_per_cpu_s") for name, r in results["contenders"].items()}
        results["ratios_per_cpu_s"] = {
            "faust_over_plain": _ratio(per_cpu.get("faust"), per_cpu.get("plain")),
            "faust_over_quix": _ratio(per_cpu.get("faust"), per_cpu.get("quix")),
            "faust_over_floor": _ratio(per_cpu.get("faust"), per_cpu.get("floor")),
        }

        results["latency"] = {}
        if not args.skip_latency and speeds.get("faust"):
            rate = 0.5 * speeds["faust"]
            results["latency"]["note"] = (
                "fresh topics and process per contender; steady production at half of faust's events/s; "
                "latency = update's Kafka CreateTime - raw record's CreateTime (set to its produce time)"
            )
            for kind in ("faust", "plain"):
                if kind in args.skip:
                    continue
                try:
                    results["latency"][kind] = await latency_run(
                        kind, tag=tag, base=settings, rate=rate, seconds=args.latency_seconds,
                        workdir=workdir, procs=procs,
                    )
                except Exception as error:  # report and go on: the throughput figures stand
                    results["latency"][kind] = {"error": repr(error)}
                    log(f"latency {kind}: {error!r}")

        faust_speed, plain_speed, quix_speed = speeds.get("faust"), speeds.get("plain"), speeds.get("quix")
        results["targets"] = {
            "faust_events_per_s_at_least_30000": {
                "value": faust_speed, "target": 30_000, "pass": bool(faust_speed and faust_speed >= 30_000)},
            "faust_at_least_quix": {
                "value": faust_speed, "target": quix_speed,
                "pass": bool(faust_speed and quix_speed and faust_speed >= quix_speed)},
            "faust_at_least_half_plain": {
                "value": faust_speed, "target": round(plain_speed / 2) if plain_speed else None,
                "pass": bool(faust_speed and plain_speed and faust_speed >= plain_speed / 2)},
        }
        results["machine"]["loadavg_at_end"] = os.getloadavg()
        return results
    finally:
        procs.stop_all()
        if not args.keep_topics:
            try:
                deleted = await delete_topics(args.bootstrap, f"bench{tag}")
                log(f"deleted {len(deleted)} topics")
            except Exception as error:
                log(f"could not delete the bench topics: {error!r}")
        if args.keep_work:
            log(f"logs and state kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            if BENCH.joinpath(".work").exists() and not any(BENCH.joinpath(".work").iterdir()):
                BENCH.joinpath(".work").rmdir()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="input records (default 1,000,000)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100,000 records, 15 s of latency")
    parser.add_argument("--skip", action="append", default=[], choices=CONTENDERS, help="leave a contender out")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--latency-seconds", type=float, default=45.0)
    parser.add_argument("--no-profile", action="store_true", help="no py-spy sampling of the contenders")
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    parser.add_argument("--stall-seconds", type=float, default=90.0, help="give up on a contender this long stuck")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--bootstrap", default=os.environ.get("LLAMA_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--tag", default="", help="topic/app id tag (default: the time)")
    parser.add_argument("--output", type=Path, default=RESULTS / "pipeline.json")
    parser.add_argument("--keep-topics", action="store_true")
    parser.add_argument("--keep-work", action="store_true", help="keep logs and state in bench/.work/<tag>")
    parser.add_argument("--no-snapshot", action="store_true",
                        help="run the live code, not a copy taken at the start (it may change mid-run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.records = min(args.records, 100_000)
        args.latency_seconds = min(args.latency_seconds, 15.0)
        args.profile_seconds = min(args.profile_seconds, 10.0)
    return args


def snapshot(tag: str) -> tuple[Path, dict[str, str]]:
    """Copy the code every contender runs into bench/.work/<tag>/src, so that one run measures one
    version of it: the project is edited while a run (half an hour) goes on, and a contender started
    later would otherwise import newer code than one started earlier (or than the reference run)."""
    src = BENCH / ".work" / tag / "src"
    digest = hashlib.sha256()
    newest = (0.0, "")
    for package in SNAPSHOT_PACKAGES:
        origin = HOME / package
        for path in sorted(origin.rglob("*.py")):
            relative = path.relative_to(HOME)
            if relative.parts[:2] in (("bench", ".work"), ("bench", "results")):
                continue
            target = src / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            data = path.read_bytes()
            target.write_bytes(data)
            digest.update(str(relative).encode() + b"\0" + data)
            newest = max(newest, (path.stat().st_mtime, str(relative)))
    stamp = datetime.fromtimestamp(newest[0], UTC).isoformat(timespec="seconds")
    return src, {"BENCH_CODE_SHA256": digest.hexdigest()[:16], "BENCH_CODE_NEWEST": f"{newest[1]} {stamp}"}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.no_snapshot and os.environ.get("BENCH_SNAPSHOT") != "1":
        # Run the whole benchmark (this script included) on a snapshot of the code.
        from pipeline.connectors.datasets import default_data_dir

        tag = args.tag or datetime.now().strftime("%m%d%H%M%S")
        src, code = snapshot(tag)
        env = dict(os.environ, BENCH_SNAPSHOT="1", BENCH_HOME=str(HOME), PYTHONPATH=str(src), **code,
                   BENCH_DATA=os.environ.get("BENCH_DATA", str(default_data_dir())))
        argv = list(sys.argv[1:] if argv is None else argv)
        argv += ["--tag", tag, "--output", str(args.output.resolve())]
        os.chdir(src.parent)
        os.execve(PYTHON, [PYTHON, "-m", "bench.pipeline_bench", *argv], env)
    results = asyncio.run(bench(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print_table(results)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
