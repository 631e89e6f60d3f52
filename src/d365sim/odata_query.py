"""OData v4 $filter, $orderby and $select as D365 F&O supports them, checked against an entity set.

A filter parses to a frozen AST, run as a SQLite WHERE clause (`to_sql`) or in Python (`evaluate`).
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation, localcontext
from typing import Literal, TypeAlias, TypeVar

from d365sim.entities import DATETIME, DECIMAL, ENUMS, INT32, INT64, NAMESPACE, STRING, EntitySet

__all__ = [
    "And",
    "Arith",
    "ArithOp",
    "BoolLit",
    "Compare",
    "CompareOp",
    "DateTimeLit",
    "DecimalLit",
    "EnumLit",
    "Expr",
    "IntLit",
    "Not",
    "NullLit",
    "ODataQueryError",
    "Or",
    "Property",
    "StringLit",
    "evaluate",
    "parse_filter",
    "parse_orderby",
    "parse_select",
    "render",
    "to_sql",
]

BOOLEAN = "Edm.Boolean"
_NULL_TYPE = "null"  # the type of the null literal, comparable with anything

CompareOp: TypeAlias = Literal["eq", "ne", "gt", "ge", "lt", "le"]
ArithOp: TypeAlias = Literal["add", "sub", "mul", "div", "mod"]


class ODataQueryError(ValueError):
    """A query option the service rejects; the message reads like D365's own."""


@dataclass(frozen=True)
class Property:
    name: str


@dataclass(frozen=True)
class StringLit:
    value: str


@dataclass(frozen=True)
class IntLit:
    value: int


@dataclass(frozen=True)
class DecimalLit:
    value: Decimal


@dataclass(frozen=True)
class BoolLit:
    value: bool


@dataclass(frozen=True)
class DateTimeLit:
    value: datetime  # timezone-aware; the parser normalises it to UTC


@dataclass(frozen=True)
class NullLit:
    pass


@dataclass(frozen=True)
class EnumLit:
    type_name: str  # short name, a key of ENUMS
    member: str


@dataclass(frozen=True)
class Compare:
    op: CompareOp
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Arith:
    op: ArithOp
    left: Expr
    right: Expr


@dataclass(frozen=True)
class And:
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Or:
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Not:
    operand: Expr


Expr: TypeAlias = (
    Property
    | StringLit
    | IntLit
    | DecimalLit
    | BoolLit
    | DateTimeLit
    | NullLit
    | EnumLit
    | Compare
    | Arith
    | And
    | Or
    | Not
)

_COMPARE_OPS: tuple[CompareOp, ...] = ("eq", "ne", "gt", "ge", "lt", "le")
_ADD_OPS: tuple[ArithOp, ...] = ("add", "sub")
_MUL_OPS: tuple[ArithOp, ...] = ("mul", "div", "mod")
_UNSUPPORTED_OPS = ("has", "in")
_OPERATOR_WORDS = frozenset(
    {*_COMPARE_OPS, *_ADD_OPS, *_MUL_OPS, *_UNSUPPORTED_OPS, "and", "or", "not"}
)
_KEYWORDS = _OPERATOR_WORDS | {"true", "false", "null"}

# ODL's operator kinds, which its type errors name.
_OPERATOR_KINDS = {
    "eq": "Equal",
    "ne": "NotEqual",
    "gt": "GreaterThan",
    "ge": "GreaterThanOrEqual",
    "lt": "LessThan",
    "le": "LessThanOrEqual",
    "add": "Add",
    "sub": "Subtract",
    "mul": "Multiply",
    "div": "Divide",
    "mod": "Modulo",
    "and": "And",
    "or": "Or",
}

# The parser spends several stack frames per parenthesis or `not`, and the checker, SQL builder,
# evaluator and renderer one to three per AST level, so both are capped well inside Python's
# default recursion limit. 250 levels is more than a D365 URL's length allows in practice.
_MAX_NESTING = 100
_MAX_DEPTH = 250
_TOO_DEEP = "The $filter expression is nested too deeply; at most {} levels are supported."

_INT32_RANGE = range(-(2**31), 2**31)
_INT64_RANGE = range(-(2**63), 2**63)

