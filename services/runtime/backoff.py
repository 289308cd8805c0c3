"""Per-instance backoff of work the platform could not carry out: tried again later, never failed for it.

Two conditions share it, with one arithmetic: a full file store (services.runtime.filestore.SpaceWaits) and work
interrupted by a transient error (`Interruptions`: PostgreSQL gone, crashed or restarted, a session terminated, a
connection cut; services.runtime.broker.is_transient). In both the instance keeps its state and its hash-chained
history (the condition happened to the platform, not to the instance), and the service's periodic pass asks
`due(instance)` before it tries again: `initial_s` after the first failed attempt, doubling to `cap_s`. Each
failed attempt writes ONE warning, the first success after failures one info line; an instance finished or
deleted elsewhere is forgotten without a line (`forget`). Nothing blocks meanwhile: the handler returns, the
partition and the other instances go on. The state is this process's: after a restart, or on another replica,
the first attempt finds out again and the count starts from one.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from prometheus_client import Gauge

# 2**30 times any first delay is past every cap: the exponent stops there, so a wait that lasts for days (one
# attempt every cap_s) never overflows the float arithmetic.
MAX_DOUBLINGS = 30
INTERRUPTED_CAP_S = 300.0
ERROR_MAX = 300  # what a line quotes of the error

# On the loader's and the formatter's /metrics; deploy/observability/alerts.yml (WorkInterrupted) alerts on the
# second one.
WORK_INTERRUPTED = Gauge("flows_work_interrupted",
                         "Instances of this process whose work was interrupted (PostgreSQL or Kafka unreachable, a "
                         "connection cut) and waits to be tried again", ("service",))
WORK_INTERRUPTED_LONGEST = Gauge("flows_work_interrupted_longest_seconds",
                                 "Seconds since the first interruption of the instance of this process interrupted "
                                 "the longest without a success since (0: none)", ("service",))


@dataclass
class Wait:
    """One instance's failed attempts since its last success."""

    since: float = field(default_factory=lambda: time.monotonic())  # the first failure
    attempts: int = 0
    next_at: float = 0.0  # time.monotonic() from which it is due again


W = TypeVar("W", bound=Wait)


@dataclass
class Backoffs(Generic[W]):
    """The instances (by number) whose last attempt failed for the platform's reasons, and when each is due."""

    log: Any
    initial_s: float = 5.0
    cap_s: float = 300.0
    waiting: dict[int, W] = field(default_factory=dict)

    def due(self, key: int) -> bool:
        wait = self.waiting.get(key)
        return wait is None or time.monotonic() >= wait.next_at

    def delay(self, attempts: int) -> float:
        """The wait after `attempts` failed attempts in a row: initial_s, doubling, at most cap_s."""
        return min(self.initial_s * 2.0 ** min(max(attempts - 1, 0), MAX_DOUBLINGS), self.cap_s)

    def _attempt_failed(self, wait: W) -> float:
        """Counts one more failed attempt of `wait` and schedules the next; returns its delay."""
        wait.attempts += 1
        delay = self.delay(wait.attempts)
        wait.next_at = time.monotonic() + delay
        self._publish()
        return delay

    def forget(self, key: int) -> None:
        """The work is no longer this process's (done elsewhere, deleted): no line."""
        self._ended(key)

    def forget_unlisted(self, listed: Collection[int], asked_at: float) -> None:
        """Forgets, without a line, each instance a pass's query (begun at time.monotonic() `asked_at`) did not
        list although it was waiting before: it was finished, deleted or taken over elsewhere meanwhile (another
        replica), and this process would never visit it again, its figure up for ever. One that began waiting
        after the query was asked (a message's run, meanwhile) is kept."""
        listed = set(listed)
        for key in [key for key, wait in self.waiting.items() if key not in listed and wait.since < asked_at]:
            self._ended(key)

    def _ended(self, key: int) -> W | None:
        wait = self.waiting.pop(key, None)
        if wait is not None:
            self._publish()
        return wait

    def _publish(self) -> None:
        """Sets this condition's figure on /metrics."""


