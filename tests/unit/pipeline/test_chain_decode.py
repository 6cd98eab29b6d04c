"""Tests of EVM log decoding and of the raw log CSV reader, on handcrafted logs and the real chain data."""

from __future__ import annotations

import csv
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from Crypto.Hash import keccak

from pipeline.chain_decode import EVENTS, TOPIC0, AbiType, decode_log, decode_word
from pipeline.connectors.readers.chain_logs import (
    NONFUNGIBLE_POSITION_MANAGER,
    contract_address,
    read_raw_logs,
)
from pipeline.records import ChainEvent, RawLog, iso

UNIV3_DAY = "chain/univ3_2024-01-05"
USDC_WETH_005 = "0x88e6a0c2ddd26feeb64f039a2c41296fcb3f5640"
USDC_WETH_030 = "0x8ad599c3a0ff1de082011efddc58f1908eb6e6d8"
# 0x88e6 counts are the README's; 0x8ad5 counts were read off its twin and are pinned so drift is noticed.
TWIN_COUNTS = {
    USDC_WETH_005: Counter(SWAP=6046, MINT=54, BURN=69, COLLECT=65),
    USDC_WETH_030: Counter(SWAP=267, MINT=4, BURN=17, COLLECT=16),
}
TX_TYPE_EVENT = {"SWAP": "Swap", "MINT": "Mint", "BURN": "Burn", "COLLECT": "Collect"}
RPC_SMALL = "chain/rpc_fixtures/test_stream/blocks_1755634_1755635"
RPC_BLOCKS = "chain/rpc_fixtures/test_stream/blocks_17173049_17173050"

SWAP_V3 = TOPIC0["Swap(address,address,int256,int256,uint160,uint128,int24)"]
MINT_V3 = TOPIC0["Mint(address,address,int24,int24,uint128,uint256,uint256)"]
SWAP_V2 = TOPIC0["Swap(address,uint256,uint256,uint256,uint256,address)"]
SYNC_V2 = TOPIC0["Sync(uint112,uint112)"]
TRANSFER = TOPIC0["Transfer(address,address,uint256)"]
ALICE = "0x" + "a1" * 20
BOB = "0x" + "b0" * 20
POOL = "0x" + "5e" * 20


def word(value: int) -> str:
    """One ABI word as 64 hex digits, two's complement for negatives."""
    return (value % 2**256).to_bytes(32, "big").hex()


def address_word(address: str) -> str:
    return "0" * 24 + address.removeprefix("0x")


def topic(hex_digits: str) -> str:
    return "0x" + hex_digits


def make_log(topics: list[str], data: str, address: str = POOL, **extra: Any) -> RawLog:
    fields: dict[str, Any] = {
        "ts": "2024-01-05T00:00:23Z",
        "source": "test",
        "chain": "Ethereum",
        "block_number": 18937382,
        "tx_hash": "0x" + "ab" * 32,
        "tx_index": 33,
        "log_index": 169,
        "address": address,
        "topics": topics,
        "data": data,
    }
    return RawLog.model_validate({**fields, **extra})


def decoded(log: RawLog) -> ChainEvent:
    event = decode_log(log)
    assert event is not None, f"{log.topics[:1]} was not recognised"
    return event


def v3_swap_log(amount0: int, amount1: int, sqrt_price: int, liquidity: int, tick: int) -> RawLog:
    data = "0x" + "".join(word(v) for v in (amount0, amount1, sqrt_price, liquidity, tick))
    return make_log([SWAP_V3, topic(address_word(ALICE)), topic(address_word(BOB))], data)


# ---- registry ----


def test_topic0_constants_are_the_keccak_of_their_signatures() -> None:
    for signature, topic0 in TOPIC0.items():
        assert topic0 == "0x" + keccak.new(digest_bits=256, data=signature.encode()).hexdigest(), signature


def test_every_spec_has_a_topic0_and_every_topic0_a_spec() -> None:
    assert {spec.signature for spec in EVENTS} == set(TOPIC0)


def test_abi_type_parsing_rejects_what_the_decoder_cannot_read() -> None:
    assert AbiType.parse("int24").low == -(2**23)
    assert AbiType.parse("uint112").high == 2**112 - 1
    for bad in ("bool", "bytes32", "uint", "int7", "uint264", "string"):
        with pytest.raises(ValueError, match="unsupported ABI type"):
            AbiType.parse(bad)


