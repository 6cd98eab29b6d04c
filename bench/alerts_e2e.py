"""The end-to-end part of bench/alerts_bench.py: a real worker, the real broker, 100,000 rules."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.alerts_workload import Event, EventClock, Universe
from bench.pipeline_bench import Profiler, summarise_profile
from pipeline.alerting.rules import Rule
from pipeline.records import iso
from pipeline.settings import Settings
from pipeline.topics import delete_topics_containing, ensure_topics, topic_name

__all__ = ["end_to_end"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
Log = Callable[[str], None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"LLAMA_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Worker:
    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        command = [sys.executable, "-m", "faust", "-A", "pipeline.app", "worker", "-l", "info"]
        command += ["--web-port", str(self.settings.worker_web_port), "--web-host", "127.0.0.1"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=_env(self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def wait_for(self, text: bytes, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, f"worker exited; see {self.log_path}"
            if text in self.log_path.read_bytes():
                return time.monotonic() - self.started
            await asyncio.sleep(0.5)
        raise TimeoutError(f"{text!r} not in {self.log_path} after {timeout}s")

    async def counters(self, session: aiohttp.ClientSession) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.settings.worker_web_port}/metrics"
        async with session.get(url) as response:
            text = await response.text()
        totals: dict[str, float] = {}
        for name in ("llamastream_alert_evaluator_rows_total", "llamastream_alert_state_changes_total"):
            totals[name] = sum(float(m) for m in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M))
        return totals

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


async def _settle(worker: Worker, log: Log, timeout: float = 600) -> float:
    """Wait until the worker is nearly idle (the notifier in the same worker may still be writing the
    previous phase's transitions to SQL), so one phase's backlog does not bill the next."""
    assert worker.proc is not None
    started = time.monotonic()
    before = _cpu_s(worker.proc.pid)
    while time.monotonic() - started < timeout:
        await asyncio.sleep(2)
        now = _cpu_s(worker.proc.pid)
        if now - before < 0.3:  # under 15% of a core
            break
        before = now
    waited = time.monotonic() - started
    log(f"worker settled after {waited:.0f} s")
    return round(waited, 1)


async def _publish_setup(settings: Settings, universe: Universe, rules: list[Rule]) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=20, max_batch_size=512 * 1024, acks="all"
    )
    await producer.start()
    started = time.monotonic()
    try:
        meta = topic_name(settings, "protocols.meta")
        for p in universe.protocols:
            value = {"name": p.name, "slug": p.name.lower(), "category": p.category, "chains": list(p.chains)}
            await producer.send(meta, orjson.dumps(value), key=p.name.encode())
        topic = topic_name(settings, "alerts.rules")
        for rule in rules:
            await producer.send(
                topic, orjson.dumps(rule.model_dump(mode="json", by_alias=True)), key=rule.id.encode()
            )
        await producer.flush()
    finally:
        await producer.stop()
    return time.monotonic() - started


async def _throughput(
    settings: Settings, worker: Worker, events: list[Event], topic: str, log: Log, profile: Path | None = None
) -> dict[str, Any]:
    """Produce every event as fast as possible; the evaluator's rate from its first to its last row (with
    ``profile``, py-spy samples the worker meanwhile, for at most 60 s)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    async with aiohttp.ClientSession() as session:
        base = await worker.counters(session)
        name = topic_name(settings, topic)
        for event in events:
            if topic == "tvl.updates":
                await producer.send(name, orjson.dumps(event.row), key=event.series.encode())
            else:
                await producer.send(name, orjson.dumps(event.raw), key=event.raw_key.encode())
        await producer.flush()
        await producer.stop()
        samples: list[tuple[float, float, float]] = []
        target = base["llamastream_alert_evaluator_rows_total"] + len(events)
        cpu0 = _cpu_s(worker.proc.pid) if worker.proc else 0.0
        profiler = Profiler(worker.proc.pid, 60, profile) if profile and worker.proc else None
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            counts = await worker.counters(session)
            rows = counts["llamastream_alert_evaluator_rows_total"]
            samples.append((time.monotonic(), rows, counts["llamastream_alert_state_changes_total"]))
            if rows >= target:
                break
            await asyncio.sleep(0.5)
        cpu = (_cpu_s(worker.proc.pid) if worker.proc else 0.0) - cpu0
        profiled_s = profiler.finish() if profiler else None
    moving = [s for s in samples if s[1] > base["llamastream_alert_evaluator_rows_total"]]
    first = next((s for s in samples if s[1] > base["llamastream_alert_evaluator_rows_total"]), samples[0])
    last = samples[-1]
    seconds = max(last[0] - first[0], 1e-9)
    rate = (last[1] - first[1]) / seconds
    changes = last[2] - base["llamastream_alert_state_changes_total"]
    log(f"{topic}: {len(events)} events, evaluator {rate:,.0f} rows/s, {changes:,.0f} transitions")
    return {
        "input": topic,
        "events": len(events),
        "evaluator_rows_per_s": round(rate),
        "transitions": int(changes),
        "worker_cpu_s": round(cpu, 1),
        "worker_cpu_ms_per_row": round(
            cpu / max(last[1] - base["llamastream_alert_evaluator_rows_total"], 1) * 1000, 3
        ),
        "samples": len(moving),
        "complete": last[1] >= base["llamastream_alert_evaluator_rows_total"] + len(events),
        **(
            {"profile": {"seconds": round(profiled_s or 0.0, 1), **summarise_profile(profile)}}
            if profile
            else {}
        ),
    }