@dataclass
class Interruptions(Backoffs[Wait]):
    """Loads / formats (per instance) interrupted by a transient error, backed off in THIS process.

    Why: a load or a format cut by PostgreSQL (its session terminated, the server crashed or restarted) stays
    Running / Formatting in progress, and the service's periodic pass takes it again. Taken again at once, forever,
    a load that itself brings PostgreSQL down (the OOM killer ends its backend each time it runs, and the server
    restarts every session) would crash the database every pass. So each interrupted instance waits `initial_s`
    (the pass's own period: the first retry is as soon as before), doubling to `cap_s` (5 minutes). Each
    interruption writes ONE warning `<work>.interrupted` (instance, attempt, retry_in_s, ran_s: how long the
    attempt ran, the error, bounded: connection errors name no secret); the first attempt after interruptions that
    the database carries to its end writes `<work>.recovered` (attempts, waited_s): an outcome recorded, or a full
    file store met (that wait is SpaceWaits'). An instance finished, deleted or taken over elsewhere (another
    replica) is forgotten without a line: when its attempt finds it so, or when the pass no longer lists it
    (`forget_unlisted`), so no figure stays up for work this process will never see again. Figures:
    `flows_work_interrupted{service}` (how many instances back off) and `flows_work_interrupted_longest_seconds
    {service}` (since the first interruption of the one waiting the longest; alert WorkInterrupted at 15 minutes).

    The outage rule: only an attempt that RAN is counted. The service calls `failed` only for a transient error
    met after it holds the instance's work lock and has read its history, i.e. after the database answered the
    pass's own query and this instance's own; an error before that (PostgreSQL down when the pass or the message
    comes) propagates to the pass's loop or to the consumer, which wait the outage out with their own backoff, and
    charges no instance. So PostgreSQL down for everyone, however long, costs each instance at most the one
    attempt it was running when the outage began (the first delay: the next pass), the instances that were only
    waiting are not charged at all, and each one's clock runs on through the outage: once the database is back
    they are due at their own time, none five minutes later.
    Rejected: "an interruption counts only when the database still answers right after it" and "every backoff
    is reset when a pass succeeds after a failed one". Both exempt exactly the worst case: a load that crashes
    the server makes a server-wide outage, indistinguishable, from the service, from one it did not cause (every
    session ends, the next pass fails during crash recovery). Under either rule it would be retried at the first
    pass after each recovery, forever. What is left: a database that keeps failing for everyone for a while
    (flapping, too many connections) charges the instances it cuts, one attempt each time one runs; an instance
    cut N times in a row waits initial_s * 2**(N-1), the same as a load that brings the server down. A restart of
    the service forgets every backoff (per process, as SpaceWaits).
    """

    service: str = "service"  # the figures' label
    work: str = "work"  # the lines' prefix: load, format

    def __post_init__(self) -> None:
        WORK_INTERRUPTED_LONGEST.labels(service=self.service).set_function(self.longest_s)
        self._publish()

    def failed(self, key: int, exc: BaseException, *, ran_s: float, line: str | None = None, level: str = "warning",
               **context: Any) -> float:
        """Records an interrupted attempt (one line: `<work>.interrupted`, a warning, unless `line` and `level`
        name another, as the TS gateway's unexpected errors do); returns the seconds until the next one."""
        wait = self.waiting.get(key)
        if wait is None:
            wait = self.waiting[key] = Wait()
        delay = self._attempt_failed(wait)
        getattr(self.log, level)(line or f"{self.work}.interrupted", instance=key, attempt=wait.attempts,
                                 retry_in_s=delay, ran_s=round(ran_s, 3),
                                 error=f"{type(exc).__name__}: {exc}"[:ERROR_MAX], **context)
        return delay

    def done(self, key: int) -> None:
        """The instance's attempt got through: one line if it had been interrupted before."""
        wait = self._ended(key)
        if wait is not None:
            self.log.info(f"{self.work}.recovered", instance=key, attempts=wait.attempts,
                          waited_s=round(time.monotonic() - wait.since, 3))

    def longest_s(self) -> float:
        now = time.monotonic()
        return max((now - wait.since for wait in self.waiting.values()), default=0.0)

    def _publish(self) -> None:
        WORK_INTERRUPTED.labels(service=self.service).set(len(self.waiting))