# ---- the generic word decoder ----


def test_signed_words_are_twos_complement() -> None:
    assert decode_word(AbiType.parse("int24"), bytes.fromhex(word(-1))) == -1
    assert decode_word(AbiType.parse("int24"), bytes.fromhex(word(-887272))) == -887272
    assert decode_word(AbiType.parse("int256"), bytes.fromhex(word(-(2**255)))) == -(2**255)
    assert decode_word(AbiType.parse("uint256"), bytes.fromhex(word(-1))) == 2**256 - 1


def test_narrow_words_that_are_not_properly_extended_are_rejected() -> None:
    with pytest.raises(ValueError, match="out of range for int24"):
        decode_word(AbiType.parse("int24"), bytes.fromhex(word(2**23)))
    with pytest.raises(ValueError, match="out of range for uint128"):
        decode_word(AbiType.parse("uint128"), bytes.fromhex(word(2**128)))
    with pytest.raises(ValueError, match="non-zero high bytes"):
        decode_word(AbiType.parse("address"), bytes.fromhex("ff" + address_word(ALICE)[2:]))
    with pytest.raises(ValueError, match="32-byte word"):
        decode_word(AbiType.parse("uint256"), bytes(31))


# ---- handcrafted logs ----


def test_v3_swap_decodes_negative_amount_and_negative_tick() -> None:
    # MIN_TICK and MIN_SQRT_RATIO of Uniswap v3: the extreme of the signed and unsigned ranges used.
    event = decoded(v3_swap_log(-22686110, 10**40, 4295128739, 2**128 - 1, -887272))
    assert (event["protocol"], event["event"]) == ("uniswap_v3", "Swap")
    assert event["args"] == {
        "sender": ALICE,
        "recipient": BOB,
        "amount0": -22686110,
        "amount1": 10**40,
        "sqrtPriceX96": 4295128739,
        "liquidity": 2**128 - 1,
        "tick": -887272,
    }
    assert list(event["args"]) == [p.name for p in EVENTS[0].params]  # declaration order


def test_v3_mint_decodes_negative_ticks_from_indexed_topics() -> None:
    topics = [MINT_V3, topic(address_word(BOB)), topic(word(-200)), topic(word(-100))]
    data = "0x" + address_word(ALICE) + word(10**20) + word(5) + word(2**200)
    event = decoded(make_log(topics, data))
    assert event["args"] == {
        "sender": ALICE,
        "owner": BOB,
        "tickLower": -200,
        "tickUpper": -100,
        "amount": 10**20,
        "amount0": 5,
        "amount1": 2**200,
    }


def test_chain_event_envelope() -> None:
    checksummed = "0x88e6A0c2dDD26FEEb64F039a2c41296FcB3f5640"
    log = make_log(
        [SWAP_V3.upper().replace("0X", "0x"), topic(address_word(ALICE)), topic(address_word(BOB))],
        v3_swap_log(1, -1, 1, 1, 1).data,
        address=checksummed,
        block_hash="0x" + "cd" * 32,
        removed=True,
    )
    event = decoded(log)
    assert set(event) == set(ChainEvent.__annotations__)
    assert event["address"] == checksummed.lower()
    assert event["as_of"] == "2024-01-05T00:00:23Z"
    assert (event["chain"], event["block_number"], event["tx_index"], event["log_index"]) == (
        "Ethereum",
        18937382,
        33,
        169,
    )
    assert event["tx_hash"] == "0x" + "ab" * 32
    assert event["block_hash"] == "0x" + "cd" * 32
    assert event["removed"] is True


def test_erc20_transfer_from_a_handcrafted_log() -> None:
    log = make_log([TRANSFER, topic(address_word(ALICE)), topic(address_word(BOB))], "0x" + word(2**255 + 7))
    event = decoded(log)
    assert (event["protocol"], event["event"]) == ("erc20", "Transfer")
    assert event["args"] == {"from": ALICE, "to": BOB, "value": 2**255 + 7}


def test_erc721_transfer_is_named_apart_from_erc20() -> None:
    topics = [TRANSFER, topic(address_word(ALICE)), topic(address_word(BOB)), topic(word(894))]
    event = decoded(make_log(topics, "0x"))
    assert (event["protocol"], event["event"]) == ("erc721", "Transfer")
    assert event["args"] == {"from": ALICE, "to": BOB, "tokenId": 894}


