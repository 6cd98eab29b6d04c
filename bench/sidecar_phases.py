"""The measurements of bench/sidecar_bench.py: client fleet, WebSocket steps, idle memory, query load."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.pipeline_bench import process_cpu_s, system_cpu
from bench.sidecar_fixture import Sidecar, rss_mb


def percentiles(values: list[float], missing: int = 0) -> dict[str, Any]:
    """p50/p90/p99/p99.9/max in ms; ``missing`` expected values that never came count as infinitely late
    (a percentile that falls among them is reported as null)."""
    ordered = sorted(values) + [math.inf] * max(0, missing)
    if not ordered:
        return {"samples": 0}

    def pct(p: float) -> float | None:
        value = ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]
        return None if math.isinf(value) else round(value, 2)

    return {
        "samples": len(values),
        "missing": max(0, missing),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "p999_ms": pct(99.9),
        "max_ms": pct(100),
        "mean_ms": round(sum(values) / len(values), 2) if values else None,
    }


class ClientFleet:
    """The WebSocket client processes (bench/ws_clients.py), each in its own process group."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.size = 0  # connections asked for so far (global indices 0..size-1)

    async def start(self, count: int, env: dict[str, str], cwd: Path, workdir: Path) -> None:
        for n in range(count):
            with open(workdir / f"clients-{n}.log", "ab") as errors:
                proc = await asyncio.create_subprocess_exec(
                    env["BENCH_PYTHON"],
                    "-m",
                    "bench.ws_clients",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=errors,
                    env=env,
                    cwd=cwd,
                    start_new_session=True,
                    limit=16 * 1024 * 1024,
                )
            self.procs.append(proc)
        for proc in self.procs:
            assert proc.stdout is not None
            await proc.stdout.readline()  # {"ready": true}

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def ask(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One command per process, at once; their answers in the same order."""

        async def one(proc: asyncio.subprocess.Process, cmd: dict[str, Any]) -> dict[str, Any]:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(cmd).encode() + b"\n")
            await proc.stdin.drain()
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError(f"client process {proc.pid} exited; see bench/.work/<tag>/clients-*.log")
            reply: dict[str, Any] = json.loads(line)
            if "error" in reply:
                raise RuntimeError(f"client process {proc.pid}: {reply['error']}")
            return reply

        return list(await asyncio.gather(*(one(p, c) for p, c in zip(self.procs, commands, strict=True))))

    async def all(self, cmd: dict[str, Any]) -> list[dict[str, Any]]:
        return await self.ask([cmd] * len(self.procs))

    async def grow(
        self, total: int, ports: list[int], keys: list[str], filters: list[str], subscribe: bool
    ) -> dict[str, Any]:
        """Open connections up to ``total``, the new ones split evenly over the processes."""
        first, procs = self.size, len(self.procs)
        bounds = [first + (total - first) * n // procs for n in range(procs + 1)]
        replies = await self.ask([
            {"op": "open", "first": bounds[n], "end": bounds[n + 1], "ports": ports, "keys": keys,
             "filters": filters, "subscribe": subscribe}
            for n in range(procs)
        ])  # fmt: skip
        self.size = total
        errors: Counter[str] = Counter()
        for reply in replies:
            errors.update(reply["errors"])
        return {
            "new": total - first,
            "opened": sum(r["opened"] for r in replies),
            "failed": sum(r["failed"] for r in replies),
            "errors": dict(errors),
            "seconds": max(r["seconds"] for r in replies),
        }

    async def close_all(self) -> float:
        replies = await self.all({"op": "close"})
        self.size = 0
        return max(r["seconds"] for r in replies)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass


def read_stamps(path: Path) -> array[float]:
    data = path.read_bytes()
    stamps = array("d")
    stamps.frombytes(data[: len(data) - len(data) % 8])
    return stamps


@dataclass
class Stream:
    """The update stream and its witness: the publisher (send times in ``stamps``) and the Kafka probe."""

    publisher: Any  # subprocess.Popen
    stamps: Path
    probe: Any
    probe_out: Path
    order: list[int]  # the n-th update sent is of hot key order[n % len(order)] (filter f: hot key f)


def _in_window(path: Path, t0: float, t1: float) -> list[tuple[float, float]]:
    """(send time, latency ms) pairs of a samples file whose send time is in [t0, t1)."""
    pairs = read_stamps(path)
    return [(s, lat) for s, lat in zip(pairs[0::2], pairs[1::2], strict=True) if t0 <= s < t1]


async def measure(
    label: str, fleet: ClientFleet, sidecars: list[Sidecar], stream: Stream, *, window_s: float,
    drain_s: float, workdir: Path,
) -> dict[str, Any]:  # fmt: skip
    """One window of ``window_s``: latency of every update sent in it, delivered vs expected, CPU, RSS."""
    marks = await fleet.all({"op": "mark"})
    live_by_filter: Counter[int] = Counter()
    for mark in marks:
        live_by_filter.update({int(f): n for f, n in mark["live_by_filter"].items()})
    pids = {s.name: [s.pid] for s in sidecars} | {
        "clients": fleet.pids,
        "publisher": [stream.publisher.pid],
        "kafka_probe": [stream.probe.pid],
    }

    def cpu() -> dict[str, float]:
        return {name: sum(process_cpu_s(p) or 0.0 for p in ps) for name, ps in pids.items()}

    cpu0, sys0, t0 = cpu(), system_cpu(), time.time()
    await asyncio.sleep(window_s)
    cpu1, sys1, t1 = cpu(), system_cpu(), time.time()
    rss = {s.name: rss_mb(s.pid) for s in sidecars}
    await asyncio.sleep(drain_s)  # updates sent near the end of the window are still on their way
    paths = [workdir / f"samples-{label}-{n}.bin" for n in range(len(fleet.procs))]
    replies = await fleet.ask([{"op": "collect", "t0": t0, "t1": t1, "path": str(p)} for p in paths])
    samples = [pair for path in paths for pair in _in_window(path, t0, t1)]
    for path in paths:
        path.unlink()
    kafka = _in_window(stream.probe_out, t0, t1)
    # Expected: for each filter (one hot key each), the updates of its key sent in the window times the
    # connections subscribed to it when the window opened.
    sends = read_stamps(stream.stamps)
    order = stream.order
    sent_by_key: Counter[int] = Counter(order[n % len(order)] for n, s in enumerate(sends) if t0 <= s < t1)
    expected = sum(n * sent_by_key[f] for f, n in live_by_filter.items())
    delivered = len(samples)
    span = t1 - t0
    busy = (sys1[0] - sys0[0]) / max(1, sys1[1] - sys0[1])
    cores = {name: round((cpu1[name] - cpu0[name]) / span, 2) for name in cpu0}
    sidecar_cpu_s = sum(cpu1[s.name] - cpu0[s.name] for s in sidecars)
    totals: dict[str, Counter[str]] = {"messages": Counter(), "close_codes": Counter(), "errors": Counter(),
                                       "heartbeats_by_second": Counter()}  # fmt: skip
    for reply in replies:
        for name, counter in totals.items():
            counter.update(reply[name])
    by_second: dict[int, tuple[list[float], list[float]]] = {}
    for source, pairs in ((0, samples), (1, kafka)):
        for stamp, latency in pairs:
            by_second.setdefault(int(stamp - t0), ([], []))[source].append(latency)
    return {
        "connections_live": sum(live_by_filter.values()),
        "window_s": round(span, 1),
        "latency_ms": percentiles([lat for _, lat in samples], expected - delivered),
        # The same updates seen by a plain Kafka consumer: the part of the latency that is not the sidecar's.
        "kafka_consumer_latency_ms": percentiles([lat for _, lat in kafka]),
        "delivered": delivered,
        "expected": expected,
        "delivered_ratio": round(delivered / expected, 5) if expected else None,
        "updates_sent_per_s": round(sum(sent_by_key.values()) / span, 1),
        "messages_to_clients_per_s": round(delivered / span, 1),
        "connections_lost": sum(r["lost"] for r in replies),
        "other_messages": dict(totals["messages"]),
        "close_codes": dict(totals["close_codes"]),
        "errors": dict(totals["errors"]),
        "cpu_cores": cores,
        "machine_cpu_busy_pct": round(100 * busy, 1),
        "others_cpu_cores": round(busy * (os.cpu_count() or 1) - sum(cores.values()), 2),
        "sidecar_cpu_us_per_delivered_message": round(sidecar_cpu_s / delivered * 1e6, 1)
        if delivered
        else None,
        "sidecar_rss_mb": rss,
        # Garbage-collector pauses of the sidecars in the window: [second, sidecar, generation, ms] of those
        # over 10 ms, and the total per sidecar (a full collection stops every connection of the process).
        "sidecar_gc_pauses": gc_pauses(sidecars, t0, t1),
        # Seconds of the window in which heartbeats arrived, and how many: one to every connection at once.
        "heartbeats_by_second": {
            int(k): n for k, n in sorted(totals["heartbeats_by_second"].items(), key=lambda kv: int(kv[0]))
        },
        # [second of the window, samples, p50, p99, max ms; Kafka probe p99, max ms]: stalls show up here,
        # and whether the broker (probe) or the sidecar (clients only) had them.
        "timeline": [
            [sec, len(ws), *_brief(ws), *_brief(kf)[1:]] for sec, (ws, kf) in sorted(by_second.items())
        ],
    }


def gc_pauses(sidecars: list[Sidecar], t0: float, t1: float) -> dict[str, Any]:
    long: list[list[Any]] = []
    totals: dict[str, dict[str, float]] = {}
    for sidecar in sidecars:
        total = totals[sidecar.name] = {"count": 0, "ms": 0.0, "max_ms": 0.0}
        lines = sidecar.gc_log.read_text().splitlines() if sidecar.gc_log.exists() else []
        for at, generation, ms in (map(float, line.split()) for line in lines):
            if t0 <= at < t1:
                total["count"] += 1
                total["ms"] = round(total["ms"] + ms, 1)
                total["max_ms"] = max(total["max_ms"], ms)
                if ms >= 10:
                    long.append([int(at - t0), sidecar.name, int(generation), ms])
    return {"over_10ms": long, "per_sidecar": totals}


def _brief(values: list[float]) -> list[float | None]:
    """[p50, p99, max] in ms, rounded for the timeline."""
    if not values:
        return [None, None, None]
    got = percentiles(values)
    return [got["p50_ms"], got["p99_ms"], got["max_ms"]]
