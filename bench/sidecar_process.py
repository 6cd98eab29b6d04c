"""``python -m web``, plus a record of its garbage-collector pauses, for bench/sidecar_bench.py.

    BENCH_GC_LOG=gc.log python -m bench.sidecar_process

Runs the sidecar exactly as ``python -m web`` does (``web.__main__.main``) after registering a
``gc.callbacks`` hook that appends ``<wall time at start> <generation> <pause ms>`` to ``BENCH_GC_LOG`` for
every collection longer than 2 ms. The sidecar holds its whole replica and every connection in Python
objects, so a full collection is long; the bench lines these pauses up with the latency of each second
to tell them from other stalls. The hook costs two clock reads per collection. ``kill -USR1`` makes it
append the count of live objects by type to ``$BENCH_GC_LOG.objects`` (the memory phase does, to tell
memory a closed connection leaves behind).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import time
from collections import Counter
from typing import Any

from web.__main__ import main

LONG_MS = 2.0


def record_pauses(path: str) -> None:
    out = open(path, "a", buffering=1)  # noqa: SIM115  (open for the life of the process)
    started: list[float] = [0.0, 0.0]

    def hook(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0], started[1] = time.perf_counter(), time.time()
            return
        pause_ms = (time.perf_counter() - started[0]) * 1000
        if pause_ms >= LONG_MS:
            out.write(f"{started[1]:.6f} {info['generation']} {pause_ms:.2f}\n")

    gc.callbacks.append(hook)


def count_objects(path: str) -> None:
    """On SIGUSR1, append the live objects the collector tracks, by type (the 12 commonest), to ``path``:
    how the bench tells memory a process keeps from memory it leaks."""

    def dump(*_: object) -> None:
        kinds = Counter(type(o).__name__ for o in gc.get_objects())
        with open(path, "a") as out:
            out.write(
                json.dumps(
                    {"time": time.time(), "objects": sum(kinds.values()), "top": kinds.most_common(12)}
                )
            )
            out.write("\n")

    signal.signal(signal.SIGUSR1, dump)


if __name__ == "__main__":
    if os.environ.get("BENCH_GC_LOG"):
        record_pauses(os.environ["BENCH_GC_LOG"])
        count_objects(os.environ["BENCH_GC_LOG"] + ".objects")
    main()
