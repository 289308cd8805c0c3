-- The instance read model names the load request that made each instance (LoadRunning and
-- LoadScheduled carry it), so `flows load` and the console wait on the read model by request id
-- instead of reading the loader's own load_request table. The projection's DDL
-- (services/runtime/read_models.py) has the column for new databases; this adds it to an existing
-- table and fills it from each instance's first event.
ALTER TABLE IF EXISTS instance_list ADD COLUMN IF NOT EXISTS request_id uuid;
DO $$
BEGIN
    IF to_regclass('instance_list') IS NOT NULL THEN
        UPDATE instance_list l SET request_id = (e.data->>'request_id')::uuid
          FROM events e
         WHERE e.stream_id = 'instance-' || l.instance AND e.version = 1 AND l.request_id IS NULL;
        CREATE INDEX IF NOT EXISTS instance_list_request_id ON instance_list (request_id);
    END IF;
END $$;
