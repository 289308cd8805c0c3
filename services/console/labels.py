"""The console's Italian vocabulary: what an operator reads instead of the platform's identifiers (states,
flow types, events, counts, onboarding kinds and states, file kinds), and the few sentences built from data (an
event's detail, a switch slot). Values stay in forms, URLs and the API; tests/unit/test_console_labels.py keeps
the labels in step with the contracts."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from markupsafe import Markup, escape

from contracts import flows
from contracts.deadlines import (
    ITALY,
)
from contracts.flows import FlowType
from contracts.onboarding import KIND_LABELS
from contracts.states import SENDABLE_FLOW_TYPES
from contracts.ts730 import MAX_ZIP_BYTES

ROME = ITALY


# A state in Italian, then by the name the Flow Manager gave it: its manual names the states so ("in stato
# “Running”", "“Checked” o “Failed loading”", "“Formatting in progress”", "“Formatted”", "da "Waiting Feedback" a
# "Confirmed"", seeds/000), and the operators know them by those names; `flows` says them so too.
STATE_LABELS = {
    "Scheduled": "Pianificata (Scheduled)", "Running": "In esecuzione (Running)", "Checked": "Verificata (Checked)",
    "Failed loading": "Caricamento fallito (Failed loading)",
    "Formatting in progress": "Formattazione in corso (Formatting in progress)",
    "Formatted": "Formattata (Formatted)", "Format failed": "Formattazione fallita (Format failed)",
    "Waiting feedback": "In attesa di esito (Waiting Feedback)", "Confirmed": "Confermata (Confirmed)",
    "Confirmed with errors": "Confermata con errori (Confirmed with errors)", "Rejected": "Respinta (Rejected)",
    "Deleted": "Cancellata (Deleted)",
}
ROLE_LABELS = {"operator": "operatore", "structure": "struttura", "desk": "sportello", "ops": "esercizio",
               "auditor": "revisore", "admin": "amministratore"}
# The access log's "Cosa": what was read or downloaded (the `what` of access.record_access; a test finds every one).
ACCESS_LABELS = {"file-view": "consultazione del file", "file-download": "scaricamento del file",
                 "files-zip": "scaricamento di tutti i file (zip)", "feedback-view": "consultazione dell'esito",
                 "feedback-download": "scaricamento dell'esito",
                 "dead-letter-view": "consultazione di un messaggio non elaborabile",
                 "onboarding-document-download": "scaricamento di un documento di onboarding",
                 # the `flows` commands' (services/cli/personal.py)
                 "files-export": "esportazione di tutti i file in una cartella",
                 "dead-letter-list": "elenco dei messaggi non elaborabili (con i motivi)",
                 "topic-tail": "lettura dei messaggi dei topic (flows tail)"}
# Where a read was made: the console (its pages and API), or a `flows` command on a host.
CHANNEL_LABELS = {"console": "console", "cli": "riga di comando (flows)"}
# A consumer group's state as Kafka reports it (services.runtime.kafkagroups), and what the Esercizio page says of a
# group nobody consumes for (services.runtime.ops.GroupLag.mark, the marks `flows lag` prints).
GROUP_STATE_LABELS = {"Stable": "attivo", "Empty": "senza membri", "PreparingRebalance": "in ribilanciamento",
                      "CompletingRebalance": "in ribilanciamento", "Dead": "eliminato"}
GROUP_MARK_LABELS = {"NOBODY CONSUMING": "nessuno consuma i messaggi in attesa",
                     "NO MEMBER": "nessun membro attivo: il servizio è fermo o non raggiunge Kafka"}
# What the operators read instead of the platform's identifiers (the values stay in forms, URLs and the API).
# The flow types as the Flow Manager's "Lista tipi di flusso" names them (seed, Figura 2).
FLOW_TYPE_LABELS = {"FLUSSO_C": "FLUSSO C", "FLUSSO_C_PACC": "FLUSSO C PACC", "FLUSSO_MEF": "FLUSSO MEF SOGEI",
                    "FLUSSO_ALPI_TA": "FLUSSO ALPI TA", "FLUSSO_730": "FLUSSO 730"}
# What each flow type carries, in a line: the Tipi di flusso page's Descrizione (the Flow Manager's list had one per
# type, "Tracciato Record FLUSSO C"). Which rows a load of each takes is services/loader/snapshot.py SELECTIONS
# (Flusso C: SSN services outside PACC; C PACC: SSN services inside one; MEF: SSN services, PACC included; ALPI TA:
# intramoenia bookings; 730: payment documents); a test keeps every flow type described.
FLOW_TYPE_DESCRIPTIONS = {
    "FLUSSO_C": "Prestazioni di specialistica ambulatoriale erogate a carico del SSN, esclusi i percorsi ambulatoriali "
                "complessi e coordinati (PACC).",
    "FLUSSO_C_PACC": "Prestazioni di specialistica ambulatoriale erogate a carico del SSN nei percorsi ambulatoriali "
                     "complessi e coordinati (PACC).",
    "FLUSSO_MEF": "Ricette SSN e prestazioni di specialistica ambulatoriale erogate, PACC compresi, come chiede l'art. "
                  "50 del DL 269/2003.",
    "FLUSSO_ALPI_TA": "Tempi di attesa dell'attività libero-professionale intramuraria (ALPI): le prenotazioni in "
                      "intramoenia.",
    "FLUSSO_730": "Spese sanitarie pagate dagli assistiti (documenti di spesa, per esempio ticket e prestazioni in "
                  "intramoenia) per la dichiarazione dei redditi precompilata (modello 730).",
}
# What each file a formatting writes holds, by its kind: a layout's record kinds (contracts/layouts: one fixed-width
# file each, services/formatter/engine.py) and the 730's zip (services/formatter/xml730.py KIND). A test keeps every
# record kind of every layout, and the 730's kind, described.
FILE_CONTENTS = {
    "C1": "anagrafico (dati dell'assistito)", "C2": "sanitario (prestazioni erogate)",
    "MEF": "ricette e prestazioni erogate", "ALPI_TA": "prenotazioni in intramoenia",
    "730-zip": f"documenti di spesa in XML, un file per zip di al massimo {MAX_ZIP_BYTES // 2**20} MB; uno o più zip "
               "per struttura",
}
# The flow types without a record layout (services/formatter/layouts.py versions_without_layout: the 730 is XML):
# what their files are, and their file kinds (a test keeps them equal to the formatter's).
FILES_WITHOUT_LAYOUT = {"FLUSSO_730": ("File XML compressi (zip)", ("730-zip",))}
# A layout field's type (services/formatter/layouts.py FIELD_TYPES; columnar.py writes them so), for the tracciato's
# page.
FIELD_TYPE_LABELS = {"AN": "alfanumerico", "N": "numerico", "DATE": "data (GGMMAAAA)", "AMOUNT": "importo (nnnnn,dd)"}
# Where each flow's files go (the Flow Manager's Tabella 1, seeds/000: "Piattaforma su cui effettuare il
# caricamento", "Invio mediante la Piattaforma CUP (SI/NO)"): only the 730 is sent by the platform itself; the others'
# files are downloaded and loaded on their platform by the ente (section 4.2).
UPLOAD_PLATFORMS = {"FLUSSO_C": "SINFONIA", "FLUSSO_C_PACC": "SINFONIA", "FLUSSO_MEF": "Sistema TS",
                    "FLUSSO_ALPI_TA": "AGENAS", "FLUSSO_730": "Sistema TS"}


def upload_platform(flow_type: str) -> str:
    """Where an instance's files go and who sends them, as the Scadenze page and the instance page say it."""
    where = UPLOAD_PLATFORMS.get(flow_type)
    if where is None:
        return "—"
    if flow_type in SENDABLE_FLOW_TYPES:
        return f"{where}: lo invia la console (Invia a Sistema TS)"
    return f"{where}: l'ente vi carica i file scaricati dalla console"


