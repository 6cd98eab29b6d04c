"""The web sidecar under load: WebSocket connections per process, query latency, memory per connection.

    python -m bench.sidecar_bench            # the full run (``make bench`` runs it after the pipeline's)
    python -m bench.sidecar_bench --quick    # a smoke run: small steps, short windows (~5 minutes)

One run, on fresh topics (prefix ``bench<tag>-sc.``), real data and enterprise keys made for it. Updates
stream into ``tvl.updates`` at 1,000/s from the start (bench/stream_publisher.py); WebSocket clients run in
separate processes (bench/ws_clients.py), each connection subscribed to a filter that matches one update a
second; a step's latency is that of every update sent in its window, send time -> client receive time.
``--update-order`` says where in each round of the hot keys the 100 subscribed ones come: ``spread``
(the default: evenly spaced, as when the watched series update independently) or ``bunched`` (all within
the first tenth of every second, as when a block moves every watched price at once: each second then
starts with one write per connection in ~100 ms, the harder case for a single process).
  1. memory: RSS of a sidecar before/after N idle connections, then with one subscription each;
  2. the WebSocket path alone (the free tier's delay line off, LLAMA_FREE_TIER_DELAY_S=0): one sidecar,
     connections stepped up; then two sidecars, the connections split evenly, the same counts;
  3. the production configuration (the 5-minute delay line on, full: the sidecar starts once the stream
     has run that long): one sidecar, stepped up. This is the figure the target is checked on;
  4. queries: open-loop load (bench/query_load.py) on /protocols, a filtered /v1/query and a group_by
     aggregation (repeated: cached; varied: never cached), at a low baseline rate then at 500/s, on the
     production sidecar while the stream goes on and a faust worker processes a replay.
A step passes with p99 < 100 ms, every connection opened and kept and >= 99.9% of the updates delivered;
the figure is the largest passing count; stepping stops after two failed steps in a row.
Figures go to bench/results/sidecar.json (see bench/README.md); speed is recorded, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench import sidecar_fixture as fixture
from bench.common import settings_env
from bench.pipeline_bench import Processes, delete_topics, log, machine_info
from bench.sidecar_fixture import UPDATE_ORDERS, publish_order
from bench.sidecar_ladder import ladder, memory_phase
from bench.sidecar_phases import ClientFleet, Stream
from bench.sidecar_queries import compute_costs, query_phase
from bench.sidecar_report import print_table, summarise
from pipeline.settings import Settings
from pipeline.topics import ensure_topics, topic_name

ROOT = Path(__file__).resolve().parents[1]  # the code: a snapshot, or the project with --no-snapshot
HOME = Path(os.environ.get("BENCH_HOME", ROOT))  # the project: results and work dirs
RESULTS = HOME / "bench" / "results"
# Where the keys are made and the sidecars look them up (make exports the same).
DEFAULT_DATABASE = "postgresql+asyncpg://llama:llama@127.0.0.1:5432/llamastream"
# Connections per key: half the enterprise tier's 1,000, as slots a sidecar failed to release (see README)
# may still be held when the next ladder opens its connections.
PER_KEY = 500
LADDER = "500,1000,2000,3000,5000,7500,10000,15000,20000,25000"
TWO_LADDER = LADDER + ",30000,40000"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def bench(args: argparse.Namespace, tag: str) -> dict[str, Any]:
    workdir = HOME / "bench" / ".work" / tag
    workdir.mkdir(parents=True, exist_ok=True)
    data = Path(os.environ.get("BENCH_DATA", str(HOME.parent / "shared" / "data")))
    limits = fixture.raise_fd_limit()
    settings = Settings(
        kafka_bootstrap=args.bootstrap, topic_prefix=f"bench{tag}-sc.", app_id=f"bench{tag}-sc",
        database_url=args.database_url, history_writer=False, worker_web_enabled=False,
        free_tier_delay_s=args.free_tier_delay,
    )  # fmt: skip
    no_delay = settings.model_copy(update={"free_tier_delay_s": 0.0})
    env_extra = {"PYTHONPATH": str(ROOT), "BENCH_PYTHON": sys.executable}
    env = settings_env(settings, **env_extra)
    procs, fleet = Processes(), ClientFleet()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.sidecar_bench", *sys.argv[1:]]),
        "machine": machine_info() | {"rlimit_nofile": list(limits)},
        "code": {
            "sha256": os.environ.get("BENCH_CODE_SHA256"),
            "newest": os.environ.get("BENCH_CODE_NEWEST"),
        },
        "parameters": {k: v for k, v in vars(args).items() if k not in ("output", "tag", "database_url")},
    }
    key_ids: list[str] = []

    async def sidecar(name: str, config: Settings) -> fixture.Sidecar:
        return await fixture.start_sidecar(name, config, free_port(), procs, workdir, env_extra)

    try:
        await ensure_topics(settings)
        rows = fixture.replica_rows(data)
        meta = await fixture.publish_replica(settings, rows, data)
        hot = fixture.hot_rows(rows, args.hot_keys)
        filters = [f'protocol == "{row["protocol"]}"' for _, row in hot[: args.filters]]
        order = publish_order(len(hot), len(filters), args.update_order)
        (workdir / "hot.json").write_bytes(orjson.dumps([hot[i] for i in order]))
        results["replica"] = {"tvl_rows": len(rows), "protocols_meta": meta, "hot_keys": len(hot),
                              "filters": len(filters), "filter_example": filters[0],
                              "update_order": UPDATE_ORDERS[args.update_order]}  # fmt: skip
        most = max([args.memory_connections, *args.ladder, *args.two_ladder])
        made = await fixture.create_keys(
            settings, f"bench-{tag}", math.ceil(most / PER_KEY) + args.query_keys
        )
        key_ids = [key_id for key_id, _ in made]
        keys_file = workdir / "query-keys.json"
        keys_file.write_text(json.dumps([secret for _, secret in made[: args.query_keys]]))
        log(f"replica: {len(rows):,} tvl rows, {meta:,} protocols; {len(made)} enterprise keys")

        topic = topic_name(settings, "tvl.updates")
        base = [sys.executable, "-m", "bench.{}", "--bootstrap", args.bootstrap, "--topic", topic]
        stamps, probe = workdir / "stamps.bin", workdir / "probe.bin"
        publisher = procs.spawn(
            [*(a.format("stream_publisher") for a in base), "--rows", str(workdir / "hot.json"),
             "--rate", str(args.update_rate), "--log", str(stamps)],
            env=env, cwd=workdir, log_path=workdir / "publisher.log",
        )  # fmt: skip
        prober = procs.spawn([*(a.format("kafka_probe") for a in base), "--out", str(probe)],
                             env=env, cwd=workdir, log_path=workdir / "probe.log")  # fmt: skip
        stream_started = time.monotonic()
        stream = Stream(publisher, stamps, prober, probe, order)
        await fleet.start(args.client_procs, env, workdir, workdir)
        ctx = {"fleet": fleet, "args": args, "ws_keys": [secret for _, secret in made[args.query_keys :]],
               "filters": filters, "stream": stream, "workdir": workdir}  # fmt: skip

        # 2. The WebSocket path alone: no delay line (nothing but the fan-out grows with the connections).
        first = await sidecar("sidecar-1", no_delay)
        if "memory" not in args.skip:
            results["memory"] = await memory_phase(fleet, first, args.memory_connections, ctx)
        if "one" not in args.skip:
            results["one_sidecar_no_delay_line"] = await ladder(
                "one sidecar, no delay line", args.ladder, [first], ctx
            )
        if "two" not in args.skip:
            second = await sidecar("sidecar-2", no_delay)
            # From the bottom of the one-sidecar ladder: the counts both measured compare side by side.
            counts = [n for n in args.two_ladder if n >= min(args.ladder)]
            steps = await ladder("two sidecars, no delay line", counts, [first, second], ctx)
            results["two_sidecars_no_delay_line"] = steps
            Processes.stop(second.proc)
        Processes.stop(first.proc)

        # 3. The production configuration, its delay line full from the start.
        production = None
        if "production" not in args.skip or "query" not in args.skip:
            wait = args.free_tier_delay + 5 - (time.monotonic() - stream_started)
            if wait > 0:
                log(f"waiting {wait:.0f}s: the stream has run less than the delay line holds")
                await asyncio.sleep(wait)
            production = await sidecar("sidecar-a", settings)
        if production is not None and "production" not in args.skip:
            results["one_sidecar"] = await ladder("one sidecar", args.ladder, [production], ctx)
        fleet.stop()

        # 4. Queries, on the production sidecar, while the stream and the pipeline run.
        if production is not None and "query" not in args.skip:
            results["query"] = await query_phase(args, production, procs, keys_file, workdir, env, data)
            results["query"]["compute_alone"] = await compute_costs(rows, data)
        for proc in (publisher, prober):
            Processes.stop(proc)
        results["publisher"] = json.loads((workdir / "publisher.log").read_text().strip().splitlines()[-1])
        summarise(results)
        results["machine"]["loadavg_at_end"] = os.getloadavg()
        return results
    finally:
        fleet.stop()
        procs.stop_all()
        # Each step on its own: a broker that hangs up must not leave the keys valid.
        for step, call in (
            ("revoke the keys", lambda: fixture.revoke_keys(settings, key_ids)),
            ("delete the topics", lambda: delete_topics(args.bootstrap, f"bench{tag}-sc")),
            ("delete the Redis keys", lambda: fixture.delete_redis_keys(settings, settings.app_id + ":")),
        ):
            try:
                await call()
            except Exception as error:
                log(f"clean-up: could not {step}: {error!r}")
        log(f"clean-up done ({len(key_ids)} keys revoked)")
        if args.keep_work:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def numbers(text: str) -> list[int]:
        return [int(float(x)) for x in text.split(",") if x]

    parser = argparse.ArgumentParser(
        prog="python -m bench.sidecar_bench", description=__doc__.split("\n\n")[0]
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="a smoke run: small steps and short windows")
    add("--ladder", type=numbers, default=numbers(LADDER), help="connections, one sidecar (comma-separated)")
    add(
        "--two-ladder",
        type=numbers,
        default=numbers(TWO_LADDER),
        help="connections, two sidecars",
    )
    add("--update-rate", type=float, default=1000.0, help="updates per second into tvl.updates")
    add("--hot-keys", type=int, default=1000, help="keys the stream updates in turn")
    add("--filters", type=int, default=100, help="distinct subscription filters (one hot key each)")
    add("--update-order", choices=sorted(UPDATE_ORDERS), default="spread", help="where in each round of"
        " the hot keys the subscribed ones are updated")  # fmt: skip
    add(
        "--free-tier-delay", type=float, default=Settings().free_tier_delay_s, help="production delay line, s"
    )
    add("--client-procs", type=int, default=2, help="processes the WebSocket clients are spread over")
    add("--window-seconds", type=float, default=20.0, help="measurement window per step")
    add("--warmup-seconds", type=float, default=5.0, help="after opening a step's connections")
    add("--drain-seconds", type=float, default=3.0, help="after the window, for late updates to arrive")
    add("--memory-connections", type=int, default=10_000)
    add("--query-rate", type=float, default=500.0)
    add("--query-seconds", type=float, default=20.0)
    add("--baseline-rate", type=float, default=50.0)
    add("--baseline-seconds", type=float, default=10.0)
    add("--query-keys", type=int, default=8, help="keys the query load takes turns with")
    add("--no-worker", action="store_true", help="no faust worker + replay during the queries")
    add("--skip", action="append", default=[], choices=("memory", "one", "two", "production", "query"))
    add("--bootstrap", default=os.environ.get("LLAMA_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    add("--database-url", default=os.environ.get("LLAMA_DATABASE_URL", DEFAULT_DATABASE))
    add("--tag", default="", help="topic/app id tag (default: the time)")
    add("--output", type=Path, default=RESULTS / "sidecar.json")
    add("--keep-work", action="store_true", help="keep logs in bench/.work/<tag>")
    add("--no-snapshot", action="store_true", help="run the live code, not a copy taken at the start")
    if parser.parse_known_args(argv)[0].quick:
        # Smaller defaults (options given explicitly still win); the delay line is shortened to 30 s so
        # that the production part need not wait five minutes: a smoke run, not a figure.
        parser.set_defaults(
            ladder=[200, 500, 1000],
            two_ladder=[200, 500, 1000, 2000],
            window_seconds=8.0,
            warmup_seconds=2.0,
            drain_seconds=2.0,
            memory_connections=1000,
            query_seconds=5.0,
            baseline_seconds=3.0,
            free_tier_delay=30.0,
        )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tag = args.tag or datetime.now().strftime("%m%d%H%M%S")
    if not args.no_snapshot and os.environ.get("BENCH_SNAPSHOT") != "1":
        # The whole run (this script, the sidecars, the clients) on a copy of the code taken now.
        from pipeline.connectors.datasets import default_data_dir

        src = HOME / "bench" / ".work" / tag / "src"
        code = fixture.snapshot(HOME, src)
        data = os.environ.get("BENCH_DATA", str(default_data_dir()))
        env = dict(os.environ, BENCH_SNAPSHOT="1", BENCH_HOME=str(HOME), PYTHONPATH=str(src), BENCH_DATA=data)
        env.update(code)
        argv = [
            *(sys.argv[1:] if argv is None else argv),
            "--tag",
            tag,
            "--output",
            str(args.output.resolve()),
        ]
        os.chdir(src)
        os.execve(sys.executable, [sys.executable, "-m", "bench.sidecar_bench", *argv], env)
    results = asyncio.run(bench(args, tag))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    print_table(results)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
