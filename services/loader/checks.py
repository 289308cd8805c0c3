"""Checks at load (spec/flusso-c.md "Checks at load"): named rules, each asking one question.

Every rule has a code, a severity (an `error` blocks the load -> Failed loading; a `warning` does not)
and the field it is about. Rules are SQL predicates over the snapshot, evaluated set-wise: all the
row rules of a snapshot in ONE scan, all the prescription rules in ONE aggregate, so a million
services cost seconds. The codice fiscale rules need arithmetic SQL does badly: they run vectorised
in numpy over the DISTINCT (cf, sex, birth date) of the snapshot (services.loader.codice_fiscale), read
through a server-side cursor in batches, so no list of the whole period is ever held.

Every broken rule becomes one row of `load_problem` (record key, field, code, severity, message);
services.loader.feedback streams them into the feedback file. The message is what the operators read, so it is
in Italian (plain administrative Italian, naming the record's values, its days and amounts written as Italians
write them, 05/08/2020 and 1.234,50 €, by contracts.italian's SQL twins; codes as they are, 89.52); the code, the
field and the `question` of each rule are identifiers and documentation, in English.

Record keys (contracts.feedback.RECORD_KEY_DESCRIPTION): `<source_id>@<prescription_id>/<row>` for a
service row (2 digits, more past 99: never cut), `<source_id of the first row>@<prescription_id>/99`
for a whole prescription (row 99 is where its totals, ticket and exemption go), `<source_id>` for
bookings and payment documents, `*` for the whole load. Every code and field is listed in the
contract (contracts.feedback); `problem_kinds()` is what the rules here can emit.

SQL parameters of every rule: $1 snapshot_id, $2 catalogue version, $3 period start, $4 period end, $5 and $6 the
CHARSET patterns (charset_patterns), $7 on the characters of each length change (LENGTH_CLASSES); rule_args gives
them in that order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from fractions import Fraction
from typing import Any, Literal

import asyncpg

from contracts.italian import italian_amount, italian_amount_sql, italian_date_sql
from services.formatter.fixedwidth import DECOMPOSABLE, TRANSLITERATION, length_changes, writable_ranges
from services.formatter.layouts import FieldSpec, LayoutRegistry
from services.loader import ts730_checks
from services.loader.codice_fiscale import check_codici_fiscali
from services.loader.snapshot import WORK_MEM, previous_period_start

Severity = Literal["error", "warning"]
ERROR: Severity = "error"
WARNING: Severity = "warning"

# C2 amount fields: total 8 chars, ticket 7 chars, "integer part, comma, 2 decimals" (spec/flusso-c.md)
MAX_TOTAL = "99999.99"
MAX_TICKET = "9999.99"
# Ticket may exceed the services' value only by the fixed fee per prescription (quota fissa, L. 111/2011 art. 17)
FIXED_FEE_ALLOWANCE = "10.00"


@dataclass(frozen=True)
class Rule:
    code: str
    severity: Severity
    field: str
    question: str  # the one question the rule asks, for documentation and the rule list
    broken: str  # SQL predicate: true when the record breaks the rule
    message: str  # SQL text expression naming the offending values, in Italian (a quote inside a literal: '')
    # SQL predicate true whenever `broken` may be (false: it is not), shared by rules that are asked together: the
    # rule set asks it once per record and its rules only when it holds (rule_set_sql)
    guard: str | None = None


@dataclass(frozen=True)
class RuleSet:
    """Rules evaluated over one relation of a snapshot, with how to name the record."""

    name: str
    relation: str  # FROM clause; must expose the snapshot rows as `s`
    record_key: str  # SQL
    rules: tuple[Rule, ...]
    # the relation groups the snapshot by prescription: a large one is grouped while it is read in the order of
    # its index (snapshot_id, prescription_id, row_number), never into a hash table of every prescription
    grouped_in_index_order: bool = False


# the row number in 2 digits at least, never cut (lpad would cut 100 to `10`, naming another row)
_SERVICE_KEY = ("s.source_id || '@' || s.prescription_id || '/' || "
                "CASE WHEN s.row_number < 10 THEN '0' ELSE '' END || s.row_number::text")


def nfc_sql(column: str) -> str:
    """SQL: `column` in Unicode's composed form, as the formatter transliterates it (fixedwidth.transliterate: NFC
    first, so `O` + U+0300 is `Ò`, written `O'`, as `Ò` itself). The database is UTF8, which normalize() needs."""
    return f"normalize({column}, NFC)"


@functools.cache
def length_classes() -> tuple[tuple[int, str], ...]:
    """(change, characters) for each length change of the transliteration (length_changes), in order of change: the
    characters that each add `change` to a text's ASCII length."""
    by_change: dict[int, str] = {}
    for ch, change in length_changes().items():
        by_change[change] = by_change.get(change, "") + ch
    return tuple(sorted(by_change.items()))


def ascii_length_sql(column: str, classes: dict[int, str] | None = None) -> str:
    """SQL: the length of `column` once transliterated to ASCII as the formatter writes it: of its NFC form (nfc_sql),
    where each character that becomes k characters adds k - 1 (services.formatter.fixedwidth.length_changes: `Ò` ->
    `O'`, `ß` -> `SS`, `ﬁ` -> `FI`, `⑽` -> `(10)`, a combining accent NFC left alone dropped). A name that fits before
    may not fit after, and one that does not fit before may fit after. `classes`: the SQL of each change's bracket
    (the rules': their statement's parameters, LENGTH_CLASSES); by default the brackets written in, ~4 KB."""
    # a bracket of the characters of one change, counted by regexp_count: translate() would compare each character of
    # the name with each of the bracket's (a thousand combining marks: 29 s for 200,000 names, regexp_count 0.5 s).
    # Every character is outside ASCII, so none is special in a bracket (`]`, `-`, `^`, a backslash) or in the
    # literal (`'`).
    text = nfc_sql(column)
    brackets = {change: f"'[{chars}]'" if classes is None else classes[change] for change, chars in length_classes()}
    extra = " + ".join(f"({change}) * regexp_count({text}, {bracket})" for change, bracket in brackets.items())
    return f"(length({text}) + {extra})" if extra else f"length({text})"


def _written_weight(ch: str) -> int:
    """What one character of a text counts toward its ASCII length in ascii_length_sql (a character the formatter
    cannot write counts 1: the load fails with CHARSET anyway)."""
    return 1 + length_changes().get(ch, 0)


def _composed_growth(ch: str) -> int:
    """What NFC composition can add to the ASCII length beyond the parts of `ch`'s decomposition: a table vowel
    (`Ò` -> `O'`, `O` + U+0300 -> `Ò`) writes one character more than its letter and its accent. Counted on the
    precomposed vowel, and on a character that starts with that accent (U+0300, U+0301, U+0340, U+0341), which may
    compose with the letter before it. Any other accent inside a precomposed character stays on that character's own
    letter (NFC composes a mark with the starter before it): `Ǽ` is Æ with an acute and never `Æ'`."""
    vowels, accents = _apostrophe_vowels()
    return int(unicodedata.normalize("NFC", ch) in vowels or unicodedata.normalize("NFD", ch)[0] in accents)


