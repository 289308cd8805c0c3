"""A load of a period that is not over when the load would run is refused at once, naming the period's end: by the
console's Nuovo caricamento form (beside Fine periodo di riferimento, in Italian) and by its API (`period_end`),
both asking the loader's own rule (services/loader/load_rules.py). The same month asked in advance, scheduled to
start after its end, is sent. On the real console, PostgreSQL and Kafka of the test stack."""

from __future__ import annotations

import html
import re
from datetime import date, timedelta
from typing import Any

import httpx
import pytest

from contracts.deadlines import italian_today
from contracts.italian import italian_date
from services.console import auth
from tests.console_support import RunningConsole, csrf_of

pytestmark = pytest.mark.integration


def this_month() -> tuple[date, date]:
    """Today's Italian month: not over, whatever the day."""
    start = italian_today().replace(day=1)
    return start, (start + timedelta(days=32)).replace(day=1) - timedelta(days=1)


@pytest.fixture
def console_settings() -> dict[str, Any]:
    """No loader runs here: the form waits for one only a second (production: 10 s) before it says it was sent."""
    return {"console_load_wait_s": 1.0}


def _error_beside(page: str, field: str) -> str | None:
    found = re.search(rf'<div class="invalid-feedback d-block" id="err-{field}">(.*?)</div>', page, re.S)
    return html.unescape(found.group(1)) if found else None


async def test_the_load_form_refuses_a_month_not_over_beside_its_end_and_sends_one_scheduled_after_it(
        console: RunningConsole) -> None:
    start, end = this_month()
    async with console.client("operator") as client:
        form = await client.get(console.url + "/istanze/nuova")
        sent = {"csrf": csrf_of(form.text), "tipo": "FLUSSO_C", "ente": "201", "dal": start.isoformat(),
                "al": end.isoformat(), "pianificata": "", "richiesta": ""}
        refused = await client.post(console.url + "/istanze/nuova", data=sent)
        # on the old code the form was sent (the console waited for the loader: 'Richiesta inviata', 202)
        assert refused.status_code == 422, refused.text[:300]
        said = _error_beside(refused.text, "al")
        assert said is not None and said.startswith(f"Il periodo finisce il {italian_date(end)}: oggi, "), said
        assert "un periodo non concluso non si può caricare" in said
        assert f"Lo carichi dal {italian_date(end + timedelta(days=1))}" in said
        assert 'id="al" name="al" type="date" class="form-control is-invalid"' in refused.text
        assert 'aria-describedby="err-al"' in refused.text
        # asked in advance, to start once the month is over: sent. No loader runs here (none writes this test's
        # database), so no instance can appear: the console waits for one (console_load_wait_s), then says the
        # request was sent, 202. The wait is a minimum, never a speed target: how long it may take is bench's.
        after = {**sent, "pianificata": f"{end + timedelta(days=1)}T06:00"}
        accepted = await client.post(console.url + "/istanze/nuova", data=after, timeout=30)
        assert accepted.status_code == 202, accepted.text[:300]
        assert "Richiesta inviata" in accepted.text and "il caricatore non l&#39;ha ancora presa in carico" in \
            accepted.text, accepted.text[:300]
        assert accepted.elapsed.total_seconds() >= 1.0, accepted.elapsed  # it did wait for a loader first
        assert _error_beside(accepted.text, "al") is None


async def test_the_api_refuses_a_month_not_over_naming_period_end_and_takes_one_scheduled_after_it(
        console: RunningConsole) -> None:
    start, end = this_month()
    key = await auth.add_api_key(console.pool, "sistema-regionale", ["201"], by="cli:tester")
    body = {"flow_type": "FLUSSO_C", "ente": "201", "period_start": start.isoformat(), "period_end": end.isoformat()}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
        refused = await client.post(console.url + "/api/caricamenti", json=body)
        assert refused.status_code == 422, refused.text  # the old code answered 202 and sent it
        said = refused.json()["detail"]
        assert list(said) == ["period_end"], said
        assert said["period_end"].startswith(f"period_end {end}: the period is not over on "), said
        scheduled = await client.post(console.url + "/api/caricamenti",
                                      json={**body, "scheduled_at": f"{end + timedelta(days=1)}T06:00:00+01:00"})
        assert scheduled.status_code == 202, scheduled.text
