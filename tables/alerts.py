"""Table of the alert evaluator."""

from pipeline.app import table

__all__ = ["alert_state"]

# One table, so the writes one input row makes reach one changelog partition in order (see
# pipeline/alerting/engine.py for the keys):
#   "f|<fingerprint>" -> an alert instance that is not plainly normal
#   "s|<series>"      -> the series' last applied offset and row, its open instances and the trailing
#                        history of each metric its rules use (written last: one message per row)
alert_state = table("alert_state")