# --------------------------------------------------------------------------- lexer

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[mM]?")
_DATE_START = re.compile(r"\d{4}-\d{2}-\d{2}")
# Everything that could belong to a date-time literal, so a malformed one is reported whole.
_DATETIME_CANDIDATE = re.compile(r"[0-9A-Za-z:.+\-]+")
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_PUNCTUATION = "(),*"


@dataclass(frozen=True)
class _Token:
    kind: str  # "ident", "literal", "end", "error" or one of _PUNCTUATION
    text: str  # source text, or the message of an "error" token
    pos: int
    node: Expr | None = None  # the parsed value of a "literal" token


def _syntax_error(pos: int, text: str) -> ODataQueryError:
    return ODataQueryError(f"Syntax error at position {pos} in '{text}'.")


def _scan_string(text: str, quote: int) -> tuple[str, int] | None:
    """The value of the quoted string opening at `quote` and the index after it; None if open."""
    parts: list[str] = []
    i = quote + 1
    while True:
        j = text.find("'", i)
        if j < 0:
            return None
        parts.append(text[i:j])
        if text.startswith("'", j + 1):
            parts.append("'")
            i = j + 2
            continue
        return "".join(parts), j + 1


def _parse_datetime(raw: str) -> datetime | None:
    m = _DATETIME.fullmatch(raw)
    if m is None:
        return None
    year, month, day, hour, minute = (int(g) for g in m.group(1, 2, 3, 4, 5))
    second = int(m.group(6) or 0)
    # Python keeps microseconds; finer digits cannot matter against whole-second stored values.
    micro = int((m.group(7) or "").ljust(6, "0")[:6])
    tz = UTC
    if m.group(8) is None:
        off_h, off_m = int(m.group(10)), int(m.group(11))
        if off_h > 23 or off_m > 59:
            return None
        sign = -1 if m.group(9) == "-" else 1
        tz = timezone(sign * timedelta(hours=off_h, minutes=off_m))
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _number(raw: str) -> Expr:
    if raw[-1] in "mM":
        return DecimalLit(Decimal(raw[:-1]))
    if re.fullmatch(r"-?\d+", raw) and int(raw) in _INT64_RANGE:
        return IntLit(int(raw))
    return DecimalLit(Decimal(raw))


def _tokenize(text: str) -> list[_Token]:
    """Tokens up to the end or the first lexical error, which becomes an "error" token.

    Errors are deferred to the parser so an earlier, more telling problem (an unsupported
    function, say) is reported first.
    """
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            tokens.append(_Token("end", "", n))
            return tokens
        ch = text[i]
        if ch == "'":
            scanned = _scan_string(text, i)
            if scanned is None:
                message = f"There is an unterminated string literal at position {i} in '{text}'."
                tokens.append(_Token("error", message, i))
                return tokens
            value, end = scanned
            tokens.append(_Token("literal", text[i:end], i, StringLit(value)))
            i = end
            continue
        if _DATE_START.match(text, i):
            m = _DATETIME_CANDIDATE.match(text, i)
            assert m is not None  # _DATE_START matched, so at least its digits do
            raw = m.group()
            when = _parse_datetime(raw)
            if when is None:
                message = f"Unrecognized '{DATETIME}' literal '{raw}' at '{i}' in '{text}'."
                tokens.append(_Token("error", message, i))
                return tokens
            tokens.append(_Token("literal", raw, i, DateTimeLit(when)))
            i = m.end()
            continue
        m = _NUMBER.match(text, i)
        if m is not None:
            end = m.end()
            if end < n and (text[end].isalnum() or text[end] in "_."):
                tokens.append(_Token("error", str(_syntax_error(end, text)), end))
                return tokens
            tokens.append(_Token("literal", m.group(), i, _number(m.group())))
            i = end
            continue
        m = _IDENT.match(text, i)
        if m is not None:
            name, end = m.group(), m.end()
            if text.startswith("'", end) and name not in _KEYWORDS:
                scanned = _scan_string(text, end)
                if scanned is None:
                    message = (
                        f"There is an unterminated string literal at position {end} in '{text}'."
                    )
                    tokens.append(_Token("error", message, end))
                    return tokens
                member, end = scanned
                type_name = name.removeprefix(NAMESPACE + ".")
                tokens.append(_Token("literal", text[i:end], i, EnumLit(type_name, member)))
            else:
                tokens.append(_Token("ident", name, i))
            i = end
            continue
        if ch in _PUNCTUATION:
            tokens.append(_Token(ch, ch, i))
            i += 1
            continue
        tokens.append(_Token("error", str(_syntax_error(i, text)), i))
        return tokens