async def _latency(
    settings: Settings, worker: Worker, clock: EventClock, rate: float, seconds: float, log: Log
) -> dict[str, Any]:
    """Raw records at ``rate`` with CreateTime = send time; latency = the transition's Kafka timestamp (when
    the worker produced it) minus the raw record's, for every transition the run's records caused."""
    triggered = topic_name(settings, "alerts.triggered")
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    consumer._client.add_topic(triggered)  # noqa: SLF001
    await consumer._client.force_metadata_update()  # noqa: SLF001
    partitions = [
        TopicPartition(triggered, p) for p in sorted(consumer.partitions_for_topic(triggered) or [])
    ]
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    sent: dict[tuple[str, str], int] = {}
    latencies: list[float] = []

    async def consume() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for record in records:
                    value = orjson.loads(record.value or b"{}")
                    at = sent.get((value.get("series_key", ""), value.get("as_of", "")))
                    if at is not None:
                        latencies.append(record.timestamp - at)

    reader = asyncio.create_task(consume())
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    await producer.start()
    raw = topic_name(settings, "raw.tvl")
    total = int(rate * seconds)
    tick = 0.02
    per_tick = max(1, round(rate * tick))
    async with aiohttp.ClientSession() as session:
        base = (await worker.counters(session))["llamastream_alert_evaluator_rows_total"]
        started = time.monotonic()
        produced = 0
        events = clock.events(total)
        while produced < total:
            due = min(total, int((time.monotonic() - started) * rate) + per_tick)
            while produced < due:
                event = next(events)
                now_ms = int(time.time() * 1000)
                sent[(event.series, iso(event.ts))] = now_ms
                await producer.send(
                    raw, orjson.dumps(event.raw), key=event.raw_key.encode(), timestamp_ms=now_ms
                )
                produced += 1
            await asyncio.sleep(tick)
        produce_s = time.monotonic() - started
        await producer.flush()
        at_end = (await worker.counters(session))["llamastream_alert_evaluator_rows_total"] - base
        deadline = time.monotonic() + 900
        while (await worker.counters(session))["llamastream_alert_evaluator_rows_total"] - base < total:
            assert time.monotonic() < deadline, "the evaluator did not finish the latency run's rows"
            await asyncio.sleep(0.5)
        drained_s = time.monotonic() - started
        await asyncio.sleep(3)
    reader.cancel()
    await producer.stop()
    await consumer.stop()
    achieved = total / produce_s
    kept_up = total - at_end <= 2 * rate  # at most two seconds of input still queued when sending stopped
    ordered = sorted(latencies)

    def at(p: float) -> float | None:
        return (
            float(ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))])
            if ordered
            else None
        )

    log(
        f"latency at {achieved:,.0f} events/s: p50 {at(50)} ms, p99 {at(99)} ms"
        f" over {len(ordered)} transitions"
    )
    return {
        "target_rate": rate,
        "achieved_rate": round(achieved),
        "events": total,
        "seconds_producing": round(produce_s, 1),
        "seconds_until_all_evaluated": round(drained_s, 1),
        "evaluated_when_producing_stopped": int(at_end),
        "kept_up": kept_up,
        "raw_to_triggered_ms": {
            "samples": len(ordered),
            "p50": at(50),
            "p90": at(90),
            "p99": at(99),
            "max": ordered[-1] if ordered else None,
        },
        "note": None
        if kept_up
        else "the worker fell behind at this rate: latency includes the growing backlog",
    }


