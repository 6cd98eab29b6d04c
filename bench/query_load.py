"""Open-loop HTTP load on one sidecar endpoint, for bench/sidecar_bench.py.

    python -m bench.query_load --url http://127.0.0.1:PORT --keys keys.json --endpoint agg --rate 500 \
        --seconds 20 --out result.json

Request ``i`` is started at ``start + i / rate`` whatever the earlier ones are doing (open loop), and its
latency is counted from that scheduled time to the end of its response body: a server that stalls makes
every request scheduled during the stall late, as it would for real users, instead of slowing the load
down and hiding the stall (coordinated omission). ``service_ms`` is from the actual send instead. A request
that fails or times out counts with the time it took (at least the timeout), so it lands in the tail.
Keys are used in turn: an enterprise key allows 10,000 requests a minute, so 500/s needs several.

Endpoints:
  protocols     GET /protocols (every protocol: ~1.4 MB of JSON with the bench's replica)
  query         GET /v1/query: a filter over the tvl rows, sorted, 50 rows (never cached)
  agg           POST /v1/query: group_by category with sum/p90/count; the same query every time, so
                all but the first request after each once-a-second epoch change are cache hits
  agg-uncached  the same aggregation with a different (always true) bound in its filter per request:
                a cache miss every time, the cost of computing it
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp

QUERY_FILTER = 'category in ("Lending", "Dexes", "Liquid Staking") and tvl_usd > 10000000'
AGGREGATION = {
    "channel": "tvl",
    "filter": 'kind == "protocol"',
    "group_by": ["category"],
    "aggregations": {"tvl": "sum(tvl_usd)", "p90": "p90(tvl_usd)", "protocols": "count()"},
    "sort": ["-tvl"],
    "limit": 30,
}


def request_of(endpoint: str, i: int) -> tuple[str, str, dict[str, Any] | None, dict[str, str] | None]:
    """(method, path, JSON body, query parameters) of request ``i``."""
    if endpoint == "protocols":
        return "GET", "/protocols", None, None
    if endpoint == "query":
        return (
            "GET",
            "/v1/query",
            None,
            {"channel": "tvl", "filter": QUERY_FILTER, "sort": "-tvl_usd", "limit": "50"},
        )
    if endpoint == "agg":
        return "POST", "/v1/query", AGGREGATION, None
    if endpoint == "agg-uncached":
        # Every TVL is below 1e15: the same rows and groups, but another query text, so another cache key.
        bound = 10**15 + i
        return (
            "POST",
            "/v1/query",
            {**AGGREGATION, "filter": f'kind == "protocol" and tvl_usd < {bound}'},
            None,
        )
    raise ValueError(endpoint)


def pct(ordered: list[float], p: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))], 2)


def summary(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "samples": len(ordered),
        "p50_ms": pct(ordered, 50),
        "p90_ms": pct(ordered, 90),
        "p99_ms": pct(ordered, 99),
        "p999_ms": pct(ordered, 99.9),
        "max_ms": round(ordered[-1], 2) if ordered else None,
        "mean_ms": round(statistics.fmean(ordered), 2) if ordered else None,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    keys = json.loads(Path(args.keys).read_text())
    total = int(args.rate * args.seconds)
    latency: list[float] = []
    service: list[float] = []
    lateness: list[float] = []
    hits: list[float] = []
    misses: list[float] = []
    statuses: dict[str, int] = {}
    body_bytes = 0
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=args.connections, force_close=False)
    encodings: dict[str, int] = {}
    # Bodies are read as sent (a gzip one is not inflated): the client's decompression is not the server's
    # latency, and inflating 500 copies a second of /protocols would take this loader a core.
    async with aiohttp.ClientSession(
        args.url, connector=connector, timeout=timeout, auto_decompress=False
    ) as http:

        async def one(i: int, due: float) -> None:
            nonlocal body_bytes
            method, path, body, params = request_of(args.endpoint, i)
            headers = {"Authorization": f"Bearer {keys[i % len(keys)]}"}
            sent = time.perf_counter()
            lateness.append((sent - due) * 1000)
            try:
                async with http.request(method, path, json=body, params=params, headers=headers) as response:
                    data = await response.read()
                    encoding = response.headers.get("Content-Encoding", "identity")
                    encodings[encoding] = encodings.get(encoding, 0) + 1
                status = str(response.status)
                body_bytes += len(data)
            except (aiohttp.ClientError, TimeoutError) as error:
                status, data = type(error).__name__, b""
            done = time.perf_counter()
            statuses[status] = statuses.get(status, 0) + 1
            latency.append((done - due) * 1000)
            service.append((done - sent) * 1000)
            if args.endpoint.startswith("agg") and status == "200":
                (hits if b'"cached":true' in data[-40:] else misses).append((done - due) * 1000)

        # Warm the connection pool and the key cache first: the measurement is of the steady state.
        await asyncio.gather(*(one(-1 - i, time.perf_counter()) for i in range(min(len(keys), 8))))
        for values in (latency, service, lateness, hits, misses):
            values.clear()
        statuses.clear()
        encodings.clear()
        body_bytes = 0
        cpu_started = resource.getrusage(resource.RUSAGE_SELF)
        tasks = []
        started = time.perf_counter()
        for i in range(total):
            due = started + i / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        scheduled_s = time.perf_counter() - started
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        cpu = resource.getrusage(resource.RUSAGE_SELF)
    ok = statuses.get("200", 0)
    result = {
        "endpoint": args.endpoint,
        "rate_target_per_s": args.rate,
        "seconds": args.seconds,
        "requests": total,
        "ok": ok,
        "statuses": statuses,
        "rate_started_per_s": round(total / scheduled_s, 1),
        "rate_completed_per_s": round(total / elapsed, 1),
        "latency_ms": summary(latency),
        "service_ms": summary(service),
        "start_lateness_ms": {
            "p99": pct(sorted(lateness), 99),
            "max": round(max(lateness), 2) if lateness else None,
        },
        "mean_body_bytes": round(body_bytes / ok) if ok else None,
        "content_encodings": encodings,
        "loader_cpu_cores": round(
            (cpu.ru_utime + cpu.ru_stime - cpu_started.ru_utime - cpu_started.ru_stime) / elapsed, 2
        ),
    }
    if args.endpoint.startswith("agg"):
        result["cache_hits"] = len(hits)
        result["cache_misses"] = len(misses)
        result["latency_ms_hits"] = summary(hits)
        result["latency_ms_misses"] = summary(misses)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.query_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--keys", required=True, help="JSON list of API keys, used in turn")
    parser.add_argument("--endpoint", required=True, choices=("protocols", "query", "agg", "agg-uncached"))
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=256, help="the client's connection pool")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
