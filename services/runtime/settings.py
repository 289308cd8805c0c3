"""Settings from the environment (prefix FLOWS_, plus the conventional DATABASE_URL).

One object, built once per process by `Settings()`, passed down explicitly: nothing reads the
environment below the entrypoints.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contracts.ts730 import MAX_ZIP_BYTES

REPO_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLOWS_", extra="ignore")

    database_url: str = Field(default="postgresql://postgres@127.0.0.1:15432/flows",
                              validation_alias=AliasChoices("DATABASE_URL", "FLOWS_DATABASE_URL"))
    kafka_bootstrap: str = "127.0.0.1:19092"
    # Partitions of every topic `flows topics apply` creates (and grows to): how many replicas of a
    # service can share a topic's work.
    topic_partitions: int = Field(default=6, ge=1, le=1000)
    # This process's name among the replicas of its service (`flows stack up --replicas N` sets loader,
    # loader-2, ...; a pod name in Kubernetes): recorded as `replica` in the metadata of the events it appends.
    replica: str | None = Field(default=None, max_length=100)
    files_dir: Path = REPO_ROOT / ".stack" / "files"
    keys_dir: Path = REPO_ROOT / ".stack" / "keys"
    # The SanitelCF certificate rotates: a path, never a constant in code.
    sanitel_cert: Path = REPO_ROOT / ".stack" / "ts-sim" / "sanitel-cf.pem"
    ts_endpoint: str = "http://127.0.0.1:18443"
    ts_poll_initial_s: float = 2.0
    ts_poll_max_s: float = 60.0
    # A 730 zip is at most 5 MB (TS error 108); a smaller limit splits an instance into more parts.
    ts_max_zip_bytes: int = Field(default=MAX_ZIP_BYTES, gt=0, le=MAX_ZIP_BYTES)
    # The line end of the fixed-width files (Flusso C, C PACC, MEF, ALPI TA): spec/flusso-c.md, "CRLF or LF as
    # configured (default LF)"; FLOWS_FIXED_WIDTH_LINE_END=CRLF for a receiver that wants CRLF.
    fixed_width_line_end: Literal["LF", "CRLF"] = "LF"
    log_format: str = Field(default="auto", description="auto (JSON when not on a terminal), json or console")
    log_level: str = "INFO"
    max_attempts: int = Field(default=3, description="Processing attempts before a message is dead-lettered.")
    # A load / format interrupted by a transient error (services.runtime.backoff.Interruptions) is tried again
    # after this long, doubling to the cap. None: the service's own pass period (loader 2 s, formatter 5 s).
    interrupted_retry_initial_s: float | None = Field(default=None, gt=0)
    interrupted_retry_cap_s: float = Field(default=300.0, gt=0)
    # The period of the service's periodic pass: the loader's (Running and due Scheduled loads), the formatter's and the
    # TS gateway's resume passes, where interrupted work and work waiting for space is tried again. None: the service's
    # own (loader 2 s, formatter 5 s, ts-gateway 10 s). The first retry of interrupted work follows it.
    pass_s: float | None = Field(default=None, gt=0)
    # A load / format that found the file store full is tried again after this long, doubling to 5 minutes (or at
    # the next pass once the free space grew). None: 5 s (services.runtime.filestore.SPACE_WAIT_INITIAL_S).
    space_wait_initial_s: float | None = Field(default=None, gt=0)
    metrics_port: int | None = None
    # Signed checkpoints (services.runtime.checkpoints): the Ed25519 private key is a file outside the
    # database it protects (created on first use, mode 0600; its public key beside it as <name>.pub).
    checkpoint_key: Path = REPO_ROOT / ".stack" / "audit" / "checkpoint-signing.key"
    checkpoints_dir: Path = REPO_ROOT / ".stack" / "audit" / "checkpoints"
    checkpoint_interval_s: float = Field(default=900.0, ge=0, description="0: only on demand")
    # Where `flows audit report N` writes its PDF when no --out is given (report-N-<UTC time>.pdf): one known place
    # whatever folder the command runs from.
    reports_dir: Path = REPO_ROOT / ".stack" / "audit" / "reports"
    # /healthz, /readyz and /metrics of the service process (services.runtime.health); None: not served.
    health_port: int | None = None
    health_host: str = "127.0.0.1"
    # The audit service refreshes the platform's ops figures (services.runtime.opsmetrics) this often; 0: never.
    ops_metrics_interval_s: float = Field(default=15.0, ge=0)
    # The platform's go-live (YYYY-MM-DD): a deadline due before it is not reported as uncovered (the deadlines the
    # old Flow Manager covered would otherwise all be "late" on a new platform). None: every deadline is watched.
    deadlines_watched_from: date | None = None
    # The entities whose deadlines are watched, for a region that goes live entity by entity: "201,202:2027-02-01"
    # (an entity, with its own go-live day after a colon; without one, deadlines_watched_from's). None: every entity
    # the platform knows. An entity of the catalogue that does not use the platform yet would otherwise page
    # DeadlineNotCovered every month.
    deadlines_enti: Annotated[dict[str, date | None] | None, NoDecode] = None
    # The audit service deletes old dedup records and published outbox rows (services.runtime.housekeeping) this
    # often; 0: never.
    housekeeping_interval_s: float = Field(default=3600.0, ge=0)

    # The operator console (services/console).
    console_host: str = "127.0.0.1"
    console_port: int = 18080
    console_secure_cookies: bool = Field(default=True, description="False only for plain-http tests on localhost.")
    # How long the Nuovo caricamento form waits for the loader to take a load request (then it opens the instance)
    # before it answers that the request was sent and the instance will appear in the list.
    console_load_wait_s: float = Field(default=10.0, gt=0)
    console_session_ttl_s: int = Field(default=8 * 3600, gt=0)
    console_login_max_failures: int = Field(default=5, gt=0, description="Per user name in the window.")
    console_login_window_s: int = Field(default=900, gt=0)
    # OpenID Connect login (services/console/oidc.py), the production option: on when a metadata URL
    # (the provider's /.well-known/openid-configuration) and a client id are set. The secret comes from
    # FLOWS_CONSOLE_OIDC_CLIENT_SECRET and is a SecretStr: never printed, logged or stored.
    console_oidc_metadata_url: str | None = None
    console_oidc_issuer: str | None = Field(default=None, description="Expected issuer; default: the metadata's.")
    console_oidc_client_id: str | None = None
    console_oidc_client_secret: SecretStr | None = None
    console_oidc_redirect_url: str | None = Field(
        default=None, description="The callback URL registered at the provider; default: this request's "
                                  "origin + /login/oidc/callback.")
    console_oidc_scope: str = "openid profile"
    console_oidc_username_claim: str = "preferred_username"
    console_oidc_role_claim: str = "flows_role"
    console_oidc_enti_claim: str = "flows_enti"
    console_oidc_structure_claim: str = "flows_structure"
    console_local_login: bool = Field(default=True, description="False: OIDC only (no password form).")

    # OpenTelemetry traces (services.runtime.tracing): OTLP/HTTP export when an endpoint is set (e.g.
    # http://collector:4318), a local JSON-lines file of spans when a path is set; service.name of the spans
    # (default: the process's own name, e.g. "loader", "flows-cli").
    otlp_endpoint: str | None = None
    traces_file: Path | None = None
    service_name: str | None = None

    @field_validator("deadlines_enti", mode="before")
    @classmethod
    def _watched_enti(cls, value: Any) -> Any:
        """"201,202:2027-02-01" -> {"201": None, "202": date(2027, 2, 1)}; each entity must be in the catalogue."""
        if not isinstance(value, str):
            return value
        from services.loader.catalogue import known_enti

        watched: dict[str, date | None] = {}
        for item in (part.strip() for part in value.split(",")):
            ente, _, day = (p.strip() for p in item.partition(":"))
            if not ente:
                raise ValueError(f"{value!r}: an empty entity; give ENTE[:YYYY-MM-DD],... or leave it unset to "
                                 "watch every entity")
            if ente in watched:
                raise ValueError(f"{value!r}: entity {ente} is given twice")
            if ente not in known_enti():
                raise ValueError(f"{value!r}: {ente} is not an entity of the catalogue (contracts/data/structures.csv:"
                                 f" {', '.join(sorted(known_enti()))})")
            try:
                watched[ente] = date.fromisoformat(day) if day else None
            except ValueError:
                raise ValueError(f"{value!r}: the go-live day of entity {ente}, {day!r}, is not a date "
                                 "YYYY-MM-DD") from None
        return watched

    def bootstrap_list(self) -> list[str]:
        """`kafka_bootstrap` as the list of host:port aiokafka wants. FastStream wraps a plain string
        into a one-element list, so "a:1,b:2" would reach aiokafka as ONE host named "a:1,b"."""
        return bootstrap_list(self.kafka_bootstrap)


def bootstrap_list(bootstrap: str | list[str]) -> list[str]:
    """"h1:p1, h2:p2" (or a list of such strings) -> ["h1:p1", "h2:p2"]; empty parts are an error."""
    parts = [bootstrap] if isinstance(bootstrap, str) else list(bootstrap)
    hosts = [h.strip() for part in parts for h in part.split(",")]
    if not hosts or any(not h for h in hosts):
        raise ValueError(f"Kafka bootstrap {bootstrap!r} has an empty host: give host:port[,host:port...]")
    return hosts