class _Stream:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0

    def peek(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind == "error":
            raise ODataQueryError(token.text)
        return token

    def advance(self) -> _Token:
        token = self.peek()
        if token.kind != "end":
            self.index += 1
        return token

    def at_word(self, *words: str) -> bool:
        token = self.peek()
        return token.kind == "ident" and token.text in words

    def error(self, token: _Token | None = None) -> ODataQueryError:
        return _syntax_error((token or self.peek()).pos, self.text)


# --------------------------------------------------------------------------- parser


class _FilterParser(_Stream):
    """Recursive descent; precedence from loosest: or, and, not, comparisons, add/sub, mul/div/mod.

    `not` takes a whole comparison (`not Price gt 5`), and comparisons chain to the left as in ODL.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.nesting = 0

    def parse(self) -> Expr:
        if self.peek().kind == "end":
            raise self.error()
        expr = self.or_expr()
        token = self.peek()
        if token.kind != "end":
            raise self.error(token)
        if _depth(expr) > _MAX_DEPTH:
            raise ODataQueryError(_TOO_DEEP.format(_MAX_DEPTH))
        return expr

    def nest(self, step: int) -> None:
        self.nesting += step
        if self.nesting > _MAX_NESTING:
            raise ODataQueryError(_TOO_DEEP.format(_MAX_NESTING))

    def or_expr(self) -> Expr:
        left = self.and_expr()
        while self.at_word("or"):
            self.advance()
            left = Or(left, self.and_expr())
        return left

    def and_expr(self) -> Expr:
        left = self.not_expr()
        while self.at_word("and"):
            self.advance()
            left = And(left, self.not_expr())
        return left

    def not_expr(self) -> Expr:
        if self.at_word("not"):
            self.advance()
            self.nest(1)
            operand = self.not_expr()
            self.nest(-1)
            return Not(operand)
        return self.compare_expr()

    def compare_expr(self) -> Expr:
        left = self.add_expr()
        while True:
            token = self.peek()
            if token.kind != "ident":
                return left
            if token.text in _UNSUPPORTED_OPS:
                raise _unsupported_operator(token.text)
            op = _lookup(token.text, _COMPARE_OPS)
            if op is None:
                return left
            self.advance()
            left = Compare(op, left, self.add_expr())

    def add_expr(self) -> Expr:
        left = self.mul_expr()
        while (op := self._arith_op(_ADD_OPS)) is not None:
            left = Arith(op, left, self.mul_expr())
        return left

    def mul_expr(self) -> Expr:
        left = self.primary()
        while (op := self._arith_op(_MUL_OPS)) is not None:
            left = Arith(op, left, self.primary())
        return left

    def _arith_op(self, ops: tuple[ArithOp, ...]) -> ArithOp | None:
        token = self.peek()
        op = _lookup(token.text, ops) if token.kind == "ident" else None
        if op is not None:
            self.advance()
        return op

    def primary(self) -> Expr:
        token = self.peek()
        if token.kind == "(":
            self.advance()
            self.nest(1)
            expr = self.or_expr()
            if self.peek().kind != ")":
                raise self.error()
            self.advance()
            self.nest(-1)
            return expr
        if token.kind == "literal":
            assert token.node is not None
            self.advance()
            return token.node
        if token.kind != "ident" or token.text in _OPERATOR_WORDS:
            raise self.error(token)
        self.advance()
        if token.text == "true":
            return BoolLit(True)
        if token.text == "false":
            return BoolLit(False)
        if token.text == "null":
            return NullLit()
        if self.peek().kind == "(":
            raise _unsupported_function(token.text)
        return Property(token.text)


_Op = TypeVar("_Op", bound=str)


def _lookup(word: str, options: tuple[_Op, ...]) -> _Op | None:
    for option in options:
        if option == word:
            return option
    return None


def _unsupported_operator(word: str) -> ODataQueryError:
    hint = "combine eq comparisons with or" if word == "in" else "compare with eq or ne"
    return ODataQueryError(
        f"The '{word}' operator is not supported by Dynamics 365 Finance and Operations; {hint}."
    )


def _unsupported_function(name: str) -> ODataQueryError:
    message = (
        f"The function '{name}' is not supported by Dynamics 365 Finance and Operations $filter"
    )
    if name in ("contains", "startswith", "endswith"):
        return ODataQueryError(f"{message}; use eq with * wildcards, e.g. Name eq '*text*'.")
    return ODataQueryError(f"{message}.")


def _children(expr: Expr) -> tuple[Expr, ...]:
    match expr:
        case Compare(_, left, right) | Arith(_, left, right) | And(left, right) | Or(left, right):
            return (left, right)
        case Not(operand):
            return (operand,)
        case _:
            return ()


def _depth(expr: Expr) -> int:
    # Iterative, since the point is to refuse trees too deep for the recursive passes.
    deepest = 0
    stack = [(expr, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in _children(node))
    return deepest


# --------------------------------------------------------------------------- type checking


def _not_found(name: str, entity: EntitySet) -> ODataQueryError:
    return ODataQueryError(
        f"Could not find a property named '{name}' on type '{NAMESPACE}.{entity.type_name}'."
    )


def _incompatible(op: str, left: str, right: str) -> ODataQueryError:
    return ODataQueryError(
        "A binary operator with incompatible types was detected. Found operand types "
        f"'{left}' and '{right}' for operator kind '{_OPERATOR_KINDS[op]}'."
    )


_NUMERIC = (INT32, INT64, DECIMAL)
_NOT_BOOLEAN = "The $filter expression must evaluate to a single boolean value."


def _is_enum_type(edm_type: str) -> bool:
    return edm_type.startswith(NAMESPACE + ".")


def _type_of(expr: Expr, entity: EntitySet) -> str:
    """The Edm type of `expr`, raising ODataQueryError where D365 would refuse it."""
    match expr:
        case Property(name):
            found = entity.field_by_name.get(name)
            if found is None:
                raise _not_found(name, entity)
            return found.edm_type
        case StringLit():
            return STRING
        case IntLit(value):
            return INT32 if value in _INT32_RANGE else INT64
        case DecimalLit():
            return DECIMAL
        case BoolLit():
            return BOOLEAN
        case DateTimeLit():
            return DATETIME
        case NullLit():
            return _NULL_TYPE
        case EnumLit(type_name, member):
            if type_name not in ENUMS:
                # A dotted name kept its foreign namespace when lexed; show it as written.
                written = type_name if "." in type_name else f"{NAMESPACE}.{type_name}"
                raise ODataQueryError(f"The enum type '{written}' is not defined.")
            full = f"{NAMESPACE}.{type_name}"
            if member not in ENUMS[type_name]:
                raise ODataQueryError(
                    f"The string '{member}' is not a valid enumeration type constant "
                    f"of '{full}'; members are {', '.join(ENUMS[type_name])}."
                )
            return full
        case Arith(op, left, right):
            types = (_type_of(left, entity), _type_of(right, entity))
            if any(t not in (*_NUMERIC, _NULL_TYPE) for t in types):
                raise _incompatible(op, *types)
            for widest in (DECIMAL, INT64, INT32):
                if widest in types:
                    return widest
            return _NULL_TYPE
        case Compare(op, left, right):
            _check_comparable(op, _type_of(left, entity), _type_of(right, entity))
            return BOOLEAN
        case And(left, right) | Or(left, right):
            types = (_type_of(left, entity), _type_of(right, entity))
            if types != (BOOLEAN, BOOLEAN):
                raise _incompatible("and" if isinstance(expr, And) else "or", *types)
            return BOOLEAN
        case Not(operand):
            operand_type = _type_of(operand, entity)
            if operand_type != BOOLEAN:
                raise ODataQueryError(
                    "A unary operator with an incompatible type was detected. "
                    f"Found operand type '{operand_type}' for operator kind 'Not'."
                )
            return BOOLEAN


def _check_comparable(op: CompareOp, left: str, right: str) -> None:
    known = right if left == _NULL_TYPE else left
    if (
        left != right
        and _NULL_TYPE not in (left, right)
        and not (left in _NUMERIC and right in _NUMERIC)
    ):
        raise _incompatible(op, left, right)
    if op in ("eq", "ne"):
        return
    # D365 documents enum filters as eq/ne only; ordering booleans has no meaning there either.
    if _is_enum_type(known):
        raise ODataQueryError(
            f"Enum values can only be compared with eq or ne; found '{op}' on type '{known}'."
        )
    if known == BOOLEAN:
        raise ODataQueryError(f"Boolean values can only be compared with eq or ne; found '{op}'.")


def _check_filter(expr: Expr, entity: EntitySet) -> None:
    if _type_of(expr, entity) != BOOLEAN:
        raise ODataQueryError(_NOT_BOOLEAN)


# --------------------------------------------------------------------------- public parsing


def parse_filter(text: str, entity: EntitySet) -> Expr:
    """Parse a $filter value and check its properties, enum literals and operand types."""
    expr = _FilterParser(text).parse()
    _check_filter(expr, entity)
    return expr


def parse_orderby(text: str, entity: EntitySet) -> list[tuple[str, bool]]:
    """Parse `$orderby=A desc,B asc` into (field, descending) pairs; blank means no ordering."""
    if not text.strip():
        return []
    stream = _Stream(text)
    items: list[tuple[str, bool]] = []
    while True:
        name = _expect_property(stream, entity)
        descending = False
        if stream.at_word("asc", "desc"):
            descending = stream.advance().text == "desc"
        items.append((name, descending))
        if not _next_item(stream):
            return items


def parse_select(text: str, entity: EntitySet) -> list[str]:
    """Parse `$select=A,B` into field names, `*` meaning all; blank means all fields too."""
    if not text.strip():
        return list(entity.field_names)
    stream = _Stream(text)
    names: list[str] = []
    while True:
        if stream.peek().kind == "*":
            stream.advance()
            names.extend(entity.field_names)
        else:
            names.append(_expect_property(stream, entity))
        if not _next_item(stream):
            return list(dict.fromkeys(names))


def _expect_property(stream: _Stream, entity: EntitySet) -> str:
    token = stream.peek()
    if token.kind != "ident":
        raise stream.error(token)
    stream.advance()
    if token.text not in entity.field_by_name:
        raise _not_found(token.text, entity)
    return token.text


def _next_item(stream: _Stream) -> bool:
    token = stream.peek()
    if token.kind == "end":
        return False
    if token.kind != ",":
        raise stream.error(token)
    stream.advance()
    return True


# --------------------------------------------------------------------------- shared semantics


def _wildcard(expr: Compare) -> tuple[Expr, str] | None:
    """(subject, pattern) when `expr` is D365's wildcard match: eq/ne against a '*' string."""
    if expr.op not in ("eq", "ne"):
        return None
    if isinstance(expr.right, StringLit) and "*" in expr.right.value:
        return expr.left, expr.right.value
    if isinstance(expr.left, StringLit) and "*" in expr.left.value:
        return expr.right, expr.left.value
    return None


# The store's NOCASE collation and LIKE fold ASCII letters only, so Python must match that.
_ASCII_FOLD = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _fold(text: str) -> str:
    return text.translate(_ASCII_FOLD)


def _format_datetime(value: datetime) -> str:
    """The store's text form; strftime is avoided because it drops zero padding on small years."""
    v = value.astimezone(UTC) if value.tzinfo is not None else value
    text = f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
    return f"{text}.{v.microsecond:06d}Z" if v.microsecond else f"{text}Z"


# --------------------------------------------------------------------------- SQL

_SQL_COMPARE = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_SQL_ARITH = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_FLIPPED: dict[CompareOp, CompareOp] = {
    "eq": "eq",
    "ne": "ne",
    "gt": "lt",
    "ge": "le",
    "lt": "gt",
    "le": "ge",
}
_LIKE_ESCAPE = "\\"


def to_sql(expr: Expr, entity: EntitySet) -> tuple[str, list[object]]:
    """A SQLite WHERE condition with `?` parameters selecting the rows `evaluate` accepts.

    Columns are named after the fields; strings and enums are TEXT COLLATE NOCASE, decimals
    REAL, integers INTEGER and date-times UTC TEXT 'YYYY-MM-DDTHH:MM:SSZ'.
    """
    _check_filter(expr, entity)
    builder = _SqlBuilder(entity)
    return builder.condition(expr, nullsafe=False), builder.params


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _like_pattern(pattern: str) -> str:
    def escape(part: str) -> str:
        for special in (_LIKE_ESCAPE, "%", "_"):
            part = part.replace(special, _LIKE_ESCAPE + special)
        return part

    return "%".join(escape(part) for part in pattern.split("*"))


def _has_property(expr: Expr) -> bool:
    return isinstance(expr, Property) or any(_has_property(c) for c in _children(expr))


def _nullable(expr: Expr) -> bool:
    """Whether the SQL for a value expression can be NULL (division by zero is NULL in SQLite)."""
    match expr:
        case Property() | NullLit():
            return True
        case Arith(op, left, right):
            return op in ("div", "mod") or _nullable(left) or _nullable(right)
        case _:
            return False


class _SqlBuilder:
    def __init__(self, entity: EntitySet) -> None:
        self.entity = entity
        self.params: list[object] = []

    def param(self, value: object) -> str:
        self.params.append(value)
        return "?"

    def condition(self, expr: Expr, nullsafe: bool) -> str:
        """SQL for a boolean expression.

        SQL's NULL acts as false only where it is not negated, so under `not` (`nullsafe`) every
        comparison must yield 0 or 1 to keep OData's two-valued logic.
        """
        match expr:
            case BoolLit(value):
                return "1" if value else "0"
            case And(left, right):
                return f"({self.condition(left, nullsafe)} AND {self.condition(right, nullsafe)})"
            case Or(left, right):
                return f"({self.condition(left, nullsafe)} OR {self.condition(right, nullsafe)})"
            case Not(operand):
                return f"(NOT {self.condition(operand, nullsafe=True)})"
            case Compare():
                return self.compare(expr, nullsafe)
            case _:
                raise ODataQueryError(_NOT_BOOLEAN)

    def compare(self, expr: Compare, nullsafe: bool) -> str:
        if not _has_property(expr):
            # Constants are folded so literal-only comparisons follow evaluate() exactly.
            return "1" if evaluate(expr, {}) else "0"
        wildcard = _wildcard(expr)
        if wildcard is not None:
            subject, pattern = wildcard
            column = self.operand(subject)
            negation = "NOT " if expr.op == "ne" else ""
            placeholder = self.param(_like_pattern(pattern))
            sql = f"{column} {negation}LIKE {placeholder} ESCAPE '{_LIKE_ESCAPE}'"
            if not _nullable(subject):
                return sql
            # A null subject is "not equal" to any pattern, so ne must hold for it.
            if expr.op == "ne":
                return f"COALESCE({sql}, 1)"
            return f"COALESCE({sql}, 0)" if nullsafe else sql
        op, left, right = expr.op, expr.left, expr.right
        if isinstance(left, NullLit) or isinstance(right, NullLit):
            other = right if isinstance(left, NullLit) else left
            if op == "eq":
                return f"{self.operand(other)} IS NULL"
            if op == "ne":
                return f"{self.operand(other)} IS NOT NULL"
            return "0"
        types = (_type_of(left, self.entity), _type_of(right, self.entity))
        collate = " COLLATE NOCASE" if any(t == STRING or _is_enum_type(t) for t in types) else ""
        nullable = _nullable(left) or _nullable(right)
        if op in ("eq", "ne"):
            # IS keeps eq/ne null-safe: null equals only null, as OData defines.
            sql_op = ("IS" if op == "eq" else "IS NOT") if nullable else _SQL_COMPARE[op]
            return f"{self.operand(left)} {sql_op} {self.operand(right)}{collate}"
        if isinstance(left, DateTimeLit):
            op, left, right = _FLIPPED[op], right, left
        if isinstance(right, DateTimeLit) and right.value.microsecond:
            # Stored date-times have whole seconds, so against a fractional t:
            # x > t and x >= t mean x > floor(t); x < t and x <= t mean x <= floor(t).
            sql_op = ">" if op in ("gt", "ge") else "<="
            floor = _format_datetime(right.value.replace(microsecond=0))
            sql = f"{self.operand(left)} {sql_op} {self.param(floor)}"
        else:
            sql = f"{self.operand(left)} {_SQL_COMPARE[op]} {self.operand(right)}{collate}"
        return f"COALESCE({sql}, 0)" if nullsafe and nullable else sql

    def operand(self, expr: Expr) -> str:
        match expr:
            case Property(name):
                if name not in self.entity.field_by_name:
                    raise _not_found(name, self.entity)
                return _quote(name)
            case StringLit(value) | IntLit(value):
                return self.param(value)
            case DecimalLit(value):
                return self.param(float(value))
            case DateTimeLit(value):
                return self.param(_format_datetime(value))
            case EnumLit(_, member):
                return self.param(member)
            case NullLit():
                return "NULL"
            case BoolLit(value):
                return "1" if value else "0"
            case Arith("mod", left, right):
                integral = (INT32, INT64, _NULL_TYPE)
                if (
                    _type_of(left, self.entity) in integral
                    and _type_of(right, self.entity) in integral
                ):
                    return f"({self.operand(left)} % {self.operand(right)})"
                # SQLite's % truncates REAL operands to integers; OData's mod keeps the fraction.
                a, b = self.operand(left), self.operand(right)
                c, d = self.operand(left), self.operand(right)
                return f"({a} - {b} * CAST({c} / {d} AS INTEGER))"
            case Arith(op, left, right):
                return f"({self.operand(left)} {_SQL_ARITH[op]} {self.operand(right)})"
            case Compare() | And() | Or() | Not():
                return f"({self.condition(expr, nullsafe=True)})"


# --------------------------------------------------------------------------- Python evaluation


def evaluate(expr: Expr, row: Mapping[str, object]) -> bool:
    """Whether `row` satisfies the filter, with the same semantics as `to_sql`.

    Strings compare case-insensitively, '*' in an eq/ne string literal is a wildcard, eq/ne
    treat null as a value equal only to itself, and other comparisons with null are false.
    Missing fields are null; division by zero gives null, as in SQLite.
    """
    match expr:
        case BoolLit(value):
            return value
        case And(left, right):
            return evaluate(left, row) and evaluate(right, row)
        case Or(left, right):
            return evaluate(left, row) or evaluate(right, row)
        case Not(operand):
            return not evaluate(operand, row)
        case Compare():
            return _evaluate_compare(expr, row)
        case _:
            return _value(expr, row) is True


def _value(expr: Expr, row: Mapping[str, object]) -> object:
    match expr:
        case Property(name):
            return _normalise(row.get(name))
        case StringLit(value) | IntLit(value) | DecimalLit(value) | BoolLit(value):
            return value
        case DateTimeLit(value):
            return value
        case EnumLit(_, member):
            return member
        case NullLit():
            return None
        case Arith(op, left, right):
            return _arith(op, _value(left, row), _value(right, row))
        case Compare() | And() | Or() | Not():
            return evaluate(expr, row)


def _normalise(value: object) -> object:
    # Rows may come from JSON (floats) or naive datetimes; the store would hold REAL and UTC.
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _arith(op: ArithOp, a: object, b: object) -> object:
    if a is None or b is None:
        return None
    if not isinstance(a, int | Decimal) or not isinstance(b, int | Decimal):
        raise TypeError(f"cannot apply {op} to {a!r} and {b!r}")
    if isinstance(a, int) and isinstance(b, int):
        return _int_arith(op, a, b)
    x, y = Decimal(a), Decimal(b)
    if op == "add":
        return x + y
    if op == "sub":
        return x - y
    if op == "mul":
        return x * y
    if y == 0:
        return None
    if op == "div":
        return x / y
    # Decimal's % truncates toward zero like SQL; more precision keeps big quotients exact.
    with localcontext() as ctx:
        ctx.prec = 100
        try:
            return x % y
        except InvalidOperation:
            return None


def _int_arith(op: ArithOp, a: int, b: int) -> int | None:
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    if b == 0:
        return None
    # Integer division truncates toward zero in SQL, unlike Python's floor division.
    quotient = abs(a) // abs(b)
    if (a < 0) != (b < 0):
        quotient = -quotient
    return quotient if op == "div" else a - b * quotient


def _evaluate_compare(expr: Compare, row: Mapping[str, object]) -> bool:
    wildcard = _wildcard(expr)
    if wildcard is not None:
        subject, pattern = wildcard
        value = _value(subject, row)
        matched = isinstance(value, str) and _pattern_regex(pattern).fullmatch(_fold(value))
        return bool(matched) == (expr.op == "eq")
    left, right = _value(expr.left, row), _value(expr.right, row)
    if expr.op in ("eq", "ne"):
        if left is None or right is None:
            equal = left is None and right is None
        else:
            equal = _order(left, right) == 0
        return equal == (expr.op == "eq")
    if left is None or right is None:
        return False
    order = _order(left, right)
    if expr.op == "gt":
        return order > 0
    if expr.op == "ge":
        return order >= 0
    if expr.op == "lt":
        return order < 0
    return order <= 0


def _order(a: object, b: object) -> int:
    if isinstance(a, str) and isinstance(b, str):
        x, y = _fold(a), _fold(b)
        return (x > y) - (x < y)
    if isinstance(a, datetime) and isinstance(b, datetime):
        return (a > b) - (a < b)
    if isinstance(a, int | Decimal) and isinstance(b, int | Decimal):
        return (a > b) - (a < b)
    raise TypeError(f"cannot compare {a!r} with {b!r}")


@functools.lru_cache(maxsize=256)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(_fold(part)) for part in pattern.split("*")), re.DOTALL)


