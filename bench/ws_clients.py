"""Many WebSocket clients in one process, for bench/sidecar_bench.py.

    python -m bench.ws_clients        # driven over stdin/stdout by the bench, one JSON object per line

A connection is one ``asyncio.Protocol`` that does the handshake itself and parses frames in
``data_received``: a few KB per connection and no task, where aiohttp's client costs a session, a reader
task and tens of KB each. The clients share two cores with the sidecar they measure, so they must cost
little: an update is recognised by its first bytes and only its ``source`` stamp is parsed, not the JSON.
The cyclic garbage collector is off (it runs between measurement windows, on ``mark``) so that a
collection pause here is not counted as the sidecar's latency.

Commands (each answered by one JSON line):
  {"op": "open", "first": i, "end": j, "ports": [...], "keys": [...], "filters": [...], "subscribe": true}
      open connections i..j-1: connection n uses keys[n % len(keys)] and filters[n % len(filters)], and
      ports[(n // len(filters)) % len(ports)] (so every sidecar serves every filter); with "subscribe" it
      subscribes at once (channel tvl, the filter, snapshot), else it stays idle after the welcome
  {"op": "subscribe"}   subscribe the idle connections
  {"op": "mark"}        forget samples and counters; the live subscriptions per filter index
  {"op": "collect", "t0": s, "t1": s, "path": p}  write (send time, latency ms) of every update sent in
      [t0, t1) to p as float64 pairs; counters since the mark
  {"op": "close"}       close every connection
  {"op": "exit"}
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import sys
import time
from array import array
from collections import Counter
from typing import Any

import orjson

STAMP = b'"source":"bench:'
UPDATE = b'{"type":"update"'
OPEN_TIMEOUT_S = 60.0


def frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455: clients must mask)."""
    mask = os.urandom(4)
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
    head = (
        bytes((0x80 | opcode, 0x80 | n)) if n < 126 else bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    )
    return head + mask + body


class Conn(asyncio.Protocol):
    def __init__(self, pool: Pool, port: int, key: str, filter_index: int, subscribe: bool) -> None:
        self.pool, self.port, self.key = pool, port, key
        self.filter_index = filter_index
        self.subscribe_on_welcome = subscribe
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.state = "connecting"  # -> idle (welcomed) -> subscribing -> live; failed, closed
        self.ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        nonce = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {self.key}\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            if not head.startswith(b"HTTP/1.1 101"):
                self._settle(f"http {head[9:12].decode(errors='replace')}")
                self.close()
                return
            del buf[: end + 4]
            self.upgraded = True
        pos, size = 0, len(buf)
        while size - pos >= 2:
            opcode, length, start = buf[pos] & 0x0F, buf[pos + 1] & 0x7F, pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length, start = int.from_bytes(buf[pos + 2 : pos + 4], "big"), pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, start = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            if size - start < length:
                break
            pos = start + length
            self.on_frame(opcode, bytes(buf[start:pos]), now)
        if pos:
            del buf[:pos]

    def on_frame(self, opcode: int, payload: bytes, now: float) -> None:
        pool = self.pool
        if opcode == 0x1:
            if payload.startswith(UPDATE):
                at = payload.find(STAMP)
                if at >= 0:
                    at += len(STAMP)
                    stamp = float(payload[at : payload.index(b'"', at)])
                    pool.stamps.append(stamp)
                    pool.latencies.append((now - stamp) * 1000.0)
                return
            kind = payload[9 : payload.find(b'"', 9)].decode()  # every message starts {"type":"<kind>"
            pool.counts[kind] += 1
            if kind == "heartbeat":
                pool.heartbeats.append(now)
            elif kind == "welcome":
                self.state = "idle"
                if self.subscribe_on_welcome:
                    self.subscribe()
                else:
                    self._settle("idle")
            elif kind == "subscribed":
                self.state = "live"
                self._settle("live")
            elif kind == "error":
                code = orjson.loads(payload).get("code", "?")
                pool.errors[code] += 1
                if self.state != "live":
                    self._settle(f"error {code}")
        elif opcode == 0x9 and self.transport is not None:
            self.transport.write(frame(0xA, payload))  # pong: the sidecar closes a client that does not
        elif opcode == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            pool.close_codes[str(code)] += 1
            self.close()

    def subscribe(self) -> None:
        self.state = "subscribing"
        if self.ready.done():
            self.ready = asyncio.get_running_loop().create_future()
        message = {
            "op": "subscribe",
            "id": "b",
            "channel": "tvl",
            "filter": self.pool.filters[self.filter_index],
        }
        assert self.transport is not None
        self.transport.write(frame(0x1, orjson.dumps(message)))

    def _settle(self, outcome: str) -> None:
        if not self.ready.done():
            self.ready.set_result(outcome)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state in ("idle", "live", "subscribing") and not self.pool.closing:
            self.pool.lost += 1
        self.state = "closed"
        self._settle(f"lost: {exc!r}"[:80])
        if not self.done.done():
            self.done.set_result(None)


