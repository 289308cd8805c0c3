-- A row the relay cannot publish for a PERMANENT reason (message too large for the broker, invalid
-- topic, a payload that cannot be serialised) is parked: set aside with its reason, reported, and
-- retried or skipped by an operator (services.runtime.outbox: parked_rows, retry_parked,
-- skip_parked). It stops only its own stream: later rows with the same key wait behind it, every
-- other row goes on.
ALTER TABLE outbox ADD COLUMN parked_at timestamptz;
ALTER TABLE outbox ADD COLUMN parked_reason text;
ALTER TABLE outbox ADD COLUMN skipped_at timestamptz;  -- an operator gave up on a parked row

CREATE INDEX outbox_parked ON outbox (key) WHERE parked_at IS NOT NULL AND published_at IS NULL;
