"""The ledger contract; this module runs it on the in-memory ledger, the integration suite on PostgreSQL."""

from __future__ import annotations

import pytest

from services.ts_gateway.ledger import MemoryPartLedger, PartLedger, UnknownPart
from services.ts_gateway.submission import IllegalTransition, PartKey, PartState, SubmissionPart, file_name_for

SHA_1 = "1" * 64
SHA_2 = "2" * 64


def _parts(instance: int) -> list[SubmissionPart]:
    return [
        SubmissionPart(PartKey(instance, 1, SHA_1), 2, file_name_for(instance, 1, SHA_1), 3),
        SubmissionPart(PartKey(instance, 2, SHA_2), 2, file_name_for(instance, 2, SHA_2), 1),
    ]


async def check_ledger_contract(ledger: PartLedger, instance: int = 1947) -> None:
    first, second = await ledger.register(_parts(instance))
    assert (first.state, first.attempts, first.protocollo) == (PartState.PENDING, 0, None)
    assert await ledger.register(_parts(instance)) == [first, second]  # registering again changes nothing

    sending = await ledger.begin_sending(first.key)
    assert sending.state is PartState.SENDING and sending.attempts == 1 and sending.sending_since is not None
    again = await ledger.begin_sending(first.key)
    assert again.attempts == 2 and again.sending_since == sending.sending_since  # window starts at the first try

    failed = await ledger.record_failure(first.key, "TS inviaFileMtom: HTTP 500")
    assert failed.state is PartState.SENDING and failed.last_error == "TS inviaFileMtom: HTTP 500"

    submitted = await ledger.record_submitted(first.key, "26012010000100001")
    assert submitted.state is PartState.WAITING_FEEDBACK and submitted.last_error is None
    with pytest.raises(IllegalTransition):
        await ledger.begin_sending(first.key)  # a protocollo is never replaced by a resend

    done = await ledger.record_outcome(first.key, PartState.CONFIRMED_WITH_ERRORS, 3, "File elaborato con errori")
    assert (done.state, done.stato) == (PartState.CONFIRMED_WITH_ERRORS, 3)
    with pytest.raises(IllegalTransition):
        await ledger.record_outcome(first.key, PartState.CONFIRMED, 2, None)

    await ledger.begin_sending(second.key)
    refused = await ledger.record_outcome(second.key, PartState.REJECTED, None, "104 PINCODE ERRATO")
    assert refused.reason == "104 PINCODE ERRATO" and refused.protocollo is None

    assert [p.state for p in await ledger.parts_of(instance)] == [PartState.CONFIRMED_WITH_ERRORS, PartState.REJECTED]
    assert "26012010000100001" in await ledger.known_protocolli()

    # a resend reopens only the rejected part; a file TS discarded keeps its protocollo as "ours"
    assert await ledger.reopen_rejected(instance) == 1
    reopened = await ledger.get(second.key)
    assert (reopened.state, reopened.reason, reopened.sending_since) == (PartState.PENDING, None, None)
    assert (await ledger.get(first.key)).state is PartState.CONFIRMED_WITH_ERRORS
    await ledger.begin_sending(second.key)
    await ledger.record_submitted(second.key, "26012010000100002")
    await ledger.record_outcome(second.key, PartState.REJECTED, 5, "File scartato in fase di Elaborazione")
    assert await ledger.reopen_rejected(instance) == 1
    discarded = await ledger.get(second.key)
    assert (discarded.protocollo, discarded.earlier_protocolli) == (None, ("26012010000100002",))
    assert {"26012010000100001", "26012010000100002"} <= await ledger.known_protocolli()
    assert await ledger.reopen_rejected(instance) == 0
    with pytest.raises(ValueError, match="17 digits"):
        await ledger.record_submitted(second.key, "123")
    with pytest.raises(UnknownPart, match="instance 1 part 9"):
        await ledger.get(PartKey(1, 9, SHA_1))


async def test_the_memory_ledger_keeps_the_contract() -> None:
    await check_ledger_contract(MemoryPartLedger())
