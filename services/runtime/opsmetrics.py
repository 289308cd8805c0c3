"""The platform's figures for Prometheus (deploy/observability/alerts.yml alerts on them).

Refreshed every `ops_metrics_interval_s` by the audit service and served on its /metrics:

    flows_consumer_lag{group,topic,partition}          end offset - committed offset
    flows_dlq_messages{topic}                          messages on each .dlq topic
    flows_instances{flow_type,state}                   instances per state (Failed loading...)
    flows_deadline_uncovered_days{ente,flow_type,due,month}  days left (negative: late) of a deadline no instance
                                     covers; `month`, its period's, is what `flows deadlines --month` takes
    flows_ts_outcomes{outcome}                         TS outcomes recorded (confirmed, rejected...)
    flows_outbox_unpublished                           outbox rows not yet on Kafka
    flows_outbox_oldest_unpublished_seconds            age of the oldest of them (0: none)
    flows_outbox_oldest_pending_seconds                age of the oldest row the relay is still to send: parked rows
                                     and the rows of their streams waiting behind them left out (0: none); OutboxBehind
                                     alerts on it, so a parked row pages once, as OutboxRowParked
    flows_outbox_parked                                outbox rows the relay parked (neither published nor skipped)
    flows_ops_refreshed_timestamp_seconds              when these figures were last refreshed
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import date

import asyncpg
from aiokafka import TopicPartition
from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from contracts import flows
from contracts.deadlines import italian_today
from contracts.topics import DLQ_SUFFIX
from services.runtime.kafkaread import existing_topics, observer, offset_ranges
from services.runtime.ops import consumer_lag
from services.runtime.outbox import PENDING_WHERE

# The age of the oldest row the relay still sends in its turn: the rows of services.runtime.outbox's _PENDING_ROWS,
# unpublished, not parked, not behind a parked row of their stream (key). A parked row and the rows waiting behind it
# are OutboxRowParked's story, not the relay's falling behind.
_OLDEST_PENDING_AGE = ("SELECT coalesce(extract(epoch FROM now() - min(o.created_at)), 0) FROM outbox o WHERE "
                       + PENDING_WHERE)


class OpsMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        self.lag = gauge("flows_consumer_lag", "Messages a consumer group has not committed yet",
                         ("group", "topic", "partition"))
        self.dlq = gauge("flows_dlq_messages", "Messages on a dead-letter topic", ("topic",))
        self.instances = gauge("flows_instances", "Instances per flow type and state", ("flow_type", "state"))
        self.deadline = gauge("flows_deadline_uncovered_days",
                              "Days left before a deadline that no instance covers (negative: late)",
                              ("ente", "flow_type", "due", "month"))
        self.ts = gauge("flows_ts_outcomes", "Sistema TS outcomes recorded, per outcome", ("outcome",))
        self.outbox = gauge("flows_outbox_unpublished", "Outbox rows not yet published to Kafka")
        self.outbox_age = gauge("flows_outbox_oldest_unpublished_seconds", "Age of the oldest unpublished outbox row")
        self.outbox_pending_age = gauge("flows_outbox_oldest_pending_seconds",
                                        "Age of the oldest outbox row the relay is still to send (neither parked nor "
                                        "behind a parked row of its stream)")
        self.outbox_parked = gauge("flows_outbox_parked",
                                   "Outbox rows the relay parked, neither retried, published nor skipped: their "
                                   "streams wait (flows outbox parked)")
        self.refreshed = gauge("flows_ops_refreshed_timestamp_seconds", "When the ops figures were last refreshed")

    async def refresh(self, pool: asyncpg.Pool, bootstrap: str, today: date | None = None,
                      watched_from: date | None = None, enti: Mapping[str, date | None] | None = None) -> None:
        """`watched_from`: deadlines due before it are not reported (Settings.deadlines_watched_from). `enti`: only
        these entities' deadlines are, each from its own go-live day when it has one (Settings.deadlines_enti);
        None: every entity's."""
        await self._kafka(bootstrap)
        await self._database(pool, today or italian_today(), watched_from, enti)
        self.refreshed.set(time.time())

    async def _kafka(self, bootstrap: str) -> None:
        rows = await consumer_lag(bootstrap, with_commit_times=False)
        self.lag.clear()
        for row in rows:
            self.lag.labels(row.group, row.topic, str(row.partition)).set(row.lag)
        async with observer(bootstrap) as consumer:
            known = await existing_topics(consumer)
            parts = [TopicPartition(t, p) for t, ps in known.items() if t.endswith(DLQ_SUFFIX) for p in ps]
            begins, ends = await offset_ranges(consumer, parts)
        per_topic: dict[str, int] = {}
        for tp in parts:
            per_topic[tp.topic] = per_topic.get(tp.topic, 0) + ends[tp] - begins[tp]
        self.dlq.clear()
        for topic, count in per_topic.items():
            self.dlq.labels(topic).set(count)

    async def _database(self, pool: asyncpg.Pool, today: date, watched_from: date | None = None,
                        enti: Mapping[str, date | None] | None = None) -> None:
        from contracts.deadlines import known_deadlines_for_month, month_before
        from services.runtime.coverage import coverage

        self.instances.clear()
        for row in await pool.fetch("SELECT flow_type, state, count(*) AS n FROM instance_list GROUP BY 1, 2"):
            self.instances.labels(row["flow_type"], row["state"]).set(row["n"])
        self.ts.clear()
        for row in await pool.fetch("SELECT data->>'outcome' AS outcome, count(*) AS n FROM events "
                                    "WHERE type = $1 GROUP BY 1", flows.TYPE_OF[flows.TsFeedbackReceived]):
            self.ts.labels(row["outcome"] or "unknown").set(row["n"])
        pending = await pool.fetchrow("SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)), 0) "
                                      "AS age, count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked "
                                      "FROM outbox WHERE published_at IS NULL")
        self.outbox.set(pending["n"])
        self.outbox_age.set(float(pending["age"]))
        self.outbox_parked.set(pending["parked"])
        self.outbox_pending_age.set(float(await pool.fetchval(_OLDEST_PENDING_AGE)))
        self.deadline.clear()
        # The periods that ended two months ago, last month and this month: a deadline is due some days to two months
        # after its period, and the 730 of a year (its period ends in December) is due on 31 January moved to the next
        # working day, 1 or 2 February, when last month's list no longer holds it: its figure, and the alert, would
        # have gone on its very due day.
        months = [month_before(today, back) for back in (2, 1, 0)]
        for year, month in months:
            # the flows whose dates the data has: `flows deadlines` names what is missing; no figure beats a guessed one
            deadlines, _ = known_deadlines_for_month(year, month)
            if not deadlines:
                continue
            # every entity known (or watched), those that loaded nothing yet too: theirs are the deadlines most likely
            # missed
            for ente, deadline, covered in await coverage(pool, deadlines, None, None if enti is None else list(enti)):
                since = (enti or {}).get(ente) or watched_from
                if covered is None and (since is None or deadline.due >= since):
                    self.deadline.labels(ente, deadline.flow_type, deadline.due.isoformat(),
                                         f"{year}-{month:02d}").set((deadline.due - today).days)


_BY_REGISTRY: dict[int, OpsMetrics] = {}


def for_registry(registry: CollectorRegistry = REGISTRY) -> OpsMetrics:
    """The one OpsMetrics of `registry` (a metric name registers once per registry)."""
    if id(registry) not in _BY_REGISTRY:
        _BY_REGISTRY[id(registry)] = OpsMetrics(registry)
    return _BY_REGISTRY[id(registry)]
