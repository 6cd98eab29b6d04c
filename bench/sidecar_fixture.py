"""What bench/sidecar_bench.py sets up around the sidecars: real data, API keys, processes, clean-up.

- ``replica_rows``: the ``tvl.updates`` values of a realistic replica, from the real DeFiLlama exports in
  the shared data folder: every protocol of ``protocols_2025-12-08.json`` with a TVL (its total row), the
  per-chain rows of the 38 ``protocol_tvl/*.json`` histories, and every chain of the chain TVL CSV on its
  last day. Published to the derived topic directly, as the worker would (the protocol metadata goes to
  ``protocols.meta``, as ``python -m pipeline.replay protocol-meta`` does).
- ``create_keys`` / ``revoke_keys``: enterprise keys (1,000 WebSocket connections and 10,000 requests a
  minute each), made in the database as the operator's ``POST /v1/keys`` would, revoked at the end.
- ``Sidecar``: ``python -m web`` as a subprocess with the bench's settings in its environment (run through
  bench/sidecar_process.py, which logs its garbage-collector pauses).
- ``snapshot``: the code every process of one run imports, copied when the run starts (the project is
  edited while a run goes on; a sidecar started ten minutes later must not run newer code).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import resource
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from bench.common import settings_env
from bench.pipeline_bench import Processes, log
from pipeline.connectors.datasets import records_of
from pipeline.connectors.readers.defillama_tvl import wide_csv_cells
from pipeline.db import make_engine
from pipeline.records import iso
from pipeline.settings import Settings
from pipeline.storage.api_keys import create_key, revoke_key
from pipeline.topics import topic_name

# Per-protocol "chains" of protocol_tvl/*.json that are accounting buckets, not chains (as tests do).
BUCKETS = ("borrowed", "staking", "pool2", "vesting", "doublecounted", "liquidstaking")


def tvl_row(protocol: str | None, chain: str | None, tvl: float, ts: float, source: str) -> dict[str, Any]:
    return {
        "kind": "chain" if protocol is None else "protocol", "protocol": protocol, "chain": chain,
        "tvl_usd": tvl, "change_1h_pct": None, "change_1d_pct": None, "change_7d_pct": None,
        "as_of": iso(ts), "stale": False, "source": source,
    }  # fmt: skip


def tvl_key(row: dict[str, Any]) -> str:
    return f"{row['kind']}|{row['protocol'] or ''}|{row['chain'] or ''}"


def replica_rows(data: Path) -> list[tuple[str, dict[str, Any]]]:
    defillama = data / "defillama"
    rows: dict[str, dict[str, Any]] = {}
    snapshot = "protocols_2025-12-08.json"
    day = datetime(2025, 12, 8, tzinfo=UTC).timestamp()
    for entry in json.loads((defillama / snapshot).read_bytes()):
        if entry.get("tvl") and '"' not in entry["name"] and "\\" not in entry["name"]:
            row = tvl_row(entry["name"], None, float(entry["tvl"]), day, f"replay:{snapshot}")
            rows[tvl_key(row)] = row
    for path in sorted((defillama / "protocol_tvl").glob("*.json")):
        document = json.loads(path.read_bytes())
        last = max(document["tvl"], key=lambda p: p["date"])
        for chain, value in document["currentChainTvls"].items():
            if chain.lower() not in BUCKETS and chain.rsplit("-", 1)[-1].lower() not in BUCKETS:
                row = tvl_row(document["name"], chain, float(value), last["date"], f"replay:{path.name}")
                rows[tvl_key(row)] = row
    chains: dict[str, tuple[float, float]] = {}
    for ts, chain, value in wide_csv_cells(defillama / "chain_tvl_daily_2018-2023.csv"):
        chains[chain] = (ts, value)
    for chain, (ts, value) in chains.items():
        row = tvl_row(None, chain, value, ts, "replay:chain_tvl_daily_2018-2023.csv")
        rows[tvl_key(row)] = row
    return list(rows.items())


def hot_rows(rows: list[tuple[str, dict[str, Any]]], count: int) -> list[tuple[str, dict[str, Any]]]:
    """The protocol total rows of the ``count`` largest protocols: the keys the stream updates."""
    totals = [(k, r) for k, r in rows if r["kind"] == "protocol" and r["chain"] is None]
    totals.sort(key=lambda item: (-item[1]["tvl_usd"], item[0]))
    return totals[:count]


UPDATE_ORDERS = {
    "spread": "the subscribed keys evenly spaced in each round of the hot keys: an update a subscriber "
    "wants every 1/(rate x subscribed/hot) s, as when subscribed series update independently",
    "bunched": "the subscribed keys first in each round: every subscriber's update within the first "
    "subscribed/hot of each second, as when a block updates every watched price at once",
}


def publish_order(hot: int, subscribed: int, how: str) -> list[int]:
    """The hot keys (by index; the first ``subscribed`` have filters) in the order one round sends them."""
    if how == "bunched" or subscribed <= 0:
        return list(range(hot))
    others = iter(range(subscribed, hot))
    order: list[int] = []
    for i in range(subscribed):
        order.append(i)
        # Unsubscribed keys up to the next subscribed one's even share of the round.
        order.extend(next(others) for _ in range((i + 1) * hot // subscribed - i * hot // subscribed - 1))
    order.extend(others)
    return order


async def publish_replica(settings: Settings, rows: list[tuple[str, dict[str, Any]]], data: Path) -> int:
    """Protocol metadata into ``protocols.meta`` and the rows into ``tvl.updates``; the count of metadata."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20, acks="all")
    await producer.start()
    meta = 0
    try:
        for record in records_of("protocol-meta", data):
            await producer.send(
                topic_name(settings, "protocols.meta"), orjson.dumps(record.value), key=record.key.encode()
            )
            meta += 1
        for key, row in rows:
            await producer.send(topic_name(settings, "tvl.updates"), orjson.dumps(row), key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()
    return meta


async def create_keys(settings: Settings, owner: str, count: int) -> list[tuple[str, str]]:
    """``count`` enterprise keys of one owner: [(key id, secret)]."""
    engine = make_engine(settings)
    try:
        made = []
        for n in range(count):
            key, secret = await create_key(engine, owner=owner, tier="enterprise", label=f"bench {n}")
            made.append((key.id, secret))
        return made
    finally:
        await engine.dispose()


async def revoke_keys(settings: Settings, key_ids: list[str]) -> None:
    engine = make_engine(settings)
    try:
        for key_id in key_ids:
            await revoke_key(engine, key_id)
    finally:
        await engine.dispose()


async def delete_redis_keys(settings: Settings, prefix: str) -> int:
    """Everything the sidecars of this run left in Redis (limits, slots, usage, query cache)."""
    redis = Redis.from_url(settings.redis_url)
    deleted = 0
    try:
        async for name in redis.scan_iter(match=f"{prefix}*", count=1000):
            deleted += await redis.delete(name)
    finally:
        await redis.aclose()
    return deleted


def raise_fd_limit(wanted: int = 1 << 20) -> tuple[int, int]:
    """RLIMIT_NOFILE as high as the kernel allows (root may raise the hard limit); children inherit it."""
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    wanted = min(wanted, nr_open)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), max(hard, wanted)))
    except (ValueError, PermissionError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # not root: the hard limit is the most
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


@dataclass
class Sidecar:
    name: str
    port: int
    proc: Any  # subprocess.Popen
    gc_log: Path  # "<wall time> <generation> <pause ms>" of every collection over 2 ms

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return int(self.proc.pid)


async def start_sidecar(
    name: str, settings: Settings, port: int, procs: Processes, workdir: Path, env_extra: dict[str, str]
) -> Sidecar:
    """``python -m web`` on ``port``; returns once /readyz says its replica has caught up."""
    gc_log = workdir / f"{name}-gc.log"
    env = settings_env(settings.model_copy(update={"web_port": port}), **env_extra, BENCH_GC_LOG=str(gc_log))
    # bench.sidecar_process is `python -m web` with a log of its garbage-collector pauses.
    command = [env_extra["BENCH_PYTHON"], "-m", "bench.sidecar_process"]
    proc = procs.spawn(command, env=env, cwd=workdir, log_path=workdir / f"{name}.log")
    sidecar = Sidecar(name, port, proc, gc_log)
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sidecar {name} exited with {proc.returncode}; see {workdir / name}.log")
            try:
                async with http.get(sidecar.url + "/readyz") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() - started > 180:
                raise RuntimeError(f"sidecar {name} not ready after 180 s; see its log")
            await asyncio.sleep(0.25)
    log(f"{name}: ready on port {port} after {time.monotonic() - started:.1f}s (pid {proc.pid})")
    return sidecar


SNAPSHOT_PACKAGES = ("pipeline", "agents", "tables", "web", "bench")


def snapshot(home: Path, target: Path) -> dict[str, str]:
    """Copy the packages (every file: migrations and static files too) to ``target``; their hash."""
    digest = hashlib.sha256()
    newest = (0.0, "")
    for package in SNAPSHOT_PACKAGES:
        for path in sorted((home / package).rglob("*")):
            relative = path.relative_to(home)
            skipped = relative.parts[:2] in (("bench", ".work"), ("bench", "results"))
            if skipped or "__pycache__" in relative.parts or not path.is_file():
                continue
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
            digest.update(str(relative).encode() + b"\0" + path.read_bytes())
            newest = max(newest, (path.stat().st_mtime, str(relative)))
    stamp = datetime.fromtimestamp(newest[0], UTC).isoformat(timespec="seconds")
    return {"BENCH_CODE_SHA256": digest.hexdigest()[:16], "BENCH_CODE_NEWEST": f"{newest[1]} {stamp}"}
