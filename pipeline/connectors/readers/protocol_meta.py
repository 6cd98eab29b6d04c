"""Reader of DeFiLlama's /protocols export: one ``protocols.meta`` record per protocol (slug, category)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from pipeline.connectors.readers import ReplayRecord
from pipeline.records import ProtocolMeta

__all__ = ["read_protocol_meta", "slugify"]


def slugify(name: str) -> str:
    """DeFiLlama's slug of a protocol name: lower case, spaces to dashes (``Aave V3`` -> ``aave-v3``)."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.strip().lower()).strip("-")
    return slug or "protocol"


def read_protocol_meta(path: Path) -> Iterator[ReplayRecord]:
    """Every protocol of the export; its ``ts`` is the export's date (in the file name, else its mtime)."""
    match = re.search(r"(\d{4}-\d{2}-\d{2})", path.name)
    when = datetime.strptime(match.group(1), "%Y-%m-%d").replace(tzinfo=UTC).timestamp() if match else 0.0
    for entry in json.loads(path.read_bytes()):
        chains = [c for c in entry.get("chains") or [] if isinstance(c, str)]
        try:
            meta = ProtocolMeta(
                name=entry["name"],
                slug=entry.get("slug") or slugify(entry["name"]),
                category=entry.get("category") or None,
                chains=chains,
                symbol=entry.get("symbol") if entry.get("symbol") not in ("", "-") else None,
                url=entry.get("url") or None,
            )
        except ValidationError:
            # A handful of entries carry chain names outside our pattern; the rest of the export is good.
            continue
        yield ReplayRecord(when, "protocols.meta", meta.name, meta.model_dump())
