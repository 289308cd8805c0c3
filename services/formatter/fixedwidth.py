"""Fixed-width field rules, one value at a time, and the detail view of a produced file.

These scalar functions ARE the formatting rules (spec/flusso-c.md, "General rules"); the column-wise
engine in `columnar.py` applies the same rules to whole columns for speed, and the tests check
that both agree. `parse_record` / `iter_table` read a file back as named fields: the seed's
detail view, and the way tests check files field by field.

Transliteration rule (documented in docs/layouts.md): the text is first put in Unicode's composed form (NFC), so a
name is written one way whichever form it came in (`Ò` as one code point, or `O` then a combining grave as macOS
sends it); then the Italian accented vowels become the vowel followed by an apostrophe, as Italian registries write
them (`NICOLÒ` -> `NICOLO'`, `à` -> `a'`, then upper-cased); any other letter with a diacritic loses it (`Ç` -> `C`,
`Ñ` -> `N`, `Ä` -> `A`, `Ǿ` -> `O`); typographic apostrophes become `'`. A character still outside printable ASCII is
an error.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable, Iterator
from datetime import date
from decimal import Decimal
from typing import Any

from services.formatter.layouts import FieldSpec, Layout, RecordKind

_APOSTROPHE_VOWELS = "ÀÁÈÉÌÍÒÓÙÚàáèéìíòóùú"
TRANSLITERATION: dict[str, str] = {ch: unicodedata.normalize("NFD", ch)[0] + "'" for ch in _APOSTROPHE_VOWELS}
TRANSLITERATION.update({"’": "'", "‘": "'", "`": "'", "´": "'", "ß": "SS", "Æ": "AE", "æ": "ae", "Ø": "O", "ø": "o"})
# Latin letters of European names that Unicode does not decompose (NFKD leaves them as they are): written as the
# letter they are read as, as a registry office would (Łukasz, Đoković, Yıldırım, Œuvray, Þóra), not refused
TRANSLITERATION.update({"Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "Ð": "D", "ð": "d", "ı": "i", "Œ": "OE", "œ": "oe",
                        "Þ": "TH", "þ": "th", "Ħ": "H", "ħ": "h", "Ŧ": "T", "ŧ": "t"})

PRINTABLE = frozenset(chr(c) for c in range(0x20, 0x7F)) - {"\\"}


class FieldValueError(ValueError):
    """A value that cannot be written in its field; `code` is the feedback code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def transliterate(text: str) -> str:
    """`text` as the fixed-width files write it (before upper-casing), character by character of its NFC form: the
    table's letters as the table says, ASCII as it is, any other character as its compatibility decomposition (NFKD)
    without the combining marks, each letter left of it again by the table (`Ǿ` -> `Ø` -> `O`). A combining mark NFC
    could not compose with the letter before it (`X` + U+0300: no such letter) is dropped, as it always was.

    NFC first: the same name in its decomposed form (`O` + U+0300) was written `O`, its composed one (`Ò`) `O'`, so one
    patient's surname could be written two ways. The loader asks the same of PostgreSQL (normalize(..., NFC) in
    services.loader.checks), and the compiled kernels leave every text with a combining mark to this function
    (services.formatter.fastpath._translit_table)."""
    if text.isascii():  # NFC, the table and NFKD leave ASCII as it is: most values
        return text
    out = []
    for ch in unicodedata.normalize("NFC", text):
        if ch in TRANSLITERATION:
            out.append(TRANSLITERATION[ch])
        elif ord(ch) < 0x80:
            out.append(ch)
        else:
            out.extend(TRANSLITERATION.get(c, c) for c in unicodedata.normalize("NFKD", ch)
                       if not unicodedata.combining(c))
    return "".join(out)


def composes_in_context(ch: str) -> bool:
    """Can NFC change `ch` depending on the characters around it: a combining mark (reordered, or composed with the
    letter before it: `O` + U+0300 -> `Ò`), or a character that composes with the one before it though it combines
    with nothing by class (a few Indic vowel signs)? Such a character is transliterated only within its text
    (`transliterate`), never alone: the compiled kernels leave it to the engine."""
    return unicodedata.combining(ch) != 0 or ch in _backward_composing()


# Every code point with a canonical decomposition (the only ones NFC can compose, or NFD change on their own): from
# `À` (U+00C0) to past the last one (U+2FA1D). Scans of "what can (de)composition change" read only these.
DECOMPOSABLE = range(0xC0, 0x30000)


