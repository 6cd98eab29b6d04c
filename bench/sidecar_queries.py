"""The query part of bench/sidecar_bench.py: each endpoint at a baseline rate, then at the target rate.

The runs are open-loop (bench/query_load.py), one endpoint at a time, while the update stream goes on and
(unless ``--no-worker``) a faust worker processes a replay of real data. Between two runs the bench waits
until the sidecar answers ``/healthz`` promptly again: an overloaded run leaves requests the server is still
computing after their clients gave up, and the next run must not be measured behind them.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.pipeline_bench import Processes, log, process_cpu_s, system_cpu
from bench.sidecar_fixture import Sidecar
from bench.sidecar_phases import gc_pauses

ENDPOINTS = ("protocols", "query", "agg", "agg-uncached")
REPLAY = ["demo", "--since", "2022-05-05", "--until", "2022-05-20", "--speed", "1800", "--loop"]


async def settle(
    sidecar: Sidecar, quick_ms: float = 20.0, in_a_row: int = 5, limit_s: float = 120.0
) -> float:
    """Seconds until ``/healthz`` answered within ``quick_ms`` ``in_a_row`` times running."""
    started = time.monotonic()
    good = 0
    async with aiohttp.ClientSession() as http:
        while good < in_a_row and time.monotonic() - started < limit_s:
            sent = time.monotonic()
            try:
                async with http.get(sidecar.url + "/healthz", timeout=aiohttp.ClientTimeout(total=10)) as r:
                    await r.read()
                good = good + 1 if (time.monotonic() - sent) * 1000 < quick_ms else 0
            except (aiohttp.ClientError, TimeoutError):
                good = 0
            await asyncio.sleep(0.2)
    return round(time.monotonic() - started, 1)


async def query_run(
    sidecar: Sidecar, endpoint: str, rate: float, seconds: float, keys_file: Path, workdir: Path,
    env: dict[str, str],
) -> dict[str, Any]:  # fmt: skip
    """One run of bench/query_load.py, with the sidecar's CPU meanwhile."""
    settled_s = await settle(sidecar)
    # The sidecar's CPU with no queries (the stream's share), to tell what the queries cost on top.
    idle0 = process_cpu_s(sidecar.pid) or 0.0
    await asyncio.sleep(3.0)
    idle_cores = ((process_cpu_s(sidecar.pid) or 0.0) - idle0) / 3.0
    out = workdir / f"query-{endpoint}-{int(rate)}.json"
    cpu0, sys0, t0 = process_cpu_s(sidecar.pid) or 0.0, system_cpu(), time.time()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.query_load", "--url", sidecar.url, "--keys", str(keys_file),
        "--endpoint", endpoint, "--rate", str(rate), "--seconds", str(seconds), "--out", str(out),
        env=env, cwd=workdir, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await proc.communicate()
    span = time.time() - t0
    if proc.returncode != 0:
        return {"error": stderr.decode(errors="replace")[-2000:]}
    cpu_s = (process_cpu_s(sidecar.pid) or 0.0) - cpu0
    sys1 = system_cpu()
    result: dict[str, Any] = json.loads(out.read_text())
    result["waited_for_sidecar_to_settle_s"] = settled_s
    result["sidecar_gc_pauses"] = gc_pauses([sidecar], t0, t0 + span)
    result["sidecar_cpu_cores"] = round(cpu_s / span, 2)
    # On a saturated machine the sidecar gets no more CPU under load than without it, so its CPU does not
    # say what a request costs: compute_costs does.
    result["sidecar_cpu_cores_without_queries"] = round(idle_cores, 2)
    result["machine_cpu_busy_pct"] = round(100 * (sys1[0] - sys0[0]) / max(1, sys1[1] - sys0[1]), 1)
    lat = result["latency_ms"]
    log(
        f"query {endpoint} at {rate:g}/s: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, "
        f"ok {result['ok']}/{result['requests']}, sidecar {result['sidecar_cpu_cores']} cores"
    )
    return result