# Who recorded an event of an instance's history: a service by its Italian name, a person (or an API key) by their
# user name, as recorded (contracts.states.Actor; a test keeps them in step).
ACTOR_LABELS = {"loader": "caricatore (servizio)", "formatter": "formattatore (servizio)",
                "ts-gateway": "gateway Sistema TS (servizio)"}
# An instance's history: every lifecycle event (contracts.flows.EVENT_TYPES; a test keeps them in step).
_T = flows.TYPE_OF
EVENT_LABELS = {
    _T[flows.LoadRequested]: "Caricamento richiesto", _T[flows.LoadScheduled]: "Caricamento pianificato",
    _T[flows.LoadRunning]: "Caricamento avviato", _T[flows.LoadChecked]: "Caricamento verificato",
    _T[flows.LoadFailed]: "Caricamento fallito", _T[flows.FormatRequested]: "Formattazione richiesta",
    _T[flows.FormattingStarted]: "Formattazione avviata", _T[flows.Formatted]: "Formattazione completata",
    _T[flows.FormatFailed]: "Formattazione fallita", _T[flows.TsSubmissionRequested]: "Invio a Sistema TS richiesto",
    _T[flows.TsSubmitted]: "File inviato a Sistema TS", _T[flows.TsFeedbackReceived]: "Esito di Sistema TS ricevuto",
    _T[flows.InstanceDeleted]: "Istanza cancellata",
}
TS_OUTCOME_LABELS = {"confirmed": "confermato", "confirmed_with_errors": "confermato con errori",
                     "rejected": "respinto"}


