"""The filter language of REST queries, WebSocket subscriptions and alerts: parse, type-check, evaluate."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from pipeline.channels import FieldType

__all__ = [
    "MAX_CONDITIONS",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "MAX_LIST_ITEMS",
    "MATCH_ALL",
    "Filter",
    "FilterError",
    "Predicate",
    "compile_filter",
    "equality_terms",
    "equality_only",
]

MAX_LENGTH = 2000
MAX_DEPTH = 32  # each "(" and each "not" opens a level
MAX_CONDITIONS = 200
MAX_LIST_ITEMS = 100

Predicate = Callable[[Mapping[str, Any]], bool]

# Keywords are regexes with \b so "android" stays a field name, and priority 2 so "and" is never one.
_GRAMMAR = r"""
?start: or_expr
?or_expr: and_expr (_OR and_expr)*
?and_expr: not_expr (_AND not_expr)*
?not_expr: NOT not_expr -> negation
         | LPAR or_expr _RPAR -> group
         | condition
condition: FIELD (EQ | NE | LT | LE | GT | GE) value -> compare
         | FIELD IN list -> is_in
         | FIELD NOT IN list -> not_in
         | FIELD STARTSWITH value -> startswith
         | FIELD ISTARTSWITH value -> istartswith
         | FIELD IS NULL -> is_null
         | FIELD IS NOT NULL -> is_not_null
list: LPAR value (_COMMA value)* _RPAR
?value: STRING | NUMBER | TRUE | FALSE | NULL