@functools.cache
def _apostrophe_vowels() -> tuple[frozenset[str], frozenset[str]]:
    """The table's letters that are a letter and one accent (`Ò`: `O` + U+0300), and those accents."""
    vowels = frozenset(k for k in TRANSLITERATION if len(unicodedata.normalize("NFD", k)) == 2)
    return vowels, frozenset(unicodedata.normalize("NFD", k)[1] for k in vowels)


def written_weight_bound(ch: str) -> int:
    """At most how much `ch` adds to the ASCII length of any text it is part of, once the text is composed (NFC):
    what its decomposition's characters count, plus what composing them with a neighbour may add (_composed_growth).
    Checked over every character by tests/unit/test_loader_rules.py."""
    return sum(_written_weight(c) for c in unicodedata.normalize("NFD", ch)) + _composed_growth(ch)


# A text becomes at most this many ASCII characters per UTF-8 byte (`Ò`, 2 bytes, `O'`; `⑽`, 3 bytes, `(10)`; ASCII
# itself 1), with NFC composing across characters (`O` + U+0300, 3 bytes, `O'`): each character of the text adds at
# most written_weight_bound, so a name of n bytes is at most n x this long in ASCII. So only a name of more than
# `length` / this bytes can pass `length` once transliterated: the byte count (no scan of the text) rules out almost
# every name before the transliterated length (a normalize() and a regexp_count() per change) is computed.
CHARS_PER_BYTE = max([Fraction(1)] + [Fraction(written_weight_bound(ch), len(ch.encode("utf-8")))
                                      for ch in set(length_changes()) | set(TRANSLITERATION)
                                      | {chr(cp) for cp in DECOMPOSABLE
                                         if not unicodedata.is_normalized("NFD", chr(cp))}])


def ascii_longer_sql(column: str, length: int, classes: dict[int, str] | None = None) -> str:
    """SQL: is `column`, transliterated as the formatter writes it, longer than `length`? ascii_length_sql only for a
    name the byte count (CHARS_PER_BYTE) does not rule out and that is not plain ASCII (as long as it is: NFC leaves
    ASCII as it is)."""
    could = length * CHARS_PER_BYTE.denominator // CHARS_PER_BYTE.numerator
    return (f"CASE WHEN octet_length({column}) <= {could} THEN false "  # cannot grow past `length`
            f"WHEN octet_length({column}) = length({column}) THEN length({column}) > {length} "  # ASCII: as it is
            f"ELSE {ascii_length_sql(column, classes)} > {length} END")


def _name_rule(code: str, field: str, what: str, italian: str, length: int, record: str) -> Rule:
    ascii_length = ascii_length_sql(f"s.{field}", LENGTH_CLASSES)
    return Rule(code, WARNING, field,
                f"Is the {what}, transliterated to ASCII, longer than the {record} field ({length}) so it will be cut?",
                ascii_longer_sql(f"s.{field}", length, LENGTH_CLASSES),
                f"format('{italian} %s ha %s caratteri in ASCII: sarà troncato a {length}', s.{field}, "
                f"{ascii_length})")


def _regex_char(cp: int) -> str:
    """One code point inside a PostgreSQL regular expression bracket, as an escape (`\\u005d`, `\\U0001f600`): no
    character is then special in the bracket (`]`, `\\`, `^`, `-`) nor in the SQL literal (`'`)."""
    return f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\U{cp:08x}"


def _bracket(ranges: Iterable[tuple[int, int]]) -> str:
    return "".join(_regex_char(a) if a == b else f"{_regex_char(a)}-{_regex_char(b)}" for a, b in ranges)


@functools.cache
def writable_bracket() -> str:
    """The bracket's inside, ranges of every character the formatter can write in a fixed-width text field
    (services.formatter.fixedwidth.writable_ranges: its transliterate() over every code point, computed once)."""
    return _bracket(writable_ranges())


@functools.cache
def _ascii_bracket() -> str:
    """The ASCII part of writable_bracket: what a plain-ASCII value must keep to (no backslash, no control)."""
    return _bracket((a, b) for a, b in writable_ranges() if b < 0x80)


# The CHARSET patterns are the statement's parameters $5 and $6 (charset_patterns), not written into it: each holds
# every writable range (writable_bracket, ~4 KB), and Flusso C's 17 rules wrote them 51 times (each rule's predicate
# twice, its message once): its small load's checks were one 248 KB statement, parsed and kept by every connection.
REFUSED = "$5"  # a character the formatter cannot write: `[^...]`
WRITABLE_RUN = "$6"  # a run of characters it can: `[...]+`
# Likewise the characters of each length change of the transliteration (length_classes: ~4 KB together), $7 on, in
# ascii_length_sql's terms of the rules that count a text's written length (SURNAME_TOO_LONG, VALUE_TOO_LONG).
LENGTH_CLASSES = {change: f"${7 + i}" for i, (change, _) in enumerate(length_classes())}
# The first day of the period before the load's ($3..$4), from snapshot.previous_period_start: the day the snapshot
# takes a prescription's rows back to is the day DATE_OUTSIDE_PERIOD names, one rule in one place (rule_args).
PREVIOUS_PERIOD_START = f"${7 + len(LENGTH_CLASSES)}::date"


@functools.cache
def charset_patterns() -> tuple[str, str]:
    """The values of REFUSED and WRITABLE_RUN: the writable ranges, computed once per process from the formatter's own
    rule (nothing of it is frozen in the database, nor in the statement)."""
    return f"[^{writable_bracket()}]", f"[{writable_bracket()}]+"


def rule_args(snapshot_id: int, version: str, period: tuple[date, date]) -> tuple[object, ...]:
    """The parameters of every rule set's SQL, in order ($1 .. $6, then LENGTH_CLASSES', then PREVIOUS_PERIOD_START)."""
    return (snapshot_id, version, *period, *charset_patterns(), *(f"[{chars}]" for _, chars in length_classes()),
            previous_period_start(*period))


def charset_sql(column: str, refused: str = REFUSED) -> str:
    """SQL: does `column` hold a character the formatter cannot write in a fixed-width file (CHARSET when it formats)?
    A plain-ASCII value (as many bytes as characters: most of them) is asked only about the backslash and control
    characters (a bracket of 26 characters, written here); any other, in its NFC form as the formatter
    transliterates it (nfc_sql), against every writable range: the pattern `refused` (a parameter, charset_patterns'
    first)."""
    return (f"CASE WHEN octet_length({column}) = length({column}) THEN {column} ~ '[^{_ascii_bracket()}]' "
            f"ELSE {nfc_sql(column)} ~ {refused} END")


