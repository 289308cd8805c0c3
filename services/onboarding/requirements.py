"""The documents each kind of request requires, read from versioned data.

`contracts/data/onboarding/requirements-<version>.toml` transcribes the So.Re.Sa. note (seed 003).
A request records the version it was opened with and is judged by that version for its whole
life, so a new note changes new requests only.

A required document is a *slot*: usually the document type id (`tracciato-prestazioni`); for a
document required once per SPOKE already on the CUP it is `spoke-closure-act:<STS11>`. The latest
document received for a slot is the one that counts (a corrected file replaces a refused one).

Non-tracciato documents are assessed on declared metadata; the rules are one-word checks
(`present`, `yes`, `one-of:a|b`, `date`, `window`, `sts11`), each answering one question. A broken
rule is a finding in Italian naming the declared key and value; it is always read next to its document.
The lookups a user's input reaches (an unknown request kind or document type) refuse in Italian too;
a missing or malformed data file is the operators' business and says so in English.

A document type's name is not in this data: it is `contracts.onboarding.DOCUMENT_LABELS` (`DocumentType.title`
is taken from there); a kind's, likewise, is `contracts.onboarding.KIND_LABELS` (`KindRequirements.title`). The
name is part of the public language every reader shares (console, CLI, the completeness summary recorded in
events) and must stay the same for an id across versions of the note, while this data is versioned per note;
contracts keeps it pure, with no file to read. A file that names a type or a kind (`title`), or one without a
label, is refused when loaded, naming the file and the type or kind, so the two can neither drift nor leave a
document or kind unnamed.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from contracts import data_file
from contracts.onboarding import DOCUMENT_LABELS, KIND_LABELS
from services.onboarding.findings import Finding

DATA_DIR = data_file("data", "onboarding")
PER_SPOKE_KEY = "spoke_sts11"
_YES = {"yes", "si", "sì", "true", "1", "y"}
_STS11 = re.compile(r"^[0-9A-Z]{6}$")
WINDOW = re.compile(r"^([0-2][0-9]):([0-5][0-9])-([0-2][0-9]):([0-5][0-9])$")


class RequirementsError(ValueError):
    """The requirements data is missing or malformed; the message names file and key."""


@dataclass(frozen=True)
class DocumentType:
    id: str
    title: str  # its Italian name, contracts.onboarding.DOCUMENT_LABELS[id] (never from the data file)
    assessment: str  # "tracciato" | "metadata"
    sheet: str | None = None
    meta: Mapping[str, str] = field(default_factory=dict)
    per_spoke_already_on_cup: bool = False


@dataclass(frozen=True)
class KindRequirements:
    kind: str
    title: str
    annex: str
    documents: tuple[str, ...]
    iup_ssa_code: str | None = None  # "hub" | "taking-in-charge"
    switch: bool = False
    credentials_from: str | None = None
    switch_from: str | None = None


@dataclass(frozen=True)
class Requirements:
    version: str
    source: str
    tracciati_version: str
    document_types: Mapping[str, DocumentType]
    kinds: Mapping[str, KindRequirements]

    def kind(self, kind: str) -> KindRequirements:
        try:
            return self.kinds[kind]
        except KeyError:
            known = ", ".join(sorted(self.kinds))
            raise RequirementsError(
                f"requisiti {self.version}: tipo di richiesta {kind!r} sconosciuto (previsti: {known})"
            ) from None

    def document_type(self, type_id: str) -> DocumentType:
        try:
            return self.document_types[type_id]
        except KeyError:
            known = ", ".join(sorted(self.document_types))
            raise RequirementsError(
                f"requisiti {self.version}: tipo di documento {type_id!r} sconosciuto (previsti: {known})"
            ) from None

    def slots_for(self, kind: str, spokes_already_on_cup: Iterable[str]) -> list[str]:
        """The required slots of a request, conditional ones expanded (seed 003, Nuova Aggregazione p.3)."""
        slots: list[str] = []
        on_cup = sorted(set(spokes_already_on_cup))
        for type_id in self.kind(kind).documents:
            if self.document_type(type_id).per_spoke_already_on_cup:
                slots.extend(f"{type_id}:{sts11}" for sts11 in on_cup)
            else:
                slots.append(type_id)
        return slots

    def slot_of(self, type_id: str, metadata: Mapping[str, str]) -> str:
        if self.document_type(type_id).per_spoke_already_on_cup and metadata.get(PER_SPOKE_KEY):
            return f"{type_id}:{metadata[PER_SPOKE_KEY].strip().upper()}"
        return type_id

    def slot_document(self, slot: str) -> tuple[str, dict[str, str]]:
        """The inverse of `slot_of`: a slot's document type and the metadata naming its SPOKE. A client that offers
        the slots (the console's document select) says which SPOKE a closure act is for by the slot chosen."""
        type_id, sep, sts11 = slot.partition(":")
        if not sep:
            return slot, {}
        if not self.document_type(type_id).per_spoke_already_on_cup:
            raise RequirementsError(
                f"requisiti {self.version}: {slot!r} non è un documento da indicare per SPOKE; scegliere "
                f"il tipo di documento {type_id!r}"
            )
        return type_id, {PER_SPOKE_KEY: sts11.strip().upper()}

    def tracciato_type_for_sheet(self, sheet: str) -> str | None:
        for doc_type in self.document_types.values():
            if doc_type.sheet is not None and sheet_key(doc_type.sheet) == sheet_key(sheet):
                return doc_type.id
        return None


def sheet_key(name: str) -> str:
    """Sheet names compare without case or accents: 'Unita eroganti' is 'Unità Eroganti'."""
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return " ".join(plain.casefold().split())


def available_versions(data_dir: Path = DATA_DIR) -> list[str]:
    return sorted(p.stem.removeprefix("requirements-") for p in data_dir.glob("requirements-*.toml"))


def load_requirements(version: str | None = None, data_dir: Path = DATA_DIR) -> Requirements:
    """Loads one version (the latest when `version` is None)."""
    versions = available_versions(data_dir)
    if not versions:
        raise RequirementsError(f"no requirements-*.toml in {data_dir}")
    chosen = version or versions[-1]
    path = data_dir / f"requirements-{chosen}.toml"
    if not path.exists():
        raise RequirementsError(f"requirements version {chosen!r} not found (available: {', '.join(versions)})")
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    for section, what, labels, source in (("document_types", "document type", DOCUMENT_LABELS, "DOCUMENT_LABELS"),
                                          ("kinds", "kind", KIND_LABELS, "KIND_LABELS")):
        for eid, entry in raw.get(section, {}).items():
            if "title" in entry:
                raise RequirementsError(f"{path.name}: {what} {eid}: 'title' is not requirements data: a {what}'s "
                                        f"name is contracts.onboarding.{source}; remove it from the file")
            if eid not in labels:
                raise RequirementsError(f"{path.name}: {what} {eid} has no label: add its Italian name to "
                                        f"contracts.onboarding.{source}")
    try:
        types = {
            tid: DocumentType(
                id=tid,
                title=DOCUMENT_LABELS[tid],
                assessment=t["assessment"],
                sheet=t.get("sheet"),
                meta=dict(t.get("meta", {})),
                per_spoke_already_on_cup=bool(t.get("per_spoke_already_on_cup", False)),
            )
            for tid, t in raw["document_types"].items()
        }
        kinds = {
            kid: KindRequirements(
                kind=kid,
                title=KIND_LABELS[kid],
                annex=k["annex"],
                documents=tuple(k["documents"]),
                iup_ssa_code=k.get("iup_ssa_code"),
                switch=bool(k.get("switch", False)),
                credentials_from=k.get("credentials_from"),
                switch_from=k.get("switch_from"),
            )
            for kid, k in raw["kinds"].items()
        }
        requirements = Requirements(
            version=raw["version"],
            source=raw["source"],
            tracciati_version=raw["tracciati"],
            document_types=types,
            kinds=kinds,
        )
    except KeyError as exc:
        raise RequirementsError(f"{path.name}: missing key {exc}") from exc
    for kind in kinds.values():
        for type_id in kind.documents:
            requirements.document_type(type_id)  # every listed document must be defined
    for doc_type in types.values():
        for key, rule in doc_type.meta.items():
            if rule.split(":", 1)[0] not in _RULES:
                raise RequirementsError(f"{path.name}: document type {doc_type.id}, meta {key}: unknown rule {rule!r}")
    return requirements


# Each rule says what is wrong with the declared value, after "il dato dichiarato <key>", or None when it is good.
def _present(value: str | None, _arg: str) -> str | None:
    return None if value and value.strip() else "manca"


def _yes(value: str | None, _arg: str) -> str | None:
    if not value or not value.strip():
        return "manca"
    return None if value.strip().casefold() in _YES else f"è {value!r}, deve essere sì"


def _one_of(value: str | None, arg: str) -> str | None:
    allowed = arg.split("|")
    if not value or not value.strip():
        return f"manca (uno tra {', '.join(allowed)})"
    return None if value.strip() in allowed else f"è {value!r}, deve essere uno tra {', '.join(allowed)}"


def _date(value: str | None, _arg: str) -> str | None:
    if not value or not value.strip():
        return "manca (AAAA-MM-GG)"
    try:
        date.fromisoformat(value.strip())
    except ValueError:
        return f"è {value!r}, non una data AAAA-MM-GG"
    return None


def _window(value: str | None, _arg: str) -> str | None:
    """A time window of one day: its shape, then real times (25:00 has the shape), then a start before the end (the
    switch's window is taken as such: a document passing here must not fail once the switch is recorded)."""
    if not value or not value.strip():
        return "manca (OO:MM-OO:MM)"
    match = WINDOW.match(value.strip())
    if not match:
        return f"è {value!r}, non una fascia oraria OO:MM-OO:MM"
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 23:
        return f"è {value!r}, non una fascia oraria: le ore vanno da 00 a 23"
    if (h1, m1) >= (h2, m2):
        return f"è {value!r}: la fascia oraria deve finire dopo il suo inizio"
    return None


def _sts11(value: str | None, _arg: str) -> str | None:
    if not value or not value.strip():
        return "manca (STS11)"
    return None if _STS11.match(value.strip().upper()) else f"è {value!r}, non un codice STS11 (6 caratteri)"


_RULES = {
    "present": _present,
    "yes": _yes,
    "one-of": _one_of,
    "date": _date,
    "window": _window,
    "sts11": _sts11,
}


def broken_rule(rule: str, value: str | None) -> str | None:
    """What is wrong with a declared `value` under `rule` (`date`, `one-of:a|b` ...), in the words of the finding
    after "il dato dichiarato <key>", or None when it is good. The one judge of a declared fact: `check_metadata`
    asks it, and so does the console's form of facts, which refuses a value of the wrong shape before anything is
    recorded (its message is then the finding's own)."""
    name, _, arg = rule.partition(":")
    return _RULES[name](value, arg)


def check_metadata(doc_type: DocumentType, metadata: Mapping[str, str]) -> list[Finding]:
    """Every declared fact the document type needs, judged by its rule; one finding per broken rule."""
    findings = []
    for key, rule in doc_type.meta.items():
        broken = broken_rule(rule, metadata.get(key))
        if broken:
            findings.append(Finding(f"il dato dichiarato {key} {broken}", column=key))
    return findings
