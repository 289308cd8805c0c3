"""Where the project's shared/ folder is: beside the checkout (as CI lays it: a clone with a copy of
shared/ next to it), else at /work/shared (the developers' machines). The reference files in it are
required: tests that use them fail, never skip, when it is missing."""

from __future__ import annotations

from pathlib import Path

_BESIDE = Path(__file__).resolve().parents[2] / "shared"
SHARED = _BESIDE if _BESIDE.is_dir() else Path("/work/shared")
TS730_REFERENCE = SHARED / "reference" / "ts730"
