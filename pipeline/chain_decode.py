"""Pure decoding of EVM logs (Uniswap v2/v3 pools, ERC-20/ERC-721 Transfer) into ``ChainEvent`` dicts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from pipeline.records import ChainEvent, RawLog, iso

__all__ = [
    "EVENTS",
    "TOPIC0",
    "AbiType",
    "EventSpec",
    "Param",
    "decode_log",
    "decode_word",
    "json_ready_args",
]

_WORD_BYTES: Final = 32
_WORD_HEX: Final = 2 * _WORD_BYTES
_ADDRESS_PAD: Final = bytes(_WORD_BYTES - 20)


@dataclass(frozen=True, slots=True)
class AbiType:
    """A static ABI value type that fits one 32-byte word: ``address``, ``uintN`` or ``intN``."""

    name: str
    is_address: bool
    signed: bool
    low: int
    high: int

    @classmethod
    def parse(cls, name: str) -> AbiType:
        if name == "address":
            return cls(name, is_address=True, signed=False, low=0, high=2**160 - 1)
        signed = name.startswith("int")
        digits = name[3:] if signed else name.removeprefix("uint")
        bits = int(digits) if digits.isdigit() else 0
        if digits == name or not (bits % 8 == 0 and 8 <= bits <= 256):
            raise ValueError(f"unsupported ABI type {name!r}: only address, uintN and intN are decoded")
        if signed:
            return cls(name, is_address=False, signed=True, low=-(2 ** (bits - 1)), high=2 ** (bits - 1) - 1)
        return cls(name, is_address=False, signed=False, low=0, high=2**bits - 1)


def decode_word(abi_type: AbiType, word: bytes) -> int | str:
    """One ABI word as a Python int (two's complement for ``intN``) or a lowercase ``0x`` address."""
    if len(word) != _WORD_BYTES:
        raise ValueError(f"{abi_type.name} needs a {_WORD_BYTES}-byte word, got {len(word)} bytes")
    if abi_type.is_address:
        # A clean ABI encoder zero-pads addresses; dirty high bytes mean the log is not what the ABI says.
        if word[:12] != _ADDRESS_PAD:
            raise ValueError(f"address word has non-zero high bytes: 0x{word.hex()}")
        return "0x" + word[12:].hex()
    value = int.from_bytes(word, "big", signed=abi_type.signed)
    # Narrow types must arrive sign- or zero-extended; anything else is corrupt data, not a big number.
    if not abi_type.low <= value <= abi_type.high:
        raise ValueError(f"word 0x{word.hex()} is out of range for {abi_type.name}")
    return value


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: str
    indexed: bool = False


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One event ABI: params in declaration order, which is the order of ``args`` and of the signature."""

    protocol: str
    name: str
    params: tuple[Param, ...]

    @property
    def signature(self) -> str:
        return f"{self.name}({','.join(p.type for p in self.params)})"

    @property
    def topic_count(self) -> int:
        return 1 + sum(p.indexed for p in self.params)

    @property
    def data_words(self) -> int:
        return sum(not p.indexed for p in self.params)

    @property
    def label(self) -> str:
        return f"{self.protocol} {self.name}"


def _p(name: str, abi_type: str, indexed: bool = False) -> Param:
    return Param(name, abi_type, indexed)


# keccak-256 of each signature, checked against a real keccak in the unit tests.
TOPIC0: Final[dict[str, str]] = {
    "Swap(address,address,int256,int256,uint160,uint128,int24)": (
        "0xc42079f94a6350d7e6235f29174924f928cc2ac818eb64fed8004e115fbcca67"
    ),
    "Mint(address,address,int24,int24,uint128,uint256,uint256)": (
        "0x7a53080ba414158be7ec69b987b5fb7d07dee101fe85488f0853ae16239d0bde"
    ),
    "Burn(address,int24,int24,uint128,uint256,uint256)": (
        "0x0c396cd989a39f4459b5fa1aed6a9a8dcdbc45908acfd67e028cd568da98982c"
    ),
    "Collect(address,address,int24,int24,uint128,uint128)": (
        "0x70935338e69775456a85ddef226c395fb668b63fa0115f5f20610b388e6ca9c0"
    ),
    "Swap(address,uint256,uint256,uint256,uint256,address)": (
        "0xd78ad95fa46c994b6551d0da85fc275fe613ce37657fb8d5e3d130840159d822"
    ),
    "Mint(address,uint256,uint256)": "0x4c209b5fc8ad50758f13e2e1088ba56a560dff690a1c6fef26394f4c03821c4f",
    "Burn(address,uint256,uint256,address)": (
        "0xdccd412f0b1252819cb1fd330b93224ca42612892bb3f4f789976e6d81936496"
    ),
    "Sync(uint112,uint112)": "0x1c411e9a96e071241c2f21f7726b17ae89e3cab4c78be50e062b03a9fffbbad1",
    # ERC-20 and ERC-721 share this signature; only the number of indexed params tells them apart.
    "Transfer(address,address,uint256)": "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef",
}

# The v2 labels cover every fork that kept the UniswapV2Pair ABI: SushiSwap and others emit the same topic0.
EVENTS: Final[tuple[EventSpec, ...]] = (
    EventSpec(
        "uniswap_v3",
        "Swap",
        (
            _p("sender", "address", True),
            _p("recipient", "address", True),
            _p("amount0", "int256"),
            _p("amount1", "int256"),
            _p("sqrtPriceX96", "uint160"),
            _p("liquidity", "uint128"),
            _p("tick", "int24"),
        ),
    ),
    EventSpec(
        "uniswap_v3",
        "Mint",
        (
            _p("sender", "address"),
            _p("owner", "address", True),
            _p("tickLower", "int24", True),
            _p("tickUpper", "int24", True),
            _p("amount", "uint128"),
            _p("amount0", "uint256"),
            _p("amount1", "uint256"),
        ),
    ),
    EventSpec(
        "uniswap_v3",
        "Burn",
        (
            _p("owner", "address", True),
            _p("tickLower", "int24", True),
            _p("tickUpper", "int24", True),
            _p("amount", "uint128"),
            _p("amount0", "uint256"),
            _p("amount1", "uint256"),
        ),
    ),
    EventSpec(
        "uniswap_v3",
        "Collect",
        (
            _p("owner", "address", True),
            _p("recipient", "address"),
            _p("tickLower", "int24", True),
            _p("tickUpper", "int24", True),
            _p("amount0", "uint128"),
            _p("amount1", "uint128"),
        ),
    ),
    EventSpec(
        "uniswap_v2",
        "Swap",
        (
            _p("sender", "address", True),
            _p("amount0In", "uint256"),
            _p("amount1In", "uint256"),
            _p("amount0Out", "uint256"),
            _p("amount1Out", "uint256"),
            _p("to", "address", True),
        ),
    ),
    EventSpec(
        "uniswap_v2",
        "Mint",
        (_p("sender", "address", True), _p("amount0", "uint256"), _p("amount1", "uint256")),
    ),
    EventSpec(
        "uniswap_v2",
        "Burn",
        (
            _p("sender", "address", True),
            _p("amount0", "uint256"),
            _p("amount1", "uint256"),
            _p("to", "address", True),
        ),
    ),
    EventSpec("uniswap_v2", "Sync", (_p("reserve0", "uint112"), _p("reserve1", "uint112"))),
    EventSpec(
        "erc20",
        "Transfer",
        (_p("from", "address", True), _p("to", "address", True), _p("value", "uint256")),
    ),
    EventSpec(
        "erc721",
        "Transfer",
        (_p("from", "address", True), _p("to", "address", True), _p("tokenId", "uint256", True)),
    ),
)


@dataclass(frozen=True, slots=True)
class _Compiled:
    """An ``EventSpec`` with types parsed and word positions resolved once, at import."""

    spec: EventSpec
    # (arg name, type, index into topics[1:] + data words) in declaration order.
    fields: tuple[tuple[str, AbiType, int], ...]
    topic_count: int
    data_hex_digits: int

    @classmethod
    def of(cls, spec: EventSpec) -> _Compiled:
        n_indexed = spec.topic_count - 1
        next_topic, next_word, fields = 0, n_indexed, []
        for param in spec.params:
            if param.indexed:
                fields.append((param.name, AbiType.parse(param.type), next_topic))
                next_topic += 1
            else:
                fields.append((param.name, AbiType.parse(param.type), next_word))
                next_word += 1
        return cls(spec, tuple(fields), spec.topic_count, spec.data_words * _WORD_HEX)

    def decode_args(self, topics: Sequence[str], data: str) -> dict[str, int | str]:
        words = [*(_topic_word(self.spec, i, t) for i, t in enumerate(topics[1:], 1)), *self._data(data)]
        args: dict[str, int | str] = {}
        for name, abi_type, index in self.fields:
            try:
                args[name] = decode_word(abi_type, words[index])
            except ValueError as exc:
                raise ValueError(f"{self.spec.label}: {name}: {exc}") from exc
        return args

    def _data(self, data: str) -> list[bytes]:
        digits = len(data) - 2
        if digits != self.data_hex_digits:
            raise ValueError(
                f"{self.spec.label}: data has {digits} hex digits, the ABI wants {self.data_hex_digits}"
                f" ({self.spec.data_words} words of {_WORD_BYTES} bytes)"
            )
        raw = _hex_bytes(self.spec, "data", data)
        return [raw[i : i + _WORD_BYTES] for i in range(0, len(raw), _WORD_BYTES)]


def _topic_word(spec: EventSpec, position: int, topic: str) -> bytes:
    if len(topic) != 2 + _WORD_HEX:
        raise ValueError(f"{spec.label}: topic {position} has {len(topic) - 2} hex digits, want {_WORD_HEX}")
    return _hex_bytes(spec, f"topic {position}", topic)


def _hex_bytes(spec: EventSpec, what: str, text: str) -> bytes:
    if not text.startswith(("0x", "0X")):
        raise ValueError(f"{spec.label}: {what} is not 0x-prefixed hex")
    try:
        return bytes.fromhex(text[2:])
    except ValueError as exc:
        raise ValueError(f"{spec.label}: {what} is not valid hex: {exc}") from exc


def _build_registry(events: Sequence[EventSpec]) -> dict[str, dict[int, _Compiled]]:
    registry: dict[str, dict[int, _Compiled]] = {}
    for spec in events:
        topic0 = TOPIC0[spec.signature]  # a KeyError here is a spec without its hash: fail at import
        by_count = registry.setdefault(topic0, {})
        if spec.topic_count in by_count:
            raise RuntimeError(f"two event specs share topic0 {topic0} and {spec.topic_count} topics")
        by_count[spec.topic_count] = _Compiled.of(spec)
    return registry


_REGISTRY: Final = _build_registry(EVENTS)


def _wrong_topic_count(by_count: dict[int, _Compiled], got: int) -> ValueError:
    wanted = " or ".join(f"{n} ({c.spec.label})" for n, c in sorted(by_count.items()))
    names = " / ".join(c.spec.label for c in by_count.values())
    return ValueError(f"{names}: log has {got} topics, the ABI wants {wanted}")


def decode_log(log: RawLog) -> ChainEvent | None:
    """Decode one log; ``None`` if its topic0 is not a known event, ``ValueError`` if it is malformed."""
    if not log.topics:
        return None  # anonymous events have no topic0 to identify them
    by_count = _REGISTRY.get(log.topics[0].lower())
    if by_count is None:
        return None
    compiled = by_count.get(len(log.topics))
    if compiled is None:
        raise _wrong_topic_count(by_count, len(log.topics))
    return {
        "chain": log.chain,
        "block_number": log.block_number,
        "block_hash": log.block_hash,
        "tx_hash": log.tx_hash,
        "tx_index": log.tx_index,
        "log_index": log.log_index,
        "address": log.address.lower(),
        "protocol": compiled.spec.protocol,
        "event": compiled.spec.name,
        "args": compiled.decode_args(log.topics, log.data),
        "removed": log.removed,
        "as_of": iso(log.ts.timestamp()),
    }


_BY_NAME: Final = {
    (compiled.spec.protocol, compiled.spec.name): compiled
    for by_count in _REGISTRY.values()
    for compiled in by_count.values()
}
_JSON_SAFE_MAX: Final = 2**53


def json_ready_args(event: ChainEvent) -> dict[str, int | str]:
    """Args whose ABI type can exceed 2**53 as decimal strings, the rest as numbers.

    Decided by type, not by value, so a field has one JSON type in every message: JSON readers such as
    JavaScript lose precision past 2**53, and orjson refuses integers past 64 bits.
    """
    compiled = _BY_NAME[(event["protocol"], event["event"])]
    args = event["args"]
    return {
        name: str(args[name]) if abi_type.high > _JSON_SAFE_MAX and not abi_type.is_address else args[name]
        for name, abi_type, _ in compiled.fields
    }
