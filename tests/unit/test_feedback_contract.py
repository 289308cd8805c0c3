"""Every code and field the loader's checks can put in a feedback is in the contract, with its severity."""

from __future__ import annotations

import json

from contracts import schemagen
from contracts.feedback import FEEDBACK_FIELDS, PROBLEM_CODES
from services.loader.checks import problem_kinds


def test_every_code_the_checks_emit_is_in_the_contract_with_its_severity() -> None:
    emitted = {(code, severity) for code, severity, _ in problem_kinds()}
    assert emitted == {(code, severity) for code, (severity, _) in PROBLEM_CODES.items()}


def test_every_field_the_checks_name_is_in_the_contract_and_no_other() -> None:
    named = {field for _, _, field in problem_kinds()}
    assert named == set(FEEDBACK_FIELDS), named ^ set(FEEDBACK_FIELDS)


def test_the_published_feedback_schema_lists_the_codes_and_fields() -> None:
    schema = json.loads(schemagen.FEEDBACK_LINE_PATH.read_text())
    assert schema["properties"]["code"]["enum"] == list(PROBLEM_CODES)
    assert schema["properties"]["field"]["enum"] == list(FEEDBACK_FIELDS)
    assert schema["required"] == ["record_key", "field", "code", "severity", "message"]
