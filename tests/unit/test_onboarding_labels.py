"""Every document the onboarding service can require has an Italian name (seed 003's), slots of a SPOKE included.
The names have one source, contracts.onboarding.DOCUMENT_LABELS: the requirements data names no document (a file
that does, or that has a type without a label, is refused), so the two cannot disagree."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.onboarding import DOCUMENT_LABELS, document_label
from services.onboarding.requirements import DATA_DIR, RequirementsError, available_versions, load_requirements

SPOKES_ON_CUP = ["150456", "150789"]


def _requirable_slots() -> set[str]:
    """Every slot of every kind of every shipped version of the requirements, with SPOKEs already on the CUP."""
    slots: set[str] = set()
    for version in available_versions():
        requirements = load_requirements(version)
        for kind in requirements.kinds:
            slots.update(requirements.slots_for(kind, SPOKES_ON_CUP))
    return slots


def test_every_document_the_service_can_require_has_an_italian_label():
    slots = _requirable_slots()
    assert len(slots) > 20  # the 19 types of 2026-05, the closure act once per SPOKE
    unlabelled = sorted(slot for slot in slots if slot.partition(":")[0] not in DOCUMENT_LABELS)
    assert unlabelled == [], f"document types without an Italian label in contracts/onboarding.py: {unlabelled}"
    assert all(document_label(slot) != slot for slot in slots)


def test_a_closure_act_names_both_cases_of_the_note_and_its_spoke():
    """Seed 003: "la chiusura come Ente indipendente; oppure la cessazione come Spoke di altro HUB"."""
    assert document_label("spoke-closure-act") == ("Atto di chiusura come ente indipendente o di cessazione come "
                                                   "SPOKE di altro HUB")
    assert document_label("spoke-closure-act:150456") == ("Atto di chiusura come ente indipendente o di cessazione "
                                                          "come SPOKE di altro HUB (SPOKE 150456)")


def test_the_labels_are_the_names_of_the_note():
    assert document_label("tracciato-erogatore") == "Tracciato Erogatore"
    assert document_label("tracciato-raggruppamenti-unita") == "Tracciato Raggruppamenti Unità"
    assert document_label("accreditation-resolution") == "Delibera di accreditamento"
    assert document_label("suap-authorisation") == "Autorizzazione SUAP"
    assert document_label("endpoint-form-c") == ("Form di abilitazione degli endpoint per l'ambiente di produzione "
                                                 "(Allegato C)")


def test_no_two_documents_share_a_label_and_no_label_is_stale():
    assert len(set(DOCUMENT_LABELS.values())) == len(DOCUMENT_LABELS)
    known = {type_id for v in available_versions() for type_id in load_requirements(v).document_types}
    assert set(DOCUMENT_LABELS) - known == {"tracciati"}  # the upload of a workbook of several tracciati


def test_an_id_without_a_label_is_shown_as_it_is():
    assert document_label("visura-camerale") == "visura-camerale"
    assert document_label("visura-camerale:150456") == "visura-camerale:150456"


def test_the_requirements_name_every_document_type_by_its_label() -> None:
    for version in available_versions():
        types = load_requirements(version).document_types
        assert {t.id: t.title for t in types.values()} == {tid: DOCUMENT_LABELS[tid] for tid in types}, version


def _shipped_with(tmp_path: Path, extra: str, after: str | None = None) -> Path:
    """The latest shipped requirements file copied to `tmp_path`, `extra` added (after the line `after`, or at the
    end)."""
    version = available_versions()[-1]
    text = (DATA_DIR / f"requirements-{version}.toml").read_text(encoding="utf-8")
    if after is None:
        text += extra
    else:
        assert after in text
        text = text.replace(after, after + extra, 1)
    (tmp_path / f"requirements-{version}.toml").write_text(text, encoding="utf-8")
    return tmp_path


def test_a_requirements_file_that_names_a_document_type_is_refused(tmp_path: Path) -> None:
    """A title in the data would be a second name that can drift from the label: refused, naming file and type."""
    data = _shipped_with(tmp_path, '\ntitle = "Tracciato Erogatore (nuovo nome)"',
                         after="[document_types.tracciato-erogatore]")
    with pytest.raises(RequirementsError, match=r"requirements-.*\.toml: document type tracciato-erogatore: 'title'"):
        load_requirements(data_dir=data)


def test_a_document_type_without_a_label_is_refused(tmp_path: Path) -> None:
    data = _shipped_with(tmp_path, '\n[document_types.visura-camerale]\nassessment = "metadata"\n'
                                   'meta = { protocol = "present" }\n')
    with pytest.raises(RequirementsError, match="document type visura-camerale has no label"):
        load_requirements(data_dir=data)
    # the shipped file as it is loads, from the same place
    (tmp_path / next(tmp_path.glob("*.toml")).name).write_text(
        (DATA_DIR / f"requirements-{available_versions()[-1]}.toml").read_text(encoding="utf-8"), encoding="utf-8")
    assert load_requirements(data_dir=tmp_path).document_types


def test_onboarding_requirements_lists_each_document_by_its_label_and_what_is_checked(monkeypatch) -> None:
    from typer.testing import CliRunner

    from services.cli.onboarding_cli import app

    monkeypatch.setenv("COLUMNS", "250")
    shown = CliRunner().invoke(app, ["requirements", "new-aggregation"])
    assert shown.exit_code == 0, shown.output
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:5]]
             for line in shown.output.splitlines() if line.startswith("│") and line.split("│")[1].strip()}
    assert lines["tracciato-prestazioni"] == ["Tracciato Prestazioni", "tracciato", "sheet Prestazioni"]
    assert lines["accreditation-resolution"] == ["Delibera di accreditamento", "metadata",
                                                 "protocol present, date date"]
    assert lines["spoke-closure-act"][0] == DOCUMENT_LABELS["spoke-closure-act"]
    assert lines["spoke-closure-act"][2].endswith("one per SPOKE already on the CUP")


def test_every_kind_has_one_italian_name_from_contracts() -> None:
    """The five kinds of the note: named in contracts.onboarding.KIND_LABELS only; the requirements take their
    titles from there and the console shows the same words (a kind's `title` in the data file is refused)."""
    from contracts.onboarding import KIND_LABELS, RequestKind
    from services.console.labels import ONBOARDING_KIND_LABELS

    assert set(KIND_LABELS) == {k.value for k in RequestKind}
    assert len(set(KIND_LABELS.values())) == len(KIND_LABELS)
    for version in available_versions():
        kinds = load_requirements(version).kinds
        assert {k: spec.title for k, spec in kinds.items()} == {k: KIND_LABELS[k] for k in kinds}, version
    assert ONBOARDING_KIND_LABELS == KIND_LABELS


def test_a_requirements_file_that_names_a_kind_or_has_one_without_a_label_is_refused(tmp_path: Path) -> None:
    data = _shipped_with(tmp_path, '\ntitle = "Cambio Software House"', after="[kinds.software-house-change]")
    with pytest.raises(RequirementsError, match=r"requirements-.*\.toml: kind software-house-change: 'title'"):
        load_requirements(data_dir=data)
    data = _shipped_with(tmp_path, '\n[kinds.cambio-sede]\nannex = "D"\ndocuments = ["endpoint-form-b2"]\n')
    with pytest.raises(RequirementsError, match="kind cambio-sede has no label"):
        load_requirements(data_dir=data)
