"""The rule catalogue and raw-record validation, without a database."""

from __future__ import annotations

import random
import re
import unicodedata
from datetime import date
from fractions import Fraction

import pytest
from pydantic import ValidationError

from contracts.sources import DeliveredService, IntramoeniaBooking, SourceModel
from services.formatter.fixedwidth import TRANSLITERATION, length_changes
from services.formatter.layouts import load_layout
from services.loader.checks import (
    CF_CODES,
    CHARS_PER_BYTE,
    LENGTH_CLASSES,
    PLANS,
    PRESCRIPTION_RULES,
    PREVIOUS_PERIOD_START,
    SERVICE_ROW_RULES,
    _small_sql,
    ascii_length_sql,
    ascii_longer_sql,
    charset_patterns,
    charset_sql,
    layout_value_rules,
    length_classes,
    name_rules,
    plan_for,
    rule_args,
    rule_set_sql,
    unwritable_sql,
    writable_bracket,
    written_weight_bound,
)
from services.loader.intake import KINDS, validate_raw
from services.loader.snapshot import SELECTIONS
from simulators.cup.generator import generate

SPEC_CODES = {"CF_CHECK_CHAR", "CF_BIRTH_MISMATCH", "DATE_OUTSIDE_PERIOD", "UNKNOWN_SERVICE_CODE",
              "QUANTITY_NOT_POSITIVE", "AMOUNT_ARITHMETIC", "EXEMPTION_REQUIRED", "TOO_MANY_SERVICES",
              "DUPLICATE_PRESCRIPTION_NUMBER", "STRUCTURE_NOT_IN_ENTE", "SURNAME_TOO_LONG"}


def _all_rules():  # type: ignore[no-untyped-def]
    """Every rule of every flow's load: the shared ones (PLANS) with those of each flow's layout (plan_for)."""
    return [r for flow, selection in SELECTIONS.items()
            for rs in plan_for(flow.value, "2020", selection.snapshot_table).rule_sets for r in rs.rules]


def test_every_check_named_by_the_spec_has_a_rule() -> None:
    assert SPEC_CODES <= {r.code for r in _all_rules()} | set(CF_CODES)


def test_only_over_long_names_and_catalogue_tariffs_are_warnings() -> None:
    warnings = {r.code for r in _all_rules() if r.severity == "warning"}
    assert warnings == {"SURNAME_TOO_LONG", "NAME_TOO_LONG", "TARIFF_DIFFERS_FROM_CATALOGUE"}


def test_every_rule_asks_a_question_about_a_field() -> None:
    for rule in _all_rules():
        assert rule.question.endswith("?") and rule.field and rule.code.isupper()


def test_one_statement_evaluates_every_rule_of_a_set() -> None:
    for rule_set in (SERVICE_ROW_RULES, PRESCRIPTION_RULES):
        sql = rule_set_sql(rule_set)
        assert sql.count("INSERT INTO load_problem") == 1
        assert all(f"'{r.code}'" in sql for r in rule_set.rules)


def test_every_rule_set_reads_the_snapshot_of_its_load_only() -> None:
    """The snapshots of every load share their tables: a rule set without its `snapshot_id = $1` would judge (and
    name in this load's feedback) the rows of every other load."""
    for plan in PLANS.values():
        for rule_set in plan.rule_sets:
            assert rule_set_sql(rule_set).count("snapshot_id = $1") == 1, rule_set.name


def test_the_name_warnings_cut_where_the_c1_fields_end() -> None:
    """SURNAME_TOO_LONG and NAME_TOO_LONG tell the operator the formatter will cut the name: at the length of the
    C1 field it is written in (Cognome 30, Nome 20 in Flusso C and C PACC, spec/flusso-c.md), not at another."""
    for flow_type in ("FLUSSO_C", "FLUSSO_C_PACC"):
        c1 = load_layout(flow_type, "2020").record("C1")
        assert (c1.field("surname").length, c1.field("name").length) == (30, 20)
        rules = {r.code: r for r in name_rules(flow_type, "2020")}
        assert set(rules) == {"SURNAME_TOO_LONG", "NAME_TOO_LONG"}
        assert rules["SURNAME_TOO_LONG"].broken == ascii_longer_sql("s.patient_surname", 30, LENGTH_CLASSES)
        assert rules["NAME_TOO_LONG"].broken == ascii_longer_sql("s.patient_name", 20, LENGTH_CLASSES)
        assert "THEN length(s.patient_surname) > 30 ELSE" in rules["SURNAME_TOO_LONG"].broken
        assert "longer than the C1 field (30)" in rules["SURNAME_TOO_LONG"].question
        # in the plan of the flow's load, with the rules every snapshot_service flow shares
        plan_rules = plan_for(flow_type, "2020", "snapshot_service").rule_sets[0].rules
        assert {r.code for r in plan_rules} >= {"SURNAME_TOO_LONG", "NAME_TOO_LONG", "STRUCTURE_NOT_IN_ENTE"}
    # MEF and ALPI TA write no name: their operators are not warned of a cut that never happens
    for flow_type, table in (("FLUSSO_MEF", "snapshot_service"), ("FLUSSO_ALPI_TA", "snapshot_booking")):
        assert name_rules(flow_type, "2020") == ()
        assert not {r.code for rs in plan_for(flow_type, "2020", table).rule_sets for r in rs.rules} & {
            "SURNAME_TOO_LONG", "NAME_TOO_LONG"}


