"""Benchmarks of the pipeline: ``python -m bench.pipeline_bench`` (see bench/README.md)."""