def event_detail(event_type: str, data: Mapping[str, Any]) -> str:
    """What an operator needs of an event besides its name, in Italian (the history's Dettaglio column): the part and
    the protocollo of a TS submission, its outcome, a failure's summary, a deletion's reason. Plain text: the
    template escapes it."""
    def part() -> str:
        return f"parte {data.get('part')} di {data.get('parts')}"

    if event_type == _T[flows.LoadScheduled] and data.get("scheduled_at"):
        at = datetime.fromisoformat(str(data["scheduled_at"])).astimezone(ROME)
        return f"avvio il {at:%d/%m/%Y} alle {at:%H:%M}"
    if event_type == _T[flows.LoadFailed]:
        return str(data.get("summary") or "")
    if event_type == _T[flows.FormatFailed]:
        return "; ".join(str(r) for r in data.get("reasons") or [])
    if event_type == _T[flows.TsSubmitted]:
        return f"{part()}, protocollo {data.get('protocollo')}"
    if event_type == _T[flows.TsFeedbackReceived]:
        outcome = TS_OUTCOME_LABELS.get(str(data.get("outcome")), str(data.get("outcome")))
        reason = f" ({data['reason']})" if data.get("reason") else ""
        return f"{part()}: {outcome}{reason}"
    if event_type == _T[flows.InstanceDeleted] and data.get("reason"):
        return f"motivo: {data['reason']}"
    return ""


# A broken link of an instance's hash chain (services.runtime.eventstore.ChainBreak), as the page's Catena di hash
# says it: the event, what no longer matches, the expected and found values (hex digests, or version numbers).
CHAIN_LINK_TEXTS = {
    "hash": "il contenuto dell'evento è stato modificato dopo la registrazione",
    "prev_hash": "il collegamento all'evento precedente non corrisponde (un hash riscritto o un evento rimosso)",
    "version": "la numerazione degli eventi ha un salto (un evento rimosso)",
}


def chain_break_text(link: str, version: int, expected: str, found: str) -> str:
    """One broken link in Italian: "evento 3: il contenuto dell'evento è stato modificato ... (atteso ..., trovato
    ...)". ChainBreak's own str() is the English of `flows verify`."""
    what = CHAIN_LINK_TEXTS.get(link, link)
    return f"evento {version}: {what} (atteso {expected}, trovato {found})"


def switch_slot(day: date | None, window: str | None) -> str:
    """A switch's day and window (the dashboard's `switch_date`, `switch_window`, or a scheduled switch's), in the
    desk's words: "lunedì 21/09/2026, 08:30-10:30"."""
    if day is None or not window:
        return ""
    start, _, end = window.partition("-")
    return slot_text(day, start, end)


def switch_proposal(day: date | None, window: str | None) -> str:
    """A refused switch's earliest valid slot, from the dashboard's data (`proposed_date`, `proposed_window`), in the
    desk's words: "prima data valida lunedì 21/09/2026, 08:30-10:30"."""
    slot = switch_slot(day, window)
    return f"prima data valida {slot}" if slot else ""


