"""Live source: polls DeFiLlama's TVL, coins and yields APIs and puts changed values on the raw topics."""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import logging
import math
import random
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from pydantic import BaseModel, ValidationError

from pipeline.connectors.sink import KafkaSink, RecordSink
from pipeline.records import COIN_PATTERN, RawPrice, RawTvl, RawYield
from pipeline.settings import get_settings

__all__ = ["DefiLlamaPoller", "FetchError", "LastValues", "NON_CHAIN_BUCKETS", "is_chain_key", "main"]

log = logging.getLogger(__name__)

SOURCE = "defillama"
# DeFiLlama's chainTvls mixes real chains with accounting buckets, both bare ("borrowed") and per chain
# ("Ethereum-borrowed"). Buckets are not TVL of a chain; emitting them would double count downstream.
NON_CHAIN_BUCKETS = frozenset(
    {
        "borrowed",
        "staking",
        "pool2",
        "doublecounted",
        "liquidstaking",
        "dcandlsoverlap",
        "vesting",
        "offers",
        "treasury",
    }
)
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
_COIN_RE = re.compile(COIN_PATTERN)
_EXAMPLES_PER_WARNING = 5

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], datetime]


class FetchError(Exception):
    """A request gave up for this cycle: retries exhausted, a status not retried, or a non-JSON body."""


def is_chain_key(key: str, chains: Iterable[str] = ()) -> bool:
    """Whether a ``chainTvls`` key names a chain rather than one of DeFiLlama's accounting buckets.

    A key ``"<prefix>-<suffix>"`` is a bucket when the suffix is a known bucket, or when the prefix is one
    of the protocol's own chains (a bucket DeFiLlama added after this list was written). A hyphen alone
    is not enough: a chain's own name may contain one.
    """
    if key.lower() in NON_CHAIN_BUCKETS:
        return False
    prefix, dash, suffix = key.rpartition("-")
    if not dash:
        return True
    return suffix.lower() not in NON_CHAIN_BUCKETS and prefix not in set(chains)


class LastValues:
    """The last emitted fingerprint per key, so unchanged values are not re-emitted.

    Memory stays bounded twice over: keys absent from a complete poll are forgotten (delisted protocols
    and pools), and past ``max_keys`` the least recently emitted go first. Forgetting a key only costs
    one duplicate emission later, never a lost change.
    """

    def __init__(self, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self.max_keys = max_keys
        self._values: OrderedDict[Hashable, Hashable] = OrderedDict()

    def __len__(self) -> int:
        return len(self._values)

    def unchanged(self, key: Hashable, fingerprint: Hashable) -> bool:
        return key in self._values and self._values[key] == fingerprint

    def commit(self, emitted: Mapping[Hashable, Hashable]) -> None:
        for key, fingerprint in emitted.items():
            self._values[key] = fingerprint
            self._values.move_to_end(key)
        while len(self._values) > self.max_keys:
            self._values.popitem(last=False)

    def retain(self, seen: set[Hashable]) -> None:
        for key in [k for k in self._values if k not in seen]:
            del self._values[key]


@dataclass(frozen=True, slots=True)
class _Candidate:
    """One value read from a payload, not yet validated or compared with what was emitted before."""

    cache_key: Hashable
    kafka_key: str
    fingerprint: Hashable
    model: type[BaseModel]
    fields: dict[str, Any]


class _Problems:
    """Values skipped in one poll: counted all, a few quoted, logged in one warning."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0
        self.examples: list[str] = []

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.examples) < _EXAMPLES_PER_WARNING:
            self.examples.append(message)

    def log(self) -> None:
        if self.count:
            examples = "; ".join(self.examples)
            log.warning("%s: skipped %d value(s) this poll, e.g. %s", self.what, self.count, examples)


def _amount_problem(value: object) -> str | None:
    """What is wrong with a USD amount, or None when it is a finite number >= 0."""
    if value is None:
        return "is missing"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"is a {type(value).__name__}, not a number"
    if not math.isfinite(value):
        return "is not finite"
    if value < 0:
        return "is negative"
    return None


def _optional_number(value: object) -> object:
    # Numbers become floats; anything else is left to the schema, which names the bad value in its error.
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _payload_ts(value: object) -> datetime | None:
    """A timestamp the payload carries (epoch s, epoch ms or ISO 8601); None if absent or unreadable."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            # Epochs past ~2286 in seconds are milliseconds in practice.
            seconds = value / 1000 if value > 1e10 else value
            return datetime.fromtimestamp(seconds, UTC)
        if isinstance(value, str) and value:
            parsed = datetime.fromisoformat(value)
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _retry_after(header: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or HTTP-date); None if absent or bad."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        log.warning("ignoring Retry-After %r: neither seconds nor an HTTP date", header)
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _validation_summary(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}={err.get('input')!r}: {err['msg']}"
        for err in exc.errors()
    )