@functools.cache
def _backward_composing() -> frozenset[str]:
    """The second characters of Unicode's canonical compositions (those NFC composes back), and the Hangul jamo that
    compose algorithmically (a vowel after a leading consonant, a trailing consonant after both)."""
    seconds = {chr(cp) for cp in range(0x1161, 0x1176)} | {chr(cp) for cp in range(0x11A8, 0x11C3)}
    for cp in DECOMPOSABLE:
        parts = unicodedata.decomposition(chr(cp)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            pair = "".join(chr(int(p, 16)) for p in parts)
            if unicodedata.normalize("NFC", pair) == chr(cp):
                seconds.add(pair[1])
    return frozenset(seconds)


@functools.cache
def _non_ascii_written() -> dict[str, str]:
    """What `transliterate` writes for every non-ASCII code point it does not write as itself (one scan per process,
    shared by length_changes and writable_ranges). A character that is not in TRANSLITERATION, already NFKD and not
    combining is written as itself (one character, not ASCII): skipped without calling `transliterate` (half a
    second for the scan instead of two)."""
    written = {}
    for cp in range(0x80, 0x110000):
        ch = chr(cp)
        if 0xD800 <= cp <= 0xDFFF or (ch not in TRANSLITERATION and unicodedata.is_normalized("NFKD", ch)
                                      and not unicodedata.combining(ch)):
            continue
        written[ch] = transliterate(ch)
    return written


@functools.cache
def length_changes() -> dict[str, int]:
    """Every character `transliterate` writes as printable ASCII of another length than one, with how many characters
    it adds (`Ò` -> `O'`: 1; NFKD: `ﬁ` -> `fi`: 1, `⑽` -> `(10)`: 3) or removes (a combining accent, dropped: -1).

    Over every code point, so nothing the NFKD branch maps is missed: the loader's name-length check
    (services.loader.checks.ascii_length_sql) counts with this, hence as the formatter writes."""
    return {ch: len(text) - 1 for ch, text in _non_ascii_written().items()
            if len(text) != 1 and all(c in PRINTABLE for c in text)}


def writable(ch: str) -> bool:
    """Can `format_an` write this character: does `transliterate` make it printable ASCII (or nothing, a combining
    accent)? Anything else (Cyrillic, Greek, CJK, a backslash, a control character) is its CHARSET error."""
    return all(c in PRINTABLE for c in transliterate(ch))


@functools.cache
def writable_ranges() -> tuple[tuple[int, int], ...]:
    """The code points `format_an` can write (`writable`), as sorted inclusive ranges, over every code point: the
    loader's CHARSET check (services.loader.checks.charset_sql) asks the same question in SQL with them."""
    points = [cp for cp in range(0x80) if writable(chr(cp))]
    points += sorted(ord(ch) for ch, text in _non_ascii_written().items() if all(c in PRINTABLE for c in text))
    ranges: list[tuple[int, int]] = []
    for cp in points:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    return tuple(ranges)


def format_an(value: str | None, length: int, *, upper: bool = True, truncate: bool = False) -> tuple[str, bool]:
    """Left-aligned, space-padded ASCII. Returns (text, truncated); too long raises unless `truncate`."""
    if value is None:
        return " " * length, False
    text = transliterate(value)
    if upper:
        text = text.upper()
    bad = sorted({ch for ch in text if ch not in PRINTABLE})
    if bad:
        raise FieldValueError("CHARSET", f"characters {bad!r} are not printable ASCII (after transliteration)")
    if len(text) > length:
        if not truncate:
            raise FieldValueError("TOO_LONG", f"{text!r} is {len(text)} characters, the field holds {length}")
        return text[:length], True
    return text.ljust(length), False


def format_n(value: int | None, length: int) -> str:
    """Right-aligned, zero-padded non-negative integer."""
    if value is None:
        return "0" * length
    if value < 0:
        raise FieldValueError("NEGATIVE", f"{value} is negative")
    text = str(value)
    if len(text) > length:
        raise FieldValueError("TOO_LONG", f"{value} needs {len(text)} digits, the field holds {length}")
    return text.rjust(length, "0")


def format_amount(cents: int | None, length: int) -> str:
    """`00123,61` (8) / `0123,61` (7): integer part zero-padded, comma, two decimals."""
    cents = 0 if cents is None else cents
    if cents < 0:
        raise FieldValueError("NEGATIVE", f"amount {cents / 100:.2f} is negative")
    whole, dec = divmod(cents, 100)
    text = f"{whole:0{length - 3}d},{dec:02d}"
    if len(text) > length:
        raise FieldValueError("TOO_LONG", f"amount {cents / 100:.2f} does not fit {length} characters")
    return text


def format_date(value: date | None) -> str:
    return "        " if value is None else value.strftime("%d%m%Y")


# ---------------------------------------------------------------------------------------------
# detail view


def parse_value(spec: FieldSpec, text: str) -> Any:
    if spec.type == "AN":
        return text.rstrip(" ")
    if spec.type == "N":
        return int(text) if text.strip() else None
    if spec.type == "AMOUNT":
        return Decimal(text.replace(",", "."))
    if not text.strip():
        return None
    return date(int(text[4:8]), int(text[2:4]), int(text[0:2]))


def parse_record(layout: Layout, kind: str, line: str | bytes) -> dict[str, Any]:
    """One record as {field name: value}: AN stripped, N int, AMOUNT Decimal, DATE date or None."""
    record: RecordKind = layout.record(kind)
    text = line.decode("ascii") if isinstance(line, bytes) else line
    text = text.rstrip("\r\n")
    if len(text) != record.length:
        raise ValueError(f"{kind} record has {len(text)} characters, the layout says {record.length}: {text[:40]!r}...")
    values: dict[str, Any] = {}
    for spec in record.fields:
        raw = text[spec.offset:spec.offset + spec.length]
        try:
            values[spec.name] = parse_value(spec, raw)
        except ValueError as exc:
            where = f"{kind} field {spec.name} ({spec.start}-{spec.end})"
            raise ValueError(f"{where}: {raw!r} is not a valid {spec.type}") from exc
    return values


def iter_table(layout: Layout, kind: str, lines: Iterable[str | bytes]) -> Iterator[dict[str, Any]]:
    """The records of a file as rows of named fields; an error names the line number."""
    for number, line in enumerate(lines, start=1):
        try:
            yield parse_record(layout, kind, line)
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from exc
