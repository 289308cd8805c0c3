-- An outbox row holds the bytes the relay sends, as text: `payload` is the event's data in the canonical JSON
-- the append already built (and hashed), `headers` the JSON of its [[name, value], ...] CloudEvents headers.
-- As jsonb, every append parsed both again in PostgreSQL and the relay decoded the payload and serialised it
-- once more, for nothing: no query reads inside them. Rows written before this migration keep jsonb's text
-- form of what they held (valid JSON, the same values).
--
-- The foreign key to events goes: every outbox row is written by the statement that appends its event (or,
-- for a redriven dead letter, in the transaction that appends the redrive with the same id), and events are
-- never deleted. The key cost a lookup and a row lock (one more WAL record) per published event at append.
ALTER TABLE outbox DROP CONSTRAINT outbox_event_id_fkey;
ALTER TABLE outbox ALTER COLUMN headers TYPE text USING headers::text,
                   ALTER COLUMN payload TYPE text USING payload::text;
