"""The simulator's settings: ``FLOWS_TS_SIM_*`` variables (the port is the one the local stack gives it)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts import data_file

REPO_ROOT = Path(__file__).resolve().parents[2]
TS730 = Path("reference") / "ts730"


def default_reference_dir() -> Path | None:
    """The official TS 730 files in the project's ``shared/`` folder: beside the checkout (CI lays out a
    clone with shared/ next to it) or beside a folder holding the checkout (a worktree)."""
    for ancestor in REPO_ROOT.parents:
        candidate = ancestor / "shared" / TS730
        if candidate.is_dir():
            return candidate
    return None


class SimulatorSettings(BaseSettings):
    """``FLOWS_TS_SIM_HOST``, ``FLOWS_TS_SIM_PORT`` (the stack sets one per port base, see
    deploy/localstack ``ts_sim_port``) and ``FLOWS_TS_SIM_REFERENCE_DIR`` (the official XSDs)."""

    model_config = SettingsConfigDict(env_prefix="FLOWS_TS_SIM_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 18443
    reference_dir: Path | None = None

    def reference_roots(self) -> tuple[Path, ...]:
        """Where the official schemas are looked up, in order: the copies in contracts/ts730, then the
        configured folder (or, unset, the shared/ reference found beside the checkout)."""
        extra = self.reference_dir or default_reference_dir()
        return (data_file("ts730"), *((extra,) if extra else ()))