FIELD: /[A-Za-z_][A-Za-z0-9_]*/
STRING: /"(?:[^"\\]|\\.)*"/s
NUMBER: /[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?/
EQ: "=="
NE: "!="
LE: "<="
LT: "<"
GE: ">="
GT: ">"
LPAR: "("
_RPAR: ")"
_COMMA: ","
_AND.2: /and\b/i
_OR.2: /or\b/i
NOT.2: /not\b/i
IN.2: /in\b/i
IS.2: /is\b/i
STARTSWITH.2: /startswith\b/i
ISTARTSWITH.2: /istartswith\b/i
NULL.2: /null\b/i
TRUE.2: /true\b/i
FALSE.2: /false\b/i
%ignore /\s+/
"""

# Terminal names as users read them, in the order error messages list them.
_HUMAN = {
    "FIELD": "a field name",
    "LPAR": "(",
    "EQ": "==",
    "NE": "!=",
    "LT": "<",
    "LE": "<=",
    "GT": ">",
    "GE": ">=",
    "IN": "in",
    "NOT": "not",
    "IS": "is",
    "STARTSWITH": "startswith",
    "ISTARTSWITH": "istartswith",
    "STRING": "a string",
    "NUMBER": "a number",
    "TRUE": "true",
    "FALSE": "false",
    "NULL": "null",
    "_AND": "and",
    "_OR": "or",
    "_COMMA": ",",
    "_RPAR": ")",
    "$END": "the end of the filter",
}
_VALUES = {"STRING", "NUMBER", "TRUE", "FALSE"}
_END = "the end of the filter"

_ORDERED = ("==", "!=", "<", "<=", ">", ">=", "in", "not in")
_NULL_OPS = ("is null", "is not null")
_OPS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "string": _ORDERED + ("startswith", "istartswith") + _NULL_OPS,
    "number": _ORDERED + _NULL_OPS,
    "int": _ORDERED + _NULL_OPS,
    "time": _ORDERED + _NULL_OPS,
    "bool": ("==", "!=") + _NULL_OPS,
}
_OP_OF = {"EQ": "==", "NE": "!=", "LT": "<", "LE": "<=", "GT": ">", "GE": ">=", "is_in": "in"}
_OP_OF |= {"not_in": "not in", "startswith": "startswith", "istartswith": "istartswith"}
# Python types a row value must have for a comparison to hold; anything else counts like null.
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "time": (str,),
    "number": (int, float),
    "int": (int, float),
    "bool": (bool,),
}
_WANTED = {
    "string": "a string",
    "number": "a number",
    "int": "a number",
    "bool": "true or false",
    "time": 'an ISO 8601 date or datetime string such as "2022-05-09" or "2022-05-09T00:00:00Z"',
}


class FilterError(ValueError):
    """A filter that does not parse or type-check; ``position`` is a 0-based offset into the text."""

    def __init__(self, message: str, position: int, expected: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.position = position
        self.expected = list(expected)

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": "invalid_filter",
            "message": self.message,
            "position": self.position,
            "expected": list(self.expected),
        }


@dataclass(frozen=True)
class Filter:
    """A compiled filter: call it with a row. ``predicate`` is the same test without the method hop."""

    text: str
    fields: frozenset[str]
    predicate: Predicate = field(repr=False, compare=False)

    def __call__(self, row: Mapping[str, Any]) -> bool:
        return self.predicate(row)


MATCH_ALL = Filter("", frozenset(), lambda row: True)


def compile_filter(text: str | None, fields: Mapping[str, FieldType]) -> Filter:
    """Compile ``text`` against a channel's fields; None or blank text matches every row."""
    if text is None:
        return MATCH_ALL
    if len(text) > MAX_LENGTH:
        raise FilterError(
            f"the filter is {len(text)} characters long; at most {MAX_LENGTH} are allowed", MAX_LENGTH
        )
    if not text.strip():
        return MATCH_ALL
    return _compile(text, tuple(fields.items()))


def equality_terms(text: str | None) -> dict[str, frozenset[Any]]:
    """Values a field must take in every row the filter matches, from its top-level ``field == literal``
    and ``field in (...)`` terms (through parentheses and ``and``; an ``or`` counts when every branch
    constrains the same field). For indexing: a row whose field is outside the set cannot match. The
    filter must compile already; this reads its parse tree only."""
    if text is None or not text.strip():
        return {}
    return _terms(_parse(text))


def equality_only(text: str | None) -> bool:
    """Whether the filter says nothing but its ``equality_terms``: ``==`` and ``in`` joined by ``and`` (an
    ``or`` only between terms on one same field). A row of the right field types then matches exactly when
    each field holds one of its term's values. False for an empty filter. The filter must compile already."""
    if text is None or not text.strip():
        return False
    return _only_terms(_parse(text))


def _only_terms(tree: Tree[Token]) -> bool:
    kind = tree.data
    children = [child for child in tree.children if isinstance(child, Tree)]
    if kind == "group":
        return _only_terms(children[0])
    if kind == "and_expr":
        return all(_only_terms(child) for child in children)
    if kind == "or_expr":
        if not all(_only_terms(child) for child in children):
            return False
        named = [set(_terms(child)) for child in children]
        return len(named[0]) == 1 and all(n == named[0] for n in named)
    tokens = [child for child in tree.children if isinstance(child, Token)]
    return (kind == "compare" and tokens[1].type == "EQ") or kind == "is_in"


def _terms(tree: Tree[Token]) -> dict[str, frozenset[Any]]:
    kind = tree.data
    children = [child for child in tree.children if isinstance(child, Tree)]
    if kind == "group":
        return _terms(children[0])
    if kind == "and_expr":
        merged: dict[str, frozenset[Any]] = {}
        for child in children:
            for name, values in _terms(child).items():
                merged[name] = merged[name] & values if name in merged else values
        return merged
    if kind == "or_expr":
        branches = [_terms(child) for child in children]
        shared = set(branches[0]).intersection(*branches[1:])
        return {name: frozenset().union(*(b[name] for b in branches)) for name in shared}
    tokens = [child for child in tree.children if isinstance(child, Token)]
    if kind == "compare" and tokens[1].type == "EQ":
        return {str(tokens[0]): frozenset([_term_literal(tokens[2])])}
    if kind == "is_in":
        items = [c for c in children[0].children if isinstance(c, Token) and c.type != "LPAR"]
        return {str(tokens[0]): frozenset(_term_literal(t) for t in items)}
    return {}


def _term_literal(tok: Token) -> Any:
    if tok.type == "STRING":
        return _string(tok)
    if tok.type == "NUMBER":
        return _number(tok)
    return tok.type == "TRUE"


@cache
def _parser() -> Lark:
    return Lark(_GRAMMAR, parser="lalr", lexer="contextual")


@lru_cache(maxsize=1024)
def _parse(text: str) -> Tree[Token]:
    try:
        return _parser().parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(text, err) from None


# Subscriptions often share a filter text, so they share one compiled Filter too.
@lru_cache(maxsize=4096)
def _compile(text: str, fields: tuple[tuple[str, FieldType], ...]) -> Filter:
    compiler = _Compiler(dict(fields))
    predicate = compiler.node(_parse(text), 0)
    return Filter(text, frozenset(compiler.read), predicate)


def _q(s: str, limit: int = 40) -> str:
    if len(s) > limit:
        s = s[: limit - 3] + "..."
    # Escape only what would not print (control characters, lone surrogates) so names stay readable.
    return json.dumps(s, ensure_ascii=not s.isprintable())


def _describe(tok: Token) -> str:
    if tok.type == "$END":
        return _END
    if tok.type == "STRING":
        return f"the string {_q(_string_body(tok))}"
    if tok.type == "NUMBER":
        return f"the number {tok}"
    return _q(str(tok))


def _string_body(tok: Token) -> str:
    try:
        return str(json.loads(str(tok), strict=False))
    except ValueError:
        return str(tok)[1:-1]


def _join(items: list[str]) -> str:
    shown = [s if s.startswith(("a ", "an ", "the ", "true or")) else _q(s) for s in items]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]


