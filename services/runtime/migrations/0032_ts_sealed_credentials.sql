-- TS gateway: the sealed TS credentials of the submissions in progress, outside the hash-chained
-- history. One row per instance: the box of its latest submission request (request_id = the id of
-- the flows.ts-submission-requested event recorded in the instance's stream, which itself carries
-- no box). The row is written in the transaction that records the request, so a gateway killed
-- mid-submission finds it on restart, and DELETED in the transaction that records the instance
-- outcome (Confirmed, Confirmed with errors, Rejected); the gateway's resume pass deletes the box
-- of a request that was superseded or abandoned (instance deleted). key_id names the gateway key
-- the box is sealed to: a retired private key is kept while a row here needs it.
CREATE TABLE ts_sealed_credentials (
    instance     bigint      PRIMARY KEY,
    request_id   uuid        NOT NULL UNIQUE,
    key_id       text        NOT NULL CHECK (key_id ~ '^[0-9a-f]{16}$'),
    sealed       text        NOT NULL CHECK (sealed ~ '^[A-Za-z0-9+/]+={0,2}$'),
    recorded_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX ts_sealed_credentials_key ON ts_sealed_credentials (key_id);
