"""The jsonb decoder every pool uses (services.runtime.db.loads_json): orjson, and json where orjson refuses."""

from __future__ import annotations

import json

import pytest

from services.runtime.db import canonical_text, loads_json


@pytest.mark.parametrize("text", [
    '{"a": 1, "b": [1.5, "x", null, true], "c": {"d": "é\\u00e8"}}',
    '{"big": 100000000000000000000}',  # beyond 64 bits: jsonb keeps it exact, orjson alone reads a float
    '[18446744073709551617, 12345678901234567890123]',
    '{"a": [1, {"b": -123456789012345678901}]}',
    '[-18446744073709551617, 1e-7, 0.1]',  # orjson alone reads the first as a float
    '[-9223372036854775808, 9223372036854775807, 9007199254740993]',
    '[2.2250738585072014e-308, 1.7976931348623157e308, 5e-324, 0.30000000000000004, 123456.789e3]',
    '"just a string"',
])
def test_it_reads_what_json_reads(text: str) -> None:
    assert loads_json(text) == json.loads(text)
    assert repr(loads_json(text)) == repr(json.loads(text))  # the same types too: an int stays an int
    assert canonical_text(loads_json(text)) == canonical_text(json.loads(text))  # what the hash chain needs


def test_invalid_json_is_still_an_error() -> None:
    with pytest.raises(ValueError):
        loads_json('{"a": ')
