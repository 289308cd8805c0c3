"""The loader's name-length warnings (SURNAME_TOO_LONG, NAME_TOO_LONG) ask, on a real PostgreSQL, what the formatter
will do to the name: cut it when its transliteration (services.formatter.fixedwidth.transliterate) is longer than the
C1 field. Compared here over EVERY character the formatter writes as printable ASCII, not only the few of its
TRANSLITERATION table: the NFKD ones too (`ﬁ` -> `FI`, `⑽` -> `(10)`, a combining accent -> nothing)."""

from __future__ import annotations

import unicodedata

import asyncpg
import pytest

from services.formatter.fixedwidth import PRINTABLE, transliterate
from services.loader.checks import LENGTH_CLASSES, ascii_length_sql, length_classes, name_rules

pytestmark = pytest.mark.integration


def _written_as_ascii() -> dict[str, str]:
    """Every non-ASCII character the formatter writes in a C1 text field, with what it writes (upper case)."""
    mapped = {}
    for cp in range(0x80, 0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        text = transliterate(chr(cp)).upper()
        if all(c in PRINTABLE for c in text):
            mapped[chr(cp)] = text
    return mapped


WRITTEN = _written_as_ascii()


def test_the_formatter_writes_ligatures_numerals_and_combining_marks_at_other_lengths() -> None:
    """What the comparison below covers, besides the table's `Ò` and `ß`: NFKD characters whose ASCII is longer
    (longer even than their UTF-8 bytes) and combining marks the formatter drops."""
    assert WRITTEN["Ò"] == "O'" and WRITTEN["ß"] == "SS"
    assert WRITTEN["\ufb01"] == "FI" and WRITTEN["\u2026"] == "..." and WRITTEN["\u247d"] == "(10)"
    assert WRITTEN["\u0300"] == "" and unicodedata.combining("\u0300")
    assert len(WRITTEN["\u247d"]) > len("\u247d".encode())


async def test_the_sql_ascii_length_of_every_character_is_the_formatters(conn: asyncpg.Connection) -> None:
    chars = sorted(WRITTEN)
    rows = await conn.fetch(f"SELECT c, {ascii_length_sql('c')} AS n FROM unnest($1::text[]) AS c", chars)
    counted = {r["c"]: r["n"] for r in rows}
    wrong = {c: (counted[c], len(WRITTEN[c])) for c in chars if counted[c] != len(WRITTEN[c])}
    assert not wrong, f"{len(wrong)} characters counted (SQL, formatter) differently, e.g. " \
                      f"{dict(list(wrong.items())[:8])}"


def _names_at_the_edge(char: str, field: int) -> list[str]:
    """Names with `char` as many times as fit, padded with `A` to the field's length in ASCII and to one more."""
    grows = len(WRITTEN[char])
    names = []
    for ascii_length in (field, field + 1):
        times = ascii_length // grows if grows else 1
        names.append(char * times + "A" * (ascii_length - times * grows))
    return names


def _classes_written(sql: str) -> str:
    """A rule's SQL with the length classes written in where the checks pass them as the statement's parameters
    ($7 on: checks.LENGTH_CLASSES), so it runs on its own here, its names the only parameter ($1)."""
    for (change, chars), param in sorted(zip(length_classes(), LENGTH_CLASSES.values(), strict=True),
                                         key=lambda c: -int(c[1][1:])):
        assert LENGTH_CLASSES[change] == param
        sql = sql.replace(param, f"'[{chars}]'")
    return sql


@pytest.mark.parametrize(("code", "column", "field"), [("SURNAME_TOO_LONG", "patient_surname", 30),
                                                       ("NAME_TOO_LONG", "patient_name", 20)])
async def test_the_name_rule_warns_exactly_when_the_formatter_will_cut(conn: asyncpg.Connection, code: str,
                                                                       column: str, field: int) -> None:
    """The rule itself (its SQL predicate, with the cheap byte-count guard in front of the ASCII length): for every
    character, a name written in exactly the field's length is not warned about and one a character longer is."""
    rule = next(r for r in name_rules("FLUSSO_C", "2020") if r.code == code)  # C1: Cognome 30, Nome 20
    names = [name for char in sorted(WRITTEN) for name in _names_at_the_edge(char, field)]
    rows = await conn.fetch(f"SELECT s.{column} AS name, coalesce(({_classes_written(rule.broken)}), false) AS warned "
                            f"FROM unnest($1::text[]) AS s({column})", names)
    wrong = {r["name"]: r["warned"] for r in rows
             if r["warned"] != (len(transliterate(r["name"]).upper()) > field)}
    assert not wrong, f"{len(wrong)} names warned about (True) or not (False) against what the formatter does, " \
                      f"e.g. {dict(list(wrong.items())[:6])}"


@pytest.mark.parametrize(("code", "column", "field"), [("SURNAME_TOO_LONG", "patient_surname", 30),
                                                       ("NAME_TOO_LONG", "patient_name", 20)])
async def test_a_name_in_either_unicode_form_is_warned_about_alike(conn: asyncpg.Connection, code: str, column: str,
                                                                   field: int) -> None:
    """`Ò` and `O` + U+0300 (NFC and NFD) are both written `O'`: a name of them at the field's length in ASCII and one
    a character longer, in both forms and mixed, is warned about as the formatter cuts it. The decomposed form was
    counted one character per accent shorter (the accent dropped, no apostrophe), so the longer one went unwarned
    and was cut without a word; and the message says how long the name is, the same for both forms."""
    rule = next(r for r in name_rules("FLUSSO_C", "2020") if r.code == code)
    names = []
    for char in ("Ò", "È", "à"):
        for composed in _names_at_the_edge(char, field):
            half = len(composed) // 2
            names += [composed, unicodedata.normalize("NFD", composed),
                      composed[:half] + unicodedata.normalize("NFD", composed[half:])]
    broken, message = _classes_written(rule.broken), _classes_written(rule.message)
    rows = await conn.fetch(f"SELECT s.{column} AS name, coalesce(({broken}), false) AS warned, {message} AS message "
                            f"FROM unnest($1::text[]) AS s({column})", names)
    said = {r["name"]: (r["warned"], r["message"]) for r in rows}
    for name in names:
        written = len(transliterate(unicodedata.normalize("NFC", name)).upper())
        assert written in (field, field + 1)
        assert said[name][0] == (written > field), (ascii(name), said[name])
        assert said[name][1].endswith(f" ha {written} caratteri in ASCII: sarà troncato a {field}")