def unwritable_sql(column: str, writable_run: str = WRITABLE_RUN) -> str:
    """SQL: the characters of `column`'s NFC form (what the formatter transliterates) that the formatter cannot write,
    each once in order of appearance with its code point, so an invisible one is named too: `И (U+0418), В (U+0412)`
    (migration 0076's function, given the pattern `writable_run`: a parameter, charset_patterns' second)."""
    return f"unwritable_characters({nfc_sql(column)}, {writable_run})"


def _charset_rule(flow_type: str, version: str, column: str, label: str) -> Rule:
    italian = label.replace("'", "''").replace("%", "%%")
    return Rule("CHARSET", ERROR, column,
                f"Does the value hold a character the {flow_type} {version} fixed-width layout cannot write, even "
                "transliterated to ASCII (the formatter would fail it: CHARSET)?",
                charset_sql(f"s.{column}"),
                f"format('il valore %s del campo {italian} contiene caratteri senza traslitterazione in ASCII, che il "
                f"tracciato {flow_type} {version} non può scrivere: %s', s.{column}, {unwritable_sql(f's.{column}')})")


def written_text_columns(flow_type: str, version: str) -> dict[str, str]:
    """The snapshot columns the flow's fixed-width layout (contracts/layouts/<flow>/<version>.toml) writes in a text
    field (AN with a `column`), each with the Italian label of its first field: what the formatter transliterates, so
    where it can fail with CHARSET. A field with a `map` writes the mapped value (the layout's own text), not the
    column's. None without a fixed-width layout: the 730 is XML in UTF-8, written as it is (and its text fields are
    codes the intake holds to ASCII patterns); a version with no layout file fails its format with its own error."""
    columns: dict[str, str] = {}
    for _, spec in _layout_fields(flow_type, version):
        if spec.type == "AN" and spec.column is not None and spec.map is None:
            columns.setdefault(spec.column, spec.title)
    return columns


def _layout_fields(flow_type: str, version: str) -> Iterator[tuple[str, FieldSpec]]:
    """(record kind, field) of the flow's fixed-width layout in order; none when it has no layout file (the 730)."""
    registry = LayoutRegistry()
    if (flow_type, version) in registry.available():
        for record in registry.get(flow_type, version).records:
            for spec in record.fields:
                yield record.kind, spec


# A name the layout cuts (a field with truncate = true: Cognome and Nome of Flusso C's C1, spec/flusso-c.md) gets a
# warning at load; every other over-long value is an error when it formats. Their codes and words, by the column.
_CUT_NAMES = {"patient_surname": ("SURNAME_TOO_LONG", "surname", "il cognome"),
              "patient_name": ("NAME_TOO_LONG", "name", "il nome")}


def name_rules(flow_type: str, version: str) -> tuple[Rule, ...]:
    """A warning per name the flow's layout cuts, at the length of the field it is cut to: none for a flow whose layout
    writes no name (MEF, ALPI TA: their operators are not told of a cut that never happens)."""
    rules: dict[str, Rule] = {}
    for kind, spec in _layout_fields(flow_type, version):
        if spec.truncate and spec.column is not None and spec.column not in rules:
            if spec.column not in _CUT_NAMES:
                raise ValueError(f"layout {flow_type} {version}: {kind}.{spec.name} is cut (truncate), "
                                 f"and the loader has no warning for its column {spec.column}")
            code, what, italian = _CUT_NAMES[spec.column]
            rules[spec.column] = _name_rule(code, spec.column, what, italian, spec.length, kind)
    return tuple(rules.values())


def charset_rules(flow_type: str, version: str) -> tuple[Rule, ...]:
    """One CHARSET rule per text column the flow's layout writes (written_text_columns), all behind one guard: the
    record's written texts together hold a character outside plain printable ASCII (a backslash, a control, any
    non-ASCII one). Almost every record has none, so its rules are not asked: one regular expression per record,
    not one per column (Flusso C writes 17 such columns). The guard reads the texts as they are, not in NFC: NFC
    leaves printable ASCII as it is, so a record it passes has nothing for its rules to find."""
    guard = _charset_guard(flow_type, version)
    return tuple(dataclasses.replace(_charset_rule(flow_type, version, column, label), guard=guard)
                 for column, label in written_text_columns(flow_type, version).items())


def _charset_guard(flow_type: str, version: str) -> str:
    """SQL true when the record's written texts (written_text_columns) hold a character outside plain printable
    ASCII: the guard of every rule a plain-ASCII record cannot break (charset_rules, layout_value_rules)."""
    columns = written_text_columns(flow_type, version)
    return f"concat({', '.join(f's.{c}' for c in columns)}) ~ '[^{_ascii_bracket()}]'"


def layout_value_rules(flow_type: str, version: str) -> tuple[Rule, ...]:
    """What else the formatter refuses in a value of a text field the flow's layout writes from a column (AN, no
    `map`), asked at load so the operator learns it there, not when asking for the files:

    - VALUE_NOT_ALLOWED: a field with `allowed` values, compared as the formatter does (upper case unless the field
      keeps its case): C PACC's coding letter (a-z: a service of the national catalogue, N, cannot be written
      there). A null is not written: not asked.
    - VALUE_TOO_LONG: a value longer than its field once transliterated to ASCII (`RX/2026/À00000000001`, 20
      characters, is 21 written: `A'`), for a field that does not cut (truncate), at the shortest field writing
      the column. The intake holds every such column to at most its field's length in characters (a maximum
      length, a pattern or a list: tests/unit/test_loader_rules.py asks each), and plain ASCII is written as it is,
      so only a record with another character can break it: behind charset_rules' guard, asked of almost none."""
    allowed: dict[str, tuple[str, str, tuple[str, ...]]] = {}
    lengths: dict[str, tuple[int, str]] = {}
    for _, spec in _layout_fields(flow_type, version):
        if spec.type != "AN" or spec.column is None or spec.map is not None:
            continue
        if spec.allowed is not None:
            allowed.setdefault(spec.column, (spec.title, spec.case, spec.allowed))
        if not spec.truncate and spec.length < lengths.get(spec.column, (spec.length + 1, ""))[0]:
            lengths[spec.column] = (spec.length, spec.title)
    rules: list[Rule] = []
    for column, (label, case, values) in allowed.items():
        italian = label.replace("'", "''").replace("%", "%%")
        cased = f"s.{column}" if case == "keep" else f"upper(s.{column})"
        listed = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
        shown = ", ".join(values).replace("'", "''").replace("%", "%%")
        rules.append(Rule("VALUE_NOT_ALLOWED", ERROR, column,
                          f"Is the value one the {flow_type} {version} layout does not allow in its field?",
                          f"{cased} NOT IN ({listed})",
                          f"format('il valore %s del campo {italian} non è tra quelli ammessi dal tracciato "
                          f"{flow_type} {version}: {shown}', s.{column})"))
    guard = _charset_guard(flow_type, version)
    for column, (length, label) in lengths.items():
        italian = label.replace("'", "''").replace("%", "%%")
        rules.append(Rule("VALUE_TOO_LONG", ERROR, column,
                          f"Is the value, transliterated to ASCII, longer than its {flow_type} {version} field "
                          f"({length}), which does not cut it?",
                          ascii_longer_sql(f"s.{column}", length, LENGTH_CLASSES),
                          f"format('il valore %s del campo {italian} ha %s caratteri una volta scritto in ASCII: il "
                          f"tracciato {flow_type} {version} ne ammette {length}', s.{column}, "
                          f"{ascii_length_sql(f's.{column}', LENGTH_CLASSES)})",
                          guard=guard))
    return tuple(rules)


