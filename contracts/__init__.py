"""The public language of the platform: envelopes, topics, payloads, states, layouts and catalogues."""

from __future__ import annotations

from pathlib import Path

CONTRACTS_DIR = Path(__file__).resolve().parent


def data_file(*parts: str) -> Path:
    """A file or folder shipped with the contracts (catalogues, layouts, schemas, the TS 730 XSD):
    ``data_file("data", "onboarding")``; the one place that knows where the contracts live on disk."""
    return CONTRACTS_DIR.joinpath(*parts)
