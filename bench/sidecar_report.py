"""The summary, ratios and targets of bench/sidecar_bench.py's results, and the table it prints."""

from __future__ import annotations

from typing import Any

ONE_SIDECAR_TARGET = 15_000
P99_TARGET_MS = 100.0
CACHED_P99_TARGET_MS = 10.0
CRITERION = (
    "p99 event-to-client latency < 100 ms, every connection opened and kept, >= 99.9% of updates delivered"
)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _best(steps: list[dict[str, Any]]) -> int:
    return max((s["connections"] for s in steps if s["pass"]), default=0)


def _p99(step: dict[str, Any] | None) -> float | None:
    return (step or {}).get("latency_ms", {}).get("p99_ms")


def _same_n(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[list[Any]]:
    """[connections, p99 ms in a, p99 ms in b, ratio b/a] for every count both ladders measured."""
    in_b = {s["connections"]: s for s in b}
    return [
        [
            s["connections"],
            _p99(s),
            _p99(in_b[s["connections"]]),
            _ratio(_p99(in_b[s["connections"]]), _p99(s)),
        ]
        for s in a
        if s["connections"] in in_b
    ]


def summarise(results: dict[str, Any]) -> None:
    """Adds ``summary`` (the figures and same-run ratios) and ``targets`` (target, value, met) in place."""
    production = results.get("one_sidecar", [])
    one, two = results.get("one_sidecar_no_delay_line", []), results.get("two_sidecars_no_delay_line", [])
    for steps in (production, one, two):
        for step in steps:  # against the first step of the one-sidecar ladder of the same configuration
            first = (production if steps is production else one) or [None]
            step["p99_ratio_vs_first_one_sidecar_step"] = _ratio(_p99(step), _p99(first[0]))
    best_one, best_two = _best(one), _best(two)
    summary: dict[str, Any] = {
        "criterion": CRITERION,
        "one_sidecar_max_connections": _best(production),
        # The top of the ladder passed: the maximum is at least this (the ladder ended, not the sidecar).
        "one_sidecar_ladder_exhausted": bool(production) and all(s["pass"] for s in production),
        "one_sidecar_no_delay_line_max_connections": best_one,
        "one_sidecar_no_delay_line_ladder_exhausted": bool(one) and all(s["pass"] for s in one),
        "two_sidecars_no_delay_line_max_connections": best_two,
        "two_sidecars_no_delay_line_ladder_exhausted": bool(two) and all(s["pass"] for s in two),
        "two_over_one_max_connections": _ratio(best_two, best_one),
        # [connections, p99 one sidecar, p99 two sidecars, two/one], both without the delay line
        "p99_two_vs_one_sidecar_at_same_connections": _same_n(one, two),
        # [connections, p99 without the delay line, p99 with it (production), with/without]
        "p99_delay_line_vs_none_at_same_connections": _same_n(one, production),
    }
    memory = results.get("memory", {})
    summary["kb_per_idle_connection"] = memory.get("kb_per_idle_connection")
    summary["kb_per_connection_with_subscription"] = memory.get("kb_per_connection_with_subscription")
    query = results.get("query", {})

    def at_target(endpoint: str, field: str = "latency_ms") -> dict[str, Any]:
        return query.get(endpoint, {}).get("target", {}).get(field, {})

    summary["query_at_target_rate"] = {
        endpoint: {
            "p50_ms": at_target(endpoint).get("p50_ms"),
            "p99_ms": at_target(endpoint).get("p99_ms"),
            "p99_ratio_target_over_baseline": query.get(endpoint, {}).get("p99_ratio_target_over_baseline"),
        }
        for endpoint in ("protocols", "query", "agg", "agg-uncached")
        if endpoint in query
    }
    if "agg" in query:
        summary["query_at_target_rate"]["agg"]["cache_hits_p99_ms"] = at_target("agg", "latency_ms_hits").get(
            "p99_ms"
        )
    results["summary"] = summary

    def p99_target(endpoint: str, field: str, target: float) -> dict[str, Any]:
        value = at_target(endpoint, field).get("p99_ms") if endpoint in query else None
        entry: dict[str, Any] = {
            "target_ms": target,
            "value_ms": value,
            "met": value is not None and value < target,
        }
        if value is None:
            entry["note"] = "not measured" if endpoint not in query else "p99 fell among failed requests"
        return entry

    best = _best(production)
    results["targets"] = {
        "ws_connections_one_sidecar": {
            "target": ONE_SIDECAR_TARGET, "value": best, "met": best >= ONE_SIDECAR_TARGET,
            "criterion": CRITERION, "configuration": "production defaults (free-tier delay line on)",
            "value_without_delay_line": best_one},
        "ws_connections_two_sidecars": {
            "target": 2 * ONE_SIDECAR_TARGET, "value": best_two, "met": best_two >= 2 * ONE_SIDECAR_TARGET,
            "configuration": "free-tier delay line off, as the one-sidecar ladder it is compared with",
            "note": "the issue asks for the scale-out figure: twice the one-sidecar target is our reading"},
        "query_p99_protocols": p99_target("protocols", "latency_ms", P99_TARGET_MS),
        "query_p99_filtered_query": p99_target("query", "latency_ms", P99_TARGET_MS),
        "query_p99_aggregation": p99_target("agg", "latency_ms", P99_TARGET_MS),
        "query_p99_aggregation_uncached": p99_target("agg-uncached", "latency_ms", P99_TARGET_MS),
        "query_p99_cached_aggregation": p99_target("agg", "latency_ms_hits", CACHED_P99_TARGET_MS)
        | {"note": "cache hits of the repeated aggregation; query_p99_aggregation has every request of it"},
    }  # fmt: skip


def print_table(results: dict[str, Any]) -> None:
    print()
    for name in ("one_sidecar_no_delay_line", "two_sidecars_no_delay_line", "one_sidecar"):
        steps = results.get(name) or []
        if steps:
            print(f"{name}: connections, p50/p99/max ms, delivered/expected, failed, sidecar cores, pass")
        for s in steps:
            lat = s["latency_ms"]
            cores = [v for k, v in s["cpu_cores"].items() if k.startswith("sidecar")]
            print(
                f"  {s['connections']:>7,}  {lat.get('p50_ms')} / {lat.get('p99_ms')} / {lat.get('max_ms')}"
                f"  {s['delivered']:,}/{s['expected']:,}  {s['open']['failed']}  {cores}  {s['pass']}"
            )
    memory = results.get("memory")
    if memory:
        print(
            f"memory: {memory['kb_per_idle_connection']} KB per idle connection, "
            f"{memory['kb_per_connection_with_subscription']} KB with a subscription"
            f" ({memory['connections']:,} connections)"
        )
    for endpoint, runs in results.get("query", {}).items():
        if endpoint in ("conditions", "compute_alone"):
            print(f"query {endpoint}: {runs}")
            continue
        for label in ("baseline", "target"):
            run = runs.get(label, {})
            lat = run.get("latency_ms", {})
            ok, sidecar = f"{run.get('ok')}/{run.get('requests')}", run.get("sidecar_cpu_cores")
            print(
                f"query {endpoint:<13} {label:<8} {run.get('rate_target_per_s')}/s:"
                f" p50 {lat.get('p50_ms')} p99 {lat.get('p99_ms')} ms, ok {ok}, sidecar {sidecar} cores"
            )
    for name, target in results.get("targets", {}).items():
        value = target.get("value", target.get("value_ms"))
        goal = target.get("target", target.get("target_ms"))
        print(f"target {name}: {value} vs {goal} -> {'met' if target['met'] else 'NOT MET'}")