def test_the_ascii_length_adds_what_each_transliterated_character_grows_by() -> None:
    """A name's length in the C1 file is its length after transliteration (`Ò` -> `O'` and `ß` -> `SS` add one
    character each, NFKD's `ﬁ` -> `FI` one and `⑽` -> `(10)` three, a combining accent is dropped): the SQL adds k
    for each character that becomes k + 1, every such character with its own k. The same on a real PostgreSQL over
    every character: tests/integration/test_name_length_sql.py."""
    terms = re.findall(r"\((-?\d+)\) \* regexp_count\(normalize\(x, NFC\), '\[([^']*)\]'\)", ascii_length_sql("x"))
    counted = {char: int(grows) for grows, chars in terms for char in chars}
    assert counted == length_changes()
    assert {char: len(ascii) - 1 for char, ascii in TRANSLITERATION.items() if len(ascii) > 1}.items() <= \
        counted.items()
    assert (counted["Ò"], counted["ß"], counted["\ufb01"], counted["\u247d"], counted["\u0300"]) == (1, 1, 1, 3, -1)


def test_the_sql_counts_and_checks_each_text_in_its_composed_form() -> None:
    """The formatter transliterates a text's NFC form (`O` + U+0300 is `Ò`, `O'`): the length, the CHARSET question and
    the characters its message names are asked of normalize(..., NFC) too, in every term. On a real PostgreSQL:
    tests/integration/test_name_length_sql.py, test_charset_sql.py."""
    length = ascii_length_sql("s.patient_surname")
    assert "length(normalize(s.patient_surname, NFC))" in length
    assert "patient_surname" not in length.replace("normalize(s.patient_surname, NFC)", "")
    assert "ELSE normalize(x, NFC) ~ " in charset_sql("x")
    assert unwritable_sql("x").startswith("unwritable_characters(normalize(x, NFC), ")


def test_no_character_adds_more_to_a_composed_text_than_its_bound() -> None:
    """The byte-count guard (CHARS_PER_BYTE) holds for a text as NFC writes it when each character of it adds at most
    written_weight_bound to its ASCII length. NFC makes a text's characters out of the parts of its characters'
    decompositions: it holds when no composed character counts more than its parts' bounds, over every character
    NFC can leave in a text. And on texts where composition adds the most (a vowel, then its accent: `O` + U+0300,
    3 bytes, is `O'`)."""
    def weight(ch: str) -> int:
        return 1 + length_changes().get(ch, 0)

    over = [hex(cp) for cp in range(0x80, 0x110000) if not 0xD800 <= cp <= 0xDFFF
            and unicodedata.is_normalized("NFC", chr(cp))
            and weight(chr(cp)) > sum(written_weight_bound(c) for c in unicodedata.normalize("NFD", chr(cp)))]
    assert not over
    rnd = random.Random(7)
    pieces = ["A", "O", "e", "Ò", "Æ", "Ǽ", "\u0300", "\u0301", "\u0340", "\u0308", "\u0323", "\u247d", "\ufb01", "ß",
              "\u0344", "X"]
    for _ in range(20_000):
        text = "".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 12)))
        written = sum(weight(c) for c in unicodedata.normalize("NFC", text))
        assert written <= sum(written_weight_bound(c) for c in text) <= CHARS_PER_BYTE * len(text.encode()), text
    assert CHARS_PER_BYTE == Fraction(4, 3)  # `⑽`: composition (`O` + U+0300, 3 bytes -> 2) adds less per byte


