-- Housekeeping (services.runtime.housekeeping): the consumers' dedup records and the published outbox rows are
-- deleted once nothing can need them, by age. Both tables are written in time order, so a BRIN index (a few
-- pages, next to nothing per insert: intake records every source message in processed_message) finds the old
-- ranges without scanning the table.
CREATE INDEX processed_message_age ON processed_message USING brin (processed_at);
CREATE INDEX outbox_age ON outbox USING brin (created_at);
