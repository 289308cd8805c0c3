-- Event store: append-only streams, hash-chained, with a tail-safe global order.
-- PRIMARY KEY (stream_id, version) is the optimistic-concurrency check: a second writer of the same
-- version gets a unique violation (services.runtime.eventstore turns it into ConcurrencyError).
-- transaction_id + position give readers a global order they can tail without skipping events
-- committed out of position order (see the eventstore module docstring).
CREATE TABLE events (
    stream_id      text        NOT NULL,
    version        integer     NOT NULL CHECK (version >= 1),
    position       bigserial   NOT NULL UNIQUE,
    transaction_id xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id       uuid        NOT NULL UNIQUE,
    type           text        NOT NULL,
    data           jsonb       NOT NULL,
    actor          text        NOT NULL,
    metadata       jsonb       NOT NULL DEFAULT '{}',
    recorded_at    timestamptz NOT NULL,
    prev_hash      bytea       NOT NULL CHECK (length(prev_hash) = 32),
    hash           bytea       NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (stream_id, version)
);

CREATE INDEX events_global_order ON events (transaction_id, position);

-- Nothing is erased: the log refuses DELETE and TRUNCATE (an UPDATE is caught by the hash chain).
CREATE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % refused', TG_OP;
END $$;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only();
