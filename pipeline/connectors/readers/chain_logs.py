"""Reader of raw EVM log CSVs (demeter-fetch exports under chain/univ3_*) as ``raw.chain`` replay records."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pipeline.connectors.readers import ReplayRecord
from pipeline.records import iso

__all__ = ["NONFUNGIBLE_POSITION_MANAGER", "RAW_LOG_COLUMNS", "contract_address", "read_raw_logs"]

TOPIC: Final = "raw.chain"
RAW_LOG_COLUMNS: Final = (
    "block_number",
    "block_timestamp",
    "transaction_hash",
    "transaction_index",
    "log_index",
    "topics",
    "data",
)
# Uniswap v3 NonfungiblePositionManager on Ethereum: the "uniswap-proxy-lp" files hold its logs only
# (IncreaseLiquidity, DecreaseLiquidity, Collect(tokenId,...)), and the CSV has no address column.
NONFUNGIBLE_POSITION_MANAGER: Final = "0xc36442b4a4522e871399cd717abdd847ab11fe88"
_NAMED_CONTRACTS: Final = {"uniswap-proxy-lp": NONFUNGIBLE_POSITION_MANAGER}
_FILE_NAME: Final = re.compile(
    r"^[a-z0-9_]+-(?P<contract>0x[0-9a-fA-F]{40}|uniswap-proxy-lp)-\d{4}-\d{2}-\d{2}\.raw\.csv$"
)
_ADDRESS_IN_NAME: Final = re.compile(r"0x[0-9a-fA-F]{40}")
_SOURCE_MAX: Final = 64  # RawLog.source max_length


def contract_address(file_name: str) -> str:
    """The emitting contract of a raw log file, which only its name tells (lowercase ``0x`` hex)."""
    match = _FILE_NAME.match(file_name)
    if match is None:
        raise ValueError(
            f"{file_name}: not a raw log file name (<chain>-<0xaddress|uniswap-proxy-lp>-<day>.raw.csv)"
        )
    contract = match["contract"]
    return _NAMED_CONTRACTS.get(contract, contract).lower()


def _source(file_name: str) -> str:
    source = f"replay:{file_name}"
    if len(source) <= _SOURCE_MAX:
        return source
    # The full address is in the record already; abbreviated, the file stays recognisable in 64 chars.
    short = _ADDRESS_IN_NAME.sub(lambda m: m[0][:10], file_name)
    return f"replay:{short}"[:_SOURCE_MAX]


def _topics(text: str) -> list[str]:
    """``"['0xab..', '0xcd..']"`` as a list, without eval."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        raise ValueError(f"topics is not a bracketed list: {text[:80]!r}")
    inner = text[1:-1].strip()
    return [part.strip().strip("'\"") for part in inner.split(",")] if inner else []


def _epoch(text: str) -> float:
    when = datetime.fromisoformat(text)
    if when.tzinfo is not None:
        raise ValueError(f"block_timestamp {text!r} carries a zone; the files hold naive UTC")
    return when.replace(tzinfo=UTC).timestamp()


def _columns(header: list[str] | None, file_name: str) -> dict[str, int]:
    if header is None or set(header) != set(RAW_LOG_COLUMNS) or len(header) != len(RAW_LOG_COLUMNS):
        raise ValueError(f"{file_name}: header {header} is not the raw log columns {list(RAW_LOG_COLUMNS)}")
    return {name: header.index(name) for name in RAW_LOG_COLUMNS}


def _value(row: list[str], col: dict[str, int], ts: float, common: dict[str, Any]) -> dict[str, Any]:
    return {
        **common,
        "ts": iso(ts),
        "block_number": int(row[col["block_number"]]),
        "tx_hash": row[col["transaction_hash"]].lower(),
        "tx_index": int(row[col["transaction_index"]]),
        "log_index": int(row[col["log_index"]]),
        "topics": _topics(row[col["topics"]]),
        "data": row[col["data"]],
    }


def read_raw_logs(path: Path, chain: str = "Ethereum") -> Iterator[ReplayRecord]:
    """Stream a raw log CSV in file order, which must be (block_number, log_index) order."""
    address = contract_address(path.name)
    common: dict[str, Any] = {
        "source": _source(path.name),
        "chain": chain,
        "address": address,
        "block_hash": None,  # not exported in these files
        "removed": False,
    }
    key = f"{chain}|{address}"
    previous: tuple[int, int] = (-1, -1)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        col = _columns(next(rows, None), path.name)
        for line, row in enumerate(rows, start=2):
            try:
                ts = _epoch(row[col["block_timestamp"]])
                value = _value(row, col, ts, common)
            except (ValueError, IndexError) as exc:
                raise ValueError(f"{path.name}:{line}: {exc}") from exc
            position = (value["block_number"], value["log_index"])
            # Consumers key reorg and ordering logic on this; a file out of order must not replay silently.
            if position <= previous:
                raise ValueError(f"{path.name}:{line}: (block, log_index) {position} not after {previous}")
            previous = position
            yield ReplayRecord(ts=ts, topic=TOPIC, key=key, value=value)
