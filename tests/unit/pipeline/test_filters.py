"""The filter language: parsing, type checks, evaluation semantics, error positions and limits."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.channels import CHANNELS, FieldType
from pipeline.filters import (
    MATCH_ALL,
    MAX_CONDITIONS,
    MAX_DEPTH,
    MAX_LENGTH,
    MAX_LIST_ITEMS,
    FilterError,
    compile_filter,
)

TVL = CHANNELS["tvl"].fields
CHAIN = CHANNELS["chain"].fields
EXAMPLE = 'chain == "Ethereum" and change_1h_pct < -5 and category in ("Dexes", "Lending")'
# No example database: runs stay reproducible and leave no .hypothesis folder behind.
PROPERTY = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ROW: dict[str, Any] = {
    "kind": "protocol",
    "protocol": "Uniswap V3",
    "chain": "Ethereum",
    "category": "Dexes",
    "tvl_usd": 4_100_000_000.0,
    "change_1h_pct": -6.25,
    "change_1d_pct": 1.5,
    "change_7d_pct": None,
    "as_of": "2022-05-09T12:00:00Z",
    "stale": False,
    "source": "defillama",
}


def matches(text: str, row: Mapping[str, Any], fields: Mapping[str, FieldType] = TVL) -> bool:
    return compile_filter(text, fields)(row)


def error(text: str, fields: Mapping[str, FieldType] = TVL) -> FilterError:
    with pytest.raises(FilterError) as info:
        compile_filter(text, fields)
    return info.value


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, True),
        ({"category": "Lending"}, True),
        ({"chain": "Arbitrum"}, False),
        ({"chain": "ethereum"}, False),
        ({"change_1h_pct": -5}, False),
        ({"change_1h_pct": -5.0001}, True),
        ({"change_1h_pct": -7}, True),
        ({"change_1h_pct": None}, False),
        ({"category": None}, False),
        ({"category": "CDP"}, False),
    ],
)
def test_the_example_filter_on_tvl_rows(changes: dict[str, Any], expected: bool) -> None:
    flt = compile_filter(EXAMPLE, TVL)
    assert flt(ROW | changes) is expected
    assert flt.predicate(ROW | changes) is expected
    assert flt.fields == {"chain", "change_1h_pct", "category"}
    assert flt.text == EXAMPLE


def test_a_missing_field_counts_as_null() -> None:
    row = {k: v for k, v in ROW.items() if k != "category"}
    assert not matches(EXAMPLE, row)
    assert matches("category is null", row)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('chain == "Ethereum"', True),
        ('chain != "Ethereum"', False),
        ('chain < "F"', True),
        ('chain <= "Ethereum"', True),
        ('chain > "Ethereum"', False),
        ('chain >= "Ethereum"', True),
        ("tvl_usd == 4.1e9", True),
        ("tvl_usd != 4100000000", False),
        ("tvl_usd < 5e9", True),
        ("tvl_usd <= 4100000000", True),
        ("tvl_usd > 4100000000", False),
        ("tvl_usd >= +4.1E+9", True),
        ("change_1h_pct < -6.2", True),
        ("change_1d_pct == 1.5", True),
        ("change_1d_pct > .5", True),
        ("change_1d_pct < 2.", True),
        ('category in ("Dexes")', True),
        ('category in ("CDP", "Lending")', False),
        ('category not in ("CDP", "Lending")', True),
        ('category not in ("Dexes")', False),
        ("tvl_usd in (1, 4100000000)", True),
        ('protocol startswith "Uni"', True),
        ('protocol startswith "uni"', False),
        ('protocol startswith ""', True),
        ('protocol istartswith "uNISWAP v"', True),
        ('protocol istartswith "Sushi"', False),
        ("stale == false", True),
        ("stale != false", False),
        ("stale == true", False),
        ("change_7d_pct is null", True),
        ("change_7d_pct is not null", False),
        ("chain is not null", True),
        ('chain == "Ethereum" and stale == true', False),
        ('chain == "Ethereum" or stale == true', True),
        ('not chain == "Ethereum"', False),
        ('chain == "Ethereum" and tvl_usd > 1 and change_1d_pct > 0 and stale == false', True),
        ('chain == "x" or tvl_usd < 1 or change_1d_pct < 0 or stale == true', False),
    ],
)
def test_every_operator(text: str, expected: bool) -> None:
    assert matches(text, ROW) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # not > and > or
        ('chain == "x" and stale == true or kind == "protocol"', True),
        ('chain == "x" and (stale == true or kind == "protocol")', False),
        ('kind == "protocol" or chain == "x" and stale == true', True),
        ('(kind == "protocol" or chain == "x") and stale == true', False),
        ('not chain == "x" and stale == true', False),
        ('not (chain == "x" and stale == true)', True),
        ('not chain == "Ethereum" or stale == false', True),
        ('not (chain == "Ethereum" or stale == false)', False),
        ('not not chain == "Ethereum"', True),
        ('((((chain == "Ethereum"))))', True),
    ],
)
def test_precedence(text: str, expected: bool) -> None:
    assert matches(text, ROW) is expected


def test_keywords_are_case_insensitive_but_field_names_are_not() -> None:
    assert matches("NOT Chain_x_ok_ IS NULL", {"Chain_x_ok_": 1}, {"Chain_x_ok_": "int"})
    assert matches('chain == "Ethereum" AND category IN ("Dexes") Or stale == TRUE', ROW)
    assert matches("change_7d_pct IS NOT NULL", ROW) is False
    assert "unknown field" in error('CHAIN == "Ethereum"').message
    # Names that start with a keyword are still field names.
    assert matches(
        "android == 1 and order_ == 2", {"android": 1, "order_": 2}, {"android": "int", "order_": "int"}
    )


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        # Two-valued logic: every comparison with null (or missing, or a wrongly typed value) is false,
        # "not" flips it to true, and "!=" / "not in" are comparisons like any other.
        ("change_7d_pct > 5", None, False),
        ("change_7d_pct <= 5", None, False),
        ("change_7d_pct == 5", None, False),
        ("change_7d_pct != 5", None, False),
        ("change_7d_pct in (5)", None, False),
        ("change_7d_pct not in (5)", None, False),
        ("not (change_7d_pct > 5)", None, True),
        ("not change_7d_pct in (5)", None, True),
        ("change_7d_pct is null", None, True),
        ("change_7d_pct is not null", None, False),
        ('category startswith "D"', None, False),
        ('not category istartswith "D"', None, True),
        ("stale == false", None, False),
        ("stale != false", None, False),
        ("change_7d_pct > 5", "9", False),
        ("change_7d_pct > 0", True, False),  # JSON true is not the number 1
        ("stale == true", 1, False),
        ('category == "1"', 1, False),
        ("change_7d_pct is null", "9", False),
    ],
)
def test_null_missing_and_mistyped_values_never_satisfy_a_comparison(
    text: str, value: Any, expected: bool
) -> None:
    field = text.split()[1] if text.startswith("not ") else text.split()[0]
    field = field.lstrip("(")
    assert matches(text, ROW | {field: value}) is expected
    if value is None:
        assert matches(text, {k: v for k, v in ROW.items() if k != field}) is expected


@pytest.mark.parametrize(
    ("text", "as_of", "expected"),
    [
        ('as_of >= "2022-05-09"', "2022-05-09T00:00:00Z", True),
        ('as_of < "2022-05-09"', "2022-05-08T23:59:59Z", True),
        ('as_of == "2022-05-09"', "2022-05-09T00:00:00Z", True),
        ('as_of == "2022-05-09T00:00:00Z"', "2022-05-09T00:00:00Z", True),
        ('as_of == "2022-05-09T02:00:00+02:00"', "2022-05-09T00:00:00Z", True),
        ('as_of == "2022-05-08T22:00:00-02:00"', "2022-05-09T00:00:00Z", True),
        ('as_of == "2022-05-09 00:00"', "2022-05-09T00:00:00Z", True),  # naive means UTC
        ('as_of == "2022-05-09T00:00:00.000Z"', "2022-05-09T00:00:00Z", True),
        ('as_of > "2022-05-09T12:00:00Z"', "2022-05-10T00:00:00Z", True),
        ('as_of > "2022-05-10"', "2022-05-09T23:59:59Z", False),
        ('as_of in ("2022-05-08", "2022-05-09")', "2022-05-09T00:00:00Z", True),
        ('as_of not in ("2022-05-08", "2022-05-09")', "2022-05-09T00:00:01Z", True),
        # Stored times are whole seconds, so a fractional bound rounds the way that keeps the meaning.
        ('as_of < "2022-05-09T00:00:00.5Z"', "2022-05-09T00:00:00Z", True),
        ('as_of >= "2022-05-09T00:00:00.5Z"', "2022-05-09T00:00:00Z", False),
        ('as_of >= "2022-05-09T00:00:00.5Z"', "2022-05-09T00:00:01Z", True),
        ('as_of > "2022-05-09T00:00:00.5Z"', "2022-05-09T00:00:01Z", True),
        ('as_of <= "2022-05-09T00:00:00.5Z"', "2022-05-09T00:00:00Z", True),
        ('as_of <= "2022-05-09T00:00:00.5Z"', "2022-05-09T00:00:01Z", False),
        ('as_of > "2022-05-09"', None, False),
    ],
)
def test_time_comparisons(text: str, as_of: str | None, expected: bool) -> None:
    assert matches(text, ROW | {"as_of": as_of}) is expected


def test_int_fields_compare_with_any_number_and_strings_take_escapes() -> None:
    event = {
        "chain": "Ethereum",
        "block_number": 14_740_000,
        "log_index": 3,
        "event": 'Sw"ap\\',
        "removed": False,
    }
    assert matches("block_number > 14739999.5 and log_index in (1, 3.0)", event, CHAIN)
    assert matches(r'event == "Sw\"ap\\" and chain == "\u0045thereum"', event, CHAIN)
    assert matches('chain == "Ethe\nreum"', event | {"chain": "Ethe\nreum"}, CHAIN)


@pytest.mark.parametrize("text", [None, "", "   ", "\n\t"])
def test_no_filter_matches_everything(text: str | None) -> None:
    assert compile_filter(text, TVL) is MATCH_ALL
    assert MATCH_ALL({}) and MATCH_ALL.fields == frozenset()


def test_the_same_text_compiles_once() -> None:
    assert compile_filter(EXAMPLE, TVL) is compile_filter(EXAMPLE, dict(TVL))


@pytest.mark.parametrize(
    ("text", "message", "expected"),
    [
        (
            '(category == "x" or chain == )',
            'expected a value after "==" at position 29, found ")"',
            ["a value"],
        ),
        ('chian == "x"', 'unknown field "chian" at position 0; did you mean "chain"?', ["chain"]),
        (
            'stale == true and Source == "x"',
            'unknown field "Source" at position 18; did you mean "source"?',
            None,
        ),
        (
            "#",
            'expected a field name, "(" or "not" at position 0, found "#"',
            ["a field name", "(", "not"],
        ),
        (
            'chain = "x"',
            'expected "==", "!=", "<", "<=", ">", ">=", "in", "not", "is", "startswith" or "istartswith"'
            ' after "chain" at position 6, found "="; use "==" to test equality',
            ["==", "!=", "<", "<=", ">", ">=", "in", "not", "is", "startswith", "istartswith"],
        ),
        (
            'chain == "x" foo',
            'expected "and", "or" or the end of the filter after the string "x" at position 13, found "foo"',
            ["and", "or", "the end of the filter"],
        ),
        (
            '(chain == "a"',
            'expected "and", "or" or ")" after the string "a" at position 13, found the end of the filter',
            ["and", "or", ")"],
        ),
        (
            'chain in ("a" 1)',
            'expected "," or ")" after the string "a" at position 14, found the number 1',
            [",", ")"],
        ),
        ("chain in ()", 'expected a value after "(" at position 10, found ")"', ["a value"]),
        ("chain not x", 'expected "in" after "not" at position 10, found "x"', ["in"]),
        (
            "chain is 5",
            'expected "not" or "null" after "is" at position 9, found the number 5',
            ["not", "null"],
        ),
        (
            "not",
            'expected a field name, "(" or "not" after "not" at position 3, found the end of the filter',
            None,
        ),
        ('chain == "abc', "unterminated string starting at position 9", ['"']),
        (r'chain == "a\x"', r"invalid escape in string at position 11; use \", \\, \n, \t or \uXXXX", []),
        (
            'tvl_usd == "x"',
            'expected a number for field "tvl_usd" at position 11, found the string "x"',
            ["a number"],
        ),
        ("chain > 5", 'expected a string for field "chain" at position 8, found the number 5', ["a string"]),
        (
            "stale == 1",
            'expected true or false for field "stale" at position 9, found the number 1',
            ["true or false"],
        ),
        ("tvl_usd > 1e400", "expected a finite number at position 10, found 1e400", ["a number"]),
        (
            'tvl_usd startswith "4"',
            '"startswith" cannot be used on number field "tvl_usd" at position 8; use "==", "!=", "<", "<=",'
            ' ">", ">=", "in", "not in", "is null" or "is not null"',
            None,
        ),
        ('as_of istartswith "2022"', None, None),
        (
            "stale < true",
            '"<" cannot be used on bool field "stale" at position 6;'
            ' use "==", "!=", "is null" or "is not null"',
            ["==", "!=", "is null", "is not null"],
        ),
        ("stale in (true)", None, ["==", "!=", "is null", "is not null"]),
        (
            "category == null",
            'null cannot be compared at position 12; use "category is null" or "category is not null"',
            ["is null", "is not null"],
        ),
        (
            'as_of > "yesterday"',
            'expected an ISO 8601 date or datetime string such as "2022-05-09" or "2022-05-09T00:00:00Z"'
            ' for field "as_of" at position 8, found "yesterday"',
            ["an ISO 8601 date or datetime string"],
        ),
        ('as_of > "2022-02-30"', None, ["an ISO 8601 date or datetime string"]),
        ("as_of > 20220509", None, ["an ISO 8601 date or datetime string"]),
        (
            'as_of == "2022-05-09T00:00:00.5Z"',
            'time "2022-05-09T00:00:00.5Z" at position 9 has fractional seconds, which no stored time'
            " (whole seconds) can equal",
            ["a time in whole seconds"],
        ),
    ],
)
def test_errors_say_what_and_where(text: str, message: str | None, expected: list[str] | None) -> None:
    err = error(text)
    if message is not None:
        assert err.message == message
        assert str(err) == message
    assert err.position == int(err.message.split("position ")[1].split()[0].rstrip(";,"))
    if expected is not None:
        assert err.expected == expected
    assert err.to_dict() == {
        "code": "invalid_filter",
        "message": err.message,
        "position": err.position,
        "expected": err.expected,
    }
    assert isinstance(err, ValueError)


def test_unknown_field_without_a_near_name_lists_them_all() -> None:
    err = error("zzzz == 1")
    assert err.expected == list(TVL)
    assert err.message.startswith('unknown field "zzzz" at position 0; valid fields are "kind", "protocol"')


def test_the_text_length_is_bounded() -> None:
    ok = 'chain == "' + "x" * (MAX_LENGTH - 11) + '"'
    assert len(ok) == MAX_LENGTH and compile_filter(ok, TVL).fields == {"chain"}
    err = error(ok + " ")
    assert err.position == MAX_LENGTH
    assert err.message == f"the filter is {MAX_LENGTH + 1} characters long; at most {MAX_LENGTH} are allowed"


@pytest.mark.parametrize(("opener", "width"), [("(", 1), ("not ", 4)])
def test_the_nesting_depth_is_bounded(opener: str, width: int) -> None:
    def nested(levels: int) -> str:
        return opener * levels + "stale == true" + (")" * levels if opener == "(" else "")

    compile_filter(nested(MAX_DEPTH), TVL)
    err = error(nested(MAX_DEPTH + 1))
    assert err.position == MAX_DEPTH * width
    assert err.message.startswith(
        f"the filter nests deeper than {MAX_DEPTH} levels at position {err.position}"
    )
    # Far deeper than Python's recursion limit allows for a naive tree walk: still a FilterError.
    assert error(nested(MAX_LENGTH // (width + 1) - 20)).position == MAX_DEPTH * width


def test_the_number_of_conditions_is_bounded() -> None:
    condition, fields = "a==1", dict[str, FieldType](a="int")
    compile_filter(" or ".join([condition] * MAX_CONDITIONS), fields)
    err = error(" or ".join([condition] * (MAX_CONDITIONS + 1)), fields)
    assert err.position == MAX_CONDITIONS * len(condition + " or ")
    assert err.message.startswith(f"the filter has more than {MAX_CONDITIONS} conditions")


def test_the_list_length_is_bounded() -> None:
    compile_filter(f"log_index in ({', '.join(['1'] * MAX_LIST_ITEMS)})", CHAIN)
    err = error(f"log_index in ({', '.join(['1'] * (MAX_LIST_ITEMS + 1))})", CHAIN)
    assert err.position == len("log_index in (") + MAX_LIST_ITEMS * 3
    assert err.message.startswith(f"the list has {MAX_LIST_ITEMS + 1} items; at most {MAX_LIST_ITEMS}")


TOKENS = [
    "chain",
    "tvl_usd",
    "stale",
    "as_of",
    "category",
    "nope",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "in",
    "not",
    "is",
    "null",
    "startswith",
    "istartswith",
    "and",
    "or",
    "(",
    ")",
    ",",
    '"Ethereum"',
    '"2022-05-09"',
    '"x',
    "-5",
    "1e999",
    "true",
    "false",
    "=",
    "#",
    "\\",
]


@PROPERTY
@given(st.one_of(st.text(max_size=60), st.lists(st.sampled_from(TOKENS), max_size=14).map(" ".join)))
def test_garbage_raises_only_filter_errors(text: str) -> None:
    try:
        flt = compile_filter(text, TVL)
    except FilterError as err:
        assert 0 <= err.position <= len(text)
        assert err.message and all(isinstance(e, str) for e in err.expected)
    else:
        assert isinstance(flt(ROW), bool) and isinstance(flt({}), bool)


# A reference evaluator for random expressions: (field, op, literal text, Python literal).
OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
CONDITIONS = st.one_of(
    st.tuples(st.sampled_from(["tvl_usd", "change_1h_pct"]), st.sampled_from(list(OPS)), st.integers(-3, 3)),
    st.tuples(st.just("chain"), st.sampled_from(list(OPS)), st.sampled_from(["A", "B", "C"])),
)
Expr = Any
EXPRS: st.SearchStrategy[Expr] = st.recursive(
    CONDITIONS,
    lambda inner: st.one_of(
        st.tuples(st.just("not"), inner),
        st.tuples(st.sampled_from(["and", "or"]), inner, inner),
    ),
    max_leaves=8,
)
ROWS = st.fixed_dictionaries(
    {},
    optional={
        "tvl_usd": st.one_of(st.none(), st.integers(-3, 3), st.floats(-3, 3)),
        "change_1h_pct": st.one_of(st.none(), st.integers(-3, 3)),
        "chain": st.one_of(st.none(), st.sampled_from(["A", "B", "C"])),
    },
)


def render(expr: Expr) -> str:
    if expr[0] == "not":
        return f"not ({render(expr[1])})"
    if expr[0] in ("and", "or"):
        return f"({render(expr[1])}) {expr[0]} ({render(expr[2])})"
    name, op, lit = expr
    return f"{name} {op} {lit}" if isinstance(lit, int) else f'{name} {op} "{lit}"'


def evaluate(expr: Expr, row: dict[str, Any]) -> bool:
    if expr[0] == "not":
        return not evaluate(expr[1], row)
    if expr[0] == "and":
        return evaluate(expr[1], row) and evaluate(expr[2], row)
    if expr[0] == "or":
        return evaluate(expr[1], row) or evaluate(expr[2], row)
    name, op, lit = expr
    value = row.get(name)
    return value is not None and OPS[op](value, lit)


@PROPERTY
@given(EXPRS, st.lists(ROWS, min_size=1, max_size=5))
def test_random_expressions_agree_with_a_reference_evaluator(expr: Expr, rows: list[dict[str, Any]]) -> None:
    flt = compile_filter(render(expr), TVL)
    for row in rows:
        assert flt(row) is evaluate(expr, row)