def _utc_now() -> datetime:
    return datetime.now(UTC)


class DefiLlamaPoller:
    """Polls DeFiLlama; writes changed TVL, prices and pools to ``raw.tvl``, ``raw.prices``, ``raw.yields``.

    Counters for metrics: ``emitted``, ``unchanged``, ``skipped`` (invalid or duplicate values),
    ``http_errors`` (failed attempts), ``retries``, ``failed_polls`` (cycles given up) and
    ``missing_coins`` (requested coins the API did not price; the last poll's are in ``missing``).
    """

    def __init__(
        self,
        sink: RecordSink,
        *,
        tvl_url: str = "https://api.llama.fi",
        coins_url: str = "https://coins.llama.fi",
        yields_url: str = "https://yields.llama.fi",
        coins: Sequence[str] = (),
        tvl_interval_s: float = 300.0,
        prices_interval_s: float = 60.0,
        pools_interval_s: float = 600.0,
        request_timeout_s: float = 30.0,
        max_retries: int = 4,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 60.0,
        max_retry_after_s: float = 300.0,
        coins_per_request: int = 100,
        max_tracked_keys: int = 200_000,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = _utc_now,
        rng: random.Random | None = None,
    ) -> None:
        for name, value in (
            ("tvl_interval_s", tvl_interval_s),
            ("prices_interval_s", prices_interval_s),
            ("pools_interval_s", pools_interval_s),
            ("request_timeout_s", request_timeout_s),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if coins_per_request < 1:
            raise ValueError(f"coins_per_request must be >= 1, got {coins_per_request}")
        bad = [c for c in coins if not _COIN_RE.match(c)]
        if bad:
            raise ValueError(f"not DeFiLlama coin ids ('<chain>:<address>' or 'coingecko:<id>'): {bad!r}")
        self.sink = sink
        self.tvl_url = tvl_url.rstrip("/")
        self.coins_url = coins_url.rstrip("/")
        self.yields_url = yields_url.rstrip("/")
        self.coins = list(dict.fromkeys(coins))  # order kept, duplicates dropped
        self.tvl_interval_s = tvl_interval_s
        self.prices_interval_s = prices_interval_s
        self.pools_interval_s = pools_interval_s
        self.request_timeout_s = request_timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.max_retry_after_s = max_retry_after_s
        self.coins_per_request = coins_per_request
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._tvl = LastValues(max_tracked_keys)
        self._prices = LastValues(max_tracked_keys)
        self._pools = LastValues(max_tracked_keys)

        self.emitted = 0
        self.unchanged = 0
        self.skipped = 0
        self.http_errors = 0
        self.retries = 0
        self.failed_polls = 0
        self.missing_coins = 0
        self.missing: list[str] = []

    # ---- lifecycle ----

    async def __aenter__(self) -> DefiLlamaPoller:
        self._ensure_session()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
                headers={"Accept": "application/json", "User-Agent": "llamastream-defillama-poller/0.1"},
            )
        return self._session

    # ---- loops ----

    async def run(self) -> None:
        """Poll the three APIs, each on its own interval, until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._every("protocols", self.tvl_interval_s, self.poll_protocols))
            group.create_task(self._every("prices", self.prices_interval_s, self.poll_prices))
            group.create_task(self._every("pools", self.pools_interval_s, self.poll_pools))

    async def run_once(self) -> dict[str, int]:
        """One poll of each API; returns the records each emitted."""
        async with asyncio.TaskGroup() as group:
            polls = {
                "protocols": group.create_task(self.poll_protocols()),
                "prices": group.create_task(self.poll_prices()),
                "pools": group.create_task(self.poll_pools()),
            }
        return {name: task.result() for name, task in polls.items()}

    async def _every(self, name: str, interval_s: float, poll: Callable[[], Awaitable[int]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await poll()
            except Exception:
                # A sink or payload failure ends this cycle only; the next one starts on schedule.
                self.failed_polls += 1
                log.exception("%s poll failed; next attempt in %.0fs", name, interval_s)
            # Scheduled from the start of the poll so slow responses do not make the cadence drift.
            await asyncio.sleep(max(0.0, started + interval_s - loop.time()))

    # ---- polls ----

    async def poll_protocols(self) -> int:
        """GET /protocols; one record per protocol total and per protocol x chain. Returns records emitted."""
        url = f"{self.tvl_url}/protocols"
        payload = await self._fetch(url)
        if payload is None:
            return 0
        if not isinstance(payload, list):
            got = type(payload).__name__
            return self._bad_payload(url, f"expected a JSON list of protocols, got a {got}")
        problems = _Problems("raw.tvl")
        candidates = self._protocol_candidates(payload, self._clock(), problems)
        return await self._publish("raw.tvl", self._tvl, candidates, problems, prune=True)

    async def poll_prices(self) -> int:
        """GET /prices/current/{coins} in chunks; one record per priced coin. Returns records emitted."""
        if not self.coins:
            return 0
        answers: dict[str, Any] = {}
        complete = True
        for start in range(0, len(self.coins), self.coins_per_request):
            chunk = self.coins[start : start + self.coins_per_request]
            url = f"{self.coins_url}/prices/current/{','.join(chunk)}"
            payload = await self._fetch(url)
            coins = payload.get("coins") if isinstance(payload, dict) else None
            if not isinstance(coins, dict):
                if payload is not None:
                    got = str(payload)[:200]
                    self._bad_payload(url, f"expected {{'coins': {{id: {{price, ...}}}}}}, got {got!r}")
                complete = False
                continue
            answers.update(coins)
        problems = _Problems("raw.prices")
        candidates = list(self._price_candidates(answers, self._clock(), problems, complete))
        return await self._publish("raw.prices", self._prices, candidates, problems, prune=complete)

    async def poll_pools(self) -> int:
        """GET /pools; one record per pool. Returns records emitted."""
        url = f"{self.yields_url}/pools"
        payload = await self._fetch(url)
        if payload is None:
            return 0
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list) or payload.get("status", "success") != "success":
            status = payload.get("status") if isinstance(payload, dict) else None
            expected = "{'status': 'success', 'data': [...]}"
            return self._bad_payload(url, f"expected {expected}, got status {status!r}")
        problems = _Problems("raw.yields")
        candidates = self._pool_candidates(data, self._clock(), problems)
        return await self._publish("raw.yields", self._pools, candidates, problems, prune=True)

    def _bad_payload(self, url: str, what: str) -> int:
        self.failed_polls += 1
        log.error("GET %s: %s; nothing emitted this cycle", url, what)
        return 0

    # ---- payload -> candidates ----

    def _protocol_candidates(
        self, payload: list[Any], now: datetime, problems: _Problems
    ) -> Iterator[_Candidate]:
        for entry in payload:
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not name:
                problems.add(f"protocol entry without a name: {str(entry)[:120]!r}")
                continue
            ts = _payload_ts(entry.get("timestamp")) or now
            tvl = entry.get("tvl")
            problem = _amount_problem(tvl)
            if problem:
                problems.add(f"{name!r} tvl={tvl!r} {problem}")
            else:
                yield self._tvl_candidate(name, None, float(tvl), ts)
            yield from self._chain_candidates(name, entry, ts, problems)

    def _chain_candidates(
        self, name: str, entry: dict[str, Any], ts: datetime, problems: _Problems
    ) -> Iterator[_Candidate]:
        chain_tvls = entry.get("chainTvls") or {}
        if not isinstance(chain_tvls, dict):
            problems.add(f"{name!r} chainTvls={str(chain_tvls)[:80]!r} is not an object of chain -> number")
            return
        listed = entry.get("chains")
        chains: list[str] = [str(c) for c in listed] if isinstance(listed, list) else []
        for chain, value in chain_tvls.items():
            if not is_chain_key(chain, chains):
                continue
            problem = _amount_problem(value)
            if problem:
                problems.add(f"{name!r} on {chain!r} tvl={value!r} {problem}")
            else:
                yield self._tvl_candidate(name, chain, float(value), ts)

    @staticmethod
    def _tvl_candidate(protocol: str, chain: str | None, tvl: float, ts: datetime) -> _Candidate:
        fields = {"ts": ts, "source": SOURCE, "protocol": protocol, "chain": chain, "tvl_usd": tvl}
        return _Candidate((protocol, chain), protocol, tvl, RawTvl, fields)

    def _price_candidates(
        self, answers: dict[str, Any], now: datetime, problems: _Problems, complete: bool
    ) -> Iterator[_Candidate]:
        # Addresses may come back in another case than asked; match exactly first, then ignoring case.
        folded = {str(k).lower(): k for k in answers}
        missing: list[str] = []
        for coin in self.coins:
            found = coin if coin in answers else folded.get(coin.lower())
            if found is None:
                missing.append(coin)
                continue
            entry = answers[found]
            price = entry.get("price") if isinstance(entry, dict) else None
            problem = _amount_problem(price) or ("is zero" if price == 0 else None)
            if problem or price is None:
                problems.add(f"{coin!r} price={price!r} {problem}")
                continue
            ts = _payload_ts(entry.get("timestamp")) or now
            fields = {
                "ts": ts,
                "source": SOURCE,
                "coin": coin,
                "price": float(price),
                "symbol": entry.get("symbol"),
            }
            if entry.get("confidence") is not None:
                fields["confidence"] = _optional_number(entry["confidence"])
            yield _Candidate(coin, coin, (float(price), ts), RawPrice, fields)
        if complete:
            # Only a complete answer can tell that a coin is unknown; a failed chunk is already counted.
            self._report_missing(missing)

    def _report_missing(self, missing: list[str]) -> None:
        self.missing = missing
        if missing:
            self.missing_coins += len(missing)
            log.warning(
                "coins API returned no price for %d of %d requested coin(s): %s (nothing emitted for them)",
                len(missing),
                len(self.coins),
                ", ".join(missing[:20]),
            )

    def _pool_candidates(self, data: list[Any], now: datetime, problems: _Problems) -> Iterator[_Candidate]:
        for entry in data:
            pool = entry.get("pool") if isinstance(entry, dict) else None
            if not isinstance(pool, str) or not pool:
                problems.add(f"pool entry without a pool id: {str(entry)[:120]!r}")
                continue
            tvl = entry.get("tvlUsd")
            problem = _amount_problem(tvl)
            if problem:
                problems.add(f"pool {pool!r} tvlUsd={tvl!r} {problem}")
                continue
            apy, base, reward = (_optional_number(entry.get(k)) for k in ("apy", "apyBase", "apyReward"))
            fields = {
                "ts": _payload_ts(entry.get("timestamp")) or now,
                "source": SOURCE,
                "pool": pool,
                "chain": entry.get("chain"),
                "project": entry.get("project"),
                "symbol": entry.get("symbol") or "",
                "tvl_usd": float(tvl),
                "apy": apy,
                "apy_base": base,
                "apy_reward": reward,
            }
            yield _Candidate(pool, pool, (float(tvl), apy, base, reward), RawYield, fields)

    # ---- emission ----

    async def _publish(
        self,
        topic: str,
        cache: LastValues,
        candidates: Iterable[_Candidate],
        problems: _Problems,
        *,
        prune: bool,
    ) -> int:
        """Validate and send the candidates that changed; remember them only once the sink has flushed."""
        seen: set[Hashable] = set()
        sent: dict[Hashable, Hashable] = {}
        for candidate in candidates:
            if candidate.cache_key in seen:
                # The same key twice in one answer (real: two "mETH Protocol" entries): the first wins, so
                # the value does not flip between the two on every poll.
                problems.add(f"{candidate.cache_key!r} appears again in the same answer; kept the first")
                continue
            seen.add(candidate.cache_key)
            if cache.unchanged(candidate.cache_key, candidate.fingerprint):
                self.unchanged += 1
                continue
            try:
                record = candidate.model.model_validate(candidate.fields)
            except ValidationError as exc:
                problems.add(f"{candidate.cache_key!r}: {_validation_summary(exc)}")
                continue
            await self.sink.send(topic, candidate.kafka_key, record.model_dump(mode="json"))
            sent[candidate.cache_key] = candidate.fingerprint
        await self.sink.flush()
        cache.commit(sent)
        if prune:
            cache.retain(seen)
        self.emitted += len(sent)
        self.skipped += problems.count
        problems.log()
        log.info("%s: emitted %d, %d key(s) tracked", topic, len(sent), len(cache))
        return len(sent)

    # ---- HTTP ----

    async def _fetch(self, url: str) -> Any:
        """JSON of a GET, or None when this cycle gave up on it (already logged and counted)."""
        try:
            return await self._get_json(url)
        except FetchError as exc:
            self.failed_polls += 1
            log.error("%s; skipping this cycle", exc)
            return None

    async def _get_json(self, url: str) -> Any:
        session = self._ensure_session()
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            reason = ""
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        body = await response.read()
                    elif response.status in RETRYABLE_STATUS:
                        reason = f"HTTP {response.status}"
                        retry_after = _retry_after(response.headers.get("Retry-After"), self._clock())
                        body = None
                    else:
                        self.http_errors += 1
                        text = (await response.text(errors="replace"))[:200]
                        raise FetchError(f"GET {url}: HTTP {response.status} is not retried: {text!r}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                body = None
            if body is not None:
                return self._decode(url, body)
            self.http_errors += 1
            delay = self._retry_delay(url, attempt, reason, retry_after)
            self.retries += 1
            log.warning("GET %s: %s; retry %d/%d in %.2fs", url, reason, attempt + 1, self.max_retries, delay)
            await self._sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _decode(self, url: str, body: bytes) -> Any:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            self.http_errors += 1
            raise FetchError(f"GET {url}: body is not JSON ({exc}): {body[:120]!r}") from exc

    def _retry_delay(self, url: str, attempt: int, reason: str, retry_after: float | None) -> float:
        """Seconds to wait before the next attempt; raises FetchError when there is none to make."""
        if attempt >= self.max_retries:
            raise FetchError(f"GET {url}: gave up after {attempt + 1} attempt(s); last: {reason}")
        if retry_after is not None:
            if retry_after > self.max_retry_after_s:
                raise FetchError(
                    f"GET {url}: {reason} asks to retry after {retry_after:.0f}s, "
                    f"more than max_retry_after_s={self.max_retry_after_s:.0f}s; trying next cycle"
                )
            return retry_after
        # Full jitter: uniform over [0, capped exponential], so many pollers do not retry in step.
        return self._rng.uniform(0.0, min(self.backoff_cap_s, self.backoff_base_s * 2**attempt))


# ---- CLI ----


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.connectors.defillama_poller",
        description="Poll DeFiLlama's live API and write changed values to the raw Kafka topics.",
    )
    parser.add_argument("--coins", default="", help="comma-separated coin ids, e.g. coingecko:ethereum")
    parser.add_argument("--once", action="store_true", help="poll each API once, then exit")
    parser.add_argument("--tvl-url", default="https://api.llama.fi")
    parser.add_argument("--coins-url", default="https://coins.llama.fi")
    parser.add_argument("--yields-url", default="https://yields.llama.fi")
    parser.add_argument("--tvl-interval", type=float, default=300.0, help="seconds between /protocols polls")
    parser.add_argument("--prices-interval", type=float, default=60.0, help="seconds between price polls")
    parser.add_argument("--pools-interval", type=float, default=600.0, help="seconds between /pools polls")
    parser.add_argument("--timeout", type=float, default=30.0, help="total seconds per request")
    parser.add_argument("--max-retries", type=int, default=4)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    args.coins = [c.strip() for c in args.coins.split(",") if c.strip()]
    bad = [c for c in args.coins if not _COIN_RE.match(c)]
    if bad:
        expected = "'<chain>:<address>' or 'coingecko:<id>'"
        parser.error(f"--coins: not DeFiLlama coin ids ({expected}): {', '.join(bad)}")
    return args


async def _main(args: argparse.Namespace) -> None:
    async with KafkaSink(get_settings()) as sink:
        poller = DefiLlamaPoller(
            sink,
            tvl_url=args.tvl_url,
            coins_url=args.coins_url,
            yields_url=args.yields_url,
            coins=args.coins,
            tvl_interval_s=args.tvl_interval,
            prices_interval_s=args.prices_interval,
            pools_interval_s=args.pools_interval,
            request_timeout_s=args.timeout,
            max_retries=args.max_retries,
        )
        async with poller:
            if args.once:
                log.info("emitted %s", await poller.run_once())
            else:
                await poller.run()


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=args.log_level.upper(), format=log_format)
    try:
        asyncio.run(_main(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
