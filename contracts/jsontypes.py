"""Annotated types whose published JSON Schema says exactly what intake accepts, no more, no less.

pydantic's defaults are looser than their schemas: a Decimal field is published as "number or any
string", a `date` accepts a Unix timestamp, an `int` accepts "5" and True, a `bool` accepts "yes".
A producer built from the schemas then sends records that intake refuses, or intake takes values
the schemas never promised. These types validate the JSON value with the same rule the schema
publishes (one regular expression, used by both), so the two cannot drift:

- `Annotated[Decimal, Money(integer_digits)]`: a decimal STRING, at most `integer_digits` digits
  before the point (no leading zeros) and at most 2 after it: "0", "12.5", "1234.56". A JSON number is refused: a
  binary float cannot carry cents exactly. `positive=True` also refuses zero ("0.00").
- `IsoDate`: "YYYY-MM-DD", a real calendar date.
- `StrictInt` (with `Field(ge=, le=)`): a JSON integer (1.0 is an integer in JSON Schema, so it is
  taken; "1", 1.5 and true are not).
- `StrictBool`: true or false only.
- `Text` (with `Field(max_length=)`): a string of at least 1 character (unless `min_length` says
  otherwise) with no control character (C0 or DEL): PostgreSQL cannot store NUL, and a fixed-width
  file cannot carry the rest.
- `Code` (with `Field(pattern=)`): a string matching the pattern (which also bounds its length);
  `CodiceFiscale` is one.

Patterns are written in the common subset of ECMA-262, Python `re` and Rust `regex` (no
lookaround, no `\\s`, no `.`), anchored with `^...$`, and matched in full (Python's `$` would
also match before a final newline: intake never takes one).
Values built in Python (a `Decimal`, a `date`) are taken as they are: they never come from JSON.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Strict,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_DATE = re.compile(DATE_PATTERN)


def _fullmatch(pattern: re.Pattern[str], value: str) -> bool:
    return "\n" not in value and pattern.fullmatch(value) is not None


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def money_pattern(integer_digits: int, *, positive: bool = False) -> str:
    frac = r"(\.[0-9]{1,2})?"
    if not positive:
        return rf"^(0|[1-9][0-9]{{0,{integer_digits - 1}}}){frac}$"
    return rf"^([1-9][0-9]{{0,{integer_digits - 1}}}{frac}|0\.([1-9][0-9]?|0[1-9]))$"


class Money:
    """Annotated metadata of a euro amount: a decimal string, `integer_digits` digits before the point at
    most and 2 after it; `positive` refuses zero. The same pattern validates and is published."""

    def __init__(self, integer_digits: int, *, positive: bool = False) -> None:
        self.pattern = money_pattern(integer_digits, positive=positive)
        self._compiled = re.compile(self.pattern)
        self.positive = positive
        self.largest = Decimal("9" * integer_digits + ".99")
        self.max_length = integer_digits + 3
        self.shape = f"a decimal string of at most {integer_digits} integer digits and 2 decimals"
        self.range = f"{'greater than 0' if positive else '0 or more'}, at most {self.largest}"

    def _parse(self, value: Any) -> Decimal:
        if isinstance(value, Decimal):
            if not value.is_finite() or value < 0 or (self.positive and value == 0) or value > self.largest \
                    or value != value.quantize(Decimal("0.01")):
                raise ValueError(f"must be {self.range} with 2 decimals at most; got {value}")
            return value
        if isinstance(value, str) and _fullmatch(self._compiled, value):
            return Decimal(value)
        raise ValueError(f"must be {self.shape} ({self.range}), like \"12.34\"; got {_short(value)}")

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(self._parse, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "string", "pattern": self.pattern, "maxLength": self.max_length,
                "description": f"Euro amount: {self.shape}, {self.range}.", "examples": ["12.34"]}


def _parse_date(value: Any) -> Any:
    if isinstance(value, date):
        return value
    if isinstance(value, str) and _fullmatch(_DATE, value):
        try:
            return date.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"must be a calendar date YYYY-MM-DD: {exc}") from None
    raise ValueError(f"must be a date as a string YYYY-MM-DD; got {_short(value)}")


IsoDate = Annotated[date, BeforeValidator(_parse_date),
                    WithJsonSchema({"type": "string", "format": "date", "pattern": DATE_PATTERN})]


def _integral(value: Any) -> Any:
    # JSON Schema counts 1.0 as an integer; a bool is never one
    if isinstance(value, bool):
        raise ValueError(f"must be an integer, not {str(value).lower()}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


StrictInt = Annotated[int, BeforeValidator(_integral), Strict()]
SchemaVersion1 = Annotated[Literal[1], BeforeValidator(_integral)]  # `const: 1`: true is not 1
StrictBool = Annotated[bool, Strict()]


# pydantic matches `pattern` with Rust's regex, where `$` is the end of the text: no final newline slips in
Code = Annotated[str, Strict()]
Text = Annotated[str, Strict(), Field(min_length=1, pattern=NO_CONTROL)]

CODICE_FISCALE = r"^[0-9A-Z]{16}$"
CodiceFiscale = Annotated[Code, Field(
    pattern=CODICE_FISCALE, description="Codice fiscale (tax code): 16 upper-case letters and digits; their "
                                        "placement and the check character are checked at load (CF_FORMAT, "
                                        "CF_CHECK_CHAR).", examples=["RSSMRA80A01F839W"])]


# --- the same rules without Python ----------------------------------------------------------------

def rust_only(schema: Any) -> Any:
    """A copy of the pydantic core `schema` in which the Python validators of these types (`IsoDate`,
    `Money`, `StrictInt`, `SchemaVersion1`) are pydantic-core's own, for JSON input.

    Volume intake validates millions of bodies: each of those validators is a call back into Python per field.
    What the copy accepts, the original accepts, with the same value; the copy may refuse a little more (a JSON
    1.0 where an integer is due, which the original takes as 1): a caller gives anything the copy refuses to
    the original, whose verdict and messages are the contract's. Any other validator is kept as it is.
    tests/unit/test_contract_types.py holds the two against each other."""
    if isinstance(schema, list):
        return [rust_only(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    function = schema.get("function")
    if schema.get("type") == "function-before" and isinstance(function, dict) and function.get("type") == "no-info":
        check, inner = function["function"], rust_only(schema["schema"])
        if check is _parse_date and inner.get("type") == "date":
            return core_schema.chain_schema([core_schema.str_schema(strict=True, pattern=DATE_PATTERN), inner])
        money = getattr(check, "__self__", None)
        if isinstance(money, Money) and getattr(check, "__func__", None) is Money._parse \
                and inner.get("type") == "decimal" and len(inner) == 1:
            return core_schema.chain_schema([core_schema.str_schema(strict=True, pattern=money.pattern), inner])
        if check is _integral and inner.get("type") == "int" and inner.get("strict"):
            return inner
        if check is _integral and inner.get("type") == "literal" and all(
                type(v) is int for v in inner["expected"]):
            return core_schema.chain_schema([core_schema.int_schema(strict=True), inner])
        return {**schema, "schema": inner}
    return {k: v if k in ("cls", "metadata", "function", "serialization") else rust_only(v) for k, v in schema.items()}
