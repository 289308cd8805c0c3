-- Consumer-side deduplication: a consumer records the ce_id it handled in the same transaction as
-- its effects, so a redelivered message (Kafka is at-least-once) is recognised and skipped.
CREATE TABLE processed_message (
    consumer     text        NOT NULL,
    message_id   text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
