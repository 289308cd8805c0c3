-- Outbox: one row per published event, written in the append transaction; the relay
-- (services.runtime.outbox.OutboxRelay) sends it to Kafka and sets published_at after the broker ack.
CREATE TABLE outbox (
    id           bigserial   PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE REFERENCES events (event_id),
    topic        text        NOT NULL,
    key          text        NOT NULL,
    headers      jsonb       NOT NULL,   -- [[name, value], ...] CloudEvents binary-mode headers
    payload      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);

-- The relay only ever scans the unpublished tail.
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