class Pool:
    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self.filters: list[str] = []
        self.stamps = array("d")
        self.latencies = array("d")
        self.heartbeats = array("d")  # arrival times: the sidecar sends every connection one at once
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.close_codes: Counter[str] = Counter()
        self.lost = 0
        self.closing = False

    async def open_one(
        self, port: int, key: str, filter_index: int, subscribe: bool, gate: asyncio.Semaphore
    ) -> str:
        loop = asyncio.get_running_loop()
        async with gate:
            conn = Conn(self, port, key, filter_index, subscribe)
            try:
                async with asyncio.timeout(OPEN_TIMEOUT_S):
                    await loop.create_connection(lambda: conn, "127.0.0.1", port)
                    outcome = await conn.ready
            except (OSError, TimeoutError) as error:
                conn.close()
                return type(error).__name__ + (f" {error.errno}" if isinstance(error, OSError) else "")
        if outcome in ("idle", "live"):
            self.conns.append(conn)
        return outcome

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd["op"]
        started = time.monotonic()
        if op == "open":
            self.filters = cmd["filters"]
            keys, ports, per = cmd["keys"], cmd["ports"], len(self.filters)
            # Handshakes in flight: the listen backlog is finite, and each handshake makes two Redis calls in
            # the sidecar (rate limit, connection slot), whose pool redis-py caps at 100 connections.
            gate = asyncio.Semaphore(cmd.get("concurrency", 32))
            subscribe = cmd["subscribe"]
            outcomes = await asyncio.gather(*(
                self.open_one(ports[(n // per) % len(ports)], keys[n % len(keys)], n % per, subscribe, gate)
                for n in range(cmd["first"], cmd["end"])
            ))  # fmt: skip
            tally = Counter(outcomes)
            ok = tally.pop("idle", 0) + tally.pop("live", 0)
            gc.collect()
            return {
                "opened": ok,
                "failed": sum(tally.values()),
                "errors": dict(tally.most_common(5)),
                "seconds": round(time.monotonic() - started, 2),
                "connections": len(self.conns),
            }
        if op == "subscribe":
            idle = [c for c in self.conns if c.state == "idle"]
            for conn in idle:
                conn.subscribe()
            outcomes = await asyncio.gather(
                *(asyncio.wait_for(c.ready, OPEN_TIMEOUT_S) for c in idle), return_exceptions=True
            )
            tally = Counter(o if isinstance(o, str) else type(o).__name__ for o in outcomes)
            return {
                "subscribed": tally.pop("live", 0),
                "failed": dict(tally),
                "seconds": round(time.monotonic() - started, 2),
            }
        if op == "mark":
            gc.collect()
            self.stamps, self.latencies, self.heartbeats = array("d"), array("d"), array("d")
            for counter in (self.counts, self.errors, self.close_codes):
                counter.clear()
            self.lost = 0
            live = Counter(c.filter_index for c in self.conns if c.state == "live")
            return {"live": sum(live.values()), "live_by_filter": {str(f): n for f, n in live.items()}}
        if op == "collect":
            t0, t1 = cmd["t0"], cmd["t1"]
            pairs = array("d")
            for stamp, latency in zip(self.stamps, self.latencies, strict=True):
                if t0 <= stamp < t1:
                    pairs.append(stamp)
                    pairs.append(latency)
            with open(cmd["path"], "wb") as out:
                out.write(pairs.tobytes())
            return {
                "samples": len(pairs) // 2,
                "lost": self.lost,
                "messages": dict(self.counts),
                "errors": dict(self.errors),
                "close_codes": dict(self.close_codes),
                "live": sum(1 for c in self.conns if c.state == "live"),
                "heartbeats_by_second": Counter(int(at - t0) for at in self.heartbeats if t0 <= at < t1),
            }
        if op == "close":
            self.closing = True
            # In batches: each close makes the sidecar release a connection slot in Redis, and a burst of
            # thousands overflows its Redis connection pool (see bench/README.md).
            for n, conn in enumerate(self.conns, 1):
                conn.close()
                if n % 50 == 0:
                    await asyncio.sleep(0.02)
            await asyncio.wait([c.done for c in self.conns] or [asyncio.sleep(0)], timeout=60)
            closed, self.conns, self.closing = len(self.conns), [], False
            gc.collect()
            return {"closed": closed, "seconds": round(time.monotonic() - started, 2)}
        raise ValueError(f"unknown op {op!r}")


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pool = Pool()
    print(json.dumps({"ready": True}), flush=True)
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["op"] == "exit":
            break
        try:
            reply = await pool.handle(cmd)
        except Exception as error:  # the bench reads one line per command: report, never hang it
            reply = {"error": repr(error)}
        print(json.dumps(reply), flush=True)


def main() -> None:
    gc.disable()
    asyncio.run(serve())


if __name__ == "__main__":
    main()