_STRUCTURE_MESSAGE = "format('la struttura %s non è una struttura dell''ente %s', s.structure_sts11, s.ente)"
# the SQL of a day (05/08/2020) and of an amount (1.234,50 €) in a message, as the console writes them
_day, _euro = italian_date_sql, italian_amount_sql


SERVICE_ROW_RULES = RuleSet(
    "service rows",
    """snapshot_service s
       LEFT JOIN catalogue_item c ON c.version = $2 AND c.coding = s.catalogue_coding AND c.code = s.catalogue_code
       LEFT JOIN ente_structure e ON e.ente = s.ente AND e.sts11 = s.structure_sts11""",
    _SERVICE_KEY,
    (
        Rule("DATE_OUTSIDE_PERIOD", ERROR, "delivery_date",
             "Is the service dated after the period, or before the previous period (a prescription may span two)?",
             f"s.delivery_date > $4::date OR s.delivery_date < {PREVIOUS_PERIOD_START}",
             "format('la data di erogazione %s è fuori dal periodo ammesso, dal %s al %s (il periodo del "
             "caricamento e, per una ricetta a cavallo di due periodi, quello precedente)', "
             f"{_day('s.delivery_date')}, {_day(PREVIOUS_PERIOD_START)}, {_day('$4::date')})"),
        Rule("DELIVERY_BEFORE_PRESCRIPTION", ERROR, "delivery_date",
             "Was the service delivered before it was prescribed?",
             "s.delivery_date < s.prescription_date",
             "format('la data di erogazione %s è precedente alla data di prescrizione %s', "
             f"{_day('s.delivery_date')}, {_day('s.prescription_date')})"),
        Rule("BOOKING_AFTER_DELIVERY", ERROR, "booking_date",
             "Was the service booked after it was delivered?",
             "s.booking_date > s.delivery_date",
             "format('la data di prenotazione %s è successiva alla data di erogazione %s', "
             f"{_day('s.booking_date')}, {_day('s.delivery_date')})"),
        Rule("BIRTH_AFTER_DELIVERY", ERROR, "patient_birth_date",
             "Was the patient born after the service?",
             "s.patient_birth_date > s.delivery_date",
             "format('la data di nascita %s è successiva alla data di erogazione %s', "
             f"{_day('s.patient_birth_date')}, {_day('s.delivery_date')})"),
        Rule("UNKNOWN_SERVICE_CODE", ERROR, "catalogue_code",
             "Is the service code missing from the catalogue of this version?",
             "c.code IS NULL",
             "format('il codice prestazione %s (codifica %s) non è presente nel catalogo %s', s.catalogue_code, "
             "s.catalogue_coding, $2)"),
        Rule("QUANTITY_NOT_POSITIVE", ERROR, "quantity", "Is the quantity below 1?",
             "s.quantity < 1", "format('la quantità %s è inferiore a 1', s.quantity)"),
        Rule("AMOUNT_NEGATIVE", ERROR, "tariff", "Is the tariff negative?",
             "s.tariff < 0", f"format('la tariffa %s è negativa', {_euro('s.tariff')})"),
        Rule("AMOUNT_NEGATIVE", ERROR, "ticket", "Is the ticket negative?",
             "s.ticket < 0", f"format('il ticket %s è negativo', {_euro('s.ticket')})"),
        Rule("AMOUNT_TOO_LARGE", ERROR, "tariff",
             "Does the row total (quantity x tariff) overflow the 8-character amount?",
             f"s.quantity * s.tariff > {MAX_TOTAL}",
             f"format('il totale di riga %s x %s = %s supera {italian_amount(MAX_TOTAL)}', s.quantity, "
             f"{_euro('s.tariff')}, {_euro('s.quantity * s.tariff')})"),
        Rule("TARIFF_DIFFERS_FROM_CATALOGUE", WARNING, "tariff",
             "Does the tariff differ from the catalogue's?",
             "c.tariff <> s.tariff",
             "format('la tariffa %s è diversa dalla tariffa %s del catalogo per la prestazione %s', "
             f"{_euro('s.tariff')}, {_euro('c.tariff')}, s.catalogue_code)"),
        Rule("TOO_MANY_SERVICES", ERROR, "row_number",
             "Is this service beyond row 98 of its prescription (row 99 closes it)?",
             "s.row_number > 98",
             "format('prestazione %s della ricetta %s: una ricetta può avere al massimo 98 prestazioni', "
             "s.row_number, s.prescription_id)"),
        Rule("STRUCTURE_NOT_IN_ENTE", ERROR, "structure_sts11",
             "Does the delivering structure belong to another entity?",
             "e.sts11 IS NULL",
             _STRUCTURE_MESSAGE),
        # spec/flusso-c.md C2 113 (1 public, 2 private): written as the record says it, and the source contract
        # defaults it to 1; the regional registry of structures (contracts/data/structures.csv) knows which it is
        Rule("STRUCTURE_TYPE_DIFFERS", ERROR, "structure_type",
             "Does the structure type (public or private accredited) differ from the registry's for the structure?",
             "e.structure_type <> s.structure_type",
             "format('la struttura %s è %s nell''anagrafe delle strutture (tipo %s), ma la prestazione la indica "
             "di tipo %s', s.structure_sts11, CASE e.structure_type WHEN '1' THEN 'pubblica' "
             "ELSE 'privata accreditata' END, e.structure_type, s.structure_type)"),
        # spec/flusso-c.md, C1: the codice fiscale is "blank only for legal anonymity", the surname "ANONIMO for
        # protected cases": a blank one beside a real surname would put a protected patient's name in the file
        Rule("ANONYMOUS_PATIENT_NAMED", ERROR, "patient_surname",
             "Is the codice fiscale blank (legal anonymity) while the surname is not ANONIMO?",
             "s.patient_cf IS NULL AND upper(s.patient_surname) <> 'ANONIMO'",
             "format('il codice fiscale è assente, cosa ammessa solo per l''anonimato previsto dalla legge, ma il "
             "cognome è %s: per un paziente tutelato va indicato ANONIMO', s.patient_surname)"),
    ),
)