async def start_worker(procs: Processes, env: dict[str, str], workdir: Path, data: Path) -> Any:
    """The pipeline running beside the queries: a faust worker and a looping replay of real data."""
    worker = procs.spawn(
        [sys.executable, "-m", "faust", "-A", "pipeline.app", "worker", "-l", "info", "--without-web"],
        env=env, cwd=workdir, log_path=workdir / "worker.log",
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while b"[^Worker]: Ready" not in (workdir / "worker.log").read_bytes():
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the faust worker did not start; see {workdir / 'worker.log'}")
        await asyncio.sleep(0.5)
    replay = [sys.executable, "-m", "pipeline.replay", *REPLAY, "--data", str(data)]
    procs.spawn(replay, env=env, cwd=workdir, log_path=workdir / "replay.log")
    await asyncio.sleep(5.0)  # the worker has started on the replay
    return worker


async def query_phase(
    args: argparse.Namespace, sidecar: Sidecar, procs: Processes, keys_file: Path, workdir: Path,
    env: dict[str, str], data: Path,
) -> dict[str, Any]:  # fmt: skip
    conditions: dict[str, Any] = {"update_stream_per_s": args.update_rate, "worker": not args.no_worker}
    out: dict[str, Any] = {"conditions": conditions}
    worker = None
    if not args.no_worker:
        worker = await start_worker(procs, env, workdir, data)
        conditions["replay"] = "python -m pipeline.replay " + " ".join(REPLAY)
    cpu0, t0 = (process_cpu_s(worker.pid) or 0.0) if worker else 0.0, time.time()
    for endpoint in ENDPOINTS:
        runs: dict[str, Any] = {}
        for label, rate, seconds in (
            ("baseline", args.baseline_rate, args.baseline_seconds),
            ("target", args.query_rate, args.query_seconds),
        ):
            runs[label] = await query_run(sidecar, endpoint, rate, seconds, keys_file, workdir, env)
        base, at = runs["baseline"].get("latency_ms", {}), runs["target"].get("latency_ms", {})
        runs["p99_ratio_target_over_baseline"] = (
            round(at["p99_ms"] / base["p99_ms"], 2) if at.get("p99_ms") and base.get("p99_ms") else None
        )
        out[endpoint] = runs
    if worker is not None:
        conditions["worker_cpu_cores"] = round(
            ((process_cpu_s(worker.pid) or 0.0) - cpu0) / (time.time() - t0), 2
        )
    return out


async def compute_costs(
    rows: list[tuple[str, dict[str, Any]]], data: Path, repeat: int = 20
) -> dict[str, Any]:
    """CPU milliseconds of each endpoint's computation alone, in this process, on the same replica rows
    (joined with the protocol metadata as the sidecar does) and through the sidecar's own code: what one
    core can serve at most whatever the machine's load, which the latency runs are measured under."""
    from aiohttp import web as aioweb

    from bench.query_load import request_of
    from pipeline.connectors.datasets import records_of
    from pipeline.settings import Settings
    from web import defillama, query, rest
    from web.keys import REPLICA, SETTINGS
    from web.query_model import parse_request
    from web.replica import Replica
    from web.state import Update

    settings = Settings()
    app = aioweb.Application()
    app[SETTINGS], app[REPLICA] = settings, (replica := Replica(settings))
    query.setup(app)  # its cache has no Redis here: every call computes
    replica.protocols = {r.key: r.value for r in records_of("protocol-meta", data)}
    view = replica.view("tvl", False)
    for offset, (key, row) in enumerate(rows):
        row = dict(row)
        replica.enrich(row)
        view.apply(Update("tvl", key, row, 0, offset, 0))

    extra_calls: dict[str, Callable[[], Awaitable[None]]] = {}

    async def call(endpoint: str, i: int) -> None:
        if endpoint in extra_calls:
            await extra_calls[endpoint]()
            return
        if endpoint == "protocols":  # the list's JSON, rebuilt at most once a second while the view changes
            orjson.dumps(defillama.protocols_list(view.current(), replica.protocols))
            return
        if endpoint == "protocols-gzip":  # and its gzip encoding, made once per rebuilt body
            # (A snapshot of older code, run to compare, has no gzip: level 1 stands in.)
            gzip.compress(body_of_protocols, compresslevel=getattr(rest, "GZIP_LEVEL", 1), mtime=0)
            return
        _, _, body, params = request_of(endpoint, i)
        if params is not None:
            body = {**params, "sort": [params["sort"]], "limit": int(params["limit"])}
        await query.run_query(app, parse_request(body, settings.query_max_rows), delayed=False)

    body_of_protocols = orjson.dumps(defillama.protocols_list(view.current(), replica.protocols))
    costs: dict[str, Any] = {"rows": len(view), "repeat": repeat}
    endpoints = ["protocols", "protocols-gzip", "query", "agg-uncached"]
    try:  # (a snapshot of older code, run to compare, builds the list whole)
        from web.protocols_body import ProtocolsBody
    except ImportError:
        pass
    else:
        fragments = ProtocolsBody()
        fragments.build(view.current(), replica.protocols)
        # The stream's second: the 1,000 largest protocols' totals replaced by new rows, then a rebuild.
        hot = [key for key, _ in sorted(((k, r) for k, r in rows if r["kind"] == "protocol" and r["chain"]
                                         is None), key=lambda kr: -kr[1]["tvl_usd"])[:1000]]  # fmt: skip

        async def rebuild_after_a_second_of_updates() -> None:
            for key in hot:
                view.rows[key] = dict(view.rows[key])
            fragments.build(view.current(), replica.protocols)

        extra_calls["protocols-fragments"] = rebuild_after_a_second_of_updates
        endpoints.insert(1, "protocols-fragments")
    for endpoint in endpoints:
        started = time.process_time()
        for i in range(repeat):
            await call(endpoint, i)
        ms = (time.process_time() - started) * 1000 / repeat
        costs[endpoint] = {"cpu_ms": round(ms, 2), "most_per_s_on_one_core": round(1000 / ms)}
    # /protocols rebuilds its body at most once a second; the other requests are sent the cached bytes.
    costs["protocols"] = {
        "cpu_ms_per_rebuild": costs["protocols"]["cpu_ms"],
        # web.protocols_body, as the sidecar builds it: only the fragments of the 1,000 changed protocols
        "cpu_ms_per_rebuild_from_fragments": costs.pop("protocols-fragments", {}).get("cpu_ms"),
        "gzip_cpu_ms_per_rebuild": costs.pop("protocols-gzip")["cpu_ms"],
        "bytes": len(body_of_protocols),
        "rebuilds_per_s": 1,
    }
    return costs