def test_the_charset_patterns_are_parameters_of_the_checks_not_written_into_them() -> None:
    """The writable ranges (~4 KB) were written into Flusso C's small-load checks 51 times (248,006 characters, 262,868
    bytes); they are the statement's $5 and $6 (rule_args), typed in every rule set's params CTE, so every rule set
    takes the same six arguments whether it has CHARSET rules or not."""
    refused, run = charset_patterns()
    assert (refused, run) == (f"[^{writable_bracket()}]", f"[{writable_bracket()}]+") and len(writable_bracket()) > 4000
    for flow_type, table in (("FLUSSO_C", "snapshot_service"), ("FLUSSO_C_PACC", "snapshot_service"),
                             ("FLUSSO_MEF", "snapshot_service"), ("FLUSSO_ALPI_TA", "snapshot_booking")):
        plan = plan_for(flow_type, "2020", table)
        sql = _small_sql(plan)
        # ~52 KB for Flusso C with every rule (the C1 fields one prescription's rows must share added ~4 KB); the
        # ranges written into every CHARSET rule made it 263 KB; the length classes written into each VALUE_TOO_LONG
        # rule (and the name rules) 241 KB
        assert writable_bracket() not in sql and len(sql.encode()) < 60_000, (flow_type, len(sql.encode()))
        assert not [chars for _, chars in length_classes() if chars in sql]
        for rule_set in plan.rule_sets:
            assert "$5::text, $6::text, $7::text, $8::text, $9::text, $10::text,\n" in rule_set_sql(rule_set)
            assert f"{PREVIOUS_PERIOD_START})" in rule_set_sql(rule_set)
    charset = [r for r in plan_for("FLUSSO_C", "2020", "snapshot_service").rule_sets[0].rules if r.code == "CHARSET"]
    assert len(charset) == 17 and all("~ $5" in r.broken and ", $6)" in r.message for r in charset)
    september = (date(2020, 9, 1), date(2020, 9, 30))
    assert rule_args(1, "2020", september) == (1, "2020", *september, refused, run,
                                               *(f"[{chars}]" for _, chars in length_classes()), date(2020, 8, 1))
    assert LENGTH_CLASSES == {-1: "$7", 1: "$8", 2: "$9", 3: "$10"} and PREVIOUS_PERIOD_START == "$11::date"


def test_only_a_name_of_more_bytes_than_three_quarters_of_its_field_can_outgrow_it() -> None:
    """`⑽` is 3 UTF-8 bytes and 4 ASCII characters, the most any character grows per byte: a name of 22 bytes is at
    most 29 characters in ASCII, so the surname's guard lets through from 23 bytes (it let through from 31, so
    `⑽⑽⑽⑽⑽⑽⑽AAA`, 24 bytes and 31 characters, was never counted)."""
    assert "CASE WHEN octet_length(x) <= 22 THEN false" in ascii_longer_sql("x", 30)
    assert "CASE WHEN octet_length(x) <= 15 THEN false" in ascii_longer_sql("x", 20)


def test_every_flow_type_has_a_selection_and_a_check_plan() -> None:
    assert {s.snapshot_table for s in SELECTIONS.values()} == set(PLANS)


def test_a_raw_record_with_a_bad_field_is_rejected_naming_record_and_field() -> None:
    model, rejections = validate_raw("delivered-service", {"source_id": "CUP-204-X-1", "ente": "204",
                                                           "patient_sex": "X"})
    assert model is None
    fields = {r.field for r in rejections}
    assert {"patient_sex", "structure_sts11", "quantity"} <= fields
    assert all(r.record == "CUP-204-X-1" for r in rejections)
    assert "CUP-204-X-1: field patient_sex:" in str(next(r for r in rejections if r.field == "patient_sex"))


def test_a_record_without_source_id_is_named_by_its_line() -> None:
    _, rejections = validate_raw("intramoenia-booking", {"ente": "204"}, where="line 7")
    assert {r.record for r in rejections} == {"line 7"}


def test_source_kinds_cover_every_published_model() -> None:
    assert set(KINDS) == {"delivered-service", "payment-document", "intramoenia-booking"}


@pytest.mark.parametrize("flow_type", ["FLUSSO_C", "FLUSSO_C_PACC", "FLUSSO_MEF", "FLUSSO_ALPI_TA"])
def test_no_plain_ascii_value_the_intake_takes_is_too_long_for_its_field(flow_type: str) -> None:
    """VALUE_TOO_LONG is asked only of a record with a character outside plain printable ASCII (charset_rules' guard):
    sound as long as the intake refuses every ASCII value longer than the field it is written in. Asked of each such
    column: a value one character too long, of letters, digits, both, is refused by the source contract."""
    model: type[SourceModel] = IntramoeniaBooking if flow_type == "FLUSSO_ALPI_TA" else DeliveredService
    base = next(r for r in generate("204", "2020-08", 50, seed=3) if isinstance(r, model)).model_dump(mode="json")
    too_long = {r.field: int(re.search(r"ne ammette (\d+)", r.message).group(1))  # type: ignore[union-attr]
                for r in layout_value_rules(flow_type, "2020") if r.code == "VALUE_TOO_LONG"}
    assert {"prescription_id", "exemption_code"} <= set(too_long) or flow_type == "FLUSSO_ALPI_TA", too_long
    for column, length in too_long.items():
        for value in ("A" * (length + 1), "9" * (length + 1), ("A9" * length)[:length + 1], "a" * (length + 1)):
            with pytest.raises(ValidationError):
                model.model_validate({**base, column: value})
        assert column in model.model_fields