def test_v2_swap_from_a_handcrafted_log() -> None:
    data = "0x" + word(0) + word(7056176614974947328) + word(150188698577042438264952193024) + word(0)
    event = decoded(make_log([SWAP_V2, topic(address_word(ALICE)), topic(address_word(BOB))], data))
    assert (event["protocol"], event["event"]) == ("uniswap_v2", "Swap")
    assert event["args"] == {
        "sender": ALICE,
        "amount0In": 0,
        "amount1In": 7056176614974947328,
        "amount0Out": 150188698577042438264952193024,
        "amount1Out": 0,
        "to": BOB,
    }


def test_v2_mint_burn_and_sync_from_handcrafted_logs() -> None:
    mint_topics = [TOPIC0["Mint(address,uint256,uint256)"], topic(address_word(ALICE))]
    mint = decoded(make_log(mint_topics, "0x" + word(1) + word(2)))
    assert (mint["protocol"], mint["event"], mint["args"]) == (
        "uniswap_v2",
        "Mint",
        {"sender": ALICE, "amount0": 1, "amount1": 2},
    )
    burn_topic0 = TOPIC0["Burn(address,uint256,uint256,address)"]
    burn_topics = [burn_topic0, topic(address_word(ALICE)), topic(address_word(BOB))]
    burn = decoded(make_log(burn_topics, "0x" + word(3) + word(4)))
    assert burn["args"] == {"sender": ALICE, "amount0": 3, "amount1": 4, "to": BOB}
    sync = decoded(make_log([SYNC_V2], "0x" + word(2**112 - 1) + word(0)))
    assert (sync["event"], sync["args"]) == ("Sync", {"reserve0": 2**112 - 1, "reserve1": 0})
    with pytest.raises(ValueError, match=r"uniswap_v2 Sync: reserve0: .*out of range for uint112"):
        decode_log(make_log([SYNC_V2], "0x" + word(2**112) + word(0)))


# ---- unknown and malformed logs ----


def test_unknown_topic0_and_anonymous_logs_are_not_decoded() -> None:
    # NonfungiblePositionManager.IncreaseLiquidity: real, but not in the registry.
    unknown = "0x3067048beee31b25b2f1681f88dac838c8bba36af25bfb2b7cf7473a5847e35f"
    assert decode_log(make_log([unknown, topic(word(1))], "0x" + word(1) * 3)) is None
    assert decode_log(make_log([], "0x")) is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (lambda d: d[:-64], r"uniswap_v3 Swap: data has 256 hex digits, the ABI wants 320 \(5 words"),
        (lambda d: d[:-2], r"uniswap_v3 Swap: data has 318 hex digits, the ABI wants 320"),
        (lambda d: d + "00" * 32, r"uniswap_v3 Swap: data has 384 hex digits, the ABI wants 320"),
        (lambda d: d[:-1], r"uniswap_v3 Swap: data has 319 hex digits"),
        (lambda d: d[:-64] + word(2**23), r"uniswap_v3 Swap: tick: .*out of range for int24"),
    ],
    ids=["one-word-short", "one-byte-short", "one-word-long", "odd-digits", "tick-not-int24"],
)
def test_malformed_data_names_the_event(data: Any, message: str) -> None:
    good = v3_swap_log(-1, 1, 2**96, 10**18, -5)
    log = make_log(good.topics, data(good.data))
    with pytest.raises(ValueError, match=message):
        decode_log(log)


def test_wrong_topic_count_names_the_event() -> None:
    with pytest.raises(ValueError, match=r"uniswap_v3 Swap: log has 2 topics, the ABI wants 3"):
        decode_log(make_log([SWAP_V3, topic(address_word(ALICE))], v3_swap_log(1, 1, 1, 1, 1).data))
    both = r"erc20 Transfer / erc721 Transfer: log has 1 topics, the ABI wants 3 \(erc20.*\) or 4 \(erc721"
    with pytest.raises(ValueError, match=both):
        decode_log(make_log([TRANSFER], "0x" + word(1) * 3))