# A load's counts (services.loader.pipeline: what each snapshot table counts).
COUNT_LABELS = {"services": "prestazioni", "prescriptions": "ricette", "patients": "assistiti",
                "bookings": "prenotazioni", "payment_documents": "documenti di spesa"}
# Onboarding: the five kinds of request as the So.Re.Sa. note names them (contracts.onboarding.KIND_LABELS, shared
# with the CLI and the requirements) and the dashboard's states (services.onboarding.projection; a test keeps them in
# step).
ONBOARDING_KIND_LABELS = KIND_LABELS
ONBOARDING_STATUS_LABELS = {
    "documents-awaited": "documenti attesi", "incomplete": "incompleta", "non-compliant": "non conforme",
    "compliant": "conforme", "complete": "completa", "taken-in-charge": "presa in carico",
    "switch-scheduled": "switch pianificato", "switch-refused": "switch rifiutato",
}
# The facts a document's rules ask for (the metadata keys of contracts/data/onboarding/requirements-*.toml, the CLI's
# `--meta key=value`), as the desk's upload form asks them (services/console/onboarding_facts.py); a test keeps
# every key of every version of the requirements labelled. The keys stay as they are in events and findings.
FACT_LABELS = {
    "protocol": "Numero di protocollo", "date": "Data del documento", "signed": "Firmato",
    "software_house": "Software House che gestirà l'ente", "letterhead": "Su carta intestata dell'ente",
    "credentials": "Credenziali OAuth2.0", "software_house_changes": "Cambia anche la Software House",
    "switch_date": "Giorno desiderato per lo switch", "switch_window": "Fascia oraria desiderata per lo switch",
    "filled": "Compilato in ogni sua parte", "annex": "Allegato", "spoke_sts11": "STS11 dello SPOKE",
}
# The switch's credentials options (seed 003's words: "aggiornamento delle sole credenziali Basic", "nuove
# credenziali OAuth2.0"): the switch form's and the formal request's fact `credentials`.
CREDENTIALS_OPTIONS = {"basic": "solo aggiornamento delle credenziali Basic",
                       "new-oauth2": "nuove credenziali OAuth2.0"}
# The kinds of an instance's files other than a layout's record kinds (C1, C2...), which keep their names.
FILE_KIND_LABELS = {"feedback": "esito dei controlli (FeedBack)", "ts-errors": "errori di Sistema TS",
                    "ts-receipt": "ricevuta di Sistema TS", "730-zip": "730 (zip)"}


def state_class(state: str) -> str:
    if state in ("Checked", "Formatted", "Confirmed"):
        return "bg-success"
    if state in ("Failed loading", "Format failed", "Rejected", "Confirmed with errors"):
        return "bg-danger"
    if state == "Deleted":
        return "bg-dark"
    return "bg-primary"


def badge(state: str) -> Markup:
    """A state's badge: a function, not an included template (an include per row of a 50-row list made a
    new template context each, most of the page's rendering time)."""
    return Markup(f'<span class="badge {state_class(state)}" data-state="{escape(state)}">'
                  f'{escape(STATE_LABELS.get(state, state))}</span>')


BADGE_HTML = {state: str(badge(state)) for state in STATE_LABELS}
FLOW_TYPE_VALUES = tuple(t.value for t in FlowType)
FLOW_TYPE_LABEL_VALUES = tuple(FLOW_TYPE_LABELS.get(t, t) for t in FLOW_TYPE_VALUES)
FLOW_TYPE_CHOICES = dict(zip(FLOW_TYPE_VALUES, FLOW_TYPE_LABEL_VALUES, strict=True))  # value -> label, in order
STATE_VALUES = tuple(STATE_LABELS)
STATE_LABEL_VALUES = tuple(STATE_LABELS.values())

WEEKDAYS_IT = ("lunedì", "martedì", "mercoledì", "giovedì", "venerdì", "sabato", "domenica")


def slot_text(day: date, start: str, end: str) -> str:
    return f"{WEEKDAYS_IT[day.weekday()]} {day:%d/%m/%Y}, {start}-{end}"