# The C1 record (personal data) is repeated on every row of a prescription, and its join key with C2 holds the
# charging region and the ID (spec/flusso-c.md "General rules"): what C1 writes must be the same on every row,
# spelled the same (compared as stored: with upper() on each row the 1 M load's prescription rules took 1.5 s more,
# compared as stored 0.8 s). Letters are written upper case (an AN field), so two IDs or prescription numbers that
# differ only in case are one in the file: a duplicate key, a file refused (the windows below).
_SAME_IN_C1 = {  # column -> (flag, what the rule asks about, what the rows should share in Italian)
    "region": ("region_differs", "charging region", "la stessa regione addebitante"),
    "prescriber_code": ("prescriber_differs", "prescriber", "lo stesso medico prescrittore"),
    "patient_surname": ("surname_differs", "patient's surname", "lo stesso cognome del paziente"),
    "patient_name": ("name_differs", "patient's name", "lo stesso nome del paziente"),
    "patient_sex": ("sex_differs", "patient's sex", "lo stesso sesso del paziente"),
    "patient_birth_date": ("birth_date_differs", "patient's birth date", "la stessa data di nascita del paziente"),
    "patient_residence_istat": ("residence_differs", "patient's municipality of residence",
                                "lo stesso comune di residenza del paziente"),
    "patient_residence_asl": ("residence_asl_differs", "patient's ASL of residence",
                              "la stessa ASL di residenza del paziente"),
}
_NULLABLE_IN_C1 = frozenset({"prescriber_code", "patient_residence_asl"})


def _one_value(column: str) -> str:
    """SQL over a prescription's rows: do they hold more than one value of `column` (a null as nothing)?"""
    value = f"coalesce({column}, '')" if column in _NULLABLE_IN_C1 else column
    return f"min({value}) <> max({value}) AS {_SAME_IN_C1[column][0]}"


# One row per prescription of the snapshot, with what the prescription rules ask about.
_PRESCRIPTIONS = f"""(
    SELECT p.*,
           rank() OVER w AS number_rank, first_value(p.prescription_id) OVER w AS number_owner,
           rank() OVER v AS id_rank, first_value(p.prescription_id) OVER v AS id_owner
    FROM (
        SELECT prescription_id, min(source_id) FILTER (WHERE row_number = 1) AS first_source_id,
               sum(quantity * tariff) AS services_total, sum(ticket) AS ticket_total,
               bool_and(regime = 'SSN') AS ssn,
               max(delivery_type) AS delivery_type,
               max(nullif(btrim(exemption_code), '')) AS exemption_code,  -- blank: none (the file writes none)
               min(prescription_number) AS prescription_number,
               min(coalesce(patient_cf, '')) <> max(coalesce(patient_cf, '')) AS patient_differs,
               min(delivery_type) <> max(delivery_type) AS delivery_type_differs,
               min(coalesce(priority, '')) <> max(coalesce(priority, '')) AS priority_differs,
               min(coalesce(exemption_code, '')) <> max(coalesce(exemption_code, '')) AS exemption_differs,
               min(prescription_number) <> max(prescription_number) AS number_differs,
               min(structure_sts11) <> max(structure_sts11) AS structure_differs,
               {", ".join(_one_value(column) for column in _SAME_IN_C1)}
        FROM snapshot_service WHERE snapshot_id = $1 GROUP BY prescription_id
    ) p
    WINDOW w AS (PARTITION BY upper(p.prescription_number) ORDER BY p.first_source_id, p.prescription_id),
           v AS (PARTITION BY upper(rtrim(p.prescription_id)) ORDER BY p.first_source_id, p.prescription_id)
) s"""


def _differs(field: str, flag: str, what: str, italian: str) -> Rule:
    """`italian`: what the services should share, with its article ("lo stesso paziente")."""
    return Rule("PRESCRIPTION_FIELD_DIFFERS", ERROR, field,
                f"Do the services of one prescription disagree on the {what} (row 99 carries one)?",
                f"s.{flag}",
                f"format('le prestazioni della ricetta %s non riportano tutte {italian}', s.prescription_id)")


PRESCRIPTION_RULES = RuleSet(
    "prescriptions",
    _PRESCRIPTIONS,
    "s.first_source_id || '@' || s.prescription_id || '/99'",
    (
        Rule("EXEMPTION_REQUIRED", ERROR, "exemption_code",
             "Is an SSN prescription (type S) with no ticket paid missing its exemption code?",
             "s.ssn AND s.delivery_type = 'S' AND s.ticket_total = 0 AND s.services_total > 0 "
             "AND s.exemption_code IS NULL",
             "format('nessun ticket pagato su %s di prestazioni e nessun codice di esenzione', "
             f"{_euro('s.services_total')})"),
        Rule("AMOUNT_ARITHMETIC", ERROR, "ticket",
             "Does the ticket paid exceed the value of the services plus the fixed fee?",
             f"s.ticket_total > s.services_total + {FIXED_FEE_ALLOWANCE}",
             f"format('il ticket %s supera il totale delle prestazioni %s più la quota fissa di "
             f"{italian_amount(FIXED_FEE_ALLOWANCE)}', {_euro('s.ticket_total')}, {_euro('s.services_total')})"),
        Rule("AMOUNT_TOO_LARGE", ERROR, "ticket",
             "Does the prescription's ticket overflow the 7-character amount?",
             f"s.ticket_total > {MAX_TICKET}",
             f"format('il ticket %s supera {italian_amount(MAX_TICKET)}', {_euro('s.ticket_total')})"),
        Rule("AMOUNT_TOO_LARGE", ERROR, "tariff",
             "Does the prescription's net total overflow the 8-character amount?",
             f"s.services_total - s.ticket_total > {MAX_TOTAL}",
             f"format('il totale netto %s supera {italian_amount(MAX_TOTAL)}', "
             f"{_euro('s.services_total - s.ticket_total')})"),
        Rule("DUPLICATE_PRESCRIPTION_NUMBER", ERROR, "prescription_number",
             "Is the prescription number (upper case, as the file writes it) another prescription's (ID)?",
             "s.number_rank > 1",
             "format('il numero ricetta %s è già usato dalla ricetta %s', "
             "s.prescription_number, s.number_owner)"),
        # spec/flusso-c.md, C2 13-28: "NRE / barcode without special characters; for direct access a progressive"
        Rule("PRESCRIPTION_NUMBER_CHARACTERS", ERROR, "prescription_number",
             "Does the prescription number hold anything but letters and digits (a dash, a slash, a space)?",
             "s.prescription_number !~ '^[0-9A-Za-z]+$'",
             "format('il numero ricetta %s contiene caratteri diversi da lettere e cifre: va indicato senza "
             "caratteri speciali (NRE o codice a barre, o il progressivo per l''accesso diretto)', "
             "s.prescription_number)"),
        _differs("patient_cf", "patient_differs", "patient", "lo stesso paziente"),
        _differs("delivery_type", "delivery_type_differs", "delivery type", "lo stesso tipo di erogazione"),
        _differs("priority", "priority_differs", "priority class", "la stessa classe di priorità"),
        _differs("exemption_code", "exemption_differs", "exemption code", "lo stesso codice di esenzione"),
        _differs("prescription_number", "number_differs", "prescription number", "lo stesso numero ricetta"),
        _differs("structure_sts11", "structure_differs", "structure", "la stessa struttura"),
        *(_differs(column, flag, what, italian) for column, (flag, what, italian) in _SAME_IN_C1.items()),
        # the file writes the ID upper case and pads it with spaces: `rx1` and `RX1 ` are both `RX1`, one key
        Rule("DUPLICATE_PRESCRIPTION_ID", ERROR, "prescription_id",
             "Is the ID, upper case and padded as the file writes it, another prescription's of the snapshot?",
             "s.id_rank > 1",
             "format('l''identificativo della ricetta %s nel file si scrive %s, come quello della ricetta %s: "
             "due ricette con la stessa chiave', quote_literal(s.prescription_id), "
             "quote_literal(upper(rtrim(s.prescription_id))), quote_literal(s.id_owner))"),
        # spec/flusso-c.md C1 131-150: the ID joins C1 and C2; one of spaces only is written blank, a record without
        # its key (the formatter's MISSING counts the characters, spaces too)
        Rule("PRESCRIPTION_ID_BLANK", ERROR, "prescription_id",
             "Is the ID made of spaces only, so the file would write it blank?",
             "btrim(s.prescription_id) = ''",
             "format('l''identificativo della ricetta %s è fatto solo di spazi: nel file sarebbe vuoto, e le righe "
             "della ricetta resterebbero senza chiave', quote_literal(s.prescription_id))"),
    ),
    grouped_in_index_order=True,
)

