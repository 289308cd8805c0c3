"""`flows audit report N`: an instance's whole history as a PDF an auditor can file (issue 13, item 7).

Events with their actors and times, the files with their sha256 (and whether the stored bytes
still hash to it), feedback counts, TS protocolli and outcomes, the hash-chain verification and
the inclusion proof of the instance's stream in the latest signed checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import asyncpg
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from contracts import flows
from services.runtime import checkpoints as cps
from services.runtime.eventstore import EventStore, StoredEvent
from services.runtime.filestore import FileStore
from services.runtime.ops import summarise
from services.runtime.read_models import instance_stream
from services.runtime.settings import Settings

_FILE_FIELDS = ("files", "feedback", "errors_file", "receipt_file")
_ACTOR_FIELDS = ("requested_by", "deleted_by")


@dataclass
class ReportData:
    instance: int
    stream: str
    events: list[StoredEvent]
    state: dict[str, Any] | None
    chain: list[str]
    files: list[tuple[int, dict[str, Any], str]] = field(default_factory=list)  # (version, file ref, stored check)
    checkpoint: list[str] = field(default_factory=list)
    checkpoint_ok: bool | None = None


def _file_refs(data: dict[str, Any]) -> list[dict[str, Any]]:
    refs: list[dict[str, Any]] = []
    for name in _FILE_FIELDS:
        value = data.get(name)
        if isinstance(value, dict) and "sha256" in value:
            refs.append(value)
        elif isinstance(value, list):
            refs.extend(v for v in value if isinstance(v, dict) and "sha256" in v)
    return refs


def _stored_check(files: FileStore, sha256: str) -> str:
    if not files.exists(sha256):
        return "not in this file store"
    stored = files.content_sha256(sha256)
    return "stored bytes match" if stored == sha256 else f"STORED BYTES DIFFER ({stored})"


async def gather(pool: asyncpg.Pool, settings: Settings, instance: int) -> ReportData:
    store = EventStore(pool, source="/flows/cli")
    stream = instance_stream(instance)
    events = await store.read_stream(stream)
    if not events:
        raise ValueError(f"there is no instance {instance} (no stream {stream}); `flows instances` lists them")
    row = await pool.fetchrow("SELECT * FROM instance_list WHERE instance = $1", instance)
    chain = [str(b) for b in await store.verify_stream(stream)]
    data = ReportData(instance, stream, events, dict(row) if row else None, chain)
    files = FileStore(settings.files_dir)
    for event in events:
        for ref in _file_refs(event.data):
            data.files.append((event.version, ref, _stored_check(files, ref["sha256"])))
    latest = cps.latest(settings.checkpoints_dir)
    if latest is None:
        data.checkpoint = ["No signed checkpoint exists yet (flows audit checkpoint)."]
        return data
    if not any(h.stream_id == stream for h in latest.heads):
        data.checkpoint = [f"Checkpoint {latest.sequence} (signed {latest.created_at:%Y-%m-%d %H:%M:%S} UTC) "
                           f"predates this instance: the next checkpoint covers it."]
        return data
    proof = cps.prove(latest, stream)
    pub = cps.public_key_path(settings.checkpoint_key)
    key = cps.load_public_key(pub if pub.exists() else settings.checkpoint_key)
    problems = cps.check_proof(proof, key) + await cps.check_store(pool, latest, key, stream_ids=[stream])
    data.checkpoint_ok = not problems
    cp = proof.checkpoint
    data.checkpoint = [
        f"Checkpoint {cp.sequence}, signed {cp.created_at:%Y-%m-%d %H:%M:%S} UTC with Ed25519 key {cp.key_id}, "
        f"covers {cp.tree_size} streams and {cp.events} events up to global position "
        f"({cp.transaction_id}, {cp.position}).",
        f"Merkle root (RFC 6962): {cp.root}",
        f"Signed head of {stream}: version {proof.head.version}, hash {proof.head.hash}",
        f"Leaf {proof.leaf_index} of {cp.tree_size}; audit path ({len(proof.path)} hashes):",
        *[f"  {i + 1}. {h}" for i, h in enumerate(proof.path)],
        f"Signature: {cp.signature}",
        *(["Verification: the proof checks with the public key and the stored events re-hash to the signed head."]
          if not problems else [f"VERIFICATION FAILED: {p}" for p in problems]),
        "An auditor checks it alone with: flows audit prove N --out proof.json; "
        "flows audit verify-proof proof.json --public-key checkpoint.pub",
    ]
    return data


def _styles() -> dict[str, ParagraphStyle]:
    base = getSampleStyleSheet()
    small = ParagraphStyle("small", parent=base["BodyText"], fontSize=7.5, leading=9)
    mono = ParagraphStyle("mono", parent=small, fontName="Courier", fontSize=7, leading=8.5)
    return {"title": base["Title"], "h2": base["Heading2"], "body": base["BodyText"], "small": small, "mono": mono}


def _table(rows: list[list[Any]], widths: list[float]) -> Table:
    table = Table(rows, colWidths=widths, repeatRows=1)
    table.setStyle(TableStyle([
        ("FONTSIZE", (0, 0), (-1, -1), 7.5), ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey), ("GRID", (0, 0), (-1, -1), 0.25, colors.grey)]))
    return table


def default_name(instance: int, when: datetime, attempt: int = 1) -> str:
    """report-N-<UTC time>.pdf; a second report of the same second gets -2, and so on."""
    return f"report-{instance}-{when.astimezone(UTC):%Y%m%d-%H%M%S}{f'-{attempt}' if attempt > 1 else ''}.pdf"


def write(data: ReportData, out: Path | None, reports_dir: Path, generated_by: str, *, overwrite: bool = False,
          now: datetime | None = None) -> Path:
    """Renders the report and puts it at `out`, or in `reports_dir` under `default_name`; the absolute path written.
    The PDF is rendered beside its target first, then linked in: the link fails if a file took the name meanwhile,
    so an existing report is never replaced unless `overwrite` (and a failed render leaves no half-written file at
    the name). An existing `out` without `overwrite`: FileExistsError."""
    target = (out if out is not None else reports_dir / default_name(data.instance, now or datetime.now(UTC)))
    target = target.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=".report-", suffix=".pdf.part", dir=target.parent)
    os.close(handle)
    part = Path(name)
    try:
        render(data, part, generated_by)
        mask = os.umask(0)  # mkstemp made it 0600: the mode any new file of this process gets
        os.umask(mask)
        part.chmod(0o666 & ~mask)
        if overwrite:
            os.replace(part, target)
            return target
        for attempt in range(2, 100):
            try:
                os.link(part, target)
                return target
            except FileExistsError:
                if out is not None:
                    raise FileExistsError(f"--out {out} already exists: give another name, or add --overwrite to "
                                          "replace it") from None
                target = target.with_name(default_name(data.instance, now or datetime.now(UTC), attempt))
        raise FileExistsError(f"{target.parent} already holds 99 reports of instance {data.instance} of this second")
    finally:
        part.unlink(missing_ok=True)


def render(data: ReportData, out: Path, generated_by: str) -> None:
    st = _styles()

    def p(text: str, style: str = "small") -> Paragraph:
        return Paragraph(escape(text), st[style])

    story: list[Any] = [p(f"Audit report: instance {data.instance}", "title")]
    now = datetime.now(UTC)
    story.append(p(f"Stream {data.stream}, {len(data.events)} events. Generated {now:%Y-%m-%d %H:%M:%S} UTC "
                   f"by {generated_by}.", "body"))
    if data.state:
        keys = ("flow_type", "ente", "period_start", "period_end", "state", "summary", "deleted_by", "deletion_reason")
        story.append(p("; ".join(f"{k}: {data.state[k]}" for k in keys if data.state.get(k) is not None), "body"))

    story += [p("History", "h2")]
    rows: list[list[Any]] = [["v", "recorded (UTC)", "event", "actor", "what"]]
    for e in data.events:
        rows.append([str(e.version), f"{e.recorded_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}", p(e.type), p(e.actor),
                     p(summarise(e.data, 400))])
    story.append(_table(rows, [10 * mm, 32 * mm, 55 * mm, 30 * mm, 140 * mm]))

    story += [p("Actors", "h2")]
    actors: Counter[str] = Counter(e.actor for e in data.events)
    asked: Counter[str] = Counter(str(e.data[f]) for e in data.events for f in _ACTOR_FIELDS if e.data.get(f))
    story.append(_table([["actor", "events recorded", "commands given"]] +
                        [[a, str(actors.get(a, 0)), str(asked.get(a, 0))] for a in sorted(set(actors) | set(asked))],
                        [60 * mm, 35 * mm, 35 * mm]))

    story += [p("Files", "h2")]
    if data.files:
        file_rows: list[list[Any]] = [["v", "name / sha256", "kind", "records", "bytes", "stored"]]
        for version, ref, check in data.files:
            file_rows.append([str(version), [p(str(ref["name"])), p(str(ref["sha256"]), "mono")], p(str(ref["kind"])),
                              str(ref.get("records", "")), str(ref.get("bytes", "")), p(check)])
        story.append(_table(file_rows, [10 * mm, 120 * mm, 25 * mm, 20 * mm, 25 * mm, 50 * mm]))
    else:
        story.append(p("No files.", "body"))

    story += [p("Feedback", "h2")]
    feedback = []
    for e in data.events:
        d = e.data
        if e.type == flows.TYPE_OF[flows.LoadChecked]:
            feedback.append(f"v{e.version} Checked: counts {d.get('counts')}, {d.get('warnings', 0)} warning(s)")
        elif e.type == flows.TYPE_OF[flows.LoadFailed]:
            feedback.append(f"v{e.version} Failed loading: {d.get('errors')} error(s), {d.get('warnings', 0)} "
                            f"warning(s): {d.get('summary')}")
        elif e.type == flows.TYPE_OF[flows.FormatFailed]:
            feedback.append(f"v{e.version} Format failed: {len(d.get('reasons', []))} reason(s): "
                            + "; ".join(map(str, d.get("reasons", []))))
    story += [p(line, "body") for line in feedback] or [p("No feedback recorded.", "body")]

    story += [p("Sistema TS", "h2")]
    ts = [[str(e.version), e.type.removeprefix("flows."), str(e.data.get("part", "")),
           str(e.data.get("protocollo") or ""),
           p(" ".join(f"{k}={e.data[k]}" for k in ("stato", "outcome", "instance_outcome", "reason", "accepted_at")
                      if e.data.get(k) is not None))]
          for e in data.events if e.type in (flows.TYPE_OF[flows.TsSubmitted], flows.TYPE_OF[flows.TsFeedbackReceived])]
    story.append(_table([["v", "event", "part", "protocollo", "outcome"], *ts],
                        [10 * mm, 45 * mm, 15 * mm, 45 * mm, 120 * mm]) if ts else p("Not sent to Sistema TS.", "body"))

    story += [p("Hash chain", "h2")]
    story += [p(f"The chain of {len(data.events)} events verifies: every hash recomputes from its event and "
                "its predecessor's hash.", "body")] if not data.chain else \
        [p(f"CHAIN BROKEN: {b}", "body") for b in data.chain]
    story += [p("Signed checkpoint", "h2"), *[p(line, "mono") for line in data.checkpoint]]

    out.parent.mkdir(parents=True, exist_ok=True)
    doc = SimpleDocTemplate(str(out), pagesize=landscape(A4), leftMargin=12 * mm, rightMargin=12 * mm,
                            topMargin=12 * mm, bottomMargin=12 * mm,
                            title=f"Audit report instance {data.instance}", author=generated_by)
    doc.build([*story, Spacer(1, 4 * mm)])
