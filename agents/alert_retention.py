"""Timer: deletes alert rows older than LLAMA_ALERTS_RETENTION_HOURS (pipeline/alerting/retention.py).

Every worker runs it; the batches lock rows with SKIP LOCKED, so workers running it at once share the
work instead of waiting on each other."""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError

from pipeline.alerting.retention import run_retention
from pipeline.app import app, settings

__all__ = ["purge_alerts"]

log = logging.getLogger(__name__)


# faust sleeps one interval before the first run: a starting worker does not begin with a sweep. (Its
# decorator is typed as a bare Callable, hence the ignore.)
@app.timer(interval=settings.alerts_retention_interval_s)  # type: ignore[untyped-decorator]
async def purge_alerts() -> None:
    try:
        await run_retention(settings)
    except (SQLAlchemyError, OSError) as err:
        # Rows only wait for the next run; a worker must not die because PostgreSQL is restarting.
        log.warning("alert retention skipped, the SQL store failed: %s", err)