_STRUCTURE = Rule("STRUCTURE_NOT_IN_ENTE", ERROR, "structure_sts11",
                  "Does the structure belong to another entity?", "e.sts11 IS NULL", _STRUCTURE_MESSAGE)

BOOKING_RULES = RuleSet(
    "bookings",
    """snapshot_booking s
       LEFT JOIN catalogue_item c ON c.version = $2 AND c.coding = 'N' AND c.code = s.catalogue_code
       LEFT JOIN ente_structure e ON e.ente = s.ente AND e.sts11 = s.structure_sts11""",
    "s.source_id",
    (
        _STRUCTURE,
        Rule("UNKNOWN_SERVICE_CODE", ERROR, "catalogue_code", "Is the service code missing from the catalogue?",
             "c.code IS NULL",
             "format('il codice prestazione %s non è presente nel catalogo %s', s.catalogue_code, $2)"),
        Rule("APPOINTMENT_BEFORE_BOOKING", ERROR, "appointment_date", "Is the appointment before the booking?",
             "s.appointment_date < s.booking_date",
             "format('la data dell''appuntamento %s è precedente alla data di prenotazione %s', "
             f"{_day('s.appointment_date')}, {_day('s.booking_date')})"),
        # ALPI TA writes the days of waiting in 3 digits (Giorni di attesa): the formatter refuses more (TOO_LONG)
        Rule("WAITING_DAYS_TOO_MANY", ERROR, "appointment_date",
             "Is the appointment more days after the booking than the 3-digit waiting days can write (999)?",
             "s.appointment_date - s.booking_date > 999",
             "format('l''appuntamento del %s è a %s giorni dalla prenotazione del %s: il tracciato ALPI TA scrive "
             f"al massimo 999 giorni di attesa', {_day('s.appointment_date')}, "
             f"s.appointment_date - s.booking_date, {_day('s.booking_date')})"),
    ),
)

PAYMENT_DOCUMENT_RULES = RuleSet(
    "payment documents",
    """snapshot_payment_document s
       LEFT JOIN ente_structure e ON e.ente = s.ente AND e.sts11 = s.structure_sts11""",
    "s.source_id",
    (
        _STRUCTURE,
        Rule("PAYMENT_AFTER_PERIOD", ERROR, "payment_date", "Is the payment dated after the period?",
             "s.payment_date > $4::date",
             "format('la data di pagamento %s è successiva alla fine del periodo, %s', "
             f"{_day('s.payment_date')}, {_day('$4::date')})"),
    ),
)


@dataclass(frozen=True)
class CheckPlan:
    """What to check in a snapshot table: the SQL rule sets and how to check codici fiscali."""

    table: str
    rule_sets: tuple[RuleSet, ...]
    cf_with_person: bool  # sex and birth date are in the record: compare them with the code
    record_key: str
    first_of_group: str | None = None  # SQL true on one record of each group (prescription), counted on the way
    # the 730 file's own rules too (services.loader.ts730_checks: the formatter's, in Python, over the documents)
    ts730_rules: bool = False


PLANS: dict[str, CheckPlan] = {
    # every prescription has exactly one row 1 (row_number() over the prescription, snapshot.snapshot_sql)
    "snapshot_service": CheckPlan("snapshot_service", (SERVICE_ROW_RULES, PRESCRIPTION_RULES), True, _SERVICE_KEY,
                                  first_of_group="row_number = 1"),
    "snapshot_booking": CheckPlan("snapshot_booking", (BOOKING_RULES,), False, "s.source_id"),
    "snapshot_payment_document": CheckPlan("snapshot_payment_document", (PAYMENT_DOCUMENT_RULES,), False,
                                           "s.source_id", ts730_rules=True),
}

CF_CODES: dict[str, tuple[Severity, str]] = {
    "CF_FORMAT": (ERROR, "Is the codice fiscale not 16 well-placed letters and digits?"),
    "CF_CHECK_CHAR": (ERROR, "Is the check character wrong (omocodia allowed)?"),
    "CF_BIRTH_MISMATCH": (ERROR, "Does the birth date differ from the one the codice fiscale encodes?"),
    "CF_SEX_MISMATCH": (ERROR, "Does the sex differ from the one the codice fiscale encodes?"),
}


# a problem of the whole load, not of a record (services.loader.pipeline adds it)
NO_SOURCE_DATA: tuple[str, Severity, str] = ("NO_SOURCE_DATA", WARNING, "period")