def _human(names: Iterable[str]) -> list[str]:
    wanted = set(names)
    # Where any literal fits, say "a value"; null is accepted there only to explain "is null" better.
    any_value = _VALUES <= wanted
    if any_value:
        wanted = (wanted - _VALUES - {"NULL"}) | {"STRING"}
    return [("a value" if any_value and n == "STRING" else h) for n, h in _HUMAN.items() if n in wanted]


def _after(text: str, pos: int) -> tuple[Token | None, set[str]]:
    """The last token before ``pos`` and the terminals that may follow it.

    LALR reports an error in a state merged from several contexts, and the contextual lexer reports its
    own state's terminals, so both can list too much ("," at the top level); replaying the prefix and
    asking the parser what it accepts gives the exact set.
    """
    prev: Token | None = None
    parser = _parser().parse_interactive(text[:pos])
    try:
        for tok in parser.iter_parse():
            prev = tok
        return prev, set(parser.accepts())  # type: ignore[no-untyped-call]
    except UnexpectedInput:  # not expected: the prefix parsed once already
        return prev, set()


def _syntax_error(text: str, err: UnexpectedInput) -> FilterError:
    if isinstance(err, UnexpectedCharacters):
        pos = err.pos_in_stream or 0
        if text[pos] == '"':
            return FilterError(f"unterminated string starting at position {pos}", pos, ['"'])
        found = _q(text[pos])
    elif isinstance(err, UnexpectedToken) and err.token.type != "$END":
        pos, found = err.token.start_pos or 0, _describe(err.token)
    else:  # LALR reports the end of the text as an UnexpectedToken "$END"
        pos, found = len(text), _END
    prev, names = _after(text, pos)
    expected = _human(names)
    after = f" after {_describe(prev)}" if prev is not None else ""
    hint = '; use "==" to test equality' if found == '"="' else ""
    want = _join(expected) if expected else "something else"
    return FilterError(f"expected {want}{after} at position {pos}, found {found}{hint}", pos, expected)


