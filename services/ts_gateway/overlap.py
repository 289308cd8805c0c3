"""Documents of a 730 instance that Sistema TS already has from another instance: what the operator is told before
sending.

A 730 instance is a snapshot of an entity's payment documents for a period, and nothing stops two instances from
covering the same documents: the seed's list has four 730 instances of August 2020 and one of August-December.
Sent again with flagOperazione I, a document TS already holds is refused as a duplicate, one error row each in the
feedback. The console's send page and `flows send-730` say, before the credentials are typed, which other
instances TS accepted a file of (a part in waiting_feedback, confirmed or confirmed_with_errors) hold documents of
this one, matched by TS's own identity of a document, idSpesa (pIva, dataEmissione, dispositivo, numDocumento),
and how many. They do not refuse the send: an instance TS accepted with errors may hold documents it refused, which
are sent again on purpose once corrected, and which documents those were is in its errors file, not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The instance's own snapshot and those of the other 730 instances of its entity whose period overlaps it and of
# which TS accepted a file; the documents of this snapshot found in theirs. Deleted instances count too: TS keeps
# what they sent. A hash join of two snapshots' rows, for the few instances an entity's period overlaps.
_SQL = """
WITH mine AS (
    SELECT source_instance AS snapshot_id, ente, period_start, period_end
    FROM instance_list WHERE instance = $1 AND flow_type = 'FLUSSO_730' AND source_instance IS NOT NULL
), sent AS (
    SELECT o.instance, o.source_instance AS snapshot_id,
           array_agg(DISTINCT p.protocollo ORDER BY p.protocollo) AS protocolli
    FROM mine m
    JOIN instance_list o ON o.flow_type = 'FLUSSO_730' AND o.ente = m.ente AND o.instance <> $1
                        AND o.source_instance IS NOT NULL
                        AND o.period_start <= m.period_end AND o.period_end >= m.period_start
    JOIN ts_submission_part p ON p.instance = o.instance
                             AND p.state IN ('waiting_feedback', 'confirmed', 'confirmed_with_errors')
    GROUP BY o.instance, o.source_instance
)
SELECT s.instance, s.protocolli, count(*) AS documents
FROM mine m
CROSS JOIN sent s
JOIN snapshot_payment_document d ON d.snapshot_id = m.snapshot_id
JOIN snapshot_payment_document t ON t.snapshot_id = s.snapshot_id AND t.issuer_vat = d.issuer_vat
                                AND t.issue_date = d.issue_date AND t.device = d.device
                                AND t.document_number = d.document_number
GROUP BY s.instance, s.protocolli
ORDER BY s.instance"""


@dataclass(frozen=True)
class SentAlready:
    """`documents` of the instance asked about are in `instance`, of which TS accepted the files `protocolli`."""

    instance: int
    documents: int
    protocolli: tuple[str, ...]


async def sent_already(pool: Any, instance: int) -> list[SentAlready]:
    """The other instances TS accepted files of that hold documents of `instance` (none: [])."""
    return [SentAlready(int(r["instance"]), int(r["documents"]), tuple(r["protocolli"]))
            for r in await pool.fetch(_SQL, instance)]


def warning_it(found: list[SentAlready]) -> str | None:
    """What the console's send page says of them, in Italian (None when there is nothing to say)."""
    if not found:
        return None
    parts = [f"{s.documents} {'documento' if s.documents == 1 else 'documenti'} con l'istanza {s.instance} "
             f"(protocoll{'o' if len(s.protocolli) == 1 else 'i'} {', '.join(s.protocolli)})" for s in found]
    return ("Sistema TS ha già ricevuto documenti di spesa di questa istanza: " + "; ".join(parts) + ". Inviati di "
            "nuovo, ciascuno sarà scartato come già presente e segnalato nell'esito. Se l'istanza serve a inviare "
            "documenti che Sistema TS aveva scartato, proceda; altrimenti carichi un periodo che non li comprenda.")


def warning_en(instance: int, found: list[SentAlready]) -> str | None:
    """What `flows send-730` prints of them (the CLI's English), None when there is nothing to say."""
    if not found:
        return None
    parts = [f"{s.documents} in instance {s.instance} (protocollo {', '.join(s.protocolli)})" for s in found]
    return (f"Sistema TS already has payment documents of instance {instance}: {'; '.join(parts)}. Sent again, "
            "each is refused as a duplicate and listed in the outcome.")