@functools.cache
def plan_for(flow_type: str, version: str, snapshot_table: str) -> CheckPlan:
    """PLANS[snapshot_table] with the rules of the flow's layout (name_rules, charset_rules) in its row rule set (the
    first: one scan of the snapshot for them all). Built once per (flow, version) and process."""
    plan = PLANS[snapshot_table]
    extra = name_rules(flow_type, version) + charset_rules(flow_type, version) + layout_value_rules(flow_type, version)
    if not extra:
        return plan
    rows, *rest = plan.rule_sets
    assert not rows.grouped_in_index_order, "the first rule set of a plan is over the snapshot's rows"
    return dataclasses.replace(plan, rule_sets=(dataclasses.replace(rows, rules=rows.rules + extra), *rest))


def problem_kinds() -> set[tuple[str, Severity, str]]:
    """(code, severity, field) of every problem the checks can put in a feedback, with any layout's own rules."""
    kinds: set[tuple[str, Severity, str]] = {(r.code, r.severity, r.field) for plan in PLANS.values()
                                             for rule_set in plan.rule_sets for r in rule_set.rules}
    kinds |= {(r.code, r.severity, r.field) for flow_type, version in LayoutRegistry().available()
              for r in name_rules(flow_type, version) + charset_rules(flow_type, version)
              + layout_value_rules(flow_type, version)}
    kinds |= {(code, severity, "patient_cf") for code, (severity, _) in CF_CODES.items()}
    kinds |= {(code, ERROR if error else WARNING, field) for code, error, field in ts730_checks.problem_kinds()}
    kinds.add(NO_SOURCE_DATA)
    return kinds


