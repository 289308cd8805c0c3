"""The file store against the history (`flows audit files`): every file the history names is in the store, of the
size recorded, and its bytes hash to its name.

The history names an instance's files (the formatted files, the feedback, Sistema TS's receipts and errors:
the read model `instance_files`, rebuilt from the events and held to them by `flows replay --all --verify`) and an
onboarding request's documents (their `onboarding.document-received` events). The database and the file store are
backed up apart (docs/operations.md, "Backups"): after a restore, this says whether they belong together, naming
each file that is missing, of another size, or whose bytes are not what the history recorded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

from contracts.onboarding import TYPE_OF as ONBOARDING_TYPE_OF
from contracts.onboarding import DocumentReceived
from services.runtime.filestore import FileStore


@dataclass(frozen=True)
class Named:
    """A file the history names: its content's sha256, its size, and where the history names it."""

    sha256: str
    size: int
    where: str  # "instance 1947: C1_201_202008.txt", "onboarding ONB-2026-0007: Prestazioni.xlsx"


@dataclass(frozen=True)
class FileProblem:
    named: Named
    problem: str


@dataclass(frozen=True)
class FileCheck:
    named: int  # files the history names (a content named twice counts twice)
    distinct: int  # distinct contents looked at
    hashed: int  # of them, read whole and hashed
    problems: list[FileProblem]


async def named_files(pool: asyncpg.Pool) -> list[Named]:
    """Every file the history names, in the order of its instance or request."""
    instance_rows = await pool.fetch("SELECT instance, name, sha256, bytes FROM instance_files ORDER BY instance, name")
    document_rows = await pool.fetch(
        "SELECT stream_id, data->>'filename' AS name, data->>'sha256' AS sha256, (data->>'size')::bigint AS size "
        "FROM events WHERE type = $1 ORDER BY stream_id, version", ONBOARDING_TYPE_OF[DocumentReceived])
    named = [Named(r["sha256"], int(r["bytes"]), f"instance {r['instance']}: {r['name']}") for r in instance_rows]
    named += [Named(r["sha256"], int(r["size"]), f"{r['stream_id']}: {r['name']}") for r in document_rows]
    return named


def check_files(store: FileStore, named: Iterable[Named], *, contents: bool = True) -> FileCheck:
    """Each distinct content once: present, of the size recorded and (with `contents`) hashing to its name. A problem
    is reported for every place the history names the content."""
    named = list(named)
    by_content: dict[str, list[Named]] = {}
    for item in named:
        by_content.setdefault(item.sha256, []).append(item)
    problems: list[FileProblem] = []
    hashed = 0
    for sha256, places in by_content.items():
        path = store.path(sha256)
        problem: str | None = None
        if not path.is_file():
            problem = f"missing from the file store (looked for {path})"
        else:
            size = path.stat().st_size
            sizes = {p.size for p in places}
            if size not in sizes:
                problem = f"{size} bytes in the file store, {' or '.join(str(s) for s in sorted(sizes))} recorded"
            elif contents:
                hashed += 1
                got = store.content_sha256(sha256)
                if got != sha256:
                    problem = f"its bytes hash to {got}, not to the sha256 recorded {sha256}"
        if problem is not None:
            problems += [FileProblem(place, problem) for place in places]
    return FileCheck(len(named), len(by_content), hashed, problems)