# --------------------------------------------------------------------------- rendering

_PRECEDENCE: dict[type, int] = {Or: 1, And: 2, Not: 3, Compare: 4}
_ARITH_PRECEDENCE = {"add": 5, "sub": 5, "mul": 6, "div": 6, "mod": 6}
_ATOM = 7


def _precedence(expr: Expr) -> int:
    if isinstance(expr, Arith):
        return _ARITH_PRECEDENCE[expr.op]
    return _PRECEDENCE.get(type(expr), _ATOM)


def render(expr: Expr) -> str:
    """The $filter text for `expr`, with only the parentheses it needs; parses back to `expr`."""
    match expr:
        case Property(name):
            return name
        case StringLit(value):
            return "'" + value.replace("'", "''") + "'"
        case IntLit(value):
            return str(value)
        case DecimalLit(value):
            text = format(value, "f")
            # Without a point the literal would parse back as an integer.
            return text if "." in text else f"{text}.0"
        case BoolLit(value):
            return "true" if value else "false"
        case DateTimeLit(value):
            return _format_datetime(value)
        case NullLit():
            return "null"
        case EnumLit(type_name, member):
            return f"{NAMESPACE}.{type_name}'" + member.replace("'", "''") + "'"
        case Not(operand):
            return f"not {_wrap(operand, _precedence(expr))}"
        case Compare(op, left, right) | Arith(op, left, right):
            return _render_binary(expr, op, left, right)
        case And(left, right):
            return _render_binary(expr, "and", left, right)
        case Or(left, right):
            return _render_binary(expr, "or", left, right)


def _render_binary(expr: Expr, op: str, left: Expr, right: Expr) -> str:
    level = _precedence(expr)
    # Operators associate to the left, so an equal-precedence right operand needs parentheses.
    return f"{_wrap(left, level)} {op} {_wrap(right, level + 1)}"


def _wrap(expr: Expr, level: int) -> str:
    text = render(expr)
    return f"({text})" if _precedence(expr) < level else text
