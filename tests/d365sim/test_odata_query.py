"""Tests for $filter/$orderby/$select parsing, the SQLite translation and the Python evaluator."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import FrozenInstanceError, dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d365sim.entities import BY_NAME, DECIMAL, ENUMS, INT32, INT64, EntitySet, Field
from d365sim.odata_query import (
    And,
    Arith,
    ArithOp,
    BoolLit,
    Compare,
    CompareOp,
    DateTimeLit,
    DecimalLit,
    EnumLit,
    Expr,
    IntLit,
    Not,
    NullLit,
    ODataQueryError,
    Or,
    Property,
    StringLit,
    evaluate,
    parse_filter,
    parse_orderby,
    parse_select,
    render,
    to_sql,
)

PRICES = BY_NAME["SalesPriceAgreements"]
CUSTOMERS = BY_NAME["CustomersV3"]


def p(name: str) -> Property:
    return Property(name)


def parse(text: str) -> Expr:
    return parse_filter(text, PRICES)


def error_of(text: str, entity: EntitySet = PRICES) -> str:
    with pytest.raises(ODataQueryError) as info:
        parse_filter(text, entity)
    return str(info.value)


# --------------------------------------------------------------------------- SQLite harness


def column_type(field: Field) -> str:
    if field.type == DECIMAL:
        return "REAL"
    if field.type in (INT32, INT64):
        return "INTEGER"
    return "TEXT COLLATE NOCASE"


def to_column(value: object) -> object:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


def load(entity: EntitySet, rows: Sequence[Mapping[str, object]]) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    columns = ", ".join(f'"{f.name}" {column_type(f)}' for f in entity.fields)
    db.execute(f"CREATE TABLE t ({columns})")
    names = entity.field_names
    quoted = ", ".join(f'"{n}"' for n in names)
    db.executemany(
        f"INSERT INTO t ({quoted}) VALUES ({', '.join('?' for _ in names)})",
        [[to_column(row.get(n)) for n in names] for row in rows],
    )
    return db


def sql_matches(expr: Expr, rows: Sequence[Mapping[str, object]]) -> set[int]:
    where, params = to_sql(expr, PRICES)
    with load(PRICES, rows) as db:
        found = db.execute(f"SELECT rowid - 1 FROM t WHERE {where}", params).fetchall()
    return {index for (index,) in found}


def python_matches(expr: Expr, rows: Sequence[Mapping[str, object]]) -> set[int]:
    return {i for i, row in enumerate(rows) if evaluate(expr, row)}


def assert_same(text: str, rows: Sequence[Mapping[str, object]], expected: set[int]) -> None:
    expr = parse(text)
    assert python_matches(expr, rows) == expected
    assert sql_matches(expr, rows) == expected


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("op", ["eq", "ne", "gt", "ge", "lt", "le"])
def test_comparison_operators(op: CompareOp) -> None:
    assert parse(f"Price {op} 5") == Compare(op, p("Price"), IntLit(5))


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "mod"])
def test_arithmetic_operators(op: ArithOp) -> None:
    expected = Compare("gt", Arith(op, p("Price"), IntLit(2)), IntLit(0))
    assert parse(f"Price {op} 2 gt 0") == expected


def test_logical_operators() -> None:
    a = Compare("eq", p("ItemNumber"), StringLit("A"))
    b = Compare("gt", p("Price"), IntLit(1))
    assert parse("ItemNumber eq 'A' and Price gt 1") == And(a, b)
    assert parse("ItemNumber eq 'A' or Price gt 1") == Or(a, b)
    assert parse("not ItemNumber eq 'A'") == Not(a)
    assert parse("not (ItemNumber eq 'A')") == Not(a)
    assert parse("not not ItemNumber eq 'A'") == Not(Not(a))


def test_precedence() -> None:
    a = Compare("eq", p("ItemNumber"), StringLit("A"))
    b = Compare("eq", p("ItemNumber"), StringLit("B"))
    c = Compare("eq", p("ItemNumber"), StringLit("C"))
    # and binds tighter than or, not tighter than and, parentheses override.
    assert parse("ItemNumber eq 'A' or ItemNumber eq 'B' and ItemNumber eq 'C'") == Or(a, And(b, c))
    assert parse("not ItemNumber eq 'A' and ItemNumber eq 'B'") == And(Not(a), b)
    assert parse("(ItemNumber eq 'A' or ItemNumber eq 'B') and ItemNumber eq 'C'") == And(
        Or(a, b), c
    )
    # mul/div/mod over add/sub over comparisons; same level associates left.
    assert parse("Price add 2 mul 3 gt 1") == Compare(
        "gt", Arith("add", p("Price"), Arith("mul", IntLit(2), IntLit(3))), IntLit(1)
    )
    assert parse("Price sub 2 sub 3 gt 1") == Compare(
        "gt", Arith("sub", Arith("sub", p("Price"), IntLit(2)), IntLit(3)), IntLit(1)
    )
    assert parse("Price div 2 mod 3 eq 1") == Compare(
        "eq", Arith("mod", Arith("div", p("Price"), IntLit(2)), IntLit(3)), IntLit(1)
    )
    assert parse("(Price add 2) mul 3 gt 1") == Compare(
        "gt", Arith("mul", Arith("add", p("Price"), IntLit(2)), IntLit(3)), IntLit(1)
    )


def test_literals() -> None:
    assert parse("ItemNumber eq 'O''Brien'") == Compare("eq", p("ItemNumber"), StringLit("O'Brien"))
    assert parse("ItemNumber eq ''") == Compare("eq", p("ItemNumber"), StringLit(""))
    assert parse("Price eq 12.50") == Compare("eq", p("Price"), DecimalLit(Decimal("12.50")))
    assert parse("Price eq 12.5m") == Compare("eq", p("Price"), DecimalLit(Decimal("12.5")))
    assert parse("Price eq 3M") == Compare("eq", p("Price"), DecimalLit(Decimal(3)))
    assert parse("Price eq -3") == Compare("eq", p("Price"), IntLit(-3))
    assert parse("Price eq -0.25") == Compare("eq", p("Price"), DecimalLit(Decimal("-0.25")))
    assert parse("Price eq 1.5e2") == Compare("eq", p("Price"), DecimalLit(Decimal("150")))
    assert parse("RecordId eq 9223372036854775807") == Compare(
        "eq", p("RecordId"), IntLit(2**63 - 1)
    )
    assert parse("RecordId eq null") == Compare("eq", p("RecordId"), NullLit())
    assert parse("true") == BoolLit(True)
    assert parse("(Price gt 1) eq false") == Compare(
        "eq", Compare("gt", p("Price"), IntLit(1)), BoolLit(False)
    )


def test_enum_literals_long_and_short() -> None:
    expected = Compare("eq", p("WillSearchContinue"), EnumLit("NoYes", "Yes"))
    assert parse("WillSearchContinue eq Microsoft.Dynamics.DataEntities.NoYes'Yes'") == expected
    assert parse("WillSearchContinue eq NoYes'Yes'") == expected
    assert parse("WillSearchContinue ne NoYes'No'") == Compare(
        "ne", p("WillSearchContinue"), EnumLit("NoYes", "No")
    )


def test_datetime_literals_normalise_to_utc() -> None:
    def literal(text: str) -> datetime:
        expr = parse(f"PriceApplicableFromDate ge {text}")
        assert isinstance(expr, Compare) and isinstance(expr.right, DateTimeLit)
        return expr.right.value

    assert literal("2024-01-31T00:00:00Z") == datetime(2024, 1, 31, tzinfo=UTC)
    assert literal("2024-01-31T00:00Z") == datetime(2024, 1, 31, tzinfo=UTC)
    assert literal("2024-01-31T01:30:00+01:30") == datetime(2024, 1, 31, tzinfo=UTC)
    assert literal("2024-01-30T22:00:00-02:00") == datetime(2024, 1, 31, tzinfo=UTC)
    assert literal("2024-01-31T00:00:00.1234567Z") == datetime(
        2024, 1, 31, 0, 0, 0, 123456, tzinfo=UTC
    )
    assert literal("2024-01-31T00:00:00.000Z").tzinfo == UTC


def test_whitespace_and_operator_spacing() -> None:
    assert parse("  ( Price  gt 1 )  ") == Compare("gt", p("Price"), IntLit(1))
    assert parse("ItemNumber eq'A'") == Compare("eq", p("ItemNumber"), StringLit("A"))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Price gt", "Syntax error at position 8 in 'Price gt'."),
        ("Price gt 1 and", "Syntax error at position 14 in 'Price gt 1 and'."),
        ("", "Syntax error at position 0 in ''."),
        ("Price GT 1", "Syntax error at position 6 in 'Price GT 1'."),
        ("Price gt 1 AND Price lt 2", "Syntax error at position 11 in"),
        ("(Price gt 1", "Syntax error at position 11 in '(Price gt 1'."),
        ("Price gt 1)", "Syntax error at position 10 in 'Price gt 1)'."),
        ("Price eq 5d", "Syntax error at position 10 in 'Price eq 5d'."),
        ("Price eq -Price", "Syntax error at position 9 in 'Price eq -Price'."),
        ("Price eq 1 eq", "Syntax error at position 13"),
        ('ItemNumber eq "A"', "Syntax error at position 14"),
        ("ItemNumber eq 'abc", "There is an unterminated string literal at position 14 in"),
        (
            "PriceApplicableFromDate gt 2024-02-30T00:00:00Z",
            "Unrecognized 'Edm.DateTimeOffset' literal '2024-02-30T00:00:00Z' at '27'",
        ),
        ("PriceApplicableFromDate gt 2024-01-31", "literal '2024-01-31'"),
        ("PriceApplicableFromDate gt 2024-01-31T00:00:00", "literal '2024-01-31T00:00:00'"),
    ],
)
def test_syntax_errors(text: str, message: str) -> None:
    assert message in error_of(text)


def test_depth_limits_keep_recursion_bounded() -> None:
    def chain(n: int) -> str:
        return " or ".join(f"ItemNumber eq '{i}'" for i in range(n))

    expr = parse(chain(240))
    assert evaluate(expr, {"ItemNumber": "239"})
    assert to_sql(expr, PRICES)[1][-1] == "239"
    assert parse(render(expr)) == expr
    assert "nested too deeply; at most 250 levels" in error_of(chain(260))
    assert parse("(" * 100 + "Price gt 1" + ")" * 100) == Compare("gt", p("Price"), IntLit(1))
    assert "at most 100 levels" in error_of("(" * 101 + "Price gt 1" + ")" * 101)
    assert "at most 100 levels" in error_of("not " * 101 + "Price gt 1")


def test_unknown_property_names_the_entity_type() -> None:
    assert error_of("Foo eq 1", CUSTOMERS) == (
        "Could not find a property named 'Foo' "
        "on type 'Microsoft.Dynamics.DataEntities.CustomerV3'."
    )
    # OData property names are case-sensitive.
    assert "named 'price'" in error_of("price eq 1")


def test_unsupported_operators_and_functions() -> None:
    assert "The 'in' operator is not supported" in error_of("ItemNumber in ('A','B')")
    assert "The 'has' operator is not supported" in error_of("WillSearchContinue has NoYes'Yes'")
    message = error_of("contains(ItemNumber,'abc')")
    assert "The function 'contains' is not supported" in message
    assert "'*text*'" in message
    assert "The function 'tolower' is not supported" in error_of("tolower(ItemNumber) eq 'a'")
    assert "'startswith'" in error_of("startswith(ItemNumber,'a') eq true")


def test_type_errors() -> None:
    assert error_of("Price eq 'a'") == (
        "A binary operator with incompatible types was detected. Found operand types "
        "'Edm.Decimal' and 'Edm.String' for operator kind 'Equal'."
    )
    assert "'Edm.String' and 'Edm.Int32' for operator kind 'Add'" in error_of(
        "ItemNumber add 1 eq 2"
    )
    assert "for operator kind 'And'" in error_of("Price and true")
    assert "operand type 'Edm.Decimal' for operator kind 'Not'" in error_of("not Price")
    assert error_of("Price") == "The $filter expression must evaluate to a single boolean value."
    assert "'Edm.DateTimeOffset' and 'Edm.String'" in error_of(
        "PriceApplicableFromDate gt '2024-01-01'"
    )
    # An enum only compares with its own type's literals, and only with eq/ne.
    assert "'Microsoft.Dynamics.DataEntities.NoYes' and 'Edm.String'" in error_of(
        "WillSearchContinue eq 'Yes'"
    )
    assert "only be compared with eq or ne" in error_of("WillSearchContinue gt NoYes'No'")
    assert "NoYes' and 'Microsoft.Dynamics.DataEntities.SalesStatus'" in error_of(
        "WillSearchContinue eq SalesStatus'Invoiced'"
    )


def test_enum_literal_validation() -> None:
    assert "'Maybe' is not a valid enumeration type constant" in error_of(
        "WillSearchContinue eq NoYes'Maybe'"
    )
    assert "members are No, Yes" in error_of("WillSearchContinue eq NoYes'yes'")
    assert (
        error_of("WillSearchContinue eq YesNo'Yes'")
        == "The enum type 'Microsoft.Dynamics.DataEntities.YesNo' is not defined."
    )
    assert "'Other.NoYes' is not defined" in error_of("WillSearchContinue eq Other.NoYes'Yes'")


# --------------------------------------------------------------------------- SQL


def test_sql_basic_shapes() -> None:
    assert to_sql(parse("Price gt 5"), PRICES) == ('"Price" > ?', [5])
    assert to_sql(parse("ItemNumber eq null"), PRICES) == ('"ItemNumber" IS NULL', [])
    assert to_sql(parse("ItemNumber ne null"), PRICES) == ('"ItemNumber" IS NOT NULL', [])
    assert to_sql(parse("ItemNumber eq 'a'"), PRICES) == ('"ItemNumber" IS ? COLLATE NOCASE', ["a"])
    assert to_sql(parse("Price eq 1.25"), PRICES) == ('"Price" IS ?', [1.25])
    assert to_sql(parse("WillSearchContinue eq NoYes'Yes'"), PRICES) == (
        '"WillSearchContinue" IS ? COLLATE NOCASE',
        ["Yes"],
    )
    assert to_sql(parse("PriceApplicableFromDate lt 2024-01-31T02:00:00+02:00"), PRICES) == (
        '"PriceApplicableFromDate" < ?',
        ["2024-01-31T00:00:00Z"],
    )
    _, params = to_sql(parse("Price gt 1 and (ItemNumber eq 'a' or not Price lt 0)"), PRICES)
    assert params == [1, "a", 0]
    assert isinstance(params[0], int)
    assert isinstance(to_sql(parse("Price gt 1.5"), PRICES)[1][0], float)


def test_sql_wildcards_escape_like_specials() -> None:
    assert to_sql(parse("ItemNumber eq '*10%_off\\*'"), PRICES) == (
        "\"ItemNumber\" LIKE ? ESCAPE '\\'",
        ["%10\\%\\_off\\\\%"],
    )
    assert to_sql(parse("ItemNumber ne 'A*'"), PRICES) == (
        "COALESCE(\"ItemNumber\" NOT LIKE ? ESCAPE '\\', 1)",
        ["A%"],
    )


def test_sql_is_parameterised() -> None:
    sql, params = to_sql(parse("ItemNumber eq 'x'' OR 1=1 --'"), PRICES)
    assert "OR 1=1" not in sql
    assert params == ["x' OR 1=1 --"]


# --------------------------------------------------------------------------- semantics

ROWS: list[dict[str, object]] = [
    {"ItemNumber": "A-100", "Price": Decimal("10.5"), "RecordId": 7},
    {"ItemNumber": "a-200", "Price": Decimal("3"), "RecordId": -7},
    {"ItemNumber": "B-100", "Price": None, "RecordId": 8},
    {"ItemNumber": "", "Price": Decimal("0"), "RecordId": None},
    {"ItemNumber": "10%_off", "Price": Decimal("-2.25"), "RecordId": 0},
    {"ItemNumber": None, "Price": Decimal("1"), "RecordId": 1},
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ItemNumber eq 'a-100'", {0}),
        ("ItemNumber eq 'A*'", {0, 1}),
        ("ItemNumber eq '*100'", {0, 2}),
        ("ItemNumber eq '*-*'", {0, 1, 2}),
        ("ItemNumber eq 'a*0*0'", {0, 1}),
        ("ItemNumber eq '*'", {0, 1, 2, 3, 4}),
        ("ItemNumber ne 'A*'", {2, 3, 4, 5}),
        ("ItemNumber eq '*%*'", {4}),
        ("ItemNumber eq '10_*'", set()),
        ("ItemNumber eq ''", {3}),
        ("ItemNumber eq null", {5}),
        ("ItemNumber ne null", {0, 1, 2, 3, 4}),
        ("ItemNumber gt 'a-100'", {1, 2}),
        ("ItemNumber lt 'B'", {0, 1, 3, 4}),
        ("Price gt 1", {0, 1}),
        ("Price ne 3", {0, 2, 3, 4, 5}),
        ("not (Price gt 1)", {2, 3, 4, 5}),
        ("Price le 1", {3, 4, 5}),
        ("Price mul 2 eq 21", {0}),
        ("Price mod 2 eq 0.5", {0}),
        ("Price mod 2 eq -0.25", {4}),
        ("RecordId mod 2 eq -1", {1}),
        ("RecordId div 2 eq -3", {1}),
        ("Price div 0 eq null", {0, 1, 2, 3, 4, 5}),
        ("Price div 0 gt 0 or not (Price div 0 gt 0)", {0, 1, 2, 3, 4, 5}),
        ("RecordId eq 7 or Price eq null", {0, 2}),
        ("RecordId add Price gt 10", {0}),
        ("(Price gt 1) eq false", {2, 3, 4, 5}),
        ("true", {0, 1, 2, 3, 4, 5}),
        ("1 eq 2", set()),
    ],
)
def test_semantics_agree_between_sql_and_python(text: str, expected: set[int]) -> None:
    assert_same(text, ROWS, expected)


def test_datetime_semantics_with_fractions_and_offsets() -> None:
    t = datetime(2024, 1, 31, 12, 0, 0, tzinfo=UTC)
    rows: list[dict[str, object]] = [
        {"PriceApplicableFromDate": t + timedelta(seconds=s)} for s in (-1, 0, 1)
    ]
    rows.append({"PriceApplicableFromDate": None})
    assert_same("PriceApplicableFromDate eq 2024-01-31T13:00:00+01:00", rows, {1})
    assert_same("PriceApplicableFromDate gt 2024-01-31T12:00:00Z", rows, {2})
    assert_same("PriceApplicableFromDate gt 2024-01-31T12:00:00.5Z", rows, {2})
    assert_same("PriceApplicableFromDate ge 2024-01-31T12:00:00.5Z", rows, {2})
    assert_same("PriceApplicableFromDate lt 2024-01-31T12:00:00.5Z", rows, {0, 1})
    assert_same("PriceApplicableFromDate le 2024-01-31T11:59:59.5Z", rows, {0})
    assert_same("2024-01-31T11:59:59.5Z lt PriceApplicableFromDate", rows, {1, 2})
    assert_same("PriceApplicableFromDate eq 2024-01-31T12:00:00.5Z", rows, set())
    assert_same("PriceApplicableFromDate ne 2024-01-31T12:00:00.5Z", rows, {0, 1, 2, 3})
    assert_same("not (PriceApplicableFromDate lt 2024-01-31T12:00:00Z)", rows, {1, 2, 3})


def test_enum_semantics() -> None:
    rows = [{"WillSearchContinue": v} for v in ("Yes", "No", None)]
    assert_same("WillSearchContinue eq NoYes'Yes'", rows, {0})
    assert_same("WillSearchContinue ne NoYes'Yes'", rows, {1, 2})
    assert_same("WillSearchContinue eq null", rows, {2})


def test_case_folding_is_ascii_only_like_sqlite_nocase() -> None:
    rows = [{"ItemNumber": v} for v in ("É", "é", "E", "e")]
    assert_same("ItemNumber eq 'é'", rows, {1})
    assert_same("ItemNumber eq 'E'", rows, {2, 3})
    assert_same("ItemNumber eq 'é*'", rows, {1})


def test_evaluate_accepts_floats_and_naive_datetimes() -> None:
    row = {"Price": 1.1, "PriceApplicableFromDate": datetime(2024, 1, 1)}
    assert evaluate(parse("Price eq 1.1"), row)
    assert evaluate(parse("PriceApplicableFromDate eq 2024-01-01T00:00:00Z"), row)
    assert not evaluate(parse("ItemNumber eq null and Price gt 2"), row)


# --------------------------------------------------------------------------- $orderby / $select


def test_orderby() -> None:
    assert parse_orderby("Price desc,ItemNumber asc", PRICES) == [
        ("Price", True),
        ("ItemNumber", False),
    ]
    assert parse_orderby(" ItemNumber , Price  desc ", PRICES) == [
        ("ItemNumber", False),
        ("Price", True),
    ]
    assert parse_orderby("", PRICES) == []
    with pytest.raises(ODataQueryError, match="Could not find a property named 'Foo'"):
        parse_orderby("Foo desc", PRICES)
    with pytest.raises(ODataQueryError, match="Syntax error at position 6 in 'Price DESC'"):
        parse_orderby("Price DESC", PRICES)
    with pytest.raises(ODataQueryError, match="Syntax error at position 6"):
        parse_orderby("Price,", PRICES)


def test_select() -> None:
    assert parse_select("ItemNumber, Price", PRICES) == ["ItemNumber", "Price"]
    assert parse_select("Price,Price", PRICES) == ["Price"]
    assert parse_select("*", PRICES) == list(PRICES.field_names)
    assert parse_select(" ", PRICES) == list(PRICES.field_names)
    with pytest.raises(ODataQueryError, match=r"on type '.*\.CustomerV3'"):
        parse_select("CustomerAccount,Nope", CUSTOMERS)
    with pytest.raises(ODataQueryError, match="Syntax error at position 10"):
        parse_select("ItemNumber/Foo", PRICES)


def test_ast_is_immutable() -> None:
    expr = parse("Price gt 1")
    assert isinstance(expr, Compare)
    with pytest.raises(FrozenInstanceError):
        expr.op = "lt"  # type: ignore[misc]


# --------------------------------------------------------------------------- generated ASTs

STRING_FIELDS = ("ItemNumber", "PriceCurrencyCode", "CustomerAccountNumber")
DECIMAL_FIELDS = ("Price", "SalesPriceQuantity")
INT_FIELDS = ("RecordId",)
DATETIME_FIELDS = ("PriceApplicableFromDate", "PriceApplicableToDate")
ENUM_FIELD = "WillSearchContinue"
COMPARE_OPS: tuple[CompareOp, ...] = ("eq", "ne", "gt", "ge", "lt", "le")
EQUALITY_OPS: tuple[CompareOp, ...] = ("eq", "ne")
ARITH_OPS: tuple[ArithOp, ...] = ("add", "sub", "mul", "div", "mod")


@dataclass(frozen=True)
class Pools:
    """Literal and value strategies; the SQL test narrows them so float arithmetic stays exact."""

    text: st.SearchStrategy[str]
    integer: st.SearchStrategy[int]
    decimal: st.SearchStrategy[Decimal]
    instant: st.SearchStrategy[datetime]
    divisor: st.SearchStrategy[Expr] | None  # None: any numeric expression may divide


BASE = datetime(2024, 1, 31, 12, 0, 0, tzinfo=UTC)
# Few distinct strings so comparisons hit: case variants, non-ASCII, LIKE specials, quotes.
SAMPLE_TEXT = ["", "a", "A", "ab", "aB", "b", "é", "É", "a%", "a_b", "%", "a\\", "*", "O'B"]
SAMPLE_PATTERNS = ["*", "a*", "A*B", "*b", "*%*", "*_*", "é*", "*\\*", "**", "O'*", "*a*"]
ROW_TEXT = st.one_of(st.sampled_from(SAMPLE_TEXT), st.text(alphabet="aAbB*%_\\' éÉ", max_size=3))

WIDE = Pools(
    text=st.one_of(st.text(), ROW_TEXT, st.sampled_from(SAMPLE_PATTERNS)),
    integer=st.integers(-(2**63), 2**63 - 1),
    decimal=st.decimals(allow_nan=False, allow_infinity=False, places=3),
    instant=st.datetimes(timezones=st.just(UTC), allow_imaginary=False),
    divisor=None,
)

# Multiples of 1/4 and power-of-two divisors keep SQLite's doubles exactly equal to Decimals.
NARROW = Pools(
    text=st.one_of(ROW_TEXT, st.sampled_from(SAMPLE_PATTERNS)),
    integer=st.integers(-6, 6),
    decimal=st.integers(-16, 16).map(lambda i: Decimal(i) / 4),
    instant=st.sampled_from([-1, 0, 1]).map(lambda s: BASE + timedelta(seconds=s)),
    divisor=st.sampled_from(
        [IntLit(2), IntLit(-2), IntLit(0), DecimalLit(Decimal("0.5")), DecimalLit(Decimal("4.0"))]
    ),
)


def numeric(pools: Pools, depth: int) -> st.SearchStrategy[Expr]:
    leaves: st.SearchStrategy[Expr] = st.one_of(
        st.sampled_from([*DECIMAL_FIELDS, *INT_FIELDS]).map(Property),
        pools.integer.map(IntLit),
        pools.decimal.map(DecimalLit),
    )
    if depth == 0:
        return leaves

    @st.composite
    def arith(draw: st.DrawFn) -> Expr:
        op = draw(st.sampled_from(ARITH_OPS))
        left = draw(numeric(pools, depth - 1))
        if op in ("div", "mod") and pools.divisor is not None:
            return Arith(op, left, draw(pools.divisor))
        return Arith(op, left, draw(numeric(pools, depth - 1)))

    return st.one_of(leaves, arith())


def instant_literal(pools: Pools) -> st.SearchStrategy[Expr]:
    """Date-time literals, some between whole seconds, which the parser keeps in UTC."""
    fraction = st.sampled_from([0, 0, 250_000, 500_000])
    sign = st.sampled_from([-1, 1])
    return st.builds(
        lambda t, us, s: DateTimeLit(t + s * timedelta(microseconds=us)),
        pools.instant.filter(lambda t: t.year not in (1, 9999)),
        fraction,
        sign,
    )


def ordered(op: st.SearchStrategy[CompareOp], a: Expr, b: Expr) -> st.SearchStrategy[Expr]:
    return st.builds(lambda o, swap: Compare(o, *((b, a) if swap else (a, b))), op, st.booleans())


@st.composite
def comparison(draw: st.DrawFn, pools: Pools, depth: int) -> Expr:
    kind = draw(st.sampled_from(["string", "number", "instant", "enum", "null", "bool"]))
    any_op = st.sampled_from(COMPARE_OPS)
    if kind == "string":
        a: Expr = Property(draw(st.sampled_from(STRING_FIELDS)))
        b: Expr = draw(st.one_of(pools.text.map(StringLit), st.sampled_from(STRING_FIELDS).map(p)))
        return draw(ordered(any_op, a, b))
    if kind == "number":
        a = draw(numeric(pools, 1).filter(lambda e: not isinstance(e, IntLit | DecimalLit)))
        return draw(ordered(any_op, a, draw(numeric(pools, 1))))
    if kind == "instant":
        a = Property(draw(st.sampled_from(DATETIME_FIELDS)))
        b = draw(st.one_of(instant_literal(pools), st.sampled_from(DATETIME_FIELDS).map(p)))
        return draw(ordered(any_op, a, b))
    if kind == "enum":
        member = draw(st.sampled_from(ENUMS["NoYes"]))
        return draw(ordered(st.sampled_from(EQUALITY_OPS), p(ENUM_FIELD), EnumLit("NoYes", member)))
    if kind == "null":
        field = draw(st.sampled_from(PRICES.fields))
        op = st.sampled_from(EQUALITY_OPS) if field.is_enum else any_op
        return draw(ordered(op, p(field.name), NullLit()))
    if depth == 0:
        return BoolLit(draw(st.booleans()))
    inner = draw(boolean(pools, depth - 1))
    other = draw(st.one_of(st.booleans().map(BoolLit), boolean(pools, depth - 1)))
    return draw(ordered(st.sampled_from(EQUALITY_OPS), inner, other))


def boolean(pools: Pools, depth: int) -> st.SearchStrategy[Expr]:
    leaf = comparison(pools, depth)
    if depth == 0:
        return leaf
    sub = boolean(pools, depth - 1)
    return st.one_of(
        leaf,
        st.builds(And, sub, sub),
        st.builds(Or, sub, sub),
        st.builds(Not, sub),
    )


def value_for(field: str) -> st.SearchStrategy[object]:
    if field in DECIMAL_FIELDS:
        values: st.SearchStrategy[object] = NARROW.decimal
    elif field in INT_FIELDS:
        values = NARROW.integer
    elif field in DATETIME_FIELDS:
        values = NARROW.instant
    elif field == ENUM_FIELD:
        values = st.sampled_from(ENUMS["NoYes"])
    else:
        values = ROW_TEXT
    return st.one_of(st.none(), values)


USED_FIELDS = (*STRING_FIELDS, *DECIMAL_FIELDS, *INT_FIELDS, *DATETIME_FIELDS, ENUM_FIELD)
ROW = st.fixed_dictionaries({name: value_for(name) for name in USED_FIELDS})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(boolean(WIDE, 3))
def test_render_then_parse_gives_the_same_ast(expr: Expr) -> None:
    text = render(expr)
    assert parse(text) == expr, text


ROWS_STRATEGY = st.lists(ROW, min_size=4, max_size=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(comparison(NARROW, 1), ROWS_STRATEGY)
def test_sql_and_python_agree_on_single_comparisons(
    expr: Expr, rows: list[dict[str, object]]
) -> None:
    assert sql_matches(expr, rows) == python_matches(expr, rows), to_sql(expr, PRICES)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(boolean(NARROW, 2), ROWS_STRATEGY)
def test_sql_and_python_select_the_same_rows(expr: Expr, rows: list[dict[str, object]]) -> None:
    assert sql_matches(expr, rows) == python_matches(expr, rows), to_sql(expr, PRICES)
    # What goes through text must behave the same as the AST it came from.
    assert python_matches(parse(render(expr)), rows) == python_matches(expr, rows)
