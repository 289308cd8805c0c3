"""The loader's CHARSET check asks, on a real PostgreSQL, what the formatter will do to a text: fail it with CHARSET
when a character stays outside printable ASCII once transliterated (services.formatter.fixedwidth.transliterate, then
PRINTABLE). Compared over EVERY code point PostgreSQL can hold (each alone: an ASCII one takes the rule's plain-ASCII
fast path, any other its full bracket; and each ASCII one after an accented letter, on the full bracket), with the
formatter's rule and with what its column engine (services.formatter.columnar, the one that writes the files) reports;
and the characters its message names."""

from __future__ import annotations

import asyncpg
import pyarrow as pa
import pytest

from services.formatter.columnar import ProblemLog, Renderer, RowSet
from services.formatter.fixedwidth import PRINTABLE, transliterate, writable_ranges
from services.formatter.layouts import FieldSpec, RecordKind
from services.loader.checks import charset_patterns, charset_rules, charset_sql, unwritable_sql

pytestmark = pytest.mark.integration


def _formatter_fails(text: str) -> bool:
    """The formatter's rule: a character stays outside printable ASCII once transliterated."""
    return any(c not in PRINTABLE for c in transliterate(text))


# every code point but NUL (PostgreSQL's text cannot hold it) and the surrogates (not characters), each alone; then
# each ASCII one after an accented letter: a value that is not plain ASCII, so the full bracket must refuse `\` and
# control characters too. Built on the server (the texts stay there; only the few the rule takes come back).
TEXTS_SQL = """SELECT chr(cp) AS t FROM generate_series(1, 1114111) AS cp WHERE cp NOT BETWEEN 55296 AND 57343
               UNION ALL SELECT 'È' || chr(cp) FROM generate_series(1, 127) AS cp"""
TEXTS = [chr(cp) for cp in range(1, 0x110000) if not 0xD800 <= cp <= 0xDFFF] + ["È" + chr(cp) for cp in range(1, 0x80)]


def _engine_charset(texts: list[str]) -> ProblemLog:
    """What the column engine reports for the texts written in a 16-character name field (as C1's): its CHARSET
    errors are counted, the first `limit` listed (record: the index of the text)."""
    spec = FieldSpec("surname", 1, 16, "AN", column="patient_surname", truncate=True)
    log = ProblemLog(limit=len(texts) if len(texts) < 10_000 else 0)
    rows = RowSet(columns={}, n=len(texts), closing=False, derived={}, valid={}, label=str)
    Renderer(RecordKind("C1", 16, (spec,)), log).an(spec, rows, pa.array(texts, pa.string()))
    return log


def test_the_formatter_fails_cyrillic_cjk_oe_and_a_backslash_and_writes_italian_accents() -> None:
    """What the comparison covers: the characters the brief names, on both sides of the rule."""
    assert all(_formatter_fails(c) for c in ("И", "王", "Ω", "\\", "\uff3c", "\x1f", "\x7f"))
    assert not any(_formatter_fails(c) for c in ("Ò", "Ç", "ß", "\u0301", "\ufb01", "’", "A", " "))
    assert sum(b - a + 1 for a, b in writable_ranges()) > 2_000


async def test_the_sql_rule_flags_exactly_the_characters_the_formatter_fails(conn: asyncpg.Connection) -> None:
    refused, _ = charset_patterns()  # the rule's parameter ($5 in the checks, $1 here)
    counted, taken = await conn.fetchrow(
        f"SELECT count(*), array_agg(t) FILTER (WHERE NOT ({charset_sql('t', '$1')})) FROM ({TEXTS_SQL}) AS s", refused)
    assert counted == len(TEXTS)
    writes = [t for t in TEXTS if not _formatter_fails(t)]
    wrong = sorted(set(taken) ^ set(writes))
    assert not wrong, f"{len(wrong)} texts taken in SQL and refused by the formatter's rule, or the reverse, e.g. " \
                      f"{[ascii(t) for t in wrong[:8]]}"
    assert 2_000 < len(writes) < 10_000  # the comparison is not empty on either side
    # the engine that writes the files: CHARSET for as many texts as the rule refuses, and for none it takes
    assert _engine_charset(TEXTS).error_count == len(TEXTS) - len(writes)
    assert _engine_charset(writes).error_count == 0


async def test_the_message_names_each_character_the_formatter_cannot_write_once(conn: asyncpg.Connection) -> None:
    text = "ЖÒЖ\\A\u200b王Ωß王"
    named = await conn.fetchval(f"SELECT {unwritable_sql('t', '$2')} FROM (SELECT $1::text AS t) s", text,
                                charset_patterns()[1])
    assert named == "Ж (U+0416), \\ (U+005C), \u200b (U+200B), 王 (U+738B), Ω (U+03A9)"
    assert all(_formatter_fails(c) for c in "Ж\\\u200b王Ω") and not any(_formatter_fails(c) for c in "ÒAß")


async def test_the_rule_of_each_written_field_is_this_sql(conn: asyncpg.Connection) -> None:
    """The rules the loader runs for Flusso C are this predicate on their column (the comparison above holds for
    them), one per text the layout writes: the names among them."""
    rules = {r.field: r for r in charset_rules("FLUSSO_C", "2020")}
    assert {"patient_surname", "patient_name", "prescriber_code", "prescription_number"} <= set(rules)
    assert "patient_sex" not in rules  # written through its map (M -> 1): never the column's own text
    for field, rule in rules.items():
        assert (rule.code, rule.severity, rule.broken) == ("CHARSET", "error", charset_sql(f"s.{field}"))


# One text in its composed form (NFC, as most systems send it) and its decomposed one (NFD: a letter, then combining
# accents, as macOS does): the formatter writes the two alike (it transliterates the NFC form), so the rule must
# answer alike, and name the same characters. `Ǿ` (Ø with an acute) is written `O` now, in both forms; before, the
# composed one was CHARSET and the decomposed one `O`. `Й` and `Ώ` are unwritable in both, named as composed.
FORMS = [("NICOLÒ", "NICOLO\u0300"), ("Ǿrsted", "Ø\u0301rsted"), ("Ǽlfdan", "Æ\u0301lfdan"),
         ("Йосиф", "И\u0306осиф"), ("Ώρα", "Ω\u0301ρα"), ("X\u0300", "X\u0300")]


@pytest.mark.parametrize(("nfc", "nfd"), FORMS)
async def test_a_text_in_either_unicode_form_gets_one_answer_and_one_message(conn: asyncpg.Connection, nfc: str,
                                                                            nfd: str) -> None:
    rows = await conn.fetch(f"SELECT t, {charset_sql('t', '$2')} AS refused, {unwritable_sql('t', '$3')} AS named "
                            "FROM unnest($1::text[]) AS t", [nfc, nfd], *charset_patterns())
    answers = {r["t"]: (r["refused"], r["named"]) for r in rows}
    assert answers[nfd] == answers[nfc]
    assert answers[nfc][0] == _formatter_fails(nfc) == _formatter_fails(nfd)
    if answers[nfc][0]:  # the characters of the composed form the formatter refuses: `Й (U+0419)`, not `И (U+0418)`
        assert answers[nfc][1].startswith(f"{nfc[0]} (U+{ord(nfc[0]):04X})")
