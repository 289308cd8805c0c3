"""`flows audit report` of an instance the real services loaded and formatted: the PDF, read back,
names every event of its history, its files' sha256, the chain verification and the checkpoint proof."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections import Counter

import pytest
from pypdf import PdfReader

from services.runtime.eventstore import EventStore
from services.runtime.read_models import instance_stream
from tests.e2e.driving import _formatted_730

pytestmark = pytest.mark.e2e


async def _flows(env: dict[str, str], *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli.main", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, out.decode()
    return " ".join(out.decode().split())


async def test_the_report_of_a_formatted_instance_names_every_event_of_its_history(platform, tmp_path):
    instance = await _formatted_730(platform, "202", "2026-02", services=60)
    cfg = platform.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWS_")}
    env.update(DATABASE_URL=cfg.database_url, FLOWS_KAFKA_BOOTSTRAP=cfg.kafka_bootstrap,
               FLOWS_FILES_DIR=str(cfg.files_dir), FLOWS_CHECKPOINT_KEY=str(tmp_path / "keys" / "signing.key"),
               FLOWS_CHECKPOINTS_DIR=str(tmp_path / "checkpoints"), FLOWS_OPERATOR="auditor.neri", COLUMNS="250")
    await _flows(env, "audit", "checkpoint")
    out = tmp_path / "report.pdf"
    said = await _flows(env, "audit", "report", str(instance), "--out", str(out))
    assert "chain verifies, checkpoint proof verifies" in said, said

    text = " ".join(page.extract_text() for page in PdfReader(out).pages)
    flat = " ".join(text.split())
    pool = await platform.pool()
    try:
        history = await EventStore(pool, source="/test").read_stream(instance_stream(instance))
    finally:
        await pool.close()
    assert [e.type for e in history][-1] == "flows.formatted"
    for event_type, times in Counter(e.type for e in history).items():
        assert len(re.findall(re.escape(event_type) + r"(?![-\w])", flat)) >= times, (event_type, flat[:2000])
    for event in history:
        assert f"{event.recorded_at:%Y-%m-%d %H:%M:%S}" in flat
        assert event.actor in flat
    files = [f for e in history if e.type == "flows.formatted" for f in e.data["files"]]
    assert files and all(f["sha256"] in text.replace("\n", "") for f in files)
    assert flat.count("stored bytes match") >= len(files)
    assert f"Audit report: instance {instance}" in flat
    assert f"The chain of {len(history)} events verifies" in flat
    assert f"Signed head of instance-{instance}: version {len(history)}" in flat
    assert "the proof checks with the public key" in flat and "auditor.neri" in flat
