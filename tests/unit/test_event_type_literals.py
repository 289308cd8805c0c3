"""Issue 11 item 1: the instance lifecycle's event types are written once, in flows.EVENT_TYPES.

Every other module of services/ and contracts/ takes a type from the payload class
(`flows.TYPE_OF[flows.LoadChecked]`); a quoted "flows.<event>" string anywhere else (code, SQL,
comments) is a type paired with its payload by hand again. The contracts' tests may spell them.
"""

from __future__ import annotations

import re
from pathlib import Path

from contracts import flows

ROOT = Path(__file__).resolve().parents[2]
MAPPING = ROOT / "contracts" / "flows.py"
QUOTED = re.compile(r"""["'](flows\.[a-z][a-z-]*)["']""")


def literals(text: str) -> list[str]:
    return [m for m in QUOTED.findall(text) if m in flows.EVENT_TYPES]


def test_the_grep_sees_a_literal_when_there_is_one() -> None:
    assert literals('if e.type == "flows.load-checked": pass') == ["flows.load-checked"]
    assert literals("WHERE type = 'flows.ts-feedback-received'") == ["flows.ts-feedback-received"]
    assert literals('topic = "flows.load-checked.dlq"; f"{t}"') == []


def test_no_event_type_literal_outside_the_one_mapping() -> None:
    found = []
    for folder in ("services", "contracts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == MAPPING:
                continue
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                found += [f"{path.relative_to(ROOT)}:{number}: {name}" for name in literals(line)]
    assert found == [], "event types spelled by hand:\n" + "\n".join(found)


def test_the_mapping_pairs_each_lifecycle_payload_with_one_type() -> None:
    assert len(flows.TYPE_OF) == len(flows.EVENT_TYPES) == 13
    assert all(flows.EVENT_TYPES[flows.TYPE_OF[model]] is model for model in flows.TYPE_OF)
