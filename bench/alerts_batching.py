"""The alert evaluator taking rows one at a time and in batches, side by side (part of bench/alerts_bench.py).

Each run is a fresh worker on fresh topics with the 100,000 rules, fed the same 20,000 TVL rows straight
into ``tvl.updates`` (a backlog: the evaluator's own throughput), with ``LLAMA_ALERT_BATCH_MAX`` 1 or the
default. The runs alternate (1, default, 1, default, ...) so that the machine's other load falls on both
alike; the figure is the ratio of the medians.
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any

from bench.alerts_e2e import ROOT, Log, Worker, _delete_topics, _publish_setup, _throughput, fresh_run
from bench.alerts_workload import EventClock, Universe
from pipeline.alerting.rules import Rule
from pipeline.settings import Settings
from pipeline.topics import ensure_topics

__all__ = ["batching_side_by_side"]

ROWS = 20_000


async def batching_side_by_side(
    universe: Universe, rules: list[Rule], rounds: int, drop_every: int, log: Log
) -> dict[str, Any]:
    sizes = [1, Settings().alert_batch_max]
    runs: dict[int, list[dict[str, Any]]] = {size: [] for size in sizes}
    for _ in range(rounds):
        for size in sizes:
            run = await _one_run(universe, rules, size, drop_every, log)
            rate, cpu = run["evaluator_rows_per_s"], run["worker_cpu_ms_per_row"]
            log(f"batches of {size}: {rate} rows/s, {cpu} ms of worker CPU per row")
            runs[size].append(run)

    def median(size: int, field: str) -> float:
        return round(float(statistics.median(r[field] for r in runs[size])), 3)

    one, batch = sizes
    return {
        "what": f"{ROWS} TVL rows into tvl.updates per run, 100,000 rules, one worker (every agent), batch"
        " sizes alternating run by run",
        "runs": {str(size): runs[size] for size in sizes},
        "median_rows_per_s": {str(size): median(size, "evaluator_rows_per_s") for size in sizes},
        "median_worker_cpu_ms_per_row": {str(size): median(size, "worker_cpu_ms_per_row") for size in sizes},
        "rows_per_s_batched_over_one": round(
            median(batch, "evaluator_rows_per_s") / median(one, "evaluator_rows_per_s"), 2
        ),
        "cpu_per_row_batched_over_one": round(
            median(batch, "worker_cpu_ms_per_row") / median(one, "worker_cpu_ms_per_row"), 2
        ),
    }


async def _one_run(
    universe: Universe, rules: list[Rule], batch_max: int, drop_every: int, log: Log
) -> dict[str, Any]:
    tag, workdir, settings = fresh_run("alerts-batch", alert_batch_max=batch_max)
    await ensure_topics(settings)
    worker = Worker(settings, workdir / "worker.log")
    try:
        await _publish_setup(settings, universe, rules)
        worker.start()
        await worker.wait_for(b"[^Worker]: Ready", 300)
        await worker.wait_for(b"alert rules loaded", 900)
        events = list(EventClock(universe, drop_every=drop_every).events(ROWS))
        return await _throughput(settings, worker, events, "tvl.updates", log)
    finally:
        worker.stop()
        await _delete_topics(settings.kafka_bootstrap, tag)
        shutil.rmtree(ROOT / f"{settings.app_id}-data", ignore_errors=True)
        shutil.rmtree(Path(workdir), ignore_errors=True)
