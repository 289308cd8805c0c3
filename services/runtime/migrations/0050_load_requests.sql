-- One instance per load request: the request id (the command's idempotency key, chosen by whoever
-- publishes flows.load-requested) maps to the instance number it created. A second message with
-- the same request id but a new ce_id (a re-sent command) finds its row and creates nothing.
CREATE TABLE load_request (
    request_id  uuid        PRIMARY KEY,
    instance    bigint      NOT NULL UNIQUE,
    received_at timestamptz NOT NULL DEFAULT now()
);
