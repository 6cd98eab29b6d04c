"""Table of the TVL aggregation."""

from pipeline.app import table

__all__ = ["tvl_state"]

# One table per aggregation so a record's writes reach one changelog partition in order (pipeline.observe):
#   "b|<kind>|<protocol>|<chain>@<hour bucket>" -> [[epoch s, tvl_usd], ...]  points (pipeline.series)
#   "i|<kind>|<protocol>|<chain>#<group>"       -> [bucket, ...]              non-empty buckets
#   "l|<kind>|<protocol>|<chain>"               -> {"ts", "offset", "value"}  the latest point
tvl_state = table("tvl_state")