def rule_set_sql(rule_set: RuleSet) -> str:
    """One INSERT evaluating every rule of the set in a single pass over the relation."""
    def literal(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    values = ",\n        ".join(
        f"(coalesce(({r.broken}), false), {literal(r.field)}, {literal(r.code)}, {literal(r.severity)}, "
        f"{r.message})" for r in rule_set.rules)
    def any_of(guard: str | None) -> str:
        return " OR ".join(f"coalesce(({r.broken}), false)" for r in rule_set.rules if r.guard == guard)

    # which records break a rule: the rules behind a guard only asked when it holds (Rule.guard)
    any_broken = " OR ".join(any_of(None) if guard is None else f"(coalesce(({guard}), false) AND ({any_of(guard)}))"
                             for guard in dict.fromkeys(r.guard for r in rule_set.rules))
    snapshot_filter = "" if rule_set is PRESCRIPTION_RULES else "s.snapshot_id = $1 AND "
    classes = "".join(f", {param}::text" for param in LENGTH_CLASSES.values())
    # the params CTE types every parameter even when a rule set does not use them all (rule_args)
    return f"""
    WITH params AS (SELECT $1::bigint, $2::text, $3::date, $4::date, {REFUSED}::text, {WRITABLE_RUN}::text{classes},
                           {PREVIOUS_PERIOD_START})
    INSERT INTO load_problem (snapshot_id, record_key, field, code, severity, message)
    SELECT $1, {rule_set.record_key}, r.field, r.code, r.severity, r.message
    FROM {rule_set.relation}
    CROSS JOIN LATERAL (VALUES
        {values}
    ) AS r(broken, field, code, severity, message)
    WHERE {snapshot_filter}({any_broken}) AND r.broken"""


async def _run_rule_set(pool: asyncpg.Pool, rule_set: RuleSet, snapshot_id: int, version: str,
                        period: tuple[date, date]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        # the prescriptions (grouped, then sorted by number for the duplicate rule) fit in memory with this
        await conn.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
        if rule_set.grouped_in_index_order:
            # Planned for a few thousand rows (a snapshot without statistics: pipeline._analyze gives it some, but
            # may time out), this hashes every prescription of a million services: 217 MB of aggregate states
            # spilled in 5 batches, 8.6 s. The snapshot is written in prescription order and indexed so: grouped
            # as read, one group in memory at a time, 2.0 s (same rows, same machine). No hash, no sort of the
            # rows: the index order is the only way left, whatever the statistics say.
            await conn.execute("SET LOCAL enable_hashagg = off")
            await conn.execute("SET LOCAL enable_sort = off")
        await conn.execute(rule_set_sql(rule_set), *rule_args(snapshot_id, version, period))


CF_BATCH = 50_000  # distinct codes checked at once: memory is bounded by this, not by the period


def _cf_groups_sql(plan: CheckPlan, also: str = "") -> str:
    """The distinct (code, person) of the snapshot, the records without a code as one more group, each with how
    many records and first rows of a group (prescriptions) it has: the one scan that also counts the load. In code
    order, so the distinct codes (the patients) are counted a batch at a time. `also`: more output columns."""
    person = ", patient_sex, patient_birth_date" if plan.cf_with_person else ""
    first = f"count(*) FILTER (WHERE {plan.first_of_group})" if plan.first_of_group else "0::bigint"
    return (f"SELECT patient_cf{person}, count(*) AS records, {first} AS first_rows{also} FROM {plan.table} "
            f"WHERE snapshot_id = $1 GROUP BY patient_cf{person} ORDER BY patient_cf")


@dataclass(frozen=True)
class CfCheck:
    findings: int  # (code, person) combinations that break a rule
    codes: int  # distinct codici fiscali of the snapshot (its patients)
    records: int  # records of the snapshot
    first_rows: int  # records that open a group (CheckPlan.first_of_group): the prescriptions; 0 without groups
    rule_problems: int | None = None  # problems the SQL rule sets found, when counted (the small path counts them)

    @property
    def no_problem(self) -> bool:
        """Known to have found nothing at all: no rule problem (counted) and no bad codice fiscale."""
        return self.rule_problems == 0 and self.findings == 0


async def _run_cf_checks(pool: asyncpg.Pool, plan: CheckPlan, snapshot_id: int, batch: int = CF_BATCH) -> CfCheck:
    """The codice fiscale rules over the DISTINCT codes of the snapshot, read through a server-side
    cursor `batch` at a time; each batch's findings go straight to a temporary table, then one
    INSERT ... SELECT names every record that carries a bad code. The codes come in order, so how many
    there are (the patients of the load) is counted on the way, holding none of them."""
    person = 2 if plan.cf_with_person else 0
    found = distinct = records = first_rows = 0
    last: str | None = None
    async with pool.acquire() as conn, conn.transaction():  # a server-side cursor lives in a transaction
        cursor = await conn.cursor(_cf_groups_sql(plan), snapshot_id)
        while groups := await cursor.fetch(batch):
            records += sum(g["records"] for g in groups)
            first_rows += sum(g["first_rows"] for g in groups)
            rows = [tuple(g)[:1 + person] for g in groups if g[0] is not None]  # (code, sex, birth date)
            codes = [r[0] for r in rows]
            for code in codes:
                if code != last:
                    distinct, last = distinct + 1, code
            findings = check_codici_fiscali(
                codes,
                sexes=[r[1] for r in rows] if plan.cf_with_person else None,
                birth_dates=[r[2] for r in rows] if plan.cf_with_person else None)
            if findings:  # the table only when there is something to put in it: DDL costs a clean load
                await _stage_cf_findings(conn, plan, [(codes[f.index], f.code, f.message, *rows[f.index][1:])
                                                      for f in findings], create=not found)
                found += len(findings)
            del groups, rows, codes, findings
        if found:
            await _record_cf_findings(conn, plan, snapshot_id)
    return CfCheck(found, distinct, records, first_rows)


async def _stage_cf_findings(conn: asyncpg.Connection, plan: CheckPlan, findings: list[tuple[Any, ...]],
                             create: bool = True) -> None:
    """(code, rule code, message[, sex, birth date]) of bad codici fiscali into this transaction's temporary
    table (created first when `create`)."""
    if create:
        person_cols = ", sex text, birth date" if plan.cf_with_person else ""
        await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS cf_finding_{plan.table} "
                           f"(cf text, code text, message text{person_cols}) ON COMMIT DROP")
    await conn.copy_records_to_table(f"cf_finding_{plan.table}", records=findings)


async def _record_cf_findings(conn: asyncpg.Connection, plan: CheckPlan, snapshot_id: int) -> None:
    """One problem per record that carries a staged bad code (and, with the person, its sex and birth date)."""
    match = " AND s.patient_sex = f.sex AND s.patient_birth_date = f.birth" if plan.cf_with_person else ""
    await conn.execute(f"""
        INSERT INTO load_problem (snapshot_id, record_key, field, code, severity, message)
        SELECT $1, {plan.record_key}, 'patient_cf', f.code, 'error', f.message
        FROM {plan.table} s JOIN cf_finding_{plan.table} f ON s.patient_cf = f.cf{match}
        WHERE s.snapshot_id = $1""", snapshot_id)


@functools.cache
def _small_sql(plan: CheckPlan) -> str:
    """ONE statement: the previous problems deleted, every rule set inserted (data-modifying CTEs all see the
    statement's snapshot, so the DELETE never sees the new rows), and the snapshot's codici fiscali grouped with
    their counts (_cf_groups_sql: the groups count the load too, as on the parallel path) and with how many problems
    the rule sets inserted (a load without any needs no count of its problems: pipeline.run_load)."""
    parts = ["dropped AS (DELETE FROM load_problem WHERE snapshot_id = $1)"]
    parts += [f"rule_set_{i} AS ({rule_set_sql(rule_set)} RETURNING 1)" for i, rule_set in enumerate(plan.rule_sets)]
    # every group row also carries how many problems the rule sets inserted (a scalar subquery: computed once)
    problems = " + ".join(f"(SELECT count(*) FROM rule_set_{i})" for i in range(len(plan.rule_sets)))
    return "WITH " + ",\n".join(parts) + "\n" + _cf_groups_sql(plan, also=f", {problems} AS rule_problems")


async def _run_small(conn: asyncpg.Connection, plan: CheckPlan, snapshot_id: int, version: str,
                     period: tuple[date, date]) -> CfCheck:
    """The checks of a small snapshot on one connection in one round trip (_small_sql; at this size PostgreSQL's
    default work_mem is plenty, so no transaction for a SET LOCAL), which counts the load on the way; only codici
    fiscali with findings cost a transaction (their temporary table)."""
    groups = await conn.fetch(_small_sql(plan), *rule_args(snapshot_id, version, period))
    person = 2 if plan.cf_with_person else 0
    rows = [tuple(g)[:1 + person] for g in groups if g[0] is not None]  # (code, sex, birth date), in code order
    codes = [r[0] for r in rows]
    counted = CfCheck(findings=0, codes=len(set(codes)), records=sum(g["records"] for g in groups),
                      first_rows=sum(g["first_rows"] for g in groups),
                      rule_problems=int(groups[0]["rule_problems"]) if groups else None)
    findings = check_codici_fiscali(
        codes,
        sexes=[r[1] for r in rows] if plan.cf_with_person else None,
        birth_dates=[r[2] for r in rows] if plan.cf_with_person else None)
    if plan.ts730_rules:
        found = await ts730_checks.check_730_documents(conn, snapshot_id)
        if counted.rule_problems is not None:  # None (not counted): the pipeline counts them all
            counted = dataclasses.replace(counted, rule_problems=counted.rule_problems + found)
    if not findings:
        return counted
    async with conn.transaction():
        await _stage_cf_findings(conn, plan, [(codes[f.index], f.code, f.message, *rows[f.index][1:])
                                              for f in findings])
        await _record_cf_findings(conn, plan, snapshot_id)
    return dataclasses.replace(counted, findings=len(findings))


async def _run_730_rules(pool: asyncpg.Pool, snapshot_id: int) -> int:
    async with pool.acquire() as conn:
        return await ts730_checks.check_730_documents(conn, snapshot_id)


# Up to this many snapshot rows, the checks run one after the other on one connection (a small load's time is
# round trips, not work); above, the rule sets run in parallel, each with its own work_mem.
SMALL_SNAPSHOT = 5_000


async def run_checks(pool: asyncpg.Pool, snapshot_table: str, snapshot_id: int, version: str,
                     period: tuple[date, date], rows: int | None = None, *, flow_type: str,
                     conn: asyncpg.Connection | None = None) -> CfCheck:
    """Evaluate every rule on the snapshot into load_problem (previous problems of it are replaced); the rules of
    the flow's layout `version` too (plan_for: CHARSET).

    The rule sets and the codice fiscale check run concurrently on separate connections: PostgreSQL
    runs each INSERT ... SELECT on one core, so parallel statements are how a load uses the machine.
    A snapshot of at most SMALL_SNAPSHOT `rows` (when the caller knows them) is checked on one connection: `conn`
    when given (the snapshot's, still held: no release and acquire in between), else one of the pool's.
    Returns what the codice fiscale check counted on the way (records, prescriptions, patients)."""
    plan = plan_for(flow_type, version, snapshot_table)
    if rows is not None and rows <= SMALL_SNAPSHOT:
        if conn is not None:
            return await _run_small(conn, plan, snapshot_id, version, period)
        async with pool.acquire() as own:
            return await _run_small(own, plan, snapshot_id, version, period)
    async with pool.acquire() as own:
        await own.execute("DELETE FROM load_problem WHERE snapshot_id = $1", snapshot_id)
    cf, *_ = await asyncio.gather(
        _run_cf_checks(pool, plan, snapshot_id),
        *(_run_rule_set(pool, rs, snapshot_id, version, period) for rs in plan.rule_sets),
        *([_run_730_rules(pool, snapshot_id)] if plan.ts730_rules else []))
    assert isinstance(cf, CfCheck)
    return cf