async def _delete_topics(bootstrap: str, marker: str) -> int:
    return len(await delete_topics_containing(bootstrap, [marker]))


def fresh_run(kind: str, **overrides: Any) -> tuple[str, Path, Settings]:
    """A run's tag, work directory and settings: its own topics, consumer group and worker port."""
    tag = uuid.uuid4().hex[:8]
    workdir = ROOT / "bench" / ".work" / f"{kind}-{tag}"
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        topic_prefix=f"benchalerts{tag}.",
        app_id=f"benchalerts{tag}",
        worker_web_port=_free_port(),
        topic_partitions=4,
        # The notifier runs in the same worker and records every transition: keep that out of the shared
        # database (it finds none of these rules in SQL, so it notifies nothing).
        database_url=f"sqlite+aiosqlite:///{workdir / 'notify.db'}",
        **overrides,
    )
    return tag, workdir, settings


async def end_to_end(universe: Universe, rules: list[Rule], args: Any, log: Log) -> dict[str, Any]:
    tag, workdir, settings = fresh_run("alerts")
    await ensure_topics(settings)
    result: dict[str, Any] = {
        "partitions": settings.topic_partitions,
        "workers": 1,
        "worker": "faust -A pipeline.app worker: every agent runs, including aggregate_tvl and"
        " deliver_notifications (which records each transition in its SQL history, here a private"
        " SQLite file)",
    }
    worker = Worker(settings, workdir / "worker.log")
    try:
        result["rules_published_s"] = round(await _publish_setup(settings, universe, rules), 1)
        log(
            f"published {len(rules)} rules and {len(universe.protocols)} protocols"
            f" in {result['rules_published_s']} s"
        )
        worker.start()
        await worker.wait_for(b"[^Worker]: Ready", 300)
        result["worker_start_to_rules_loaded_s"] = round(await worker.wait_for(b"alert rules loaded", 900), 1)
        log(f"worker loaded the rules {result['worker_start_to_rules_loaded_s']} s after it started")
        clock = EventClock(universe, drop_every=args.drop_every)
        count = 20_000 if args.quick else 60_000
        result["evaluator_alone"] = await _throughput(
            settings, worker, list(clock.events(count)), "tvl.updates", log
        )
        result["evaluator_alone"]["settle_s_after"] = await _settle(worker, log)
        # The same again with py-spy sampling the worker (which slows it: not a figure, a breakdown).
        profiled = await _throughput(
            settings, worker, list(clock.events(count // 3)), "tvl.updates", log,
            RESULTS_DIR / "alerts_evaluator_profile.txt",
        )  # fmt: skip
        result["evaluator_alone_profiled"] = profiled
        profiled["settle_s_after"] = await _settle(worker, log)
        result["raw_to_triggered"] = await _throughput(
            settings, worker, list(clock.events(count // 2)), "raw.tvl", log
        )
        result["raw_to_triggered"]["settle_s_after"] = await _settle(worker, log)
        sustained = result["raw_to_triggered"]["evaluator_rows_per_s"]
        seconds = 20 if args.quick else args.seconds
        # The target rate first; past what the worker sustains, a sweep down from half the sustained rate
        # (with backlog, batches are large: a steady trickle costs more per event) until it keeps up.
        rates = (
            [args.rate] if sustained >= args.rate else [round(sustained * f, -1) for f in (0.5, 0.25, 0.125)]
        )
        runs = []
        for rate in rates:
            run = await _latency(settings, worker, clock, max(rate, 10), seconds, log)
            run["settle_s_after"] = await _settle(worker, log)
            runs.append(run)
            if run["kept_up"]:
                break
        result["latency_runs"] = runs
        kept = [r for r in runs if r["kept_up"]]
        result["latency"] = dict(kept[0] if kept else runs[-1])
        if sustained < args.rate:
            result["latency"]["note"] = (
                f"{args.rate:.0f}/s is beyond one worker here (the whole path sustained {sustained}/s with a"
                f" backlog); this is the highest rate of the sweep that kept up"
                if kept
                else f"no rate of the sweep kept up; {args.rate:.0f}/s is beyond one worker here"
            )
    finally:
        worker.stop()
        result["topics_deleted"] = await _delete_topics(settings.kafka_bootstrap, tag)
        shutil.rmtree(ROOT / f"{settings.app_id}-data", ignore_errors=True)  # faust's data dir
    return result