class _Compiler:
    """Walks a parse tree once, checking types and building closures; recursion is bounded by MAX_DEPTH."""

    def __init__(self, fields: dict[str, FieldType]) -> None:
        self.fields = fields
        self.read: set[str] = set()
        self.conditions = 0

    def node(self, tree: Tree[Token], depth: int) -> Predicate:
        kind = tree.data
        if kind in ("or_expr", "and_expr"):
            preds = [self.node(child, depth) for child in tree.children if isinstance(child, Tree)]
            return _any(preds) if kind == "or_expr" else _all(preds)
        if kind in ("negation", "group"):
            opener, inner_tree = tree.children
            assert isinstance(opener, Token) and isinstance(inner_tree, Tree)
            if depth >= MAX_DEPTH:
                raise FilterError(
                    f"the filter nests deeper than {MAX_DEPTH} levels at position {opener.start_pos}"
                    ' (each "(" and each "not" is a level)',
                    opener.start_pos or 0,
                )
            inner = self.node(inner_tree, depth + 1)
            return inner if kind == "group" else (lambda row: not inner(row))
        return self.condition(tree)

    def condition(self, tree: Tree[Token]) -> Predicate:
        kind = str(tree.data)
        name_tok = tree.children[0]
        assert isinstance(name_tok, Token)
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise FilterError(
                f"the filter has more than {MAX_CONDITIONS} conditions; the one at position"
                f" {name_tok.start_pos} is one too many",
                name_tok.start_pos or 0,
            )
        name = str(name_tok)
        ftype = self.field_type(name_tok)
        if kind == "is_null":
            return lambda row: row.get(name) is None
        if kind == "is_not_null":
            return lambda row: row.get(name) is not None
        op_tok = tree.children[1]
        assert isinstance(op_tok, Token)
        op = _OP_OF[op_tok.type if kind == "compare" else kind]
        if op not in _OPS_BY_TYPE[ftype]:
            allowed = _OPS_BY_TYPE[ftype]
            raise FilterError(
                f"{_q(op)} cannot be used on {ftype} field {_q(name)} at position {op_tok.start_pos};"
                f" use {_join(list(allowed))}",
                op_tok.start_pos or 0,
                allowed,
            )
        types = _PY_TYPES[ftype]
        if kind in ("is_in", "not_in"):
            items = [c for c in tree.children[-1].children[1:] if isinstance(c, Token)]  # type: ignore[union-attr]
            if len(items) > MAX_LIST_ITEMS:
                extra = items[MAX_LIST_ITEMS]
                raise FilterError(
                    f"the list has {len(items)} items; at most {MAX_LIST_ITEMS} are allowed"
                    f" (item {MAX_LIST_ITEMS + 1} is at position {extra.start_pos})",
                    extra.start_pos or 0,
                )
            values = frozenset(self.literal(t, name, ftype, op) for t in items)
            if kind == "is_in":
                return lambda row: type(v := row.get(name)) in types and v in values
            return lambda row: type(v := row.get(name)) in types and v not in values
        lit_tok = tree.children[2]
        assert isinstance(lit_tok, Token)
        lit = self.literal(lit_tok, name, ftype, op)
        if kind == "startswith":
            prefix = str(lit)
            return lambda row: type(v := row.get(name)) is str and str.startswith(v, prefix)
        if kind == "istartswith":
            folded = str(lit).casefold()
            return lambda row: type(v := row.get(name)) is str and str.casefold(v).startswith(folded)
        return _compare(op, name, lit, types)

    def field_type(self, tok: Token) -> FieldType:
        name = str(tok)
        ftype = self.fields.get(name)
        if ftype is None:
            valid = list(self.fields)
            near = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
            near += [f for f in valid if f.lower() == name.lower() and f not in near]
            tail = f"did you mean {_join(near)}?" if near else f"valid fields are {', '.join(map(_q, valid))}"
            pos = tok.start_pos or 0
            raise FilterError(f"unknown field {_q(name)} at position {pos}; {tail}", pos, near or valid)
        self.read.add(name)
        return ftype

    def literal(self, tok: Token, name: str, ftype: FieldType, op: str) -> float | str:
        pos = tok.start_pos or 0
        if tok.type == "NULL":
            raise FilterError(
                f'null cannot be compared at position {pos}; use "{name} is null" or "{name} is not null"',
                pos,
                list(_NULL_OPS),
            )
        want = {"string": "STRING", "time": "STRING", "number": "NUMBER", "int": "NUMBER"}.get(ftype)
        if (tok.type != want) if want else (tok.type not in ("TRUE", "FALSE")):
            raise FilterError(
                f"expected {_WANTED[ftype]} for field {_q(name)} at position {pos}, found {_describe(tok)}",
                pos,
                [_WANTED[ftype].split(" such as")[0]],
            )
        if tok.type in ("TRUE", "FALSE"):
            return tok.type == "TRUE"
        if tok.type == "NUMBER":
            return _number(tok)
        text = _string(tok)
        return _time(text, name, pos, op) if ftype == "time" else text


