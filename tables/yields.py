"""Table of the yield aggregation."""

from pipeline.app import table

__all__ = ["yield_state"]

# Two series per pool, "apy|<pool>" and "tvl|<pool>", each with b|, i| and l| entries as in tables/tvl.py.
yield_state = table("yield_state")
