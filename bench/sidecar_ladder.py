"""The WebSocket measurements of bench/sidecar_bench.py: memory per connection, and the connection ladder."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

from bench.pipeline_bench import log
from bench.sidecar_fixture import Sidecar, rss_mb
from bench.sidecar_phases import ClientFleet, measure


async def memory_phase(
    fleet: ClientFleet, sidecar: Sidecar, count: int, ctx: dict[str, Any]
) -> dict[str, Any]:
    """RSS of the sidecar before and after ``count`` idle connections, then with a subscription each."""
    settle_s = 3.0
    await asyncio.sleep(settle_s)
    before, objects_before = rss_mb(sidecar.pid) or 0.0, await object_count(sidecar)
    opened = await fleet.grow(count, [sidecar.port], ctx["ws_keys"], ctx["filters"], subscribe=False)
    await asyncio.sleep(settle_s)
    idle, objects_idle = rss_mb(sidecar.pid) or 0.0, await object_count(sidecar)
    subscribed = await fleet.all({"op": "subscribe"})
    await asyncio.sleep(settle_s)
    with_sub, objects_sub = rss_mb(sidecar.pid) or 0.0, await object_count(sidecar)
    close_s = await fleet.close_all()
    await asyncio.sleep(settle_s)
    after, objects_after = rss_mb(sidecar.pid) or 0.0, await object_count(sidecar)
    n = max(1, opened["opened"])
    objects = {"before": objects_before, "idle_connections": objects_idle,
               "with_one_subscription_each": objects_sub, "after_closing_all": objects_after}  # fmt: skip
    result = {
        "connections": opened["opened"], "connect_failures": opened["failed"], "connect_s": opened["seconds"],
        "subscribe_failures": sum(sum(r["failed"].values()) for r in subscribed), "close_s": close_s,
        "rss_mb": {"before": before, "idle_connections": idle, "with_one_subscription_each": with_sub,
                   "after_closing_all": after},
        "kb_per_idle_connection": round((idle - before) * 1024 / n, 1),
        "kb_per_connection_with_subscription": round((with_sub - before) * 1024 / n, 1),
        "kb_per_subscription": round((with_sub - idle) * 1024 / n, 1),
        # Objects the garbage collector tracks (a full collection visits each): per connection, and what
        # closed connections leave until a full collection runs (tracebacks of their ended tasks, cycles).
        "gc_tracked_objects": objects,
        "gc_objects_per_connection_with_subscription": _per(objects_sub, objects_before, n),
    }  # fmt: skip
    idle_kb, sub_kb = result["kb_per_idle_connection"], result["kb_per_connection_with_subscription"]
    log(f"memory: {idle_kb} KB per idle connection, {sub_kb} KB with a subscription ({n} connections)")
    return result


async def object_count(sidecar: Sidecar) -> dict[str, Any] | None:
    """The sidecar's live objects by type (bench/sidecar_process.py dumps them on SIGUSR1)."""
    path = sidecar.gc_log.with_name(sidecar.gc_log.name + ".objects")
    known = path.read_text().count("\n") if path.exists() else 0
    os.kill(sidecar.pid, signal.SIGUSR1)
    for _ in range(100):
        await asyncio.sleep(0.1)
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) > known:
            dumped: dict[str, Any] = json.loads(lines[-1])
            return {"total": dumped["objects"], "top": dumped["top"][:8]}
    return None


def _per(after: dict[str, Any] | None, before: dict[str, Any] | None, n: int) -> float | None:
    return round((after["total"] - before["total"]) / n, 1) if after and before else None


def passed(step: dict[str, Any]) -> bool:
    p99 = step["latency_ms"].get("p99_ms")
    return (p99 is not None and p99 < 100 and step["open"]["failed"] == 0 and step["connections_lost"] == 0
            and (step["delivered_ratio"] or 0) >= 0.999)  # fmt: skip


async def ladder(
    name: str, counts: list[int], sidecars: list[Sidecar], ctx: dict[str, Any]
) -> list[dict[str, Any]]:
    """Grow the connections step by step and measure at each; stop after two failed steps in a row (one
    may be a stall of the shared machine: the Kafka probe's figures of each step tell). Closes them all."""
    fleet, args = ctx["fleet"], ctx["args"]
    ports = [s.port for s in sidecars]
    results: list[dict[str, Any]] = []
    for total in counts:
        log(f"{name}: opening connections up to {total:,}")
        opened = await fleet.grow(total, ports, ctx["ws_keys"], ctx["filters"], subscribe=True)
        await asyncio.sleep(args.warmup_seconds)
        step = await measure(
            f"{len(ports)}-{total}", fleet, sidecars, ctx["stream"],
            window_s=args.window_seconds, drain_s=args.drain_seconds, workdir=ctx["workdir"],
        )  # fmt: skip
        step = {"connections": total, "sidecars": len(ports), "open": opened, **step}
        step["pass"] = passed(step)
        results.append(step)
        lat, kafka = step["latency_ms"], step["kafka_consumer_latency_ms"]
        verdict = "pass" if step["pass"] else "FAIL"
        log(
            f"{name} {total:,}: p50 {lat.get('p50_ms')} p99 {lat.get('p99_ms')} max {lat.get('max_ms')} ms"
            f" (Kafka alone: p99 {kafka.get('p99_ms')}), delivered {step['delivered']}/{step['expected']},"
            f" failed connects {opened['failed']}, cpu {step['cpu_cores']} -> {verdict}"
        )
        if len(results) >= 2 and not results[-1]["pass"] and not results[-2]["pass"]:
            break
    await fleet.close_all()
    return results