def _number(tok: Token) -> float:
    raw = str(tok)
    if not any(c in raw for c in ".eE"):
        return int(raw)
    value = float(raw)
    if value in (float("inf"), float("-inf")):
        pos = tok.start_pos or 0
        raise FilterError(f"expected a finite number at position {pos}, found {raw}", pos, ["a number"])
    return value


def _string(tok: Token) -> str:
    try:
        return str(json.loads(str(tok), strict=False))
    except json.JSONDecodeError as err:
        pos = (tok.start_pos or 0) + err.pos
        raise FilterError(
            f'invalid escape in string at position {pos}; use \\", \\\\, \\n, \\t or \\uXXXX', pos
        ) from None


def _time(text: str, name: str, pos: int, op: str) -> str:
    """Canonical "YYYY-MM-DDTHH:MM:SSZ", so string order is time order; naive times are UTC."""
    try:
        moment = datetime.fromisoformat(text)
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        fraction, moment = moment.microsecond, moment.replace(microsecond=0)
        # Stored times are whole seconds, so "< 10.5" is exactly "< 11" and "> 10.5" is "> 10".
        if fraction and op in ("<", ">="):
            moment += timedelta(seconds=1)
    except (ValueError, OverflowError):
        raise FilterError(
            f"expected {_WANTED['time']} for field {_q(name)} at position {pos}, found {_q(text)}",
            pos,
            ["an ISO 8601 date or datetime string"],
        ) from None
    if fraction and op in ("==", "!=", "in", "not in"):
        raise FilterError(
            f"time {_q(text)} at position {pos} has fractional seconds, which no stored time"
            " (whole seconds) can equal",
            pos,
            ["a time in whole seconds"],
        )
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z"
    )


def _compare(op: str, name: str, lit: float | str, types: tuple[type, ...]) -> Predicate:
    # One specialised closure per operator: no operator-function call per row. The literal sits on
    # the left so each test is a single comparison that mypy types as bool.
    def eq(row: Mapping[str, Any]) -> bool:
        v: Any = row.get(name)
        return type(v) in types and lit == v

    def ne(row: Mapping[str, Any]) -> bool:
        v: Any = row.get(name)
        return type(v) in types and lit != v

    def lt(row: Mapping[str, Any]) -> bool:
        v: Any = row.get(name)
        return type(v) in types and lit > v

    def le(row: Mapping[str, Any]) -> bool:
        v: Any = row.get(name)
        return type(v) in types and lit >= v

    def gt(row: Mapping[str, Any]) -> bool:
        v: Any = row.get(name)
        return type(v) in types and lit < v

    def ge(row: Mapping[str, Any]) -> bool:
        v: Any = row.get(name)
        return type(v) in types and lit <= v

    return {"==": eq, "!=": ne, "<": lt, "<=": le, ">": gt, ">=": ge}[op]


def _all(preds: list[Predicate]) -> Predicate:
    if len(preds) == 2:
        a, b = preds
        return lambda row: a(row) and b(row)
    if len(preds) == 3:
        a, b, c = preds
        return lambda row: a(row) and b(row) and c(row)
    frozen = tuple(preds)
    return lambda row: all(p(row) for p in frozen)


def _any(preds: list[Predicate]) -> Predicate:
    if len(preds) == 2:
        a, b = preds
        return lambda row: a(row) or b(row)
    if len(preds) == 3:
        a, b, c = preds
        return lambda row: a(row) or b(row) or c(row)
    frozen = tuple(preds)
    return lambda row: any(p(row) for p in frozen)