def test_dirty_address_topic_names_the_event_and_field() -> None:
    dirty = topic("01" + address_word(ALICE)[2:])
    with pytest.raises(ValueError, match=r"erc20 Transfer: from: address word has non-zero high bytes"):
        decode_log(make_log([TRANSFER, dirty, topic(address_word(BOB))], "0x" + word(1)))


def test_short_topic_names_the_event() -> None:
    with pytest.raises(ValueError, match=r"erc20 Transfer: topic 2 has 40 hex digits, want 64"):
        decode_log(make_log([TRANSFER, topic(address_word(ALICE)), BOB], "0x" + word(1)))


# ---- real data: the Uniswap v3 day against its decoded twin ----


def _twin(path: Path) -> dict[tuple[str, int], dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    twin = {(row["transaction_hash"], int(row["log_index"])): row for row in rows}
    assert len(twin) == len(rows), f"{path.name}: duplicate (transaction_hash, log_index)"
    return twin


def _tick(text: str) -> int:
    # The twin writes ticks as floats ("199045.0"); a fractional tick would be a twin bug worth seeing.
    value = float(text)
    assert value.is_integer(), text
    return int(value)


def _expected(row: dict[str, str]) -> dict[str, Any]:
    """The twin columns that the log itself carries, under the names the decoder uses."""
    tx_type = row["tx_type"]
    common = {
        "event": TX_TYPE_EVENT[tx_type],
        "block_number": int(row["block_number"]),
        "tx_index": int(row["tx_index"]),
        "as_of": iso(datetime.fromisoformat(row["block_timestamp"]).replace(tzinfo=UTC).timestamp()),
        "amount0": int(row["amount0"]),
        "amount1": int(row["amount1"]),
    }
    if tx_type == "SWAP":
        # For swaps the pool's active liquidity after the swap is in total_liquidity; `liquidity` is empty.
        return {
            **common,
            "sender": row["sender"],
            "recipient": row["receipt"],
            "sqrtPriceX96": int(row["sqrtPriceX96"]),
            "tick": _tick(row["current_tick"]),
            "liquidity": int(row["total_liquidity"]),
            "position_columns": (row["tick_lower"], row["tick_upper"], row["liquidity"]),
        }
    position = {**common, "tickLower": _tick(row["tick_lower"]), "tickUpper": _tick(row["tick_upper"])}
    receipt = {"receipt": row["receipt"]}  # empty for MINT/BURN: their logs have no recipient
    if tx_type == "MINT":
        # Twin `sender` is Mint's non-indexed sender (the caller), not the indexed owner (8 rows differ).
        return {**position, "sender": row["sender"], "amount": int(row["liquidity"]), **receipt}
    if tx_type == "BURN":
        return {**position, "owner": row["sender"], "amount": int(row["liquidity"]), **receipt}
    # COLLECT leaves `liquidity` empty: collecting moves owed tokens, not liquidity.
    return {**position, "owner": row["sender"], "recipient": row["receipt"], "liquidity": row["liquidity"]}


def _actual(event: ChainEvent) -> dict[str, Any]:
    args = event["args"]
    common = {
        "event": event["event"],
        "block_number": event["block_number"],
        "tx_index": event["tx_index"],
        "as_of": event["as_of"],
        "amount0": args["amount0"],
        "amount1": args["amount1"],
    }
    if event["event"] == "Swap":
        names = ("sender", "recipient", "sqrtPriceX96", "tick", "liquidity")
        return {**common, **{n: args[n] for n in names}, "position_columns": ("", "", "")}
    position = {**common, "tickLower": args["tickLower"], "tickUpper": args["tickUpper"]}
    if event["event"] == "Mint":
        return {**position, "sender": args["sender"], "amount": args["amount"], "receipt": ""}
    if event["event"] == "Burn":
        return {**position, "owner": args["owner"], "amount": args["amount"], "receipt": ""}
    return {**position, "owner": args["owner"], "recipient": args["recipient"], "liquidity": ""}


@pytest.mark.parametrize("pool", [USDC_WETH_005, USDC_WETH_030])
def test_every_raw_log_reproduces_the_decoded_twin(data_dir: Path, pool: str) -> None:
    """Columns compared: tx_type, block_number, block_timestamp, tx_index, amount0, amount1, and per type
    SWAP sender, receipt, sqrtPriceX96, current_tick, total_liquidity (= Swap.liquidity);
    MINT sender (= Mint.sender), tick_lower, tick_upper, liquidity (= Mint.amount);
    BURN sender (= owner), tick_lower, tick_upper, liquidity (= Burn.amount);
    COLLECT sender (= owner), receipt (= recipient), tick_lower, tick_upper.
    Columns the log cannot give: total_liquidity and total_liquidity_delta of MINT/BURN/COLLECT (running pool
    state, and whether the range holds the current tick); sqrtPriceX96 and current_tick of MINT/BURN/COLLECT,
    which the twin carries over from the pool's previous swap: checked against the previous decoded Swap.
    """
    raw = data_dir / UNIV3_DAY / f"ethereum-{pool}-2024-01-05.raw.csv"
    twin = _twin(data_dir / UNIV3_DAY / f"ethereum-{pool}-2024-01-05.pool.tick.csv")
    twin_rows = len(twin)
    compared: Counter[str] = Counter()
    mismatches: list[str] = []
    last_swap: ChainEvent | None = None
    for record in read_raw_logs(raw):
        event = decoded(RawLog.model_validate(record.value))
        assert (event["protocol"], event["address"]) == ("uniswap_v3", pool)
        row = twin.pop((event["tx_hash"], event["log_index"]))
        expected, actual = _expected(row), _actual(event)
        if event["event"] == "Swap":
            last_swap = event
        else:
            assert last_swap is not None, "the twin carries pool state from a swap; none decoded yet"
            expected["carried"] = (int(row["sqrtPriceX96"]), _tick(row["current_tick"]))
            actual["carried"] = (last_swap["args"]["sqrtPriceX96"], last_swap["args"]["tick"])
        if expected != actual:
            diff = {k: (expected[k], actual.get(k)) for k in expected if expected[k] != actual.get(k)}
            mismatches.append(f"{event['tx_hash']}:{event['log_index']} twin vs decoded {diff}")
        compared[row["tx_type"]] += 1
    assert not mismatches, f"{len(mismatches)} rows differ, first: {mismatches[:3]}"
    assert not twin, f"{len(twin)} twin rows have no raw log, e.g. {next(iter(twin))}"
    assert compared == TWIN_COUNTS[pool]
    assert compared.total() == twin_rows


# ---- real data: ethereum-etl RPC fixtures ----


def _etl_log(item: dict[str, Any]) -> RawLog:
    return RawLog.model_validate(
        {
            "ts": item["block_timestamp"],
            "source": "test:ethereum-etl",
            "chain": "Ethereum",
            "block_number": item["block_number"],
            "block_hash": item["block_hash"],
            "tx_hash": item["transaction_hash"],
            "tx_index": item["transaction_index"],
            "log_index": item["log_index"],
            "address": item["address"],
            "topics": item["topics"],
            "data": item["data"],
        }
    )


def _json_lines(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def test_erc20_transfer_from_a_real_receipt(data_dir: Path) -> None:
    folder = data_dir / RPC_SMALL
    (receipt_path,) = folder.glob("web3_response.eth_getTransactionReceipt_0x2e3dcd05*.json")
    receipt = json.loads(receipt_path.read_text(encoding="utf-8"))["result"]
    (expected,) = _json_lines(folder / "expected_token_transfers.json")
    (rpc_log,) = [log for log in receipt["logs"] if int(log["logIndex"], 16) == expected["log_index"]]
    log = RawLog.model_validate(
        {
            "ts": expected["block_timestamp"],  # receipts carry no time; the block does
            "source": "test:rpc",
            "chain": "Ethereum",
            "block_number": int(rpc_log["blockNumber"], 16),
            "block_hash": rpc_log["blockHash"],
            "tx_hash": rpc_log["transactionHash"],
            "tx_index": int(rpc_log["transactionIndex"], 16),
            "log_index": int(rpc_log["logIndex"], 16),
            "address": rpc_log["address"],
            "topics": rpc_log["topics"],
            "data": rpc_log["data"],
            "removed": rpc_log["removed"],
        }
    )
    event = decoded(log)
    assert event == {
        "chain": "Ethereum",
        "block_number": expected["block_number"],
        "block_hash": expected["block_hash"],
        "tx_hash": expected["transaction_hash"],
        "tx_index": 0,
        "log_index": expected["log_index"],
        "address": expected["token_address"],
        "protocol": "erc20",
        "event": "Transfer",
        "args": {"from": expected["from_address"], "to": expected["to_address"], "value": expected["value"]},
        "removed": False,
        "as_of": expected["item_timestamp"],
    }
    # The other log of the receipt is a custom event: not in the registry.
    (other,) = [log for log in receipt["logs"] if log is not rpc_log]
    assert decode_log(log.model_copy(update={"topics": other["topics"], "data": other["data"]})) is None


def test_ethereum_etl_token_transfers_are_reproduced(data_dir: Path) -> None:
    """Every log of two mainnet blocks decodes without error, and the Transfers are ethereum-etl's 291
    token_transfers (282 ERC-20, 9 ERC-721 whose tokenId ethereum-etl reports as value)."""
    folder = data_dir / RPC_BLOCKS
    logs = _json_lines(folder / "expected_logs.json")
    events = [e for e in (decode_log(_etl_log(item)) for item in logs) if e is not None]
    transfers = {
        (e["tx_hash"], e["log_index"]): (
            e["address"],
            e["args"]["from"],
            e["args"]["to"],
            e["args"]["value" if e["protocol"] == "erc20" else "tokenId"],
        )
        for e in events
        if e["event"] == "Transfer"
    }
    expected = {
        (t["transaction_hash"], t["log_index"]): (
            t["token_address"],
            t["from_address"],
            t["to_address"],
            t["value"],
        )
        for t in _json_lines(folder / "expected_token_transfers.json")
    }
    assert transfers == expected
    kinds = Counter((e["protocol"], e["event"]) for e in events)
    assert kinds == Counter(
        {
            ("erc20", "Transfer"): 282,
            ("erc721", "Transfer"): 9,
            ("uniswap_v2", "Swap"): 69,
            ("uniswap_v2", "Sync"): 69,
            ("uniswap_v3", "Swap"): 10,
        }
    )


def test_a_real_v2_swap_matches_its_token_transfers(data_dir: Path) -> None:
    logs = _json_lines(data_dir / RPC_BLOCKS / "expected_logs.json")
    tx = "0xeb107a40ba73a50c79a9f2026e902d758d1c5e5e211f7a7db1b294f88f118dd0"
    in_tx = [item for item in logs if item["transaction_hash"] == tx]
    weth_in, token_out, sync, swap = (decoded(_etl_log(item)) for item in in_tx)
    pair = swap["address"]
    assert (swap["protocol"], swap["event"], sync["event"]) == ("uniswap_v2", "Swap", "Sync")
    assert weth_in["args"]["to"] == pair and token_out["args"]["from"] == pair
    assert swap["args"] == {
        "sender": weth_in["args"]["from"],
        "amount0In": 0,
        "amount1In": weth_in["args"]["value"],
        "amount0Out": token_out["args"]["value"],
        "amount1Out": 0,
        "to": token_out["args"]["to"],
    }
    assert sync["address"] == pair and all(isinstance(v, int) and v > 0 for v in sync["args"].values())


# ---- the raw log CSV reader ----


def test_reader_yields_valid_raw_logs_in_order_for_every_file(data_dir: Path) -> None:
    expected_rows = {USDC_WETH_005: 6234, USDC_WETH_030: 304, NONFUNGIBLE_POSITION_MANAGER: 3853}
    files = sorted((data_dir / UNIV3_DAY).glob("*.raw.csv"))
    files = [f for f in files if not f.name.endswith(".tx.raw.csv")]
    assert len(files) == 3
    for path in files:
        address = contract_address(path.name)
        count, previous = 0, (-1, -1)
        for record in read_raw_logs(path):
            log = RawLog.model_validate(record.value)
            assert (record.topic, record.key, log.address) == ("raw.chain", f"Ethereum|{address}", address)
            assert log.ts.timestamp() == record.ts
            assert log.source.startswith("replay:ethereum-")
            assert (log.block_number, log.log_index) > previous
            previous = (log.block_number, log.log_index)
            count += 1
        assert count == expected_rows[address], path.name


def test_reader_first_record(data_dir: Path) -> None:
    path = data_dir / UNIV3_DAY / f"ethereum-{USDC_WETH_005}-2024-01-05.raw.csv"
    first = next(read_raw_logs(path, chain="Ethereum"))
    assert first.ts == datetime(2024, 1, 5, 0, 0, 23, tzinfo=UTC).timestamp()
    assert first.value["ts"] == "2024-01-05T00:00:23Z"
    assert first.value["source"] == "replay:ethereum-0x88e6a0c2-2024-01-05.raw.csv"
    assert first.value["topics"] == [
        SWAP_V3,
        "0x0000000000000000000000003fc91a3afd70395cd496c647d5a6cc9d4b2b7fad",
        "0x0000000000000000000000003fc91a3afd70395cd496c647d5a6cc9d4b2b7fad",
    ]
    position = (first.value["block_number"], first.value["tx_index"], first.value["log_index"])
    assert position == (18937382, 33, 169)


def test_position_manager_file_has_no_address_column_and_only_its_own_events(data_dir: Path) -> None:
    path = data_dir / UNIV3_DAY / "ethereum-uniswap-proxy-lp-2024-01-05.raw.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        assert "address" not in next(csv.reader(handle))
    topic0s = Counter(record.value["topics"][0] for record in read_raw_logs(path))
    # IncreaseLiquidity, DecreaseLiquidity, Collect(uint256,address,uint256,uint256): the manager's own.
    assert topic0s == {
        "0x3067048beee31b25b2f1681f88dac838c8bba36af25bfb2b7cf7473a5847e35f": 1350,
        "0x26f6a048ee9138f2c0ce266f322cb99228e8d619ae2bff30c67f8dcf9d2377b4": 1082,
        "0x40d0efd1a53d60ecbf40971b9daf7dc90178c3aadc7aab1765632738fa8b8f01": 1421,
    }


def test_contract_address_from_file_names() -> None:
    checksummed = "0x88e6A0c2dDD26FEEb64F039a2c41296FcB3f5640"
    assert contract_address(f"ethereum-{checksummed}-2024-01-05.raw.csv") == USDC_WETH_005
    assert contract_address("ethereum-uniswap-proxy-lp-2024-01-05.raw.csv") == NONFUNGIBLE_POSITION_MANAGER
    for suffix in ("tx.raw.csv", "pool.tick.csv", "raw.json"):
        bad = f"ethereum-{USDC_WETH_005}-2024-01-05.{suffix}"
        with pytest.raises(ValueError, match="not a raw log file name"):
            contract_address(bad)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


HEADER = "block_number,block_timestamp,transaction_hash,transaction_index,log_index,topics,data"
TX = "0x" + "ab" * 32


def test_reader_rejects_out_of_order_rows(tmp_path: Path) -> None:
    path = _write(
        tmp_path / f"ethereum-{USDC_WETH_005}-2024-01-05.raw.csv",
        [
            HEADER,
            f"2,2024-01-05 00:00:23,{TX},0,5,\"['{SYNC_V2}']\",0x",
            f'2,2024-01-05 00:00:23,{TX},0,4,"[]",0x',
        ],
    )
    with pytest.raises(ValueError, match=r":3: \(block, log_index\) \(2, 4\) not after \(2, 5\)"):
        list(read_raw_logs(path))


def test_reader_rejects_a_foreign_header_and_bad_rows(tmp_path: Path) -> None:
    name = f"ethereum-{USDC_WETH_005}-2024-01-05.raw.csv"
    (tmp_path / "a").mkdir()
    row = f'2,2024-01-05 00:00:23,{TX},0,5,"[]",0x'
    path = _write(tmp_path / "a" / name, [HEADER + ",address", f"{row},{POOL}"])
    with pytest.raises(ValueError, match="is not the raw log columns"):
        list(read_raw_logs(path))
    (tmp_path / "b").mkdir()
    path = _write(tmp_path / "b" / name, [HEADER, f"2,2024-01-05 00:00:23,{TX},0,5,'0xab',0x"])
    with pytest.raises(ValueError, match=r":2: topics is not a bracketed list"):
        list(read_raw_logs(path))
    (tmp_path / "c").mkdir()
    path = _write(tmp_path / "c" / name, [HEADER, f'2,yesterday,{TX},0,5,"[]",0x'])
    with pytest.raises(ValueError, match=r":2: .*yesterday"):
        list(read_raw_logs(path))
