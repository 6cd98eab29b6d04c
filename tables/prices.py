"""Table of the price aggregation."""

from pipeline.app import table

__all__ = ["price_state"]

# "b|<coin>@<minute bucket>" (that minute's ticks, i.e. its candle), "i|<coin>#<group>", "l|<coin>";
# see tables/tvl.py for why it is one table.
price_state = table("price_state")
