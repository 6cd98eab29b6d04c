"""``/protocols``' JSON, rebuilt from one serialised fragment per protocol.

At 1,000 updates a second over 5,000+ protocols most of the list is the same from one rebuild (once a
second, ``web.list_bodies``) to the next, yet building it whole held the event loop ~50 ms each time, and
every request arriving meanwhile waited (the sidecar bench's ``/protocols`` p99). Here a protocol's
fragment is serialised again only when its total row, its chain rows or its metadata differ from those it
was made from (compared as tuples: an unchanged row is the same object, found equal at once). The
fragment is a function of exactly those, so an equal source means an equal fragment. The one in-place
change the replica makes to a held row (a recategorisation, ``web/replica.py``) comes with new metadata,
which differs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from web.defillama import group_protocols, list_order, protocol_entry

__all__ = ["ProtocolsBody"]


@dataclass(slots=True)
class _Fragment:
    sources: tuple[object, ...]  # the total row, the metadata, then each chain row: what it was made from
    order: tuple[float, str]
    json: bytes


class ProtocolsBody:
    """The body of one view (live or delayed); ``build`` gives the bytes ``protocols_list`` would."""

    def __init__(self) -> None:
        self._fragments: dict[str, _Fragment] = {}

    def build(self, rows: Iterable[Mapping[str, Any]], metadata: Mapping[str, Mapping[str, Any]]) -> bytes:
        fragments: dict[str, _Fragment] = {}
        for name, group in group_protocols(rows).items():
            if group.total is None:
                continue  # no total: not listed (see defillama.protocols_list)
            meta = metadata.get(name)
            sources = (group.total, meta, *group.chains.values())
            known = self._fragments.get(name)
            if known is not None and known.sources == sources:
                fragments[name] = known
                continue
            entry = protocol_entry(name, group, meta)
            fragments[name] = _Fragment(sources, list_order(entry), orjson.dumps(entry))
        self._fragments = fragments
        ordered = sorted(fragments.values(), key=lambda fragment: fragment.order)
        return b"[" + b",".join(fragment.json for fragment in ordered) + b"]"
